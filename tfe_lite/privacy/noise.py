"""Gaussian noise for DP-SGD: where the randomness comes from, and where it is added under ``tf.distribute``.

Sources (what produces a standard normal sample):

* :class:`GeneratorNoise` (the default): a ``tf.random.Generator`` (Philox-4x32-10) seeded with 64 bits from
  ``os.urandom``, or with ``seed`` when a test fixes it. Fast and fine for experiments, but Philox is not a
  cryptographically secure generator, its state lives in process memory, and the samples come from a
  floating-point Gaussian sampler whose output gaps can leak the unnoised value (Mironov, "On significance of
  the least significant bits for differential privacy", CCS 2012; Jin et al., "Are we there yet? Timing and
  floating-point attacks on differential privacy systems", S&P 2022).
* :class:`SecureNoise` (``secure_noise=True``), modelled on Opacus' ``secure_mode``:

  1. Every sample's randomness is fresh output of ``os.urandom`` (the kernel CSPRNG, ChaCha20 on Linux),
     fetched at every step. Nothing is seeded and no generator state exists that could be read or
     replayed, so ``seed`` is refused.
  2. Uniforms in (0, 1] with 53 random bits are turned into normals by the Box-Muller transform in float64.
  3. Each noise value is ``(z1 + z2 + z3 + z4) / 2`` for four independent standard normals (std 1, like one
     normal). Summing several samples fills the gaps in the set of floats one sampler can produce, the
     mitigation of Holohan and Braghin ("Secure random sampling in differential privacy", ESORICS 2021)
     that Opacus uses. It mitigates the floating-point attacks; it does not make them provably impossible
     (that would need a discrete Gaussian on a fixed-point grid).

  The cost is 32 bytes of ``os.urandom`` per noised parameter per step (about 25 ms for 200,000 parameters
  on a 2-core machine), and the draw runs in Python (``tf.numpy_function``), so it cannot be XLA-compiled.

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

from tfe_lite.errors import ConfigError

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


class GeneratorNoise(NoiseSource):
    """Normals from a ``tf.random.Generator`` (Philox) seeded from ``os.urandom`` unless ``seed`` is given.

    Create it where the model's variables are created (inside ``strategy.scope()`` under ``tf.distribute``).
    """

    def __init__(self, seed: int | None = None, *, shared: bool = False) -> None:
        super().__init__(shared=shared)
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little") >> 1  # from_seed takes a non-negative int64
        self._generator = tf.random.Generator.from_seed(seed)

    def _standard_normal(self, size: tf.Tensor) -> tf.Tensor:
        return self._generator.normal([size], dtype=tf.float32)


def _urandom_uniform(count: np.ndarray) -> np.ndarray:
    """``count`` uniforms in (0, 1] with 53 bits each, from ``os.urandom``."""
    count = int(count)
    bits = np.frombuffer(os.urandom(8 * count), dtype=np.uint64)
    return ((bits >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53


class SecureNoise(NoiseSource):
    """Normals from ``os.urandom`` via float64 Box-Muller, each the halved sum of four (see module doc)."""

    secure = True
    _draw_on_every_replica = False
    _dtype = tf.float64

    def _standard_normal(self, size: tf.Tensor) -> tf.Tensor:
        size = tf.cast(size, tf.int64)
        normals = SECURE_SUMMANDS * size
        pairs = (normals + 1) // 2
        uniform = tf.numpy_function(_urandom_uniform, [2 * pairs], tf.float64, stateful=True)
        uniform = tf.reshape(uniform, [2, pairs])
        radius = tf.sqrt(-2.0 * tf.math.log(uniform[0]))
        angle = (2.0 * np.pi) * uniform[1]
        z = tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], axis=0)[:normals]
        z = tf.reshape(z, [SECURE_SUMMANDS, size])
        return tf.reduce_sum(z, axis=0) / np.sqrt(float(SECURE_SUMMANDS))


def make_noise_source(*, secure: bool, seed: int | None, shared: bool = False) -> NoiseSource:
    """The noise source for ``secure_noise`` and ``seed`` as given to ``make_private``."""
    if secure:
        if seed is not None:
            raise ConfigError(
                "Received an invalid value for `seed`, expected None with secure_noise=True (secure noise "
                f"comes from os.urandom at every step and cannot be seeded). Received: seed={seed!r}"
            )
        return SecureNoise(shared=shared)
    return GeneratorNoise(seed, shared=shared)
