"""Private merge layers: ``Add``, ``Subtract``, ``Average``, ``Multiply`` and ``Concatenate``.

Sums, differences, averages and concatenations are local on each share; ``Multiply`` of private inputs is a
Beaver product per pair (one round each).
"""

from __future__ import annotations

from functools import reduce

from tfe_lite.errors import ShapeError

from .base import PrivateLayer, integer, register, saved


class _Merge(PrivateLayer):
    """A layer of a list of inputs (at least ``minimum``, exactly ``exactly`` when set)."""

    minimum = 2
    exactly = None

    def forward(self, inputs, *, save=False):
        if not isinstance(inputs, (list, tuple)) or len(inputs) < self.minimum or (self.exactly and len(inputs) != self.exactly):
            count = f"exactly {self.exactly}" if self.exactly else f"at least {self.minimum}"
            raise ShapeError(f"Layer {self.name!r} expects a list of {count} inputs. Received: {inputs!r}")
        for x in inputs:
            self._check_rank(x, tuple(range(1, 9)), "private tensors")
        return self.merge(list(inputs)), saved(save, inputs=list(inputs))

    def merge(self, inputs):
        raise NotImplementedError


@register
class PrivateAdd(_Merge):
    """``keras.layers.Add``: the sum of the inputs (local)."""

    def merge(self, inputs):
        return reduce(lambda a, b: a + b, inputs)


@register
class PrivateSubtract(_Merge):
    """``keras.layers.Subtract``: ``inputs[0] - inputs[1]`` (local)."""

    exactly = 2

    def merge(self, inputs):
        return inputs[0] - inputs[1]


@register
class PrivateAverage(_Merge):
    """``keras.layers.Average``: the sum of the inputs times the public ``1 / len(inputs)``."""

    def merge(self, inputs):
        return reduce(lambda a, b: a + b, inputs) * (1.0 / len(inputs))


@register
class PrivateMultiply(_Merge):
    """``keras.layers.Multiply``: the elementwise product of private inputs (Beaver products)."""

    def merge(self, inputs):
        return reduce(lambda a, b: a * b, inputs)


@register
class PrivateConcatenate(_Merge):
    """``keras.layers.Concatenate`` along ``axis`` (local)."""

    def __init__(self, axis: int = -1, **kwargs):
        super().__init__(**kwargs)
        self.axis = integer(axis, "axis")

    def merge(self, inputs):
        rank = inputs[0].rank
        axis = self.axis % rank if -rank <= self.axis < rank else self.axis
        if axis == 0:
            raise ShapeError(f"Layer {self.name!r} cannot concatenate along the batch axis (axis={self.axis}).")
        return inputs[0].protocol.concat(inputs, axis=axis)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}

    @staticmethod
    def keras_arguments(layer) -> dict:
        return {"axis": layer.axis}
