"""The vectorized clipper: per-record gradients of any model by ``tf.vectorized_map`` over records.

It looks at how pfor built each per-record gradient. One that is a batched product of per-record factors
(a Dense kernel's ``a_r^T g_r``), or a sum of such products, is used through its factors; one that
TensorFlow gives as ``IndexedSlices`` (an Embedding's) as the rows it touches
(:mod:`tfe_lite.privacy.clipping.factors`). Other gradients are materialized, and for them memory and time
grow with ``records x parameters``. The pfor rules it traces with are in
:mod:`tfe_lite.privacy.clipping.pfor_rules`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from tfe_lite.errors import UnsupportedLayerError
from tfe_lite.privacy.clipping.factors import _OuterProducts, _outer_products, _SparseRows
from tfe_lite.privacy.clipping.failures import _unvectorizable
from tfe_lite.privacy.clipping.layers import _all_layers
from tfe_lite.privacy.clipping.pfor_rules import _raised_in_pfor, _vectorization_rules, _vectorized_map
from tfe_lite.privacy.clipping.records import LossFn, PerRecordGradients, _merge_records, _split_inputs, _sum_sq


#: The fewest records :class:`VectorizedClipper` vectorizes over; smaller batches get all-zero padding
#: records. Some pfor rules fail on zero iterations (``Conv2DBackpropFilter``'s loop), and some graphs on one:
#: with TensorFlow 2.21 the TensorList ops of Keras's LSTM loop then fail with "Tried to append a tensor with
#: incompatible shape to a list".
MIN_RECORDS = 2


class VectorizedClipper:
    """Per-record gradients of any model by ``tf.vectorized_map`` over records.

    Two structures of per-record gradients are used without forming the ``records x parameters`` tensor:

    * *outer products*: inside a ``tf.function`` (Keras's train function), a gradient that pfor computes as a
      batched product of per-record factors (every Dense kernel: ``a_r^T g_r``; a sum of them for a layer
      called several times) is used through its factors.
      Its norm is ``||a_r|| ||g_r||`` (or a Gram form) and its share of the clipped sum one matmul, so the
      stacked product is never consumed and TensorFlow prunes it from the graph;
    * *sparse rows*: a gradient that TensorFlow gives as ``IndexedSlices`` (an Embedding's) stays as the
      rows each record touches.

    Eager calls run the same program as a ``tf.function``. ``factor_outer_products=False`` materializes every
    dense per-record gradient instead (for comparison; the same results up to rounding).
    """

    def __init__(
        self,
        model: keras.Model,
        variables: Sequence[keras.Variable],
        loss_fn: LossFn,
        num_microbatches: int | None = None,
        *,
        factor_outer_products: bool = True,
    ) -> None:
        grouped = [
            f"{type(layer).__name__} {layer.name!r}: groups={layer.groups}"
            for layer in _all_layers(model)
            if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D))
            and layer.groups != 1
            and layer.trainable_weights
        ]
        if grouped:
            # TensorFlow 2.21's pfor rules build a wrong filter size for a grouped kernel gradient.
            raise UnsupportedLayerError(
                "Per-example gradients of grouped convolutions cannot be vectorized by TensorFlow:\n  - "
                + "\n  - ".join(grouped)
                + "\nUse groups=1, or several convolutions on channel slices."
            )
        self._model = model
        self._variables = list(variables)
        self._loss_fn = loss_fn
        self._microbatches = num_microbatches
        self._factor = factor_outer_products
        self._eager_parts = tf.function(self._parts, reduce_retracing=True, autograph=False)

    def _vectorized(self, x: Any, y: Any, sample_weight: Any) -> tuple:
        """``(grads, losses, y_pred, records)``: per variable ``[records', *var.shape]`` or, for a gradient
        given as ``IndexedSlices``, :class:`_SparseRows`. pfor's outputs have ``records' = max(records,
        MIN_RECORDS)`` rows: a batch of fewer records runs with all-zero padding records, which the caller
        drops by taking ``[:records]``."""
        first = tf.nest.flatten(x)[0]
        if self._microbatches is None:
            static, count = first.shape[0], tf.shape(first)[0]
        else:
            static, count = self._microbatches, tf.constant(self._microbatches)
        if static is not None and static >= MIN_RECORDS:
            pad = None
        else:
            pad = tf.maximum(MIN_RECORDS - count, 0)

        def split(t):
            t = _split_inputs(t, self._microbatches)
            if pad is None:
                return t
            padded = tf.pad(t, tf.concat([[[0, pad]], tf.zeros([t.shape.rank - 1, 2], tf.int32)], axis=0))
            padded.set_shape([None, *t.shape[1:]])
            return padded

        records = {"x": tf.nest.map_structure(split, x)}
        if y is not None:
            records["y"] = tf.nest.map_structure(split, y)
        if sample_weight is not None:
            records["sample_weight"] = tf.nest.map_structure(split, sample_weight)

        def one_record(record):
            with tf.GradientTape() as tape:
                y_pred = self._model(record["x"], training=True)
                losses = self._loss_fn(record.get("y"), y_pred, record.get("sample_weight"))
                loss = tf.math.divide_no_nan(tf.reduce_sum(losses), tf.cast(tf.size(losses), losses.dtype))
            grads = tape.gradient(
                loss, self._variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            parts = []
            for g in grads:
                if isinstance(g, tf.IndexedSlices):
                    parts.append(_SparseRows(g.values, g.indices))
                else:
                    parts.append(tf.convert_to_tensor(g))
            return parts, losses, y_pred

        try:
            with _vectorization_rules():
                grads, losses, y_pred = _vectorized_map(one_record, records)
        except (ValueError, NotImplementedError, TypeError) as error:
            if not _raised_in_pfor(error):
                raise
            raise _unvectorizable(error, self._model) from error
        losses, y_pred = tf.nest.map_structure(lambda t: _merge_records(t[:count]), (losses, y_pred))
        return grads, losses, y_pred, count

    def per_record_gradients(self, x: Any, y: Any = None, sample_weight: Any = None) -> tuple:
        """``(gradients [records, *var.shape] per variable, losses [batch], y_pred)``, all materialized."""
        grads, losses, y_pred, count = self._vectorized(x, y, sample_weight)
        dense = []
        for g, v in zip(grads, self._variables):
            if isinstance(g, _SparseRows):
                g = g.dense(tf.TensorShape(v.shape))
            dense.append(g[:count])
        return dense, losses, y_pred

    def _parts(self, x: Any, y: Any = None, sample_weight: Any = None) -> tuple:
        """``(parts, norms, losses, y_pred)``: per variable its gradients ``[records, *shape]``, or
        :class:`_OuterProducts`, or :class:`_SparseRows`."""
        grads, losses, y_pred, count = self._vectorized(x, y, sample_weight)
        parts, squares = [], []
        for g, v in zip(grads, self._variables):
            if isinstance(g, _SparseRows):
                g = g.take(count)
                parts.append(g)
                squares.append(g.squared_norms())
                continue
            outer = _outer_products(g, tf.TensorShape(v.shape)) if self._factor else None
            if outer is None:
                g = g[:count]
                parts.append(g)
                squares.append(_sum_sq(g))
            else:
                parts.append(outer.take(count))
                squares.append(parts[-1].squared_norms(lambda g=g: g[:count]))
        norms = tf.sqrt(tf.add_n(squares))
        return parts, norms, losses, y_pred

    def __call__(self, x: Any, y: Any = None, sample_weight: Any = None) -> PerRecordGradients:
        parts_fn = self._eager_parts if tf.executing_eagerly() else self._parts
        parts, norms, losses, y_pred = parts_fn(x, y, sample_weight)

        def weighted_sum(factors):
            sums = []
            for part, v in zip(parts, self._variables):
                if isinstance(part, _OuterProducts):
                    sums.append(part.weighted_sum(factors))
                elif isinstance(part, _SparseRows):
                    sums.append(part.weighted_sum(factors, tf.TensorShape(v.shape)))
                else:
                    sums.append(tf.tensordot(tf.cast(factors, part.dtype), part, axes=[[0], [0]]))
            return sums

        return PerRecordGradients(y_pred, losses, norms, weighted_sum)
