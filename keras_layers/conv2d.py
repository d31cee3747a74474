"""Private ``Conv2D`` (channels last): ``activation(conv2d(x, kernel) + bias)``, any strides, SAME or VALID.

The convolution of the private input with the model owner's private kernel is one Beaver convolution (one
round, ``prot.conv2d``); the bias is added locally.
"""

from __future__ import annotations

from tfe_lite.errors import ConfigError

from .activation import activation_backward, activation_name, apply_activation, check_activation
from .base import PrivateLayer, register
from .dense import affine_weights, common_problems


def pair(value, name: str) -> tuple[int, int]:
    """A positive int or a pair of them, as a pair."""
    pair_ = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not (isinstance(pair_, (tuple, list)) and len(pair_) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair_)):
        raise ConfigError(f"Received an invalid value for `{name}`, expected a positive integer or a pair of them. Received: {name}={value!r}")
    return int(pair_[0]), int(pair_[1])


def padding_name(value) -> str:
    if not isinstance(value, str) or value.lower() not in ("same", "valid"):
        raise ConfigError(f"Received an invalid value for `padding`, expected 'same' or 'valid'. Received: padding={value!r}")
    return value.lower()


def channels_last_problems(layer) -> list[str]:
    fmt = getattr(layer, "data_format", "channels_last")
    return [] if fmt == "channels_last" else [f"data_format={fmt!r} has no private version (only 'channels_last')"]


@register
class PrivateConv2D(PrivateLayer):
    """``keras.layers.Conv2D`` on Pond tensors of shape ``[N, H, W, C]``.

    Args:
        filters: output channels.
        kernel_size: an int or a pair.
        strides: an int or a pair.
        padding: ``"valid"`` or ``"same"`` (TensorFlow's rule, as Keras).
        activation: one of ``linear``, ``relu``, ``sigmoid``, ``tanh``, ``softmax`` (None: linear).
        use_bias: whether the layer adds a bias.
    """

    def __init__(self, filters: int, kernel_size, strides=1, padding: str = "valid", activation: str | None = None,
                 use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(filters, int) or isinstance(filters, bool) or filters < 1:
            raise ConfigError(f"Received an invalid value for `filters`, expected a positive integer. Received: filters={filters!r}")
        self.filters = filters
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.strides = pair(strides, "strides")
        self.padding = padding_name(padding)
        self.activation = check_activation(activation)
        self.use_bias = bool(use_bias)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ConfigError(f"Layer {self.name!r} needs inputs [N, H, W, C] with known C. Received: input_shape={input_shape}")
        self.add_private_weight("kernel", self.kernel_size + (int(input_shape[-1]), self.filters))
        if self.use_bias:
            self.add_private_weight("bias", (self.filters,))

    def forward(self, inputs, *, save=False):
        self._check_rank(inputs, 4, "inputs of shape [N, H, W, C]")
        prot = inputs.protocol
        z = prot.conv2d(inputs, self.private_weight("kernel"), strides=self.strides, padding=self.padding.upper())
        if self.use_bias:
            z = z + self.private_weight("bias")
        y, kept = apply_activation(self.activation, z, save=save)
        return y, ({"x": inputs, **(kept or {})} if save else None)

    def backward(self, grad, kept, *, preactivation=False, input_gradient=True):
        """``(d loss / d x, {"kernel", "bias"})`` for ``g = d loss / d z``: the kernel gradient from the input's
        columns (``prot.conv2d_filter_gradient``), the input gradient by ``prot.conv2d_input_gradient``."""
        prot = grad.protocol
        g = grad if preactivation else activation_backward(self.activation, grad, kept)
        x = kept["x"]
        kernel = self.private_weight("kernel")
        padding = self.padding.upper()
        grads = {"kernel": prot.conv2d_filter_gradient(x, g, kernel.shape, self.strides, padding)}
        if self.use_bias:
            grads["bias"] = g.reduce_sum(axis=[0, 1, 2])
        dx = prot.conv2d_input_gradient(g, kernel, x.shape, self.strides, padding) if input_gradient else None
        return dx, grads

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size, "strides": self.strides,
                "padding": self.padding, "activation": self.activation, "use_bias": self.use_bias}

    @classmethod
    def unsupported(cls, layer) -> list[str]:
        problems = common_problems(layer) + channels_last_problems(layer)
        if tuple(layer.dilation_rate) != (1, 1):
            problems.append(f"dilation_rate={tuple(layer.dilation_rate)!r} has no private version (only 1)")
        if getattr(layer, "groups", 1) != 1:
            problems.append(f"groups={layer.groups!r} has no private version (only 1)")
        return problems

    @staticmethod
    def keras_arguments(layer) -> dict:
        return {"filters": layer.filters, "kernel_size": tuple(layer.kernel_size), "strides": tuple(layer.strides),
                "padding": layer.padding, "activation": activation_name(layer.activation), "use_bias": layer.use_bias}

    keras_weights = staticmethod(affine_weights)
