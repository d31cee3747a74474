"""Private activations: the functions (``relu``, ``sigmoid``, ``tanh``, ``softmax``, ``linear``) and the
layers ``Activation``, ``ReLU``, ``LeakyReLU`` and ``Softmax``.

``relu`` is exact (a comparison); ``sigmoid``, ``tanh`` and ``softmax`` are the protocol's approximations,
within the bounds their docstrings in :mod:`tfe_lite.protocols.pond` state. Dense and Conv2D apply their
``activation`` argument through :func:`apply_activation`.
"""

from __future__ import annotations

import keras

from tfe_lite.errors import ConfigError

from .base import PrivateLayer, integer, register, saved

#: Activations with a private version (Keras names).
ACTIVATIONS = ("linear", "relu", "sigmoid", "softmax", "tanh")


def activation_name(fn) -> str | None:
    """The Keras name of activation ``fn`` when it has a private version, else None."""
    name = getattr(fn, "__name__", None)
    if name in ACTIVATIONS and keras.activations.get(name) is fn:
        return name
    return None


def describe_activation(fn) -> str:
    """How an unsupported activation is named in an error."""
    return getattr(fn, "__name__", None) or repr(fn)


def apply_activation(name: str, x, *, save: bool = False):
    """``(activation(x), saved)``: the 0/1 mask of ``relu`` and the output of ``sigmoid``, ``tanh``,
    ``softmax`` are what their backward rules need."""
    prot = x.protocol
    if name == "linear":
        return x, None
    if name == "relu":
        if save:
            y, mask = prot.relu(x, return_mask=True)
            return y, {"mask": mask}
        return prot.relu(x), None
    if name == "softmax":
        if save:  # the max and the sum of exponentials too: a cross-entropy loss needs only log(sum)
            y, m, total = prot.softmax_parts(x, axis=-1)
            return y, {"y": y, "z": x, "max": m, "total": total}
        y = prot.softmax(x, axis=-1)
    elif name == "sigmoid":
        y = prot.sigmoid(x)
    elif name == "tanh":
        y = prot.tanh(x)
    else:
        raise ConfigError(f"Received an invalid value for `activation`, expected one of {list(ACTIVATIONS)}. Received: activation={name!r}")
    return y, saved(save, y=y, z=x)


def activation_backward(name: str, grad, kept):
    """``d loss / d x`` of ``activation(x)`` from ``grad = d loss / d activation(x)`` and what
    :func:`apply_activation` kept: relu through its 0/1 mask (no second comparison), sigmoid ``g y (1 - y)``,
    tanh ``g (1 - y**2)``, softmax ``y (g - sum(g y))`` over the last axis."""
    if name == "linear":
        return grad
    prot = grad.protocol
    if name == "relu":
        return prot.mul(grad, kept["mask"])
    y = kept["y"]
    if name == "sigmoid":
        return prot.mul(prot.mul(grad, y), prot.sub(1.0, y))
    if name == "tanh":
        return prot.mul(grad, prot.sub(1.0, prot.square(y)))
    if name == "softmax":
        inner = prot.reduce_sum(prot.mul(grad, y), axis=-1, keepdims=True)
        return prot.mul(y, prot.sub(grad, inner))
    raise ConfigError(f"Received an invalid value for `activation`, expected one of {list(ACTIVATIONS)}. Received: activation={name!r}")


def check_activation(name) -> str:
    if name is None:
        return "linear"
    if name not in ACTIVATIONS:
        raise ConfigError(f"Received an invalid value for `activation`, expected one of {list(ACTIVATIONS)} or None. Received: activation={name!r}")
    return name


@register
class PrivateActivation(PrivateLayer):
    """``keras.layers.Activation`` on Pond tensors: one of :data:`ACTIVATIONS`."""

    def __init__(self, activation: str, **kwargs):
        super().__init__(**kwargs)
        self.activation = check_activation(activation)

    def forward(self, inputs, *, save=False):
        return apply_activation(self.activation, inputs, save=save)

    def backward(self, grad, kept, *, preactivation=False, input_gradient=True):
        return (grad if preactivation else activation_backward(self.activation, grad, kept)), {}

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}

    @classmethod
    def unsupported(cls, layer) -> list[str]:
        if activation_name(layer.activation) is None:
            return [f"activation={describe_activation(layer.activation)!r} has no private version (supported: {', '.join(ACTIVATIONS)})"]
        return []

    @staticmethod
    def keras_arguments(layer) -> dict:
        return {"activation": activation_name(layer.activation)}


