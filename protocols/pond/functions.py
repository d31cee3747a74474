"""Pond's non-linear operations (mixed into :class:`~.protocol.Pond`): comparisons, relu, max, argmax, max
pooling, and the approximations of :mod:`.approximations`. Each method is thin: it checks its arguments and
calls the protocol module that does the work.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfe_lite.devices import eager_serialized
from tfe_lite.errors import ShapeError

from . import approximations, checks, linear, ordering
from .tensors import PrivateTensor, PublicTensor

_ADD = {
    (PrivateTensor, PrivateTensor): linear.add_private_private,
    (PrivateTensor, PublicTensor): linear.add_private_public,
    (PublicTensor, PrivateTensor): linear.add_public_private,
    (PublicTensor, PublicTensor): linear.add_public_public,
}


class ComparisonOps:
    """Exact comparisons (see :mod:`.ordering` and :mod:`.comparison` for the protocol and its cost)."""

    def _difference(self, x, y) -> PrivateTensor | PublicTensor:
        """``x - y``, not range-checked (a difference of encodable values cannot wrap)."""
        x, y = self._own(x, "x"), self._own(y, "y")
        checks.broadcast("compare", x, y)
        return _ADD[(type(x), type(y))](self, x, linear.local(self, y, tf.negative))

    def _negative(self, d) -> PrivateTensor | PublicTensor:
        """Fixed-point ``[d < 0]``: private by the sign-bit protocol, public locally."""
        if isinstance(d, PublicTensor):
            return linear.local(self, d, lambda t: tf.cast(t < 0, tf.int64) * np.int64(self.fixedpoint.scale))
        if d.shape.num_elements() == 0:
            return d
        return ordering.to_fixed(self, ordering.raw_bit_negative(self, d))

    def _complement(self, b):
        """Fixed-point ``1 - b`` for a fixed-point bit."""
        return self.add(self.neg(b), 1.0)

    @eager_serialized
    def less(self, x, y):
        """Private fixed-point ``[x < y]`` (1.0 or 0.0), exact on the encodings: the sign bit of ``x - y``
        (one comparison: 7 rounds, about 37 bytes per element between the servers with the default preset)."""
        return self._negative(self._difference(x, y))

    @eager_serialized
    def greater(self, x, y):
        """``[x > y]``, exact (one comparison)."""
        return self._negative(self._difference(y, x))

    @eager_serialized
    def less_equal(self, x, y):
        """``[x <= y]``, exact (one comparison)."""
        return self._complement(self._negative(self._difference(y, x)))

    @eager_serialized
    def greater_equal(self, x, y):
        """``[x >= y]``, exact (one comparison)."""
        return self._complement(self._negative(self._difference(x, y)))

    @eager_serialized
    def sign(self, x):
        """``-1.0, 0.0, 1.0`` like ``np.sign``, exact: ``[x > 0] - [x < 0]`` (two comparisons in one batch)."""
        x = self._own(x, "x")
        if isinstance(x, PublicTensor):
            return linear.local(self, x, lambda t: tf.sign(t) * np.int64(self.fixedpoint.scale))
        both = linear.local2(self, x, x, lambda a, _: tf.stack([a, -a]), PrivateTensor)
        bits = self._negative(both)  # [x < 0], [x > 0]
        return self.sub(self.slice(bits, 1), self.slice(bits, 0))

    @eager_serialized
    def relu(self, x, return_mask: bool = False):
        """``max(x, 0)``, exact: one comparison and one product of ``x`` with the bit ``[x >= 0]`` (9 rounds).

        With ``return_mask=True`` also returns that bit as a private fixed-point 0/1 tensor, the derivative
        of relu (taken as 1 at 0), so a backward pass needs no second comparison."""
        x = self._own(x, "x")
        if isinstance(x, PublicTensor):
            out = linear.local(self, x, lambda t: tf.maximum(t, 0))
            mask = linear.local(self, x, lambda t: tf.cast(t >= 0, tf.int64) * np.int64(self.fixedpoint.scale))
            return (out, mask) if return_mask else out
        value, mask = ordering.relu(self, x)
        return (value, ordering.to_fixed(self, mask)) if return_mask else value

    @eager_serialized
    def maximum(self, x, y):
        """Elementwise ``max(x, y)``, exact: ``y + relu(x - y)``."""
        d = self._difference(x, y)
        y = self._own(y, "y")
        if isinstance(d, PublicTensor):
            return self.add(y, linear.local(self, d, lambda t: tf.maximum(t, 0)))
        return self.add(y, ordering.relu(self, d)[0])

    def _axis(self, x, axis: int, op: str) -> int:
        if not isinstance(x, PrivateTensor):
            raise ShapeError(f"{op} expects a private tensor. Received: {x!r}")
        rank = checks.known_rank(x, "x", op)
        checks.axis(x.shape, axis, op)
        if not isinstance(axis, (int, np.integer)):
            raise ShapeError(f"{op} takes one axis (an int). Received: axis={axis!r}")
        if x.shape[axis % rank] == 0:
            raise ShapeError(f"Cannot {op} over an empty axis: x.shape={x.shape}, axis={axis}")
        return int(axis) % rank

    @eager_serialized
    def reduce_max(self, x, axis: int = -1, keepdims: bool = False):
        """Max over one ``axis``, exact, by a tournament: ``ceil(log2 n)`` rounds of comparisons and
        selections (``n - 1`` comparisons per output element)."""
        x = self._own(x, "x")
        axis = self._axis(x, axis, "reduce_max")
        out = ordering.reduce_max(self, x, axis)
        return self.reshape(out, x.shape[:axis] + [1] + x.shape[axis + 1:]) if keepdims else out

    @eager_serialized
    def argmax(self, x, axis: int = -1):
        """A private fixed-point one-hot of the (first) maximal element along ``axis``: the shape of ``x``,
        1.0 at the argmax and 0.0 elsewhere; exact (the same tournament as :meth:`reduce_max`, which also
        selects the one-hot rows)."""
        x = self._own(x, "x")
        axis = self._axis(x, axis, "argmax")
        _, onehot = ordering.reduce_max(self, x, axis, with_argmax=True)
        perm = list(range(x.shape.rank))  # the one-hot axis is last: put it back at `axis`
        perm.insert(axis, perm.pop())
        return self.transpose(onehot, perm) if perm != sorted(perm) else onehot

    @eager_serialized
    def max_pool2d(self, x, pool_size, strides=None, padding: str = "VALID"):
        """Max pooling like ``tf.nn.max_pool2d`` on NHWC, exact: a tournament over each window
        (``kh * kw - 1`` comparisons per output element, ``ceil(log2(kh * kw))`` rounds of them)."""
        return ordering.max_pool2d(self, *self._max_pool_arguments(x, pool_size, strides, padding, "max_pool2d"))

    def _max_pool_arguments(self, x, pool_size, strides, padding, op: str):
        """``(x, pool_size, strides, padding)`` of a max pooling, checked (``x`` private)."""
        x = self._own(x, "x")
        pool_size = checks.pair(pool_size, "pool_size")
        strides = pool_size if strides is None else checks.pair(strides, "strides")
        padding = checks.padding(padding)
        checks.pool2d("max_pool2d", x, pool_size, padding)
        if not isinstance(x, PrivateTensor):
            raise ShapeError(f"{op} expects a private tensor. Received: {x!r}")
        return x, pool_size, strides, padding


class ApproximationOps:
    """Approximations with stated error bounds (see :mod:`.approximations` for the methods and the table of
    ranges and bounds)."""

    def _private(self, x, op: str) -> PrivateTensor:
        x = self._own(x, "x")
        if not isinstance(x, PrivateTensor):
            raise ShapeError(f"{op} expects a private tensor (compute public values with numpy). Received: {x!r}")
        return x

    @eager_serialized
    def exp(self, x):
        """``e**x``; ``|err| <= 2**-11 e**x + 2**-14`` for ``x < ln(2**int_bits)``, ``0`` for ``x <= -12``."""
        return approximations.exp(self, self._private(x, "exp"))

    @eager_serialized
    def log(self, x):
        """``ln x``; ``|err| <= 2**-12`` for ``x >= 2**-int_bits``."""
        return approximations.log(self, self._private(x, "log"))

    @eager_serialized
    def reciprocal(self, x):
        """``1 / x``; ``|err| <= 2**-12 / |x| + 2**-14`` for ``|x| >= 2**-int_bits``."""
        return approximations.reciprocal(self, self._private(x, "reciprocal"))

    @eager_serialized
    def rsqrt(self, x):
        """``1 / sqrt(x)``; ``|err| <= 2**-12 / sqrt(x) + 2**-14`` for ``x >= 2**-int_bits``."""
        return approximations.rsqrt(self, self._private(x, "rsqrt"))

    @eager_serialized
    def sigmoid(self, x):
        """``1 / (1 + e**-x)``; ``|err| <= 2**-13`` on the whole encodable range."""
        return approximations.sigmoid(self, self._private(x, "sigmoid"))

    @eager_serialized
    def tanh(self, x):
        """``tanh x``; ``|err| <= 2**-12`` on the whole encodable range."""
        return approximations.tanh(self, self._private(x, "tanh"))

    @eager_serialized
    def softmax(self, x, axis: int = -1):
        """Softmax over one ``axis``, the max subtracted exactly first; ``|err| <= 2**-12`` per element."""
        x = self._private(x, "softmax")
        return approximations.softmax(self, x, self._axis(x, axis, "softmax"))
