"""Approximations on Pond with stated error bounds: exp, log, reciprocal, rsqrt, sigmoid, tanh, softmax.

Each one first finds, with *one* batch of exact comparisons against public thresholds (:mod:`.comparison`),
in which interval its input lies: the integer part of ``x`` for ``exp``, the binade ``2**k <= x < 2**(k+1)``
for ``log``, ``reciprocal`` and ``rsqrt``. The interval's one-hot (differences of the comparison bits) times
public constants gives, locally and exactly, the interval's scale factor; the scaled input lies in a short
fixed interval where a low-degree polynomial (Chebyshev fit, evaluated by Horner's rule) or a few Newton
steps are accurate to about 1e-7. So the bounds below are set by the fixed-point resolution ``u = 2**-f``,
not by the approximation, and they hold on the whole encodable range (a high-degree polynomial alone
overflows outside a small interval; a Newton iteration from a fixed guess is off by percents far from it).

The bounds are for the ``default`` preset (``f = 16``, ``|x| < 4096``) and are checked by the tests on dense
grids; with ``f`` fractional bits the ``u`` terms scale as ``2**-f`` (the ``precise`` preset, ``f = 18``, has
4x smaller ones, ``wide``, ``f = 12``, 16x larger ones), while the ranges follow ``int_bits``.

============== ========================= ================================================================
function       input range               error bound (default preset)
============== ========================= ================================================================
``exp``        ``x < ln(2**int_bits)``   ``|err| <= 2**-11 * exp(x) + 2**-14``; ``x <= -12`` gives ``0``
                                         (``exp(-12) < 2**-16``)
``log``        ``2**-int_bits <= x``     ``|err| <= 2**-12``
``reciprocal`` ``2**-int_bits <= |x|``   ``|err| <= 2**-12 / |x| + 2**-14``
``rsqrt``      ``2**-int_bits <= x``     ``|err| <= 2**-12 / sqrt(x) + 2**-14``
``sigmoid``    any encodable ``x``       ``|err| <= 2**-13``
``tanh``       any encodable ``x``       ``|err| <= 2**-12``
``softmax``    any encodable ``x``       ``|err| <= 2**-12`` per element (the max is subtracted exactly)
============== ========================= ================================================================

Outside its range a function returns a value without meaning but never raises (``log`` and ``rsqrt`` of
``x <= 0``, ``reciprocal`` of ``|x| < 2**-int_bits``, where the exact result leaves the encodable range);
``exp`` above ``ln(2**int_bits)`` exceeds the range too. ``checked=True`` finds such results.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import tensorflow as tf

from . import linear, ordering
from .tensors import PrivateTensor

EXP_FLOOR = -12  # below this exp(x) < 2**-16: the result is 0


@functools.lru_cache(maxsize=None)
def _fit(name: str, degree: int) -> tuple[float, ...]:
    """Power-basis coefficients in ``t`` in [-1, 1] of a Chebyshev interpolant (deterministic)."""
    fn, lo, hi = {"exp": (np.exp, 0.0, 1.0), "log": (np.log, 0.5, 1.0)}[name]
    nodes = np.cos(np.pi * (np.arange(degree + 1) + 0.5) / (degree + 1))
    cheb = np.polynomial.chebyshev.Chebyshev.fit(nodes, fn(lo + (nodes + 1) * (hi - lo) / 2), degree)
    return tuple(float(c) for c in cheb.convert(kind=np.polynomial.Polynomial).coef)


def _ge_bits(prot, x: PrivateTensor, thresholds) -> PrivateTensor:
    """Raw bits ``[x >= t]`` for each public ``t``, stacked on a new first axis (one batch of comparisons)."""
    scale = prot.fixedpoint.scale
    offsets = np.array([round(t * scale) for t in thresholds], np.int64).reshape([-1] + [1] * x.shape.rank)
    with tf.device(prot.server0.device):
        d0 = x.share0[None] - offsets
    with tf.device(prot.server1.device):
        d1 = tf.broadcast_to(x.share1[None], d0.shape)
    return ordering.one_minus(prot, ordering.raw_bit_negative(prot, PrivateTensor(prot, d0, d1)))


def _interval_value(prot, bits: PrivateTensor, values) -> PrivateTensor:
    """Fixed-point ``values[j]`` for the interval ``j`` that ``bits`` (raw, stacked on the first axis, each
    row ``[x >= threshold_j]`` for ascending thresholds) select; 0 below the first threshold. Local and exact:
    the telescoped sum ``sum_j bits_j (V_j - V_(j-1))`` of the *encoded* values gives each ``V_j`` to the unit."""
    encoded = np.array([round(v * prot.fixedpoint.scale) for v in values], np.int64)
    steps = np.diff(encoded, prepend=np.int64(0)).reshape([-1] + [1] * (bits.shape.rank - 1))
    return linear.local(prot, bits, lambda t: tf.reduce_sum(t * steps, axis=0))


def _horner(prot, t: PrivateTensor, coeffs) -> PrivateTensor:
    """``sum_i coeffs[i] * t**i`` (``len(coeffs) - 1`` products in sequence)."""
    p = prot.add(prot.mul(t, coeffs[-1]), coeffs[-2])
    for c in reversed(coeffs[:-2]):
        p = prot.add(prot.mul(p, t), c)
    return p


def _reciprocal_newton(prot, y: PrivateTensor, iterations: int = 3) -> PrivateTensor:
    """``1 / y`` for ``y`` in [0.5, 1]: the guess ``2.9142 - 2 y`` (relative error <= 0.086), then Newton
    ``r <- r (2 - y r)`` (error squared each step: < 1e-8 after 3)."""
    r = prot.add(prot.mul(y, -2.0), 2.9142)
    for _ in range(iterations):
        r = prot.mul(r, prot.add(prot.neg(prot.mul(y, r)), 2.0))
    return r


def exp(prot, x: PrivateTensor, *, nonpositive: bool = False) -> PrivateTensor:
    """``e**x``: ``n = floor(x)`` from comparisons with the integers in [-12, ln(bound)], ``e**n`` from the
    interval's bits, ``e**(x - n)`` (in [1, e)) by a degree-8 Chebyshev polynomial; 10 products after the
    comparisons. With ``nonpositive`` only thresholds up to 0 are used (for ``x <= 0``)."""
    top = 0 if nonpositive else int(math.floor(math.log(prot.fixedpoint.bound)))
    thresholds = list(range(EXP_FLOOR, top + 1))
    bits = _ge_bits(prot, x, thresholds)  # bits[k] = [x >= thresholds[k]]
    below = ordering.one_minus(prot, prot.slice(bits, 0))  # [x < -12]: clamp to -12 (the result is 0 there)
    clamped = prot.add(x, ordering.bit_times(prot, prot.sub(float(EXP_FLOOR), x), below))
    count = linear.local(prot, prot.slice(bits, slice(1, None)), lambda t: tf.reduce_sum(t, axis=0))
    frac = prot.sub(clamped, prot.add(ordering.to_fixed(prot, count), float(EXP_FLOOR)))  # in [0, 1)
    scale = _interval_value(prot, bits, [math.exp(t) for t in thresholds])
    poly = _horner(prot, prot.add(prot.mul(frac, 2.0), -1.0), _fit("exp", 8))
    return prot.mul(scale, poly)


def _binades(prot, x: PrivateTensor):
    """Raw bits selecting the binade ``k`` of ``x`` (``2**k <= x < 2**(k+1)``), with a first row of ones,
    and the binade of each row: ``-int_bits`` (every ``x`` below ``2**(1 - int_bits)``) to ``int_bits - 1``."""
    bits_int = prot.fixedpoint.int_bits
    exponents = list(range(-bits_int + 1, bits_int))
    bits = _ge_bits(prot, x, [2.0**k for k in exponents])
    out = []
    for i, server in enumerate((prot.server0, prot.server1)):
        with tf.device(server.device):
            row = tf.ones_like(bits.shares[i][:1]) if i == 0 else tf.zeros_like(bits.shares[i][:1])
            out.append(tf.concat([row, bits.shares[i]], axis=0))
    return PrivateTensor(prot, *out), [-bits_int] + exponents


def reciprocal_positive(prot, x: PrivateTensor) -> PrivateTensor:
    """``1 / x`` for ``x >= 2**-int_bits``: ``y = x * 2**-(k+1)`` in [0.5, 1) for the binade ``k``, 3 Newton
    steps, times ``2**-(k+1)``."""
    bits, ks = _binades(prot, x)
    factor = _interval_value(prot, bits, [2.0 ** -(k + 1) for k in ks])
    return prot.mul(_reciprocal_newton(prot, prot.mul(x, factor)), factor)


def reciprocal(prot, x: PrivateTensor) -> PrivateTensor:
    """``1 / x`` for ``|x| >= 2**-int_bits``: the sign by one comparison, then :func:`reciprocal_positive` of
    ``|x|``, signed back."""
    negative = ordering.raw_bit_negative(prot, x)
    magnitude = prot.sub(x, prot.mul(ordering.bit_times(prot, x, negative), 2))
    r = reciprocal_positive(prot, magnitude)
    return prot.sub(r, prot.mul(ordering.bit_times(prot, r, negative), 2))


def rsqrt(prot, x: PrivateTensor) -> PrivateTensor:
    """``1 / sqrt(x)`` for ``x >= 2**-int_bits``: ``y = x * 2**-e`` in [0.25, 1) with ``e`` the even exponent
    of x's binade, 3 Newton steps ``z <- z (3 - y z^2) / 2`` from a linear guess, times ``2**(-e/2)``."""
    bits, ks = _binades(prot, x)
    even = [(k + 1) + ((k + 1) % 2) for k in ks]
    y = prot.mul(x, _interval_value(prot, bits, [2.0**-e for e in even]))
    z = prot.add(prot.mul(y, -1.28), 2.23)  # 1/sqrt(y) on [0.25, 1] within 10%
    for _ in range(3):
        z = prot.mul(prot.mul(z, prot.add(prot.neg(prot.mul(y, prot.square(z))), 3.0)), 0.5)
    return prot.mul(z, _interval_value(prot, bits, [2.0 ** (-e / 2) for e in even]))


