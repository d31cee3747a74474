"""Cryptographic randomness for the protocol players.

Each player owns a :class:`SeedStream`: a 256-bit key and an :class:`AtomicCounter`, both on the player's
device. :meth:`SeedStream.next_seed` advances the counter *at run time* and derives a fresh seed
``ChaCha20(key, counter)`` (:func:`tfe_lite.prg.derive_seed`); seeds are expanded into uniform ring
tensors with :func:`tfe_lite.prg.expand_seed`. Because the counter is a variable updated by the graph
itself, every execution of a ``tf.function`` draws new seeds: nothing random is fixed at trace time.

The counter is read and advanced in one atomic op (``RngReadAndSkip``, which holds the variable's lock),
so draws from several Python threads, or from concurrent executions of one traced function, never get
the same counter value and so never the same seed. (An ``assign_add`` followed by a read is two ops: two
concurrent draws can both read the second increment.)

Keys come from the operating system's CSPRNG, made where the player runs: the native ``SystemRandomKey`` op
(``getrandom``) executes on the player's device, so in multi-host mode the key is created on the player's
own host and never exists in the driving process. Without the native library a key is read from
``os.urandom`` in this process, which is the player's process only in local mode; a stream created with
``on_device=True`` (multi-host) refuses that fallback. A test may pass an integer ``seed`` to make runs
repeatable; keys are then derived from it with SHA-256 and are, of course, not secret.

Streams are named by purpose (``"crypto"`` for shares, masks and triples); a player's streams for
different purposes use independent keys.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import tensorflow as tf

from tfe_lite import ops, prg
from tfe_lite.devices import eager_serialized
from tfe_lite.errors import ConfigError, RuntimeConfigError

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


class AtomicCounter:
    """A 64-bit draw counter whose read-and-advance is one atomic TensorFlow op.

    The state is an ``int64[3]`` variable in the layout of TensorFlow's Philox generator state (a 128-bit
    counter in words 0-1, then a key word, unused here); ``RngReadAndSkip(delta=1)`` returns the old state
    and adds 256 to the 128-bit counter under the variable's lock. :meth:`next` maps the returned state to
    the draw number ``1, 2, 3, ...`` (unique for 2^64 draws). ``variable_kwargs`` go to ``tf.Variable``
    (for instance ``synchronization`` and ``aggregation`` under ``tf.distribute``).
    """

    _PHILOX = 1  # RNG_ALG_PHILOX: state words 0-1 are its 128-bit counter
    _STEP_BITS = 8  # RngReadAndSkip adds 256 per unit of delta for Philox

    def __init__(self, name: str = "counter", *, variable: tf.Variable | None = None, **variable_kwargs):
        if variable is None:
            variable_kwargs.setdefault("trainable", False)
            variable = tf.Variable(np.zeros(3, np.int64), name=name, **variable_kwargs)
        self.variable = variable

    def next(self, name: str | None = None) -> tf.Tensor:
        """The next draw number (int64 scalar, starting at 1), atomically read and advanced.

        ``name`` names the read-and-advance op (so that a traced graph can be searched for it)."""
        state = tf.raw_ops.RngReadAndSkip(
            resource=self.variable.handle, alg=self._PHILOX, delta=tf.constant(1, tf.uint64), name=name
        )
        return self._draws(state) + 1

    def read_value(self) -> tf.Tensor:
        """How many draws were made so far (int64 scalar)."""
        return self._draws(self.variable.read_value())

    def _draws(self, state: tf.Tensor) -> tf.Tensor:
        low = tf.bitwise.bitwise_and(
            tf.bitwise.right_shift(state[0], np.int64(self._STEP_BITS)), np.int64(2 ** (64 - self._STEP_BITS) - 1)
        )
        return tf.bitwise.bitwise_or(low, tf.bitwise.left_shift(state[1], np.int64(64 - self._STEP_BITS)))


class SeedStream:
    """Fresh 256-bit seeds on one device, derived from a secret key and a run-time counter."""

    def __init__(self, device: str, *, seed: int | None = None, label: str = "", on_device: bool = False):
        self.device = device
        self.label = label
        with tf.init_scope(), tf.device(device):
            key = ops.system_random_key() if seed is None else None
            if key is None:
                if seed is None and on_device:
                    raise RuntimeConfigError(
                        f"The key of {label or device} must be created on the player's own host, which needs the "
                        "native ops library (its SystemRandomKey op); it is not built or disabled. Run `make ops` "
                        "and load it in every player's process (tfe-lite serve does)."
                    )
                key = _as_words(_key_bytes(seed, label))
            self._key = tf.Variable(key, trainable=False, name="seed_key")
            self._counter = AtomicCounter(name="seed_counter")

    @eager_serialized
    def next_seed(self) -> tf.Tensor:
        """A new seed (int64[4]) on this stream's device; new on every call, every graph execution and
        every concurrent draw (the counter advances atomically)."""
        with tf.device(self.device):
            return prg.derive_seed(self._key.read_value(), self._counter.next())

    @eager_serialized
    def next_seeds(self, count: int) -> tf.Tensor:
        """``count`` new seeds (int64[count, 4]) from one draw of the counter (:func:`tfe_lite.prg.derive_seeds`):
        one read-and-advance and one keystream op for all of them."""
        with tf.device(self.device):
            return prg.derive_seeds(self._key.read_value(), self._counter.next(), count)

    @eager_serialized
    def uniform(self, shape, *, stream: int = 0) -> tf.Tensor:
        """A uniform ring tensor of ``shape`` from a fresh seed."""
        with tf.device(self.device):
            return prg.expand_seed(self.next_seed(), shape, stream=stream)


class RandomStreams:
    """The seed streams of a set of players, one per (player, purpose), created on first use."""

    def __init__(self, seed: int | None = None, *, on_device: bool = False):
        self._seed = validate_seed(seed)
        self._on_device = on_device
        self._streams: dict[tuple[str, str], SeedStream] = {}

    @property
    def deterministic(self) -> bool:
        return self._seed is not None

    def stream(self, player, purpose: str = "crypto") -> SeedStream:
        key = (player.name, purpose)
        if key not in self._streams:
            self._streams[key] = SeedStream(player.device, seed=self._seed, label=f"{player.name}/{purpose}",
                                            on_device=self._on_device)
        return self._streams[key]
