"""Private pooling (channels last): ``MaxPooling2D``, ``AveragePooling2D``, ``GlobalAveragePooling2D``,
``GlobalMaxPooling2D``.

Max pooling is the protocol's exact comparison tree (``prot.max_pool2d``, ``prot.reduce_max``); average
pooling is local window sums and a product with the public ``1 / count``.
"""

from __future__ import annotations

import numpy as np

from tfe_lite.errors import ConfigError

from .base import PrivateLayer, register, saved
from .conv2d import channels_last_problems, padding_name, pair


class _Pooling2D(PrivateLayer):
    """A window pooling: ``pool_size``, ``strides`` (None: the pool size) and ``padding``."""

    def __init__(self, pool_size=2, strides=None, padding: str = "valid", **kwargs):
        super().__init__(**kwargs)
        self.pool_size = pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else pair(strides, "strides")
        self.padding = padding_name(padding)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides, "padding": self.padding}

    @classmethod
    def unsupported(cls, layer) -> list[str]:
        return channels_last_problems(layer)

    @staticmethod
    def keras_arguments(layer) -> dict:
        return {"pool_size": tuple(layer.pool_size), "strides": tuple(layer.strides), "padding": layer.padding}


@register
class PrivateMaxPooling2D(_Pooling2D):
    """``keras.layers.MaxPooling2D`` on Pond tensors ``[N, H, W, C]`` (``prot.max_pool2d``)."""

    def forward(self, inputs, *, save=False):
        self._check_rank(inputs, 4, "inputs of shape [N, H, W, C]")
        prot = inputs.protocol
        if save:  # the argmax one-hot of each window, from the same tournament: the backward needs no comparison
            y, argmax = prot.max_pool2d_with_argmax(inputs, self.pool_size, strides=self.strides, padding=self.padding.upper())
            return y, {"argmax": argmax, "input_shape": tuple(inputs.shape)}
        return prot.max_pool2d(inputs, self.pool_size, strides=self.strides, padding=self.padding.upper()), None

    def backward(self, grad, kept, *, preactivation=False, input_gradient=True):
        return grad.protocol.max_pool2d_gradient(kept["argmax"], grad, kept["input_shape"], self.pool_size,
                                                 strides=self.strides, padding=self.padding.upper()), {}


@register
class PrivateAveragePooling2D(_Pooling2D):
    """``keras.layers.AveragePooling2D`` on Pond tensors ``[N, H, W, C]`` (SAME averages over the in-bounds
    part of each window, as Keras)."""

    def forward(self, inputs, *, save=False):
        self._check_rank(inputs, 4, "inputs of shape [N, H, W, C]")
        y = inputs.protocol.avg_pool2d(inputs, self.pool_size, strides=self.strides, padding=self.padding.upper())
        return y, saved(save, input_shape=tuple(inputs.shape))

    def backward(self, grad, kept, *, preactivation=False, input_gradient=True):
        return grad.protocol.avg_pool2d_gradient(grad, kept["input_shape"], self.pool_size, strides=self.strides,
                                                 padding=self.padding.upper()), {}


class _GlobalPooling2D(PrivateLayer):
    def __init__(self, keepdims: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(keepdims, bool):
            raise ConfigError(f"Received an invalid value for `keepdims`, expected True or False. Received: keepdims={keepdims!r}")
        self.keepdims = keepdims

    def get_config(self):
        return {**super().get_config(), "keepdims": self.keepdims}

    @classmethod
    def unsupported(cls, layer) -> list[str]:
        return channels_last_problems(layer)

    @staticmethod
    def keras_arguments(layer) -> dict:
        return {"keepdims": bool(layer.keepdims)}


@register
class PrivateGlobalAveragePooling2D(_GlobalPooling2D):
    """``keras.layers.GlobalAveragePooling2D``: a local sum over H and W, times the public ``1 / (H W)``."""

    def forward(self, inputs, *, save=False):
        self._check_rank(inputs, 4, "inputs of shape [N, H, W, C]")
        _, h, w, _ = inputs.shape
        y = inputs.reduce_sum(axis=[1, 2], keepdims=self.keepdims) * (1.0 / (h * w))
        return y, saved(save, input_shape=tuple(inputs.shape))

    def backward(self, grad, kept, *, preactivation=False, input_gradient=True):
        n, h, w, c = kept["input_shape"]
        return grad.reshape([n, 1, 1, c]) * np.full((1, h, w, 1), 1.0 / (h * w)), {}


@register
class PrivateGlobalMaxPooling2D(_GlobalPooling2D):
    """``keras.layers.GlobalMaxPooling2D``: the exact maximum over the ``H W`` positions of each channel."""

    def forward(self, inputs, *, save=False):
        self._check_rank(inputs, 4, "inputs of shape [N, H, W, C]")
        n, h, w, c = inputs.shape
        prot = inputs.protocol
        if save:  # one window over H x W: its argmax comes from the same tournament
            y, argmax = prot.max_pool2d_with_argmax(inputs, (h, w), strides=(h, w), padding="VALID")
            kept = {"argmax": argmax, "input_shape": tuple(inputs.shape)}
        else:
            y, kept = prot.reduce_max(inputs.reshape([n, h * w, c]), axis=1), None
        return y.reshape([n, 1, 1, c] if self.keepdims else [n, c]), kept

    def backward(self, grad, kept, *, preactivation=False, input_gradient=True):
        n, h, w, c = kept["input_shape"]
        return grad.protocol.max_pool2d_gradient(kept["argmax"], grad.reshape([n, 1, 1, c]), kept["input_shape"], (h, w),
                                                 strides=(h, w), padding="VALID"), {}
