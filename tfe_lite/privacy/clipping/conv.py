"""Each record's Conv2D kernel gradient, for both clippers: the native op, or on the pure-TensorFlow twin
space-to-depth blocks for a strided convolution over few channels.

The native op (:func:`tfe_lite.ops.dp.per_record_conv2d_kernel_grad`) reads the windows straight from the
image in register blocks and runs at the speed of the summed kernel gradient whatever the channel count
(Opacus's MNIST network's 8x8 stride-2 first layer over one channel: 0.64 ms at batch 256 on this
project's 2-core machine, the summed gradient 0.70 ms), so it is used as it is. Its pure-TensorFlow twin
(without the native library, or with ``TFE_LITE_NATIVE_OPS=0``) runs one batched matmul per kernel offset,
64 of them for an 8x8 kernel over one channel. A convolution with strides ``(sh, sw)`` is the same sums as
a stride-1 convolution of the ``sh x sw`` space-to-depth blocks of its (padded) input, with a kernel of
``ceil(kh / sh) x ceil(kw / sw)`` blocks on ``sh sw in`` channels (16 offsets for that layer); the block
kernel's gradient, rearranged, is the kernel's (the positions a kernel not divisible by the stride adds
are computed and dropped). The twin takes that route below :data:`SPACE_TO_DEPTH_MAX_CHANNELS` input
channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from tfe_lite.ops import library
from tfe_lite.ops.dp import per_record_conv2d_kernel_grad, same_padding

#: Input channels up to which a strided convolution's per-record kernel gradient uses space-to-depth blocks
#: (when the pure-TensorFlow twin serves).
SPACE_TO_DEPTH_MAX_CHANNELS = 2


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def uses_space_to_depth(inputs_shape: tf.TensorShape, out_shape: tf.TensorShape, strides, dilations, padding) -> bool:
    """Whether :func:`conv2d_kernel_grads` computes through space-to-depth blocks for these shapes (only on
    the pure-TensorFlow twin: see the module docstring)."""
    channels = inputs_shape[-1]
    return (
        library() is None
        and _pair(strides) != (1, 1)
        and _pair(dilations) == (1, 1)
        and channels is not None
        and channels <= SPACE_TO_DEPTH_MAX_CHANNELS
        and None not in (inputs_shape[1], inputs_shape[2], *out_shape[1:])
        and padding.lower() in ("valid", "same")
    )


def conv2d_kernel_grads(
    inputs: tf.Tensor,
    out_backprop: tf.Tensor,
    kernel_size: int | Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    dilations: int | Sequence[int] = 1,
    padding: str = "valid",
) -> tf.Tensor:
    """``[records, kh, kw, in, out]``: :func:`tfe_lite.ops.dp.per_record_conv2d_kernel_grad`'s values (same
    arguments), on the pure-TensorFlow twin through space-to-depth blocks where that is faster (see the
    module docstring)."""
    (kh, kw), (sh, sw) = _pair(kernel_size), _pair(strides)
    channels, height, width = inputs.shape[-1], inputs.shape[1], inputs.shape[2]
    if not uses_space_to_depth(inputs.shape, out_backprop.shape, strides, dilations, padding):
        return per_record_conv2d_kernel_grad(
            inputs, out_backprop, kernel_size, strides=strides, dilations=dilations, padding=padding
        )
    top, bottom = same_padding(height, kh, sh, 1) if padding.lower() == "same" else (0, 0)
    left, right = same_padding(width, kw, sw, 1) if padding.lower() == "same" else (0, 0)
    out_h, out_w = out_backprop.shape[1], out_backprop.shape[2]
    bh, bw = -(-kh // sh), -(-kw // sw)  # the kernel in blocks
    rows, cols = (out_h - 1 + bh) * sh, (out_w - 1 + bw) * sw  # the (padded) input the block convolution reads
    # One pad: the "SAME" padding, then zeros (or a crop) to exactly rows x cols.
    inputs = inputs[:, : rows - top, : cols - left]
    bottom, right = rows - top - min(height, rows - top), cols - left - min(width, cols - left)
    inputs = tf.pad(inputs, [[0, 0], [top, bottom], [left, right], [0, 0]])
    if sh == sw:
        blocks = tf.nn.space_to_depth(inputs, sh)  # channels ordered (dy, dx, c), as below
    else:
        blocks = tf.reshape(inputs, [-1, rows // sh, sh, cols // sw, sw, channels])
        blocks = tf.reshape(
            tf.transpose(blocks, [0, 1, 3, 2, 4, 5]), [-1, rows // sh, cols // sw, sh * sw * channels]
        )
    grads = per_record_conv2d_kernel_grad(blocks, out_backprop, [bh, bw], strides=1, padding="valid")
    units = out_backprop.shape[-1]
    grads = tf.reshape(grads, [-1, bh, bw, sh, sw, channels, units])
    grads = tf.reshape(tf.transpose(grads, [0, 1, 3, 2, 4, 5, 6]), [-1, bh * sh, bw * sw, channels, units])
    return grads[:, :kh, :kw]
