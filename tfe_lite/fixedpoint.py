"""Fixed-point encoding of real numbers in the ring Z/2^64 (int64 with wrapping arithmetic).

A real ``x`` is encoded as the integer ``round(x * 2**frac_bits)`` read modulo 2^64, that is, as a signed
int64. The encoding is exact to within ``2**-(frac_bits + 1)`` for every ``|x| < 2**int_bits``, the
representable range. Values outside that range, NaN and Inf are refused with :class:`EncodingError`: a
wrapped encoding would decode to a wrong number without any sign of it.

Why the range is smaller than int64 allows: a product of two encoded values carries ``2 * frac_bits``
fractional bits until it is truncated, so ``int_bits + 2 * frac_bits`` must stay below 63 for products
of in-range values whose result is in range to be representable before truncation (see
:mod:`tfe_lite.protocols.pond.truncation` for the truncation's failure probability).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tfe_lite.errors import ConfigError, EncodingError

RING_BITS = 64


@dataclasses.dataclass(frozen=True)
class FixedPointConfig:
    """How real numbers map to Z/2^64.

    Attributes:
        frac_bits: number of fractional bits (the scale is ``2**frac_bits``).
        int_bits: values must satisfy ``|x| < 2**int_bits`` to be encoded.
    """

    frac_bits: int = 16
    int_bits: int = 16

    def __post_init__(self):
        for name in ("frac_bits", "int_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(
                    f"Received an invalid value for `{name}`, expected an integer. Received: {name}={value!r}"
                )
        if not 1 <= self.frac_bits <= 30:
            raise ConfigError(
                "Received an invalid value for `frac_bits`, expected an integer in [1, 30]. "
                f"Received: frac_bits={self.frac_bits}"
            )
        if self.int_bits < 1:
            raise ConfigError(
                "Received an invalid value for `int_bits`, expected a positive integer. "
                f"Received: int_bits={self.int_bits}"
            )
        if self.int_bits + 2 * self.frac_bits > RING_BITS - 2:
            raise ConfigError(
                "Fixed-point config does not fit the 64-bit ring: a product before truncation needs "
                f"int_bits + 2 * frac_bits <= {RING_BITS - 2} bits. "
                f"Received: int_bits={self.int_bits}, frac_bits={self.frac_bits} "
                f"({self.int_bits + 2 * self.frac_bits} bits)"
            )

    @classmethod
    def preset(cls, name: str) -> "FixedPointConfig":
        """A named configuration: one of :data:`PRESETS`."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ConfigError(
                f"Received an invalid value for `name`, expected one of {sorted(PRESETS)}. Received: name={name!r}"
            ) from None

    @property
    def scale(self) -> int:
        return 1 << self.frac_bits

    @property
    def bound(self) -> float:
        """Exclusive bound on the magnitude of encodable values."""
        return float(2**self.int_bits)

    @property
    def resolution(self) -> float:
        """The value of one unit in the last place, ``2**-frac_bits``."""
        return 2.0**-self.frac_bits

    def truncation_failure_probability(self, magnitude: float) -> float:
        """Per-element probability that local (SecureML) truncation of a product fails.

        ``magnitude`` bounds the real value of the product; before truncation it is encoded with
        ``2 * frac_bits`` fractional bits, and the two-share truncation fails when a share lands within
        that encoded magnitude of the int64 wrap point: probability ``|x| * 2**(2 f) / 2**64``.
        """
        return min(1.0, abs(magnitude) * 2.0 ** (2 * self.frac_bits - RING_BITS))


#: Named configurations. ``default`` follows Pond (16 fractional bits); ``precise`` trades range for
#: resolution, ``wide`` range for resolution.
PRESETS = {
    "default": FixedPointConfig(frac_bits=16, int_bits=16),
    "precise": FixedPointConfig(frac_bits=20, int_bits=12),
    "wide": FixedPointConfig(frac_bits=12, int_bits=24),
}


def _describe_bad_values(x: np.ndarray, bound: float, argument: str) -> str | None:
    if x.size == 0:
        return None
    finite = np.isfinite(x)
    if not finite.all():
        index = tuple(int(i) for i in np.argwhere(~finite)[0])
        return (
            f"Cannot encode `{argument}`: it holds a non-finite value {float(x[index])!r} at index {index} "
            f"({int((~finite).sum())} non-finite values in all)."
        )
    too_big = np.abs(x) >= bound
    if too_big.any():
        index = tuple(int(i) for i in np.argwhere(too_big)[0])
        return (
            f"Cannot encode `{argument}`: value {float(x[index])!r} at index {index} is outside the fixed-point "
            f"range (-{bound:g}, {bound:g}) = ±2**int_bits; {int(too_big.sum())} values out of range. Scale "
            "the data or choose a config with more int_bits."
        )
    return None


def encode(values, config: FixedPointConfig, *, argument: str = "values") -> tf.Tensor:
    """Encode real ``values`` (array-like or float tensor) as an int64 ring tensor.

    Raises :class:`EncodingError` for NaN, Inf, or ``|x| >= 2**int_bits`` eagerly; inside
    ``tf.function`` the same checks run as graph assertions (``tf.errors.InvalidArgumentError`` whose
    message names the argument and the bound).
    """
    if isinstance(values, tf.Tensor) and values.dtype.is_integer and values.dtype != tf.int64:
        values = tf.cast(values, tf.float64)
    x = tf.convert_to_tensor(values)
    if not (x.dtype.is_floating or x.dtype.is_integer):
        raise EncodingError(
            f"Received an invalid dtype for `{argument}`, expected a real number type. Received: {x.dtype.name}"
        )
    x = tf.cast(x, tf.float64)
    bound = config.bound
    if tf.executing_eagerly():
        problem = _describe_bad_values(x.numpy(), bound, argument)
        if problem:
            raise EncodingError(problem)
    else:
        # Plain Assert ops (not assert_all_finite, which colocates with the input instead of honouring
        # the caller's device scope).
        max_abs = tf.reduce_max(tf.abs(x))
        checks = [
            tf.debugging.Assert(
                tf.reduce_all(tf.math.is_finite(x)),
                [f"Cannot encode `{argument}`: it holds NaN or Inf; max |x| =", max_abs],
            ),
            tf.debugging.Assert(
                tf.logical_or(tf.equal(tf.size(x), 0), max_abs < bound),
                [f"Cannot encode `{argument}`: a value is outside the fixed-point range ±{bound:g}; max |x| =", max_abs],
            ),
        ]
        with tf.control_dependencies(checks):
            x = tf.identity(x)
    return tf.cast(tf.round(x * float(config.scale)), tf.int64)


def decode(x: tf.Tensor, config: FixedPointConfig, dtype: tf.DType = tf.float64) -> tf.Tensor:
    """Decode an int64 ring tensor (signed reading) to real numbers of ``dtype``."""
    if x.dtype != tf.int64:
        raise EncodingError(f"Received an invalid dtype for `x`, expected int64. Received: {x.dtype.name}")
    return tf.cast(tf.cast(x, tf.float64) / float(config.scale), dtype)

