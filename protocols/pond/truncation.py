"""Truncation of fixed-point products, done locally by each server (SecureML's two-party trick).

After a product the encoding carries ``2 f`` fractional bits; dividing by ``2**f`` restores ``f``.
Steps, with ``x = x0 + x1 (mod 2^64)``:
  1. server0: ``t0 = x0 >> f`` (arithmetic shift);
  2. server1: ``t1 = -((-x1) >> f)``.
No communication. Then ``t0 + t1 = x / 2**f + eps`` with ``eps`` in {-1, 0, 1} ulp (one unit of
``2**-f``), except when the share ``x0`` lies within ``|x|`` of the int64 wrap point, which for a uniform
share happens with probability ``|x| / 2**64``, ``x`` being the encoded product. For a product of real value
``z`` with the default 16 fractional bits that is ``|z| * 2**-32`` per element
(:meth:`FixedPointConfig.truncation_failure_probability`), and a failure gives an error near ``2**(64-f)``.
"""

from __future__ import annotations

import tensorflow as tf



def truncate_private(prot, x):
    f = prot.fixedpoint.frac_bits
    with tf.device(prot.server0.device):
        t0 = tf.bitwise.right_shift(x.share0, tf.constant(f, tf.int64))
    with tf.device(prot.server1.device):
        t1 = -tf.bitwise.right_shift(-x.share1, tf.constant(f, tf.int64))
    return type(x)(prot, t0, t1)


def truncate_public(prot, x):
    """Exact (floor) division by ``2**f`` of a public value, on both servers."""
    f = prot.fixedpoint.frac_bits
    values = []
    for server, v in ((prot.server0, x.on0), (prot.server1, x.on1)):
        with tf.device(server.device):
            values.append(tf.bitwise.right_shift(v, tf.constant(f, tf.int64)))
    return type(x)(prot, *values)
