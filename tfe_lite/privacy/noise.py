"""Gaussian noise for DP-SGD: where the randomness comes from, and where it is added under ``tf.distribute``.

Sources (what produces a standard normal sample). Both draw with the Box-Muller transform from the ChaCha20
keystream (:func:`tfe_lite.prg.expand_normal`; the native ``ChaCha20Normal`` op, AVX-512, or its pure
TensorFlow twin when the native library is not built); they differ in where the key comes from:

* :class:`ChaCha20Noise` (the default; ``GeneratorNoise`` is its former name, kept as an alias): float32
  normals from a 256-bit key read from ``os.urandom`` when the source is created (or, neither secret nor
  secure, derived from ``seed`` when a test fixes it), on the stream numbered by a counter variable that the
  graph increments at every draw, so every step and every execution of a traced function gets fresh noise.
  ChaCha20 is a cryptographically secure generator (the previous default, Philox-4x32-10, is not), but the
  key stays in process memory for the whole run (whoever reads it can replay all the noise), and each value
  is one floating-point Box-Muller sample, whose output gaps can leak the unnoised value (Mironov, "On
  significance of the least significant bits for differential privacy", CCS 2012; Jin et al., "Are we there
  yet? Timing and floating-point attacks on differential privacy systems", S&P 2022). About 1 ms for
  269,322 normals on a 2-core machine, a third of what Philox (``tf.random.Generator``) takes
  (``benchmarks/noise.py``); the pure TensorFlow twin takes about 30 ms.

  Under XLA (``jit_compile=True``) there is no native op, and ChaCha20 in XLA-compiled TensorFlow ops costs
  ~25 ms for that draw. There the source draws instead with TensorFlow's stateless Philox sampler
  (``tf.random.stateless_normal``, which XLA compiles), seeded at every draw with ChaCha20(key, counter)
  (:func:`tfe_lite.prg.derive_seed`): still fresh per step and repeatable with ``seed``, but not from a
  cryptographically secure generator and with other values than the native draw, i.e. what the default
  source was before. :attr:`ChaCha20Noise.xla_algorithm` names it.
* :class:`SecureNoise` (``secure_noise=True``), modelled on Opacus' ``secure_mode``:

  1. Every draw reads a fresh 256-bit key from ``os.urandom`` (the kernel CSPRNG) and expands it with
     ChaCha20. Nothing is seeded, the key lives only in that step's tensors, and no generator state exists
     that could be read or replayed, so ``seed`` is refused. (The values are no longer raw ``os.urandom``
     bytes but the keystream of a key from it, indistinguishable from uniform under ChaCha20's standard
     assumption, the one Linux's CSPRNG itself rests on: since Linux 4.8 its output is ChaCha20 keystream
     too.)
  2. Uniforms in (0, 1] with 53 random bits are turned into normals by the Box-Muller transform in float64.
  3. Each noise value is ``(z1 + z2 + z3 + z4) / 2`` for four independent standard normals (std 1, like one
     normal). Summing several samples fills the gaps in the set of floats one sampler can produce, the
     mitigation of Holohan and Braghin ("Secure random sampling in differential privacy", ESORICS 2021)
     that Opacus uses. It mitigates the floating-point attacks; it does not make them provably impossible
     (that would need a discrete Gaussian on a fixed-point grid).

  The cost is 32 bytes of ``os.urandom`` per step (one ``tf.numpy_function`` call) plus 32 bytes of
  keystream per noised parameter: about 5 ms for 269,322 parameters on a 2-core machine with the native op
  (reading every byte from ``os.urandom`` took 25 to 60 ms; the pure TensorFlow twin takes about 110 ms).
  The ``os.urandom`` read runs in Python, so the source cannot be XLA-compiled.

Placement under ``tf.distribute`` (see :meth:`NoiseSource.normal`): the noise of one global batch is drawn
once, on the first replica of the sync group (on the chief under ``MultiWorkerMirroredStrategy``). Other
replicas either contribute zeros (``shared=False``: the caller then sums the noised values across replicas,
so the noise is added once, before any other worker sees the sum) or receive the first replica's noise by an
all-reduce (``shared=True``: for queries that must update their state identically everywhere). Seeding
every replica the same way instead would add the noise once per replica (``n_replicas`` times the variance)
to a summed gradient, and would need one seed known to every worker, which ``os.urandom`` sources do not
have.
"""

from __future__ import annotations

import abc
import os
from typing import Any

import numpy as np
import tensorflow as tf

from tfe_lite import ops, prg
from tfe_lite.errors import ConfigError
from tfe_lite.random import KEY_WORDS, AtomicCounter, _as_words, _key_bytes, validate_seed

#: How many standard normals :class:`SecureNoise` sums (and halves) for each noise value.
SECURE_SUMMANDS = 4


