"""Backward passes on shares (mixed into :class:`~.protocol.Pond`): the gradients of convolution and
pooling, and what the private layers' backward rules need besides the forward operations.

Every operation here is linear in its private operand, or one Beaver product, so it reveals nothing new:

* ``conv2d_filter_gradient(x, dz)``: the im2col columns of ``x`` (local), transposed, times the flattened
  output gradient: one Beaver matmul ``[kh kw C_in, N H' W'] @ [N H' W', C_out]`` and one truncation;
* ``conv2d_input_gradient(dz, filters)``: ``dz @ filters^T`` (one Beaver matmul, one truncation), then the
  adjoint of im2col (:func:`col2im`: the columns added back onto the input positions they were read from,
  local, exact on the ring);
* ``max_pool2d_with_argmax``: the forward max pooling that also keeps each window's fixed-point one-hot
  argmax (the same tournament: the comparisons are not repeated), and ``max_pool2d_gradient`` routes the
  output gradient through it (one product, then :func:`col2im`);
* ``avg_pool2d_gradient``: the public ``1 / count`` times the output gradient, spread over each window by
  :func:`col2im` (local);
* ``dropout_mask``: a public keep-mask for training-mode dropout, drawn by server0 from its own CSPRNG stream
  and sent to server1 (8 bytes per element). It depends on nothing private: both servers knowing it reveals
  nothing about the data or the weights;
* ``softmax_parts``: the softmax together with the exact row maximum and the sum of exponentials, from which
  a cross-entropy loss needs only one logarithm of a value in ``[1, classes]`` (``log_sum_exp``).

Ties in max pooling go to the first maximal element of the window, as in TensorFlow's ``MaxPoolGrad``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfe_lite import ring
from tfe_lite.devices import eager_serialized
from tfe_lite.errors import ShapeError

from . import approximations, checks, linear, ordering
from .tensors import PublicTensor


def _padded_size(size: int, window: int, stride: int, padding: str) -> tuple[int, int, int]:
    """(padded size, pad before, output size) of one spatial axis."""
    if padding == "SAME":
        before, after = ordering.same_pads(size, window, stride)
        return size + before + after, before, -(-size // stride)
    return size, 0, (size - window) // stride + 1


def col2im(cols: tf.Tensor, input_shape, ksize, strides, padding: str) -> tf.Tensor:
    """The adjoint of :func:`tfe_lite.ring.patches`: ``cols`` ``[N, H', W', kh * kw * C]`` (kh, kw, C order)
    added back onto an ``[N, H, W, C]`` tensor, each column at the input position it was read from (padding
    positions dropped). Linear over the ring, so it applies to shares."""
    n, h, w, c = input_shape
    kh, kw = ksize
    sh, sw = strides
    hp, top, out_h = _padded_size(h, kh, sh, padding)
    wp, left, out_w = _padded_size(w, kw, sw, padding)
    if cols.shape[1] != out_h or cols.shape[2] != out_w:
        raise ShapeError(f"col2im: columns of shape {cols.shape} do not match an input {tuple(input_shape)} with "
                         f"window {ksize}, strides {strides}, {padding}.")
    span_h, span_w = (out_h - 1) * sh + 1, (out_w - 1) * sw + 1
    total = None
    for i in range(kh):
        for j in range(kw):
            part = cols[..., (i * kw + j) * c:(i * kw + j + 1) * c]  # [N, H', W', C]
            if sh > 1 or sw > 1:  # interleave zeros: output position o lands on input row i + o * stride
                part = tf.reshape(part, [n, out_h, 1, out_w, 1, c])
                part = tf.pad(part, [[0, 0], [0, 0], [0, sh - 1], [0, 0], [0, sw - 1], [0, 0]])
                part = tf.reshape(part, [n, out_h * sh, out_w * sw, c])[:, :span_h, :span_w, :]
            part = tf.pad(part, [[0, 0], [i, hp - i - span_h], [j, wp - j - span_w], [0, 0]])
            total = part if total is None else total + part
    return total[:, top:top + h, left:left + w, :]


class GradientOps:
    """Gradients of the convolution and pooling operations on private tensors (see the module docstring)."""

    @eager_serialized
    def conv2d_filter_gradient(self, x, dz, filter_shape, strides=1, padding: str = "SAME"):
        """``d loss / d filters`` of ``z = conv2d(x, filters)`` given ``dz = d loss / d z``: the sum over
        the batch and positions of input columns times output gradients (one Beaver matmul)."""
        x, dz = self._own(x, "x"), self._own(dz, "dz")
        strides, padding = checks.pair(strides, "strides"), checks.padding(padding)
        kh, kw, cin, cout = (int(d) for d in filter_shape)
        cols = linear.local(self, x, lambda t: ring.patches(t, (kh, kw), strides, padding))
        if tuple(cols.shape[:3]) != tuple(dz.shape[:3]) or dz.shape[3] != cout:
            raise ShapeError(f"conv2d_filter_gradient: dz of shape {dz.shape} does not match the output of a "
                             f"convolution of x {x.shape} with filters {tuple(filter_shape)} ({padding}, strides {strides}).")
        flat = self.reshape(cols, [-1, kh * kw * cin])
        grad = self.matmul(self.transpose(flat), self.reshape(dz, [-1, cout]))
        return self.reshape(grad, [kh, kw, cin, cout])

    @eager_serialized
    def conv2d_input_gradient(self, dz, filters, input_shape, strides=1, padding: str = "SAME"):
        """``d loss / d x`` of ``z = conv2d(x, filters)``: ``dz @ filters^T`` per position (one Beaver
        matmul when both are private), added back onto the input positions (:func:`col2im`)."""
        dz, filters = self._own(dz, "dz"), self._own(filters, "filters")
        strides, padding = checks.pair(strides, "strides"), checks.padding(padding)
        kh, kw, cin, cout = (int(d) for d in filters.shape)
        n, h, w = (int(d) for d in dz.shape[:3])
        cols = self.matmul(self.reshape(dz, [-1, cout]), self.transpose(self.reshape(filters, [kh * kw * cin, cout])))
        cols = self.reshape(cols, [n, h, w, kh * kw * cin])
        shape = [int(d) for d in input_shape]
        return linear.local(self, cols, lambda t: col2im(t, shape, (kh, kw), strides, padding))

    @eager_serialized
    def max_pool2d_with_argmax(self, x, pool_size, strides=None, padding: str = "VALID"):
        """``(max_pool2d(x), argmax)``: ``argmax`` is the fixed-point one-hot ``[N, H', W', kh * kw, C]``
        of each window's first maximal element, from the same tournament (no extra comparison)."""
        args = self._max_pool_arguments(x, pool_size, strides, padding, "max_pool2d_with_argmax")
        return ordering.max_pool2d_with_argmax(self, *args)

    @eager_serialized
    def max_pool2d_gradient(self, argmax, dy, input_shape, pool_size, strides=None, padding: str = "VALID"):
        """``d loss / d x`` of max pooling: ``dy`` routed to each window's argmax (from
        :meth:`max_pool2d_with_argmax`; one product), added back onto the input positions."""
        argmax, dy = self._own(argmax, "argmax"), self._own(dy, "dy")
        pool_size = checks.pair(pool_size, "pool_size")
        strides = pool_size if strides is None else checks.pair(strides, "strides")
        padding = checks.padding(padding)
        n, h, w, k, c = (int(d) for d in argmax.shape)
        if tuple(dy.shape) != (n, h, w, c):
            raise ShapeError(f"max_pool2d_gradient: dy of shape {dy.shape} does not match the pooling output {(n, h, w, c)}.")
        routed = self.mul(argmax, self.reshape(dy, [n, h, w, 1, c]))
        cols = self.reshape(routed, [n, h, w, k * c])
        shape = [int(d) for d in input_shape]
        return linear.local(self, cols, lambda t: col2im(t, shape, pool_size, strides, padding))

    @eager_serialized
    def avg_pool2d_gradient(self, dy, input_shape, pool_size, strides=None, padding: str = "VALID"):
        """``d loss / d x`` of :meth:`avg_pool2d`: ``dy / count`` spread over each window (local)."""
        dy = self._own(dy, "dy")
        pool_size = checks.pair(pool_size, "pool_size")
        strides = pool_size if strides is None else checks.pair(strides, "strides")
        padding = checks.padding(padding)
        shape = [int(d) for d in input_shape]
        counts = np.outer(*(checks.window_counts(size, k, s, padding) for size, k, s in zip(shape[1:3], pool_size, strides)))
        scaled = self.mul(dy, (1.0 / counts)[None, :, :, None])
        k = pool_size[0] * pool_size[1]

        def spread(t):
            cols = tf.tile(t[:, :, :, None, :], [1, 1, 1, k, 1])
            return col2im(tf.reshape(cols, t.shape[:3].as_list() + [k * t.shape[3]]), shape, pool_size, strides, padding)

        return linear.local(self, scaled, spread)

    @eager_serialized
    def softmax_parts(self, x, axis: int = -1):
        """``(softmax(x), max, total)`` over ``axis`` (kept as a size-1 axis): ``softmax = exp(x - max) /
        total``, so ``log_sum_exp(x) = max + log(total)`` with ``total`` in ``[1, n]``. The softmax is
        :meth:`softmax`'s (the same bound)."""
        x = self._private(x, "softmax")
        axis = self._axis(x, axis, "softmax")
        m = self.reduce_max(x, axis=axis, keepdims=True)
        e = approximations.exp(self, self.sub(x, m), nonpositive=True)
        total = self.reduce_sum(e, axis=axis, keepdims=True)
        return self.mul(e, approximations.reciprocal_positive(self, total)), m, total

    def dropout_mask(self, shape, rate: float) -> PublicTensor:
        """A public fixed-point mask of ``shape``: ``1 / (1 - rate)`` with probability ``1 - rate``, else 0
        (Keras's inverted dropout). Drawn on server0 (fresh on every execution: a new seed from its
        ``"dropout"`` stream) and sent to server1."""
        if not 0.0 <= float(rate) < 1.0:
            raise ShapeError(f"Received an invalid value for `rate`, expected a number in [0, 1). Received: rate={rate!r}")
        shape = [int(d) for d in shape]
        keep = np.int64(round(self.fixedpoint.scale / (1.0 - float(rate))))
        # keep an element when a uniform 53-bit integer is at least rate * 2**53
        threshold = np.int64(round(float(rate) * 2.0**53))
        with tf.device(self.server0.device):
            bits = self.streams.stream(self.server0, "dropout").uniform(shape)
            mask0 = tf.where(tf.bitwise.right_shift(bits, 11) & np.int64((1 << 53) - 1) >= threshold, keep, np.int64(0))
        mask1 = self.channel.send(mask0, self.server0, self.server1, "dropout_mask")
        return PublicTensor(self, mask0, mask1)
