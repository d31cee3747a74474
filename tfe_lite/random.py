"""Cryptographic randomness for the protocol players.

Each player owns a :class:`SeedStream`: a 256-bit key and a 64-bit counter, both ``tf.Variable`` s on the
player's device. :meth:`SeedStream.next_seed` increments the counter *at run time* and derives a fresh seed
``ChaCha20(key, counter)`` (:func:`tfe_lite.prg.derive_seed`); seeds are expanded into uniform ring
tensors with :func:`tfe_lite.prg.expand_seed`. Because the counter is a variable updated by the graph
itself, every execution of a ``tf.function`` draws new seeds: nothing random is fixed at trace time.

Keys come from the operating system's CSPRNG (``os.urandom``). A test may pass an integer ``seed`` to make
runs repeatable; keys are then derived from it with SHA-256 and are, of course, not secret.

Streams are named by purpose (``"crypto"`` for shares, masks and triples); a player's streams for
different purposes use independent keys.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import tensorflow as tf

from tfe_lite import prg
from tfe_lite.errors import ConfigError

KEY_WORDS = 4  # int64 words in a 256-bit key or seed


def _key_bytes(seed: int | None, label: str) -> bytes:
    if seed is None:
        return os.urandom(8 * KEY_WORDS)
    return hashlib.sha256(f"tfe_lite/{seed}/{label}".encode()).digest()


def _as_words(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i8").astype(np.int64)


def validate_seed(seed) -> int | None:
    if seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)):
        return None if seed is None else int(seed)
    raise ConfigError(f"Received an invalid value for `seed`, expected an integer or None. Received: seed={seed!r}")


class SeedStream:
    """Fresh 256-bit seeds on one device, derived from a secret key and a run-time counter."""

    def __init__(self, device: str, *, seed: int | None = None, label: str = ""):
        self.device = device
        self.label = label
        with tf.device(device):
            self._key = tf.Variable(_as_words(_key_bytes(seed, label)), trainable=False, name="seed_key")
            self._counter = tf.Variable(np.int64(0), trainable=False, name="seed_counter")

    def next_seed(self) -> tf.Tensor:
        """A new seed (int64[4]) on this stream's device; new on every call and every graph execution."""
        with tf.device(self.device):
            counter = self._counter.assign_add(1)
            return prg.derive_seed(self._key.read_value(), counter)

    def uniform(self, shape, *, stream: int = 0) -> tf.Tensor:
        """A uniform ring tensor of ``shape`` from a fresh seed."""
        with tf.device(self.device):
            return prg.expand_seed(self.next_seed(), shape, stream=stream)


class RandomStreams:
    """The seed streams of a set of players, one per (player, purpose), created on first use."""

    def __init__(self, seed: int | None = None):
        self._seed = validate_seed(seed)
        self._streams: dict[tuple[str, str], SeedStream] = {}

    @property
    def deterministic(self) -> bool:
        return self._seed is not None

    def stream(self, player, purpose: str = "crypto") -> SeedStream:
        key = (player.name, purpose)
        if key not in self._streams:
            self._streams[key] = SeedStream(player.device, seed=self._seed, label=f"{player.name}/{purpose}")
        return self._streams[key]