@register
class PrivateReLU(PrivateLayer):
    """``keras.layers.ReLU`` (and ``LeakyReLU``): ``max(x, 0)`` with an optional ``negative_slope`` below 0
    and an optional ``max_value`` cap.

    ``f(x) = relu(x) - relu(x - m) + a (x - relu(x))`` for slope ``a`` and cap ``m``: one comparison per
    element, two with a cap (both in one protocol call).
    """

    def __init__(self, max_value: float | None = None, negative_slope: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if max_value is not None and not (isinstance(max_value, (int, float)) and max_value > 0):
            raise ConfigError(f"Received an invalid value for `max_value`, expected a positive number or None. Received: max_value={max_value!r}")
        if not (isinstance(negative_slope, (int, float)) and 0 <= negative_slope < 1):
            raise ConfigError(f"Received an invalid value for `negative_slope`, expected a number in [0, 1). Received: negative_slope={negative_slope!r}")
        self.max_value = None if max_value is None else float(max_value)
        self.negative_slope = float(negative_slope)

    def forward(self, inputs, *, save=False):
        prot = inputs.protocol
        if self.max_value is None:
            r, keep = apply_activation("relu", inputs, save=save)
            y = r
        else:
            n = inputs.shape[0]
            both = prot.relu(prot.concat([inputs, inputs - self.max_value], axis=0), return_mask=save)
            both, mask = both if save else (both, None)
            r = both[:n]
            y = r - both[n:]
            keep = saved(save, mask=mask[:n] - mask[n:], below=mask[:n]) if save else None
        if self.negative_slope:
            y = y + (inputs - r) * self.negative_slope  # x - relu(x) is min(x, 0)
            if save and self.max_value is None:
                keep["below"] = keep["mask"]
        return y, keep

    def backward(self, grad, kept, *, preactivation=False, input_gradient=True):
        """``g [0 <= x < max_value] + negative_slope g [x < 0]``, from the forward's masks."""
        prot = grad.protocol
        dx = prot.mul(grad, kept["mask"])
        if self.negative_slope:  # x < 0 where the [x >= 0] mask is 0
            dx = dx + prot.mul(grad, prot.sub(1.0, kept["below"])) * self.negative_slope
        return dx, {}

    def get_config(self):
        return {**super().get_config(), "max_value": self.max_value, "negative_slope": self.negative_slope}

    @classmethod
    def unsupported(cls, layer) -> list[str]:
        problems = []
        threshold = float(getattr(layer, "threshold", 0.0))
        if threshold != 0.0:
            problems.append(f"threshold={threshold!r} has no private version (only 0)")
        slope = float(getattr(layer, "negative_slope", 0.0))
        if not 0 <= slope < 1:
            problems.append(f"negative_slope={slope!r} has no private version (only 0 <= negative_slope < 1)")
        max_value = getattr(layer, "max_value", None)
        if max_value is not None and float(max_value) <= 0:
            problems.append(f"max_value={max_value!r} has no private version (only a positive cap)")
        return problems

    @staticmethod
    def keras_arguments(layer) -> dict:
        max_value = getattr(layer, "max_value", None)
        return {"max_value": None if max_value is None else float(max_value),
                "negative_slope": float(getattr(layer, "negative_slope", 0.0))}


@register
class PrivateSoftmax(PrivateLayer):
    """``keras.layers.Softmax`` over ``axis``: the protocol's softmax (exact max subtracted first)."""

    def __init__(self, axis: int = -1, **kwargs):
        super().__init__(**kwargs)
        self.axis = integer(axis, "axis")

    def forward(self, inputs, *, save=False):
        if save and self.axis in (-1, inputs.rank - 1):
            return apply_activation("softmax", inputs, save=True)
        y = inputs.protocol.softmax(inputs, axis=self.axis)
        return y, saved(save, y=y)

    def backward(self, grad, kept, *, preactivation=False, input_gradient=True):
        if preactivation:
            return grad, {}
        prot = grad.protocol
        inner = prot.reduce_sum(prot.mul(grad, kept["y"]), axis=self.axis, keepdims=True)
        return prot.mul(kept["y"], prot.sub(grad, inner)), {}

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}

    @classmethod
    def unsupported(cls, layer) -> list[str]:
        axis = layer.axis
        if not isinstance(axis, int):
            return [f"axis={axis!r} has no private version (only one axis)"]
        return []

    @staticmethod
    def keras_arguments(layer) -> dict:
        return {"axis": layer.axis}
