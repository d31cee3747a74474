"""Each example's loss, from the losses given to ``compile``: what DP-SGD differentiates and clips.

Keras reduces a loss over the batch; DP-SGD needs it per example. :func:`per_example_loss` applies each
compiled loss (with its masks and sample weights) without the batch reduction and sums the outputs' losses
with their loss weights, so that the batch mean equals Keras' own loss when no mask is used.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras.src.backend.common.masking import get_keras_mask
from keras.src.losses.loss import reduce_weighted_values

from tfe_lite.errors import ConfigError


def _resolve(path: tuple, structure: Any) -> Any:
    for key in path:
        structure = structure[key]
    return structure


def _unreduced_loss(loss: keras.losses.Loss, y_true: Any, y_pred: Any, sample_weight: Any) -> tf.Tensor:
    """``loss`` of each example: Keras' ``Loss.__call__`` without the batch reduction, then the mean
    over the remaining (non-batch) axes, so that the batch mean equals Keras' default reduction when no
    mask is used."""
    in_mask = get_keras_mask(y_pred)
    y_pred = keras.ops.convert_to_tensor(y_pred, dtype=loss.dtype)
    y_true = keras.ops.convert_to_tensor(y_true, dtype=loss.dtype)
    values = loss.call(y_true, y_pred)
    out_mask = get_keras_mask(values)
    masks = [m for m in (in_mask, out_mask) if m is not None]
    mask = None if not masks else masks[0] if len(masks) == 1 else masks[0] & masks[1]
    values = reduce_weighted_values(values, sample_weight, mask=mask, reduction="none", dtype=loss.dtype)
    if values.shape.rank == 0:
        raise ConfigError(
            f"The loss {loss.name!r} returns one value per batch; DP-SGD needs a loss with one value per "
            "example (Keras losses' `call` returns per-example values)."
        )
    if values.shape.rank > 1:
        values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
    return values


def per_output_losses(compile_loss: Any, y: Any, y_pred: Any, sample_weight: Any) -> list[tuple[tf.Tensor, Any]]:
    """Each compiled loss of each example, unweighted, with its loss weight: ``[([batch], weight)]``.
    ``compile_loss`` is the model's ``_compile_loss`` (Keras' ``CompileLoss``)."""
    if y is None:
        raise ConfigError(
            "DP-SGD needs targets `y`: the per-example loss compares them with predictions."
        )
    if not compile_loss.built:
        compile_loss.build(y, y_pred)
    nested = tf.nest.is_nested(sample_weight)
    return [
        (
            _unreduced_loss(
                loss,
                _resolve(path, y),
                _resolve(path, y_pred),
                _resolve(path, sample_weight) if nested else sample_weight,
            ),
            weight,
        )
        for path, loss, weight, _ in compile_loss._flat_losses
    ]


def per_example_loss(compile_loss: Any, y: Any, y_pred: Any, sample_weight: Any) -> tf.Tensor:
    """The compiled loss of each example (loss-weighted sum over outputs), shape ``[batch]``."""
    weighted = [
        values if weight is None else values * weight
        for values, weight in per_output_losses(compile_loss, y, y_pred, sample_weight)
    ]
    return tf.add_n(weighted)


def update_output_loss_metrics(compile_loss: Any, y: Any, y_pred: Any, sample_weight: Any, batch: tf.Tensor) -> None:
    """Keras' per-output loss metrics (models with several losses), from the batch's predictions."""
    metrics = compile_loss.metrics
    if not metrics:
        return
    for (values, _), metric in zip(per_output_losses(compile_loss, y, y_pred, sample_weight), metrics):
        mean = tf.math.divide_no_nan(tf.reduce_sum(values), tf.cast(batch, values.dtype))
        metric.update_state(mean, sample_weight=batch)
