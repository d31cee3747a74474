"""Native ops for differential privacy (source ``dp_ops.cc``, built into the same library as the ring ops).

:func:`per_record_conv2d_kernel_grad` gives each record's Conv2D kernel gradient, the one per-record
quantity of DP-SGD that TensorFlow's own kernels compute slowly. With the native library it runs
``PerRecordConv2DKernelGrad`` (windows read from each record's image in register blocks, records in
parallel); without it, or with ``TFE_LITE_NATIVE_OPS=0``, a pure TensorFlow twin (one batched matmul per
kernel offset) gives the same values up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from tfe_lite.errors import ShapeError
from tfe_lite.ops import _native_enabled, library


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in pair):
        raise ShapeError(f"Received an invalid value for `{name}`, expected two positive ints. Received: {name}={value!r}")
    return pair


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding (before, after) of one spatial dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def per_record_conv2d_kernel_grad(
    inputs: tf.Tensor,
    out_backprop: tf.Tensor,
    kernel_size: int | Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    dilations: int | Sequence[int] = 1,
    padding: str = "valid",
) -> tf.Tensor:
    """Each record's kernel gradient of ``conv2d(inputs, kernel)``: ``[records, kh, kw, in, out]``.

    Args:
      inputs: ``[records, height, width, in]`` (NHWC), float32 or float64; the layer's input.
      out_backprop: ``[records, out_height, out_width, out]``, the gradient of the layer's output.
      kernel_size, strides, dilations: as the convolution's (an int or two).
      padding: ``"valid"`` or ``"same"`` (TensorFlow's convention), case-insensitive.

    Returns:
      ``g[r, i, j, c, u] = sum_{y, x} inputs_padded[r, y*sh + i*dh, x*sw + j*dw, c] * out_backprop[r, y, x, u]``.
    """
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(strides, "strides")
    dh, dw = _pair(dilations, "dilations")
    if padding.lower() not in ("valid", "same"):
        raise ShapeError(f"Received an invalid value for `padding`, expected 'valid' or 'same'. Received: padding={padding!r}")
    inputs = tf.convert_to_tensor(inputs)
    out_backprop = tf.convert_to_tensor(out_backprop, dtype=inputs.dtype)
    height, width = inputs.shape[1], inputs.shape[2]
    if inputs.shape.rank != 4 or out_backprop.shape.rank != 4 or height is None or width is None:
        raise ShapeError(
            "per_record_conv2d_kernel_grad needs rank-4 NHWC tensors with static height and width. Received: "
            f"inputs.shape={inputs.shape}, out_backprop.shape={out_backprop.shape}"
        )
    if padding.lower() == "same":
        top, bottom = same_padding(height, kh, sh, dh)
        left, right = same_padding(width, kw, sw, dw)
        inputs = tf.pad(inputs, [[0, 0], [top, bottom], [left, right], [0, 0]])
    lib = library() if _native_enabled() else None
    if lib is not None and inputs.dtype in (tf.float32, tf.float64):
        return lib.per_record_conv2d_kernel_grad(
            inputs, out_backprop, kernel_size=[kh, kw], strides=[sh, sw], dilations=[dh, dw]
        )
    return _per_record_conv2d_kernel_grad_tf(inputs, out_backprop, (kh, kw), (sh, sw), (dh, dw))


def _per_record_conv2d_kernel_grad_tf(inputs, out_backprop, kernel, strides, dilations) -> tf.Tensor:
    """The twin: for each kernel offset, the strided slice it reads against the output gradient."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    out_h, out_w = out_backprop.shape[1], out_backprop.shape[2]
    records = tf.shape(inputs)[0]
    channels, units = inputs.shape[-1], out_backprop.shape[-1]
    g = tf.reshape(out_backprop, [records, -1, units])
    rows_read, cols_read = (out_h - 1) * sh + 1, (out_w - 1) * sw + 1
    if out_h * out_w == 0:
        return tf.zeros(tf.stack([records, kh, kw, channels, units]), inputs.dtype)
    offsets = []
    for i in range(kh):
        for j in range(kw):
            window = inputs[:, i * dh : i * dh + rows_read : sh, j * dw : j * dw + cols_read : sw, :]
            offsets.append(tf.matmul(tf.reshape(window, [records, -1, channels]), g, transpose_a=True))
    return tf.reshape(tf.stack(offsets, axis=1), [records, kh, kw, channels, units])
