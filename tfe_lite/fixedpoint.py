"""Fixed-point encoding of real numbers in the ring Z/2^64 (int64 with wrapping arithmetic).

A real ``x`` is encoded as the integer ``round(x * 2**frac_bits)`` read modulo 2^64, that is, as a signed
int64. The encoding is exact to within ``2**-(frac_bits + 1)`` for every ``|x| < 2**int_bits``, the
representable range. Values outside that range, NaN and Inf are refused with :class:`EncodingError`: a
wrapped encoding would decode to a wrong number without any sign of it.

Why the range is smaller than int64 allows: a product of two encoded values carries ``2 * frac_bits``
fractional bits until it is truncated, and the servers' local truncation fails (a huge error) with
probability ``|z| * 2**(2 * frac_bits - 64)`` per element for a product of real value ``z``
(:mod:`tfe_lite.protocols.pond.truncation`). The *margin* ``64 - (int_bits + 2 * frac_bits)`` bounds that
probability for a result at the range bound: ``2**-margin``. A config must keep a margin of at least
:data:`MIN_MARGIN_BITS` (20 bits: at most one failure in ~10^6 elements at the bound; at ``|z| <= 1`` with
16 fractional bits, ``2**-32``). The presets:

=========== ========= ======== ============ ========== ============================ ==============
preset      frac_bits int_bits range        resolution failure at the bound         at ``|z| <= 1``
=========== ========= ======== ============ ========== ============================ ==============
``default`` 16        12       ±4,096       1.5e-5     2**-20 (9.5e-7) per element  2**-32
``precise`` 18        8        ±256         3.8e-6     2**-20 (9.5e-7) per element  2**-28
``wide``    12        20       ±1,048,576   2.4e-4     2**-20 (9.5e-7) per element  2**-40
=========== ========= ======== ============ ========== ============================ ==============
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tfe_lite.errors import ConfigError, EncodingError

RING_BITS = 64
#: The least margin ``64 - (int_bits + 2 * frac_bits)`` a config may have: a product at the range bound is
#: truncated wrongly with probability at most ``2**-MIN_MARGIN_BITS`` per element.
MIN_MARGIN_BITS = 20


@dataclasses.dataclass(frozen=True)
class FixedPointConfig:
    """How real numbers map to Z/2^64.

    Attributes:
        frac_bits: number of fractional bits (the scale is ``2**frac_bits``).
        int_bits: values must satisfy ``|x| < 2**int_bits`` to be encoded.
    """

    frac_bits: int = 16
    int_bits: int = 12

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
        if self.margin_bits < MIN_MARGIN_BITS:
            raise ConfigError(
                "Fixed-point config leaves too small a statistical margin for truncation: it needs "
                f"64 - (int_bits + 2 * frac_bits) >= {MIN_MARGIN_BITS}, so that a product at the range bound "
                f"is truncated wrongly with probability at most 2**-{MIN_MARGIN_BITS} per element. Received: "
                f"int_bits={self.int_bits}, frac_bits={self.frac_bits} (margin {self.margin_bits} bits: failure "
                f"probability 2**-{max(self.margin_bits, 0)} at the bound). Lower int_bits or frac_bits."
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
    def margin_bits(self) -> int:
        """``64 - (int_bits + 2 * frac_bits)``: truncation fails with probability ``2**-margin`` at the bound."""
        return RING_BITS - (self.int_bits + 2 * self.frac_bits)

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


#: Named configurations (see the module docstring for each one's range, resolution and truncation failure
#: probability). ``default`` follows Pond (16 fractional bits); ``precise`` trades range for resolution,
#: ``wide`` resolution for range.
PRESETS = {
    "default": FixedPointConfig(frac_bits=16, int_bits=12),
    "precise": FixedPointConfig(frac_bits=18, int_bits=8),
    "wide": FixedPointConfig(frac_bits=12, int_bits=20),
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


def _first_index(flags: tf.Tensor) -> tf.Tensor:
    """The (multi-dimensional) index of the first True of ``flags`` (int64; zeros when there is none)."""
    flat = tf.reshape(flags, [-1])
    first = tf.argmax(tf.cast(flat, tf.int8), output_type=tf.int64)
    return tf.unravel_index(first, tf.shape(flags, out_type=tf.int64))


def _device_checks(x: tf.Tensor, bound: float, argument: str):
    """Counts and first indices of non-finite and out-of-range values, computed where ``x`` lives.

    Only these counts and indices leave the device in an error (never a value: ``x`` may be private)."""
    nonfinite = tf.logical_not(tf.math.is_finite(x))
    outside = tf.logical_and(tf.math.is_finite(x), tf.abs(x) >= bound)
    counts = [tf.reduce_sum(tf.cast(flags, tf.int64)) for flags in (nonfinite, outside)]
    texts = [
        f"Cannot encode `{argument}`: it holds NaN or Inf; the first at index",
        f"Cannot encode `{argument}`: a value is outside the fixed-point range (-{bound:g}, {bound:g}) = "
        "±2**int_bits; the first at index",
    ]
    return [(count, text, flags) for count, text, flags in zip(counts, texts, (nonfinite, outside))]


def _dtype_error(argument: str, dtype: str) -> EncodingError:
    return EncodingError(f"Received an invalid dtype for `{argument}`, expected a real number type. Received: {dtype}")


def encode(values, config: FixedPointConfig, *, argument: str = "values") -> tf.Tensor:
    """Encode real ``values`` (array-like or float tensor) as an int64 ring tensor on the current device.

    NaN, Inf and ``|x| >= 2**int_bits`` raise :class:`EncodingError`. Host data (Python numbers, numpy
    arrays) are checked and encoded at once, also while a function is traced (one constant in its graph); the
    message names the first bad value and its index. For a ``tf.Tensor`` (which may live on a
    data owner's device) the check runs where the tensor is and only the count and first index of the bad
    values leave it, never a value: eagerly an :class:`EncodingError`, inside ``tf.function`` a graph
    assertion (``tf.errors.InvalidArgumentError``) with the same words.
    """
    bound = config.bound
    if not isinstance(values, (tf.Tensor, tf.Variable)):
        # Host data (numbers, numpy arrays) are known now, in eager code and while tracing alike: checked and
        # encoded here, one constant (a traced graph holds no check ops for them).
        array = np.asarray(values)
        if array.dtype.kind not in "iuf":
            raise _dtype_error(argument, array.dtype.name)
        array = array.astype(np.float64)
        problem = _describe_bad_values(array, bound, argument)
        if problem:
            raise EncodingError(problem)
        encoded = tf.constant(np.round(array * float(config.scale)).astype(np.int64))
        return tf.identity(encoded) if tf.executing_eagerly() else encoded  # eagerly: onto the current device
    if values.dtype.is_integer and values.dtype != tf.int64:
        values = tf.cast(values, tf.float64)
    if not (values.dtype.is_floating or values.dtype.is_integer):
        raise _dtype_error(argument, values.dtype.name)
    x = tf.cast(values, tf.float64)
    if tf.executing_eagerly():
        for count, text, flags in _device_checks(x, bound, argument):
            if int(count) > 0:
                index = tuple(int(i) for i in _first_index(flags).numpy())
                raise EncodingError(f"{text} {index} ({int(count)} such values).")
    else:
        # Plain Assert ops (not assert_all_finite, which colocates with the input instead of honouring
        # the caller's device scope); their data are counts and an index, never values.
        checks = [
            tf.debugging.Assert(tf.equal(count, 0), [text, _first_index(flags), "count:", count])
            for count, text, flags in _device_checks(x, bound, argument)
        ]
        with tf.control_dependencies(checks):
            x = tf.identity(x)
    return tf.cast(tf.round(x * float(config.scale)), tf.int64)


def decode(x: tf.Tensor, config: FixedPointConfig, dtype: tf.DType = tf.float64) -> tf.Tensor:
    """Decode an int64 ring tensor (signed reading) to real numbers of ``dtype``."""
    if x.dtype != tf.int64:
        raise EncodingError(f"Received an invalid dtype for `x`, expected int64. Received: {x.dtype.name}")
    return tf.cast(tf.cast(x, tf.float64) / float(config.scale), dtype)

