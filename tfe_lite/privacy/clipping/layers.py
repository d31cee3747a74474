"""Which layers DP-SGD can clip: layers without per-example gradients are refused, and the layers (and
model kinds) ghost clipping has a norm rule for."""

from __future__ import annotations

import keras
from keras.src.models.functional import Functional

from tfe_lite.errors import UnsupportedLayerError


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return model._flatten_layers(include_self=False, recursive=True)


def check_layers(model: keras.Model) -> None:
    """Raises :class:`UnsupportedLayerError` listing every layer that has no per-example gradient."""
    problems = []
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            problems.append(
                f"{type(layer).__name__} {layer.name!r}: batch statistics mix the examples of a batch, so "
                "per-example gradients do not exist (use LayerNormalization or GroupNormalization, or "
                "freeze it with trainable=False)"
            )
        if getattr(layer, "activity_regularizer", None) is not None:
            problems.append(
                f"{type(layer).__name__} {layer.name!r}: activity_regularizer adds a data-dependent loss "
                "outside the per-example loss (remove it)"
            )
    if problems:
        raise UnsupportedLayerError(
            "DP-SGD needs per-example gradients, which these layers do not allow:\n  - "
            + "\n  - ".join(problems)
        )


def _ghost_rule(layer: keras.layers.Layer) -> str | None:
    """Why ghost clipping cannot handle ``layer``'s trainable weights, or ``None`` if it can."""
    kind = type(layer)
    name = f"{kind.__name__} {layer.name!r}"
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        return f"{name}: LoRA or quantized weights"
    if kind is keras.layers.Dense or kind is keras.layers.Embedding:
        return None
    if kind is keras.layers.Conv2D:
        if layer.groups != 1:
            return f"{name}: groups={layer.groups}"
        if layer.data_format != "channels_last":
            return f"{name}: data_format={layer.data_format!r}"
        return None
    if isinstance(layer, keras.Model):
        return f"{name}: nested model"
    return f"{name}: no ghost-norm rule for this layer type"


def ghost_blockers(model: keras.Model) -> list[str]:
    """Every reason why :class:`GhostClipper` cannot handle ``model`` (empty when it can)."""
    if not isinstance(model, (keras.Sequential, Functional)):
        return [
            f"{type(model).__name__} {model.name!r}: subclassed model (ghost clipping rebuilds the model's "
            "graph with a tap on each layer, and a subclassed call has none; write it as a Functional or "
            "Sequential model)"
        ]
    blockers = []
    for layer in model.layers:
        if layer.trainable_weights:
            reason = _ghost_rule(layer)
            if reason:
                blockers.append(reason)
    return blockers
