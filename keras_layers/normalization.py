"""Private ``BatchNormalization`` at inference, and ``Rescaling``.

At inference batch normalization is the affine map ``y = x * s + t`` with ``s = gamma / sqrt(var + eps)``
and ``t = beta - mean * s``, computed in plaintext by the model owner from its moving statistics. When the
layer follows a ``Dense`` or ``Conv2D`` without activation (and is its only consumer), :func:`fold` merges it
into that layer's kernel and bias before they are shared, so it costs nothing. Otherwise
:class:`PrivateBatchNormalization` applies it: ``s`` and ``t`` are private weights, ``x * s`` one Beaver
product per element.

``Rescaling`` (``x * scale + offset`` with public constants) is local.
"""

from __future__ import annotations

import numpy as np

from tfe_lite.errors import ConfigError

from .base import PrivateLayer, integer, register, saved


def inference_affine(layer) -> tuple[np.ndarray, np.ndarray]:
    """``(s, t)`` of a Keras BatchNormalization at inference: ``y = x * s + t`` along its axis."""
    variance = np.asarray(layer.moving_variance, np.float64)
    mean = np.asarray(layer.moving_mean, np.float64)
    gamma = np.asarray(layer.gamma, np.float64) if layer.scale else np.ones_like(mean)
    beta = np.asarray(layer.beta, np.float64) if layer.center else np.zeros_like(mean)
    s = gamma / np.sqrt(variance + layer.epsilon)
    return s, beta - mean * s


def fold(weights: list[np.ndarray], layer) -> list[np.ndarray]:
    """``[kernel, bias]`` of a Dense or Conv2D (output channels last; bias may be missing) with the
    BatchNormalization ``layer`` that follows it folded in: ``kernel * s``, ``bias * s + t``."""
    s, t = inference_affine(layer)
    kernel = weights[0] * s
    bias = (weights[1] if len(weights) > 1 else np.zeros_like(s)) * s + t
    return [kernel, bias]


def foldable(layer, input_rank: int) -> bool:
    """Whether BatchNormalization ``layer`` normalizes the last axis (the affine layer's output channels)."""
    return layer.axis in (-1, input_rank - 1)


@register
class PrivateBatchNormalization(PrivateLayer):
    """``keras.layers.BatchNormalization`` at inference, applied as the private affine ``x * scale + offset``
    along ``axis`` (weights ``scale`` and ``offset``, computed by the model owner)."""

    def __init__(self, axis: int = -1, **kwargs):
        super().__init__(**kwargs)
        self.axis = integer(axis, "axis")

    def build(self, input_shape):
        rank = len(input_shape)
        if not -rank <= self.axis < rank or self.axis % rank == 0 or input_shape[self.axis] is None:
            raise ConfigError(f"Layer {self.name!r}: axis={self.axis} is not a known non-batch axis of inputs of shape {input_shape}.")
        channels = int(input_shape[self.axis])
        self.add_private_weight("scale", (channels,))
        self.add_private_weight("offset", (channels,))

    training_problem = ("BatchNormalization trains on batch statistics, which have no private version here; "
                        "train without it, or freeze it into the preceding layer (secure() folds it) for inference")

    def forward(self, inputs, *, save=False):
        shape = [1] * inputs.rank
        shape[self.axis] = inputs.shape[self.axis]
        y = inputs * self.private_weight("scale").reshape(shape) + self.private_weight("offset").reshape(shape)
        return y, saved(save, x=inputs)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}

    @staticmethod
    def keras_arguments(layer) -> dict:
        return {"axis": int(layer.axis)}

    @staticmethod
    def keras_weights(layer) -> list[np.ndarray]:
        return list(inference_affine(layer))


@register
class PrivateRescaling(PrivateLayer):
    """``keras.layers.Rescaling``: ``x * scale + offset`` with public numbers (local)."""

    def __init__(self, scale: float, offset: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("scale", scale), ("offset", offset)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
                raise ConfigError(f"Received an invalid value for `{name}`, expected a finite number. Received: {name}={value!r}")
        self.scale = float(scale)
        self.offset = float(offset)

    def forward(self, inputs, *, save=False):
        y = inputs * self.scale
        return (y + self.offset if self.offset else y), saved(save)

    def backward(self, grad, kept, *, preactivation=False, input_gradient=True):
        return grad * self.scale, {}

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}

    @classmethod
    def unsupported(cls, layer) -> list[str]:
        problems = []
        for name in ("scale", "offset"):
            if np.ndim(getattr(layer, name)) != 0:
                problems.append(f"{name}={getattr(layer, name)!r} has no private version (only a number)")
        return problems

    @staticmethod
    def keras_arguments(layer) -> dict:
        return {"scale": float(layer.scale), "offset": float(layer.offset)}
