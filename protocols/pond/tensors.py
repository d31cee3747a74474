"""Value types of the Pond protocol.

:class:`PublicTensor` holds an encoded value known to both servers (a copy on each server's device).
:class:`PrivateTensor` holds two additive shares over Z/2^64, ``share0`` on ``server0`` and ``share1`` on
``server1``, with ``share0 + share1 = encode(x)``. Neither holds its protocol's state: every operation is
a method of the protocol, the operators below only forward to it.
"""

from __future__ import annotations

import tensorflow as tf


class PondTensor:
    """Operators shared by public and private tensors; each forwards to ``self.protocol``.

    ``+ - * @ / **``, unary ``-``, ``x[index]``, iteration over the first axis and ``< > <= >=`` (exact,
    private fixed-point 0/1). A numpy array, Python number or host ``tf.Tensor`` on either side is a public
    operand.
    """

    protocol = None  # set by subclasses
    # numpy must not broadcast its operators over a Pond tensor (an object array of products): with
    # ``__array_ufunc__ = None`` ``ndarray * pond`` returns NotImplemented and Python calls ``__rmul__``.
    __array_ufunc__ = None

    @property
    def shape(self) -> tf.TensorShape:
        raise NotImplementedError

    @property
    def rank(self) -> int | None:
        return self.shape.rank

    def __add__(self, other):
        return self.protocol.add(self, other)

    def __radd__(self, other):
        return self.protocol.add(other, self)

    def __sub__(self, other):
        return self.protocol.sub(self, other)

    def __rsub__(self, other):
        return self.protocol.sub(other, self)

    def __mul__(self, other):
        return self.protocol.mul(self, other)

    def __rmul__(self, other):
        return self.protocol.mul(other, self)

    def __matmul__(self, other):
        return self.protocol.matmul(self, other)

    def __rmatmul__(self, other):
        return self.protocol.matmul(other, self)

    def __lt__(self, other):
        return self.protocol.less(self, other)

    def __gt__(self, other):
        return self.protocol.greater(self, other)

    def __le__(self, other):
        return self.protocol.less_equal(self, other)

    def __ge__(self, other):
        return self.protocol.greater_equal(self, other)

    __hash__ = object.__hash__

    def __truediv__(self, other):
        return self.protocol.div(self, other)

    def __rtruediv__(self, other):
        raise TypeError("Division by a Pond tensor is not available: only a public divisor is supported.")

    def __pow__(self, exponent):
        return self.protocol.pow(self, exponent)

    def __neg__(self):
        return self.protocol.neg(self)

    def __getitem__(self, index):
        return self.protocol.slice(self, index)

    def __len__(self) -> int:
        if self.rank is None or self.rank == 0:
            raise TypeError(f"len() of a Pond tensor of shape {self.shape} is undefined (rank 0 or unknown).")
        return int(self.shape[0])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __bool__(self):
        raise TypeError("The truth value of a Pond tensor is secret or undefined; reveal it first.")

    def reshape(self, shape):
        return self.protocol.reshape(self, shape)

    def transpose(self, perm=None):
        return self.protocol.transpose(self, perm)

    def reduce_sum(self, axis=None, keepdims: bool = False):
        return self.protocol.reduce_sum(self, axis=axis, keepdims=keepdims)

    def square(self):
        return self.protocol.square(self)


class PublicTensor(PondTensor):
    """An encoded value that both servers know: ``on0`` on server0's device, ``on1`` on server1's."""

    def __init__(self, protocol, on0: tf.Tensor, on1: tf.Tensor):
        self.protocol = protocol
        self.on0 = on0
        self.on1 = on1

    @property
    def shape(self) -> tf.TensorShape:
        return self.on0.shape

    @property
    def values(self) -> tuple[tf.Tensor, tf.Tensor]:
        return self.on0, self.on1

    def decode(self, dtype: tf.DType = tf.float64) -> tf.Tensor:
        """The real value (from server0's copy)."""
        return self.protocol.decode(self.on0, dtype)

    def __repr__(self) -> str:
        return f"PublicTensor(shape={self.shape})"


class PrivateTensor(PondTensor):
    """Additive shares of an encoded value: ``share0`` on server0, ``share1`` on server1."""

    def __init__(self, protocol, share0: tf.Tensor, share1: tf.Tensor):
        self.protocol = protocol
        self.share0 = share0
        self.share1 = share1

    @property
    def shape(self) -> tf.TensorShape:
        return self.share0.shape

    @property
    def shares(self) -> tuple[tf.Tensor, tf.Tensor]:
        """The two int64 shares (for audits and tests): ``(share0, share1)``."""
        return self.share0, self.share1

    def reveal(self, *, to, dtype: tf.DType = tf.float64) -> tf.Tensor:
        """Send both shares to player ``to`` and return the decoded value on its device."""
        return self.protocol.reveal(self, to=to, dtype=dtype)

    def __repr__(self) -> str:
        return f"PrivateTensor(shape={self.shape})"


def _refuse_conversion(value, dtype=None, name=None, as_ref=False):
    raise TypeError(
        f"A Pond tensor ({value!r}) cannot become a tf.Tensor: its value is secret; reveal it first. (In "
        "`tf_tensor <op> pond_tensor` TensorFlow tries this before the Pond operator; if that operator refused "
        "the tf.Tensor too, its reason is the exception this one occurred during.)"
    )


# Without this TensorFlow reads a Pond tensor as a nested sequence (it has __len__ and __getitem__).
tf.register_tensor_conversion_function(PondTensor, _refuse_conversion)
