"""Private ``Flatten``, ``Reshape`` and ``ZeroPadding2D``: local rearrangements of each share.

Zero padding joins public zeros to the private input (the trivial sharing of a public value), so it costs
no communication either.
"""

from __future__ import annotations

import numpy as np

from tfe_lite.errors import ConfigError

from .base import PrivateLayer, register, saved
from .conv2d import channels_last_problems


@register
class PrivateFlatten(PrivateLayer):
    """``keras.layers.Flatten`` (channels last): ``[N, ...] -> [N, prod(...)]``."""

    def forward(self, inputs, *, save=False):
        self._check_rank(inputs, tuple(range(1, 9)), "inputs with a batch axis")
        size = int(np.prod(inputs.shape[1:]))
        return inputs.reshape([inputs.shape[0], size]), saved(save, input_shape=list(inputs.shape))

    def backward(self, grad, kept, *, preactivation=False, input_gradient=True):
        return grad.reshape(kept["input_shape"]), {}

    @classmethod
    def unsupported(cls, layer) -> list[str]:
        return channels_last_problems(layer)


@register
class PrivateReshape(PrivateLayer):
    """``keras.layers.Reshape``: ``[N, ...] -> [N, *target_shape]`` (one entry may be -1)."""

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        try:
            target = tuple(int(d) for d in target_shape)
        except (TypeError, ValueError):
            target = None
        if target is None or any(d < -1 or d == 0 for d in target) or target.count(-1) > 1:
            raise ConfigError(f"Received an invalid value for `target_shape`, expected positive integers (one may be -1). Received: target_shape={target_shape!r}")
        self.target_shape = target

    def forward(self, inputs, *, save=False):
        return inputs.reshape([inputs.shape[0], *self.target_shape]), saved(save, input_shape=list(inputs.shape))

    def backward(self, grad, kept, *, preactivation=False, input_gradient=True):
        return grad.reshape(kept["input_shape"]), {}

    def get_config(self):
        return {**super().get_config(), "target_shape": self.target_shape}

    @staticmethod
    def keras_arguments(layer) -> dict:
        return {"target_shape": tuple(-1 if d is None else d for d in layer.target_shape)}


def _padding(value) -> tuple[tuple[int, int], tuple[int, int]]:
    given = value
    if isinstance(value, int) and not isinstance(value, bool):
        value = ((value, value), (value, value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        value = ((value[0], value[0]), (value[1], value[1]))
    try:
        (top, bottom), (left, right) = value
        pads = tuple(int(p) for p in (top, bottom, left, right))
    except (TypeError, ValueError):
        pads = None
    if pads is None or any(p < 0 or isinstance(p, bool) for p in pads):
        raise ConfigError("Received an invalid value for `padding`, expected a non-negative int, a pair, or "
                          f"((top, bottom), (left, right)). Received: padding={given!r}")
    return (pads[0], pads[1]), (pads[2], pads[3])


@register
class PrivateZeroPadding2D(PrivateLayer):
    """``keras.layers.ZeroPadding2D`` (channels last): zeros around H and W."""

    def __init__(self, padding=1, **kwargs):
        super().__init__(**kwargs)
        self.padding = _padding(padding)

    def forward(self, inputs, *, save=False):
        self._check_rank(inputs, 4, "inputs of shape [N, H, W, C]")
        prot = inputs.protocol
        x = inputs
        for axis, (before, after) in zip((1, 2), self.padding):
            parts = []
            for size in (before, after):
                shape = list(x.shape)
                shape[axis] = size
                parts.append(np.zeros(shape) if size else None)
            pieces = [p for p in (parts[0], x, parts[1]) if p is not None]
            if len(pieces) > 1:
                x = prot.concat(pieces, axis=axis)
        return x, saved(save, input_shape=list(inputs.shape))

    def backward(self, grad, kept, *, preactivation=False, input_gradient=True):
        _, h, w, _ = kept["input_shape"]
        (top, _), (left, _) = self.padding
        return grad[:, top:top + h, left:left + w, :], {}

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}

    @classmethod
    def unsupported(cls, layer) -> list[str]:
        return channels_last_problems(layer)

    @staticmethod
    def keras_arguments(layer) -> dict:
        return {"padding": tuple(tuple(p) for p in layer.padding)}
