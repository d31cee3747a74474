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

    def backward(self, grad, kept, *, preactivation=False, input_gradient=True):
        return [unbroadcast(g, x.shape) for g, x in zip(self.input_gradients(grad, kept["inputs"]), kept["inputs"])], {}

    def input_gradients(self, grad, inputs):
        raise NotImplementedError


def unbroadcast(grad, shape):
    """``grad`` summed over the axes an input of ``shape`` was broadcast along (local)."""
    shape = list(shape)
    if list(grad.shape) == shape:
        return grad
    extra = grad.rank - len(shape)
    if extra:
        grad = grad.reduce_sum(axis=list(range(extra)))
    axes = [i for i, d in enumerate(shape) if d == 1 and grad.shape[i] != 1]
    return grad.reduce_sum(axis=axes, keepdims=True) if axes else grad


@register
class PrivateAdd(_Merge):
    """``keras.layers.Add``: the sum of the inputs (local)."""

    def merge(self, inputs):
        return reduce(lambda a, b: a + b, inputs)

    def input_gradients(self, grad, inputs):
        return [grad] * len(inputs)


@register
class PrivateSubtract(_Merge):
    """``keras.layers.Subtract``: ``inputs[0] - inputs[1]`` (local)."""

    exactly = 2

    def merge(self, inputs):
        return inputs[0] - inputs[1]

    def input_gradients(self, grad, inputs):
        return [grad, -grad]


@register
class PrivateAverage(_Merge):
    """``keras.layers.Average``: the sum of the inputs times the public ``1 / len(inputs)``."""

    def merge(self, inputs):
        return reduce(lambda a, b: a + b, inputs) * (1.0 / len(inputs))

    def input_gradients(self, grad, inputs):
        return [grad * (1.0 / len(inputs))] * len(inputs)


@register
class PrivateMultiply(_Merge):
    """``keras.layers.Multiply``: the elementwise product of private inputs (Beaver products)."""

    def merge(self, inputs):
        return reduce(lambda a, b: a * b, inputs)

    def input_gradients(self, grad, inputs):
        """The product rule: ``g * prod(other inputs)`` for each input (Beaver products)."""
        grads = []
        for i in range(len(inputs)):
            others = [x for j, x in enumerate(inputs) if j != i]
            grads.append(reduce(lambda a, b: a * b, [grad, *others]))
        return grads


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

    def input_gradients(self, grad, inputs):
        axis = self.axis % grad.rank
        grads, start = [], 0
        for x in inputs:
            index = [slice(None)] * grad.rank
            index[axis] = slice(start, start + x.shape[axis])
            grads.append(grad[tuple(index)])
            start += x.shape[axis]
        return grads

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}

    @staticmethod
    def keras_arguments(layer) -> dict:
        return {"axis": layer.axis}
