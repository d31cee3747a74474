"""Private ``Dense``: ``activation(x @ kernel + bias)`` with the model owner's kernel and bias shared.

The product of the private input and the private kernel is a Beaver matmul (one round); the bias is added
locally. Inputs of rank > 2 are multiplied along their last axis, like Keras.
"""

from __future__ import annotations

import numpy as np

from tfe_lite.errors import ConfigError

from .activation import (ACTIVATIONS, activation_backward, activation_name, apply_activation, check_activation,
                         describe_activation)
from .base import PrivateLayer, register


def quantization_problems(layer) -> list[str]:
    """A quantized Keras layer (int8, float8...) has weights in another encoding: refused by name."""
    mode = getattr(layer, "quantization_mode", None)
    return [f"quantization_mode={mode!r} has no private version (use the float model)"] if mode else []


def common_problems(layer) -> list[str]:
    """The settings Dense and Conv2D share: activation and quantization."""
    problems = quantization_problems(layer)
    if activation_name(layer.activation) is None:
        problems.append(f"activation={describe_activation(layer.activation)!r} has no private version "
                        f"(supported: {', '.join(ACTIVATIONS)})")
    return problems


def affine_weights(layer) -> list[np.ndarray]:
    """``[kernel, bias]`` (or ``[kernel]``) of a Keras Dense or Conv2D, as float64 (a LoRA kernel merged)."""
    weights = [np.asarray(layer.kernel, np.float64)]
    if layer.use_bias:
        weights.append(np.asarray(layer.bias, np.float64))
    return weights


@register
class PrivateDense(PrivateLayer):
    """``keras.layers.Dense`` on Pond tensors.

    Args:
        units: output size.
        activation: one of ``linear``, ``relu``, ``sigmoid``, ``tanh``, ``softmax`` (None: linear).
        use_bias: whether the layer adds a bias.
    """

    def __init__(self, units: int, activation: str | None = None, use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(units, int) or isinstance(units, bool) or units < 1:
            raise ConfigError(f"Received an invalid value for `units`, expected a positive integer. Received: units={units!r}")
        self.units = units
        self.activation = check_activation(activation)
        self.use_bias = bool(use_bias)

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ConfigError(f"Layer {self.name!r} needs inputs of rank >= 2 with a known last dimension. Received: input_shape={input_shape}")
        self.add_private_weight("kernel", (int(input_shape[-1]), self.units))
        if self.use_bias:
            self.add_private_weight("bias", (self.units,))

    def forward(self, inputs, *, save=False):
        self._check_rank(inputs, tuple(range(2, 9)), "inputs of rank >= 2")
        x = inputs
        if x.rank > 2:
            x = x.reshape([-1, x.shape[-1]])
        z = x @ self.private_weight("kernel")
        if self.use_bias:
            z = z + self.private_weight("bias")
        if inputs.rank > 2:
            z = z.reshape(list(inputs.shape[:-1]) + [self.units])
        y, kept = apply_activation(self.activation, z, save=save)
        return y, ({"x": inputs, **(kept or {})} if save else None)

    def backward(self, grad, kept, *, preactivation=False, input_gradient=True):
        """``(d loss / d x, {"kernel": x^T g, "bias": sum(g)})`` for ``g = d loss / d z`` (two Beaver
        matmuls; the input gradient ``g kernel^T`` is skipped for a first layer)."""
        g = grad if preactivation else activation_backward(self.activation, grad, kept)
        x = kept["x"]
        x2, g2 = x, g
        if x.rank > 2:
            x2, g2 = x.reshape([-1, x.shape[-1]]), g.reshape([-1, self.units])
        grads = {"kernel": x2.transpose() @ g2}
        if self.use_bias:
            grads["bias"] = g2.reduce_sum(axis=0)
        dx = None
        if input_gradient:
            dx = (g2 @ self.private_weight("kernel").transpose()).reshape(list(x.shape))
        return dx, grads

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation, "use_bias": self.use_bias}

    @classmethod
    def unsupported(cls, layer) -> list[str]:
        return common_problems(layer)

    @staticmethod
    def keras_arguments(layer) -> dict:
        return {"units": layer.units, "activation": activation_name(layer.activation), "use_bias": layer.use_bias}

    keras_weights = staticmethod(affine_weights)