def _replica_context() -> tf.distribute.ReplicaContext | None:
    """The replica context when running on one of several replicas, else ``None``."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


class NoiseSource(abc.ABC):
    """Standard normal samples for DP noise, drawn once per global batch (see the module docstring)."""

    #: Whether the samples come from a cryptographically secure source.
    secure: bool = False

    @abc.abstractmethod
    def _standard_normal(self, size: tf.Tensor) -> tf.Tensor:
        """``size`` independent standard normals as a float32 or float64 vector."""

    #: Whether :meth:`_standard_normal` runs on every replica (keeps a generator's state in step) or only
    #: on the first one.
    _draw_on_every_replica: bool = True
    #: The dtype :meth:`_standard_normal` returns.
    _dtype: tf.DType = tf.float32

    def __init__(self, *, shared: bool = False) -> None:
        self._shared = shared

    def normal(self, structure: Any, stddev: Any) -> Any:
        """Noise with standard deviation ``stddev`` for every tensor of ``structure`` (same shapes, dtypes).

        All leaves come from one draw. On several replicas the draw happens on the first replica; the others
        get zeros, or with ``shared=True`` the first replica's noise through an all-reduce.
        """
        leaves = [tf.convert_to_tensor(leaf) for leaf in tf.nest.flatten(structure)]
        sizes = [tf.size(leaf) for leaf in leaves]
        total = tf.add_n(sizes) if sizes else tf.constant(0)
        context = _replica_context()
        if context is None:
            flat = self._standard_normal(total)
        else:
            first = tf.equal(context.replica_id_in_sync_group, 0)
            if self._draw_on_every_replica:
                draw = self._standard_normal(total)
                flat = tf.where(first, draw, tf.zeros_like(draw))
            else:
                flat = tf.cond(
                    first,
                    lambda: self._standard_normal(total),
                    lambda: tf.zeros([total], self._dtype),
                )
            if self._shared:
                flat = context.all_reduce(tf.distribute.ReduceOp.SUM, flat)
        pieces = tf.split(flat, tf.stack(sizes)) if len(sizes) > 1 else [flat]
        noise = [
            tf.reshape(tf.cast(tf.cast(stddev, piece.dtype) * piece, leaf.dtype), tf.shape(leaf))
            for piece, leaf in zip(pieces, leaves)
        ]
        return tf.nest.pack_sequence_as(structure, noise)


class ChaCha20Noise(NoiseSource):
    """Float32 normals from ChaCha20 with a key from ``os.urandom`` (or ``seed``) and a run-time counter.

    Create it where the model's variables are created (inside ``strategy.scope()`` under ``tf.distribute``).
    Only the first replica draws, so the key and counter variables are synchronized on read with aggregation
    "only first replica": the first replica's copies are the ones that count, and advancing the counter
    needs no cross-replica update.
    """

    _draw_on_every_replica = False
    #: The sampler used where the draw is XLA-compiled (see the module docstring).
    xla_algorithm = "philox"

    def __init__(self, seed: int | None = None, *, shared: bool = False) -> None:
        super().__init__(shared=shared)
        seed = validate_seed(seed)
        first_replica = {
            "trainable": False,
            "synchronization": tf.VariableSynchronization.ON_READ,
            "aggregation": tf.VariableAggregation.ONLY_FIRST_REPLICA,
        }
        key = _as_words(_key_bytes(seed, "privacy/noise"))  # os.urandom, or SHA-256 of the seed
        self._key = tf.Variable(key, name="noise_key", **first_replica)
        # Read-and-advance in one op: concurrent steps never share a counter value, so never their noise.
        self._counter = AtomicCounter(name="noise_counter", **first_replica)

    def _standard_normal(self, size: tf.Tensor) -> tf.Tensor:
        counter = self._counter.next()
        key = self._key.read_value()
        if ops.in_xla_context():
            seed = prg.derive_seed(key, counter)[:2]
            return tf.random.stateless_normal([size], seed, dtype=tf.float32, alg=self.xla_algorithm)
        return prg.expand_normal(key, size, stream=counter, dtype=tf.float32)


#: The former name of :class:`ChaCha20Noise` (it drew from a ``tf.random.Generator``).
GeneratorNoise = ChaCha20Noise


def _urandom_key() -> np.ndarray:
    """A fresh 256-bit key (int64[4]) from ``os.urandom``."""
    return _as_words(os.urandom(8 * KEY_WORDS))


class SecureNoise(NoiseSource):
    """Float64 normals, each the halved sum of four, from ChaCha20 with a new ``os.urandom`` key per step."""

    secure = True
    _draw_on_every_replica = False
    _dtype = tf.float64

    def _standard_normal(self, size: tf.Tensor) -> tf.Tensor:
        if ops.in_xla_context():
            raise ConfigError(
                "SecureNoise cannot be XLA-compiled: it reads os.urandom at every step (tf.numpy_function). "
                "Use jit_compile=False."
            )
        key = tf.numpy_function(_urandom_key, [], tf.int64, stateful=True, name="urandom_key")
        key = tf.ensure_shape(key, [KEY_WORDS])
        return prg.expand_normal(key, size, dtype=tf.float64, summands=SECURE_SUMMANDS)


def make_noise_source(*, secure: bool, seed: int | None, shared: bool = False) -> NoiseSource:
    """The noise source for ``secure_noise`` and ``seed`` as given to ``make_private``."""
    if secure:
        if seed is not None:
            raise ConfigError(
                "Received an invalid value for `seed`, expected None with secure_noise=True (secure noise "
                f"comes from os.urandom at every step and cannot be seeded). Received: seed={seed!r}"
            )
        return SecureNoise(shared=shared)
    return ChaCha20Noise(seed, shared=shared)
