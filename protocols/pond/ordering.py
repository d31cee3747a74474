"""Comparisons and what is built from them: less, sign, relu (with its derivative mask), maximum, the max and
argmax of an axis, max pooling. Every one is exact on the fixed-point encodings (no approximation, no failure
probability): each rests on the sign-bit protocol of :mod:`.comparison` (7 rounds, about 37 bytes per
compared element between the servers with the default preset) and, where a bit selects a value, a product of
the value with the raw bit (exact, no truncation, since the bit is an integer). Relu and the tournaments of
max, argmax and max pooling fuse that product into the comparison (:func:`.comparison.msb` with
``times=x``): the factor is the compared value itself (relu's input, a tournament's difference), which the
comparison's mask already hides, so the product costs no extra round and no extra byte between the servers;
other selections are a Beaver product (1 round, 32 bytes per element).
Max pooling over windows that tile the input (strides equal to the pool size, the usual case) runs its
tournaments on free reshapes of the input, without extracting windows.

Bits below are *raw*: additive shares of 0 or 1 (not fixed-point encoded). The public functions return
fixed-point 0/1 (a local multiplication by ``2**frac_bits``).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfe_lite import ring

from . import beaver, comparison, linear
from .dealer import TripleSpec
from .tensors import PrivateTensor


def raw_bit_negative(prot, x: PrivateTensor, times: PrivateTensor | None = None):
    """Raw shares of ``[x < 0]`` for ``x`` an encodable value or the difference of two (``|x| <
    2**(int_bits + frac_bits + 1)``), which lets the comparison run on that many bits only. With ``times``
    (``x``'s shape) returns ``([x < 0], [x < 0] * times)``, the product in the comparison's own rounds."""
    return comparison.msb(prot, x, magnitude_bits=prot.fixedpoint.int_bits + prot.fixedpoint.frac_bits + 1,
                          times=times)


def bit_times(prot, x: PrivateTensor, bit: PrivateTensor) -> PrivateTensor:
    """``x * bit`` for a raw bit (exact: no truncation)."""
    return beaver.product(prot, x, bit, TripleSpec("mul", tuple(x.shape), tuple(bit.shape)))


def one_minus(prot, bit: PrivateTensor) -> PrivateTensor:
    """Raw ``1 - bit``."""
    with tf.device(prot.server0.device):
        s0 = 1 - bit.share0
    with tf.device(prot.server1.device):
        s1 = -bit.share1
    return PrivateTensor(prot, s0, s1)


def to_fixed(prot, bit: PrivateTensor) -> PrivateTensor:
    """A raw integer tensor as a fixed-point one (local, exact)."""
    return linear.local(prot, bit, lambda t: t * np.int64(prot.fixedpoint.scale))


def select(prot, bit: PrivateTensor, x: PrivateTensor, y: PrivateTensor) -> PrivateTensor:
    """``x`` where the raw ``bit`` is 1, else ``y``: ``y + bit * (x - y)`` (one product)."""
    diff = linear.add_private_private(prot, x, linear.local(prot, y, tf.negative))
    return linear.add_private_private(prot, y, bit_times(prot, diff, bit))


def relu(prot, x: PrivateTensor) -> tuple[PrivateTensor, PrivateTensor]:
    """``max(x, 0) = x - [x < 0] x`` and the raw mask ``[x >= 0]`` (one comparison, its product fused in)."""
    negative, product = raw_bit_negative(prot, x, times=x)
    return linear.add_private_private(prot, x, linear.local(prot, product, tf.negative)), one_minus(prot, negative)


def _pairwise(prot, x: PrivateTensor, axis: int, onehot: PrivateTensor | None):
    """One tournament round along ``axis``: elements ``2i`` and ``2i + 1`` meet, the larger goes on (the
    first on ties); an odd last element goes on unopposed. ``onehot`` (``x``'s shape plus a last axis) follows."""
    n = x.shape[axis]
    half = n // 2

    def last(t):
        index = [slice(None)] * t.shape.rank
        index[axis] = slice(n - 1, n)
        return t[tuple(index)]

    left, right = _split_pairs(prot, x, axis, half)
    d = linear.add_private_private(prot, left, linear.local(prot, right, tf.negative))
    right_wins, product = raw_bit_negative(prot, d, times=d)  # [left < right], and that times left - right
    value = linear.add_private_private(prot, left, linear.local(prot, product, tf.negative))
    if onehot is not None:
        bit = linear.local(prot, right_wins, lambda t: tf.expand_dims(t, -1))
        onehot_left, onehot_right = _split_pairs(prot, onehot, axis, half)
        onehot_next = select(prot, bit, onehot_right, onehot_left)
    if n % 2:
        value = _concat(prot, [value, linear.local(prot, x, last)], axis)
        if onehot is not None:
            onehot_next = _concat(prot, [onehot_next, linear.local(prot, onehot, last)], axis)
    return value, (onehot_next if onehot is not None else None)


def _split_pairs(prot, x: PrivateTensor, axis: int, half: int) -> tuple[PrivateTensor, PrivateTensor]:
    """Elements ``2i`` and ``2i + 1`` (``i < half``) of ``x`` along ``axis``, each server on its share."""
    parts = []
    for server, share in zip((prot.server0, prot.server1), x.shares):
        with tf.device(server.device):
            parts.append(ring.deinterleave(share, axis, half))
    return PrivateTensor(prot, parts[0][0], parts[1][0]), PrivateTensor(prot, parts[0][1], parts[1][1])


def _concat(prot, parts, axis):
    out = []
    for i, server in enumerate((prot.server0, prot.server1)):
        with tf.device(server.device):
            out.append(tf.concat([p.shares[i] for p in parts], axis))
    return PrivateTensor(prot, *out)


def reduce_max(prot, x: PrivateTensor, axis: int, with_argmax: bool = False):
    """Max over ``axis`` (removed) by a tournament: ``ceil(log2 n)`` rounds of comparisons; with
    ``with_argmax`` also the fixed-point one-hot of the first maximal element (``x``'s shape)."""
    n = x.shape[axis]
    onehot = None
    if with_argmax:
        eye = np.eye(n, dtype=np.int64) * prot.fixedpoint.scale  # row i: the one-hot of position i
        shape = [1] * x.shape.rank + [n]
        shape[axis] = n
        row = np.reshape(eye, shape)
        onehot_shape = x.shape.as_list() + [n]
        with tf.device(prot.server0.device):
            o0 = tf.broadcast_to(tf.constant(row), onehot_shape)
        with tf.device(prot.server1.device):
            o1 = tf.zeros(onehot_shape, tf.int64)
        onehot = PrivateTensor(prot, o0, o1)
    while x.shape[axis] > 1:
        x, onehot = _pairwise(prot, x, axis, onehot)
    value = linear.local(prot, x, lambda t: tf.squeeze(t, axis))
    if not with_argmax:
        return value
    return value, linear.local(prot, onehot, lambda t: tf.squeeze(t, axis))


def same_pads(size: int, window: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding of one spatial axis: (before, after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def _pool_windows(prot, x: PrivateTensor, pool_size, strides, padding: str) -> PrivateTensor:
    """The windows ``[N, H', W', kh * kw, C]`` of a max pooling (local). SAME pads with
    ``-(2**(int_bits + frac_bits))``, below every encodable value, so a pad never wins."""
    kh, kw = pool_size
    channels = x.shape[-1]
    x = _pad_lowest(prot, x, pool_size, strides) if padding == "SAME" else x

    def windows(t):
        cols = ring.patches(t, (kh, kw), strides, "VALID")
        return tf.reshape(cols, [-1 if d is None else d for d in cols.shape[:3]] + [kh * kw, channels])

    return linear.local(prot, x, windows)


def _pad_lowest(prot, x: PrivateTensor, pool_size, strides) -> PrivateTensor:
    pads = [same_pads(size, k, s) for size, k, s in zip(x.shape[1:3], pool_size, strides)]
    low = -(np.int64(1) << np.int64(prot.fixedpoint.int_bits + prot.fixedpoint.frac_bits))
    out = []
    for i, server in enumerate((prot.server0, prot.server1)):
        with tf.device(server.device):
            out.append(tf.pad(x.shares[i], [(0, 0), *pads, (0, 0)], constant_values=low if i == 0 else 0))
    return PrivateTensor(prot, *out)


def max_pool2d(prot, x: PrivateTensor, pool_size, strides, padding: str) -> PrivateTensor:
    """Max pooling like ``tf.nn.max_pool2d``: local window extraction, then a tournament per window
    (tiled windows: free reshapes, :func:`_max_pool_tiled`)."""
    kh, kw = pool_size
    x = _pad_lowest(prot, x, pool_size, strides) if padding == "SAME" else x
    if tuple(strides) == (kh, kw) and None not in x.shape.as_list():
        return _max_pool_tiled(prot, x, kh, kw)
    return reduce_max(prot, _pool_windows(prot, x, pool_size, strides, "VALID"), axis=3)


def max_pool2d_with_argmax(prot, x: PrivateTensor, pool_size, strides, padding: str):
    """:func:`max_pool2d` and the fixed-point one-hot ``[N, H', W', kh * kw, C]`` of each window's first
    maximal element, from the same tournament."""
    value, onehot = reduce_max(prot, _pool_windows(prot, x, pool_size, strides, padding), axis=3, with_argmax=True)
    return value, linear.local(prot, onehot, lambda t: tf.transpose(t, [0, 1, 2, 4, 3]))  # [N, H', W', C, k] -> k before C


def _max_pool_tiled(prot, x: PrivateTensor, kh: int, kw: int) -> PrivateTensor:
    """Max pooling of windows that tile the input (strides = pool size, VALID): no window extraction, only
    free reshapes. A tournament over the ``kw`` columns of each window row, then over its ``kh`` rows
    (``kh * kw - 1`` comparisons per window, as the window tournament; ``ceil(log2 kw) + ceil(log2 kh)``
    rounds of them)."""
    n, h, w, c = x.shape.as_list()
    oh, ow = h // kh, w // kw
    if (oh * kh, ow * kw) != (h, w):  # VALID drops the last rows and columns
        x = linear.local(prot, x, lambda t: t[:, :oh * kh, :ow * kw])
    rows = linear.local(prot, x, lambda t: tf.reshape(t, [n * oh * kh * ow, kw, c]))
    rows = reduce_max(prot, rows, axis=1)  # [N * oh * kh * ow, C]: the max of each window row
    cols = linear.local(prot, rows, lambda t: tf.reshape(t, [n * oh, kh, ow * c]))
    out = reduce_max(prot, cols, axis=1)
    return linear.local(prot, out, lambda t: tf.reshape(t, [n, oh, ow, c]))
