"""Records (examples, or microbatches of consecutive examples), their tensors, and a clipper's result.

A record is one example, or one microbatch of ``batch / num_microbatches`` consecutive examples whose loss is
the mean of its examples' losses. Both clippers lay per-example tensors out per record with these helpers
and return a :class:`PerRecordGradients`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

#: ``loss_fn(y, y_pred, sample_weight) -> [batch]``: each example's loss.
LossFn = Callable[[Any, Any, Any], tf.Tensor]


def _to_records(t: tf.Tensor, microbatches: int | None, feature_rank: int) -> tf.Tensor:
    """``[batch, *middle, *features]`` -> ``[records, rows, *features]`` (a record's rows are consecutive)."""
    rank = t.shape.rank
    shape = tf.shape(t)
    middle = tf.reduce_prod(shape[1 : rank - feature_rank])
    if microbatches is None:
        records, rows = shape[0], middle
    else:
        records, rows = microbatches, (shape[0] // microbatches) * middle
    out = tf.reshape(t, tf.concat([[records, rows], shape[rank - feature_rank :]], axis=0))
    static_middle = t.shape[1 : rank - feature_rank].num_elements()
    static_rows = static_middle if microbatches is None else None
    records_static = t.shape[0] if microbatches is None else microbatches
    out.set_shape([records_static, static_rows, *t.shape[rank - feature_rank :]])
    return out


def _expand_factors(factors: tf.Tensor, microbatches: int | None, batch: tf.Tensor) -> tf.Tensor:
    """Per-record factors -> per-example factors."""
    if microbatches is None:
        return factors
    return tf.repeat(factors, batch // microbatches)


def _split_inputs(x: Any, microbatches: int | None) -> Any:
    """Every tensor ``[batch, ...]`` of ``x`` -> ``[records, batch / records, ...]``."""

    def split(t):
        t = tf.convert_to_tensor(t)
        shape = tf.shape(t)
        if microbatches is None:
            head = tf.stack([shape[0], 1])
        else:
            head = tf.stack([microbatches, shape[0] // microbatches])
        return tf.reshape(t, tf.concat([head, shape[1:]], axis=0))

    return tf.nest.map_structure(split, x)


def _merge_records(t: tf.Tensor) -> tf.Tensor:
    """``[records, rows, ...]`` -> ``[records * rows, ...]``, keeping what is known of the static shape."""
    shape = tf.shape(t)
    merged = tf.reshape(t, tf.concat([[shape[0] * shape[1]], shape[2:]], axis=0))
    first = None if None in (t.shape[0], t.shape[1]) else t.shape[0] * t.shape[1]
    merged.set_shape([first, *t.shape[2:]])
    return merged


class PerRecordGradients:
    """The result of a clipper on one batch: predictions, losses, record norms, and the clipped sum."""

    def __init__(
        self,
        y_pred: Any,
        losses: tf.Tensor,
        norms: tf.Tensor,
        weighted_sum: Callable[[tf.Tensor], list[tf.Tensor]],
    ) -> None:
        #: The model's output for the batch (for metrics).
        self.y_pred = y_pred
        #: Each example's loss, ``[batch]``.
        self.losses = losses
        #: Each record's gradient L2 norm over all trainable variables, ``[records]``.
        self.norms = norms
        self._weighted_sum = weighted_sum

    def weighted_sum(self, factors: tf.Tensor) -> list[tf.Tensor]:
        """``sum_r factors[r] * g_r`` for every trainable variable (dense tensors, in variable order)."""
        return self._weighted_sum(factors)


def _sum_sq(t: tf.Tensor) -> tf.Tensor:
    """Sum of squares over every axis but the first."""
    return tf.reduce_sum(tf.square(tf.reshape(t, [tf.shape(t)[0], -1])), axis=1)