def log(prot, x: PrivateTensor) -> PrivateTensor:
    """``ln x`` for ``x >= 2**-int_bits``: ``x = y * 2**(k+1)`` with ``y`` in [0.5, 1), ``ln y`` by a
    degree-9 Chebyshev polynomial, plus ``(k + 1) ln 2`` for the binade ``k``."""
    bits, ks = _binades(prot, x)
    y = prot.mul(x, _interval_value(prot, bits, [2.0 ** -(k + 1) for k in ks]))
    poly = _horner(prot, prot.add(prot.mul(y, 4.0), -3.0), _fit("log", 9))
    return prot.add(poly, _interval_value(prot, bits, [(k + 1) * math.log(2.0) for k in ks]))


def sigmoid(prot, x: PrivateTensor) -> PrivateTensor:
    """``1 / (1 + e**-x)``: ``t = e**-|x|`` (in (0, 1]), ``s = 1 / (1 + t)`` by Newton on [0.5, 1] (no
    normalization needed), then ``s`` or ``1 - s`` by the sign of ``x``."""
    negative = ordering.raw_bit_negative(prot, x)
    minus_abs = prot.sub(prot.mul(ordering.bit_times(prot, x, negative), 2), x)  # -|x|
    t = exp(prot, minus_abs, nonpositive=True)
    s = prot.mul(_reciprocal_newton(prot, prot.mul(prot.add(t, 1.0), 0.5)), 0.5)
    return prot.add(s, ordering.bit_times(prot, prot.add(prot.mul(s, -2), 1.0), negative))


def tanh(prot, x: PrivateTensor) -> PrivateTensor:
    """``2 sigmoid(2 x) - 1``."""
    return prot.add(prot.mul(sigmoid(prot, prot.mul(x, 2)), 2), -1.0)


def softmax(prot, x: PrivateTensor, axis: int) -> PrivateTensor:
    """``e**(x - max) / sum e**(x - max)``: the max exactly (a tournament), ``exp`` of non-positive values,
    the sum's reciprocal (in [1, n]) by normalization and Newton."""
    m = prot.reduce_max(x, axis=axis, keepdims=True)
    e = exp(prot, prot.sub(x, m), nonpositive=True)
    total = prot.reduce_sum(e, axis=axis, keepdims=True)
    return prot.mul(e, reciprocal_positive(prot, total))
