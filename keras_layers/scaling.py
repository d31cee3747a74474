"""Products of private values with public positive constants, accurate to the fixed-point resolution.

``prot.mul(x, c)`` encodes ``c`` with ``f`` fractional bits, so a small constant loses its relative
precision: ``1e-3`` encodes as ``66 / 2**16`` (0.7% too large), ``1 / 100`` as ``655 / 2**16``. Learning
rates and the ``1 / n`` of a mean are such constants. :func:`scale` writes ``c = m * 2**e`` with ``m`` in
[0.5, 1) and multiplies by ``m`` (encoded within a relative ``2**-f``), then by ``2**e`` in at most two
exact powers of two ``>= 2**-f`` (a constant ``c >= 1`` is multiplied directly). Each product truncates once
and every truncation error is scaled by a factor ``<= 1`` afterwards, so for ``2**-2f <= c`` and
``|x c| < 2**int_bits``:

    ``|scale(x, c) - x c| <= 2**-f |x c| + 3 * 2**-f``   (:func:`error_bound`).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfe_lite.errors import ConfigError


def error_bound(prot, x_times_c) -> np.ndarray:
    """The bound above for the exact products ``x_times_c`` (numpy or number)."""
    u = prot.fixedpoint.resolution
    return u * np.abs(x_times_c) + 3 * u


def check_constant(prot, c, name: str) -> float:
    """``c`` as a float if it is a finite number in [2**-2f, 2**int_bits), else a ConfigError naming ``name``."""
    fp = prot.fixedpoint
    try:
        value = float(c)
    except (TypeError, ValueError):
        raise ConfigError(f"Received an invalid value for `{name}`, expected a positive number. Received: {name}={c!r}") from None
    if not math.isfinite(value) or not 2.0 ** (-2 * fp.frac_bits) <= value < fp.bound:
        raise ConfigError(f"Received an invalid value for `{name}`, expected a number in [2**-{2 * fp.frac_bits}, "
                          f"{fp.bound:g}) (the fixed-point range). Received: {name}={c!r}")
    return value


def scale(prot, x, c):
    """``x * c`` for a public ``c > 0``: a Python number, or a scalar float ``tf.Tensor`` of the driving
    program (a learning rate evaluated in the step). See the module docstring for the error bound."""
    if isinstance(c, (tf.Tensor, tf.Variable)):
        return _scale_tensor(prot, x, c)
    c = check_constant(prot, c, "c")
    if c >= 1.0:
        return prot.mul(x, c)
    m, e = math.frexp(c)  # c = m * 2**e, m in [0.5, 1), e <= 0
    y = prot.mul(x, m)
    f = prot.fixedpoint.frac_bits
    while e < 0:
        step = max(e, -f)
        y = prot.mul(y, 2.0**step)
        e -= step
    return y


def _scale_tensor(prot, x, c):
    """:func:`scale` for a host tensor ``c``: always three products (a traced step has one shape)."""
    f = float(prot.fixedpoint.frac_bits)
    two = tf.constant(2.0, tf.float64)
    c = tf.cast(c, tf.float64)
    e = tf.math.floor(tf.math.log(c) / math.log(2.0)) + 1.0
    e = tf.where(c * tf.pow(two, -e) >= 1.0, e + 1.0, tf.where(c * tf.pow(two, -e) < 0.5, e - 1.0, e))
    e = tf.minimum(e, 0.0)  # c >= 1: multiplied directly (m = c, no power of two)
    m = c * tf.pow(two, -e)
    first = tf.maximum(e, -f)
    second = tf.maximum(e - first, -f)
    y = prot.mul(prot.mul(x, m), tf.pow(two, first))
    return prot.mul(y, tf.pow(two, second))
