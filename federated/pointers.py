"""Pointers: the caller's handles on objects that virtual workers hold.

A :class:`Pointer` names an object (``.id``) on a worker (``.location``) and knows its public shape and
dtype, never its value. Operators and :meth:`Pointer.apply` run on the worker's device and return pointers
to results kept there; an operation mixing objects of two workers raises
:class:`~tfe_lite.federated.errors.LocationError` naming both. :meth:`Pointer.get` brings the value to the
caller and deletes it on the worker; :meth:`Pointer.move` sends it to another worker (deleting it at the
source); :meth:`Pointer.share` secret-shares it with the worker as owner, so only shares leave its device.
"""

from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf

from tfe_lite.devices import eager_serialized

from .errors import LocationError
from .workers import VirtualWorker


class Pointer:
    """A handle on object ``id`` held by the worker ``location``."""

    __array_ufunc__ = None  # numpy defers to the reflected operators instead of iterating over a pointer

    def __init__(self, location: VirtualWorker, object_id: int, shape: tf.TensorShape, dtype: tf.DType):
        self.location = location
        self.id = object_id
        self.shape = tf.TensorShape(shape)
        self.dtype = dtype
        self._gone: str | None = None  # why the object is no longer there, once get/move removed it

    def __repr__(self) -> str:
        state = f", {self._gone}" if self._gone else ""
        return f"Pointer(id={self.id}, location={self.location.name!r}, shape={self.shape}, dtype={self.dtype.name}{state})"

    # ------------------------------------------------------------------------------------ moving values
    def get(self) -> tf.Tensor:
        """The value, on the caller's device; the worker no longer holds it afterwards."""
        value = self.location._pop(self.id, self._gone)
        self._gone = "it was retrieved with get()"
        return tf.identity(value)

    def move(self, destination: VirtualWorker) -> "Pointer":
        """Send the object to ``destination`` (a worker of the same config) and return the new pointer.

        The object is deleted on its current worker; this pointer stops working.
        """
        if not isinstance(destination, VirtualWorker):
            raise LocationError(
                f"Received an invalid value for `destination`, expected a VirtualWorker. Received: {destination!r}")
        if destination is self.location:
            return self
        if destination.config is not self.location.config:
            raise LocationError(
                f"Cannot move from {self.location.name!r} to {destination.name!r}: the workers belong to different configs."
            )
        value = self.location._lookup(self.id, self._gone)
        with tf.device(destination.device):
            moved = tf.identity(value)
        self.location._pop(self.id, self._gone)
        self._gone = f"it was moved to {destination.name!r}"
        return destination._store(moved)

    def share(self, protocol):
        """Secret-share the value with its worker as owner (``protocol.share(value, owner=worker)``).

        The worker's plaintext stays on its device; the object is kept.
        """
        protocol.config.get_player(self.location.player)  # the worker must be a player of the protocol's config
        return protocol.share(self._value(), owner=self.location.name)

    # ------------------------------------------------------------------------------ computing remotely
    def apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any):
        """``fn(self_value, *args, **kwargs)`` run on the worker's device; returns pointer(s) to the result.

        ``args`` may be pointers on the same worker or plain values (sent along, like constants); a pointer
        of another worker raises :class:`LocationError`. A structure of tensors gives the same structure of
        pointers.
        """
        resolved = [self._value()] + [self._operand(a, f"args[{i}]") for i, a in enumerate(args)]
        kwargs = {k: self._operand(v, k) for k, v in kwargs.items()}
        result = self._run(fn, resolved, kwargs)
        return tf.nest.map_structure(self.location._store, result)

    @eager_serialized
    def _run(self, fn, args, kwargs):
        with tf.device(self.location.device):
            return tf.nest.map_structure(tf.convert_to_tensor, fn(*args, **kwargs))

    def _value(self) -> tf.Tensor:
        return self.location._lookup(self.id, self._gone)

    def _operand(self, value: Any, argument: str):
        if isinstance(value, Pointer):
            if value.location is not self.location:
                raise LocationError(
                    f"Cannot combine an object on {self.location.name!r} with an object on {value.location.name!r} "
                    f"(`{argument}`): operations run where the data is, so both operands must be on one worker. "
                    f"Move one of them first, e.g. ptr.move({self.location.name!r})."
                )
            return value._value()
        if isinstance(value, (tf.Tensor, tf.Variable)):
            return self.location.place(value, argument)
        return value

    def _binary(self, fn, other, reflected: bool = False):
        if reflected:
            return self.apply(lambda a, b: fn(b, a), other)
        return self.apply(fn, other)

    def __add__(self, other):
        return self._binary(tf.add, other)

    def __radd__(self, other):
        return self._binary(tf.add, other, reflected=True)

    def __sub__(self, other):
        return self._binary(tf.subtract, other)

    def __rsub__(self, other):
        return self._binary(tf.subtract, other, reflected=True)

    def __mul__(self, other):
        return self._binary(tf.multiply, other)

    def __rmul__(self, other):
        return self._binary(tf.multiply, other, reflected=True)

    def __truediv__(self, other):
        return self._binary(tf.divide, other)

    def __rtruediv__(self, other):
        return self._binary(tf.divide, other, reflected=True)

    def __matmul__(self, other):
        return self._binary(tf.matmul, other)

    def __rmatmul__(self, other):
        return self._binary(tf.matmul, other, reflected=True)

    def __neg__(self):
        return self.apply(tf.negative)

    def __getitem__(self, index):
        return self.apply(lambda t: t[index])

    def __bool__(self):
        raise TypeError("The truth value of a Pointer would need its value; get() it first.")
