"""The ring Z/2^64 on int64 tensors.

TensorFlow's int64 addition, subtraction and multiplication wrap modulo 2^64, so ring arithmetic is plain
TensorFlow arithmetic on ``tf.int64``. This module adds what is not: the fast wrapping matmul
(:mod:`tfe_lite.ops`), convolution (TensorFlow has no int64 conv kernel, so it is im2col + matmul), and
sum pooling.
"""

from __future__ import annotations

import tensorflow as tf

from tfe_lite import ops

DTYPE = tf.int64


def matmul(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """``a @ b`` mod 2^64 (rank 2 uses the native kernel when built; batched shapes use tf.matmul)."""
    if a.shape.rank == 2 and b.shape.rank == 2:
        return ops.matmul(a, b)
    return tf.matmul(a, b)


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(value)
    if len(value) == 4:  # NHWC form [1, sh, sw, 1]
        value = value[1:3]
    if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
        raise ValueError(f"Received an invalid value for `{name}`, expected a positive int or pair. Received: {value!r}")
    return value


def patches(x: tf.Tensor, ksize, strides, padding: str) -> tf.Tensor:
    """im2col of an NHWC tensor: ``[N, H', W', kh * kw * C]`` with (kh, kw, C) order, as ``tf.nn.conv2d``.

    Built from ``kh * kw`` strided slices (after TensorFlow's SAME padding): 2 to 4 times faster on int64
    than ``tf.image.extract_patches``, which serves when the spatial shape is not static."""
    kh, kw = ksize
    sh, sw = strides
    size_h, size_w = x.shape[1], x.shape[2]
    if size_h is None or size_w is None:
        return tf.image.extract_patches(x, [1, kh, kw, 1], [1, sh, sw, 1], [1, 1, 1, 1], padding)
    if padding == "SAME":
        out_h, out_w = -(-size_h // sh), -(-size_w // sw)
        pad_h, pad_w = max((out_h - 1) * sh + kh - size_h, 0), max((out_w - 1) * sw + kw - size_w, 0)
        x = tf.pad(x, [[0, 0], [pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2], [0, 0]])
    else:
        out_h, out_w = (size_h - kh) // sh + 1, (size_w - kw) // sw + 1
    if out_h <= 0 or out_w <= 0:
        return tf.image.extract_patches(x, [1, kh, kw, 1], [1, sh, sw, 1], [1, 1, 1, 1], "VALID")
    cols = [x[:, i:i + (out_h - 1) * sh + 1:sh, j:j + (out_w - 1) * sw + 1:sw, :] for i in range(kh) for j in range(kw)]
    return tf.concat(cols, axis=-1) if len(cols) > 1 else cols[0]


def conv2d(x: tf.Tensor, filters: tf.Tensor, strides, padding: str) -> tf.Tensor:
    """NHWC convolution mod 2^64 with ``filters`` of shape ``[kh, kw, C_in, C_out]``."""
    kh, kw, cin, cout = filters.shape
    cols = patches(x, (kh, kw), _pair(strides, "strides"), padding)
    n, h, w = tf.shape(cols)[0], tf.shape(cols)[1], tf.shape(cols)[2]
    flat = tf.reshape(cols, [-1, kh * kw * cin])
    out = matmul(flat, tf.reshape(filters, [kh * kw * cin, cout]))
    return tf.reshape(out, tf.stack([n, h, w, cout]))


def sum_pool2d(x: tf.Tensor, pool_size, strides, padding: str) -> tf.Tensor:
    """Window sums of an NHWC tensor (zero padding for SAME)."""
    kh, kw = pool_size
    channels = x.shape[-1]
    cols = patches(x, (kh, kw), strides, padding)
    shape = tf.concat([tf.shape(cols)[:3], [kh * kw, channels]], axis=0)
    return tf.reduce_sum(tf.reshape(cols, shape), axis=3)
