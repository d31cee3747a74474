"""Per-record gradients kept in the form TensorFlow builds them, never as ``records x parameters`` tensors.

* :class:`_OuterProducts`: a 2-D variable's per-record gradients ``L_r^T R_r`` kept as their factors (a
  Dense kernel's ``a_r^T g_r``; rows stacked for a layer called several times), found by
  :func:`_outer_products` in the graph pfor built;
* :class:`_SparseRows`: per-record gradients that touch a few rows (an Embedding's ``IndexedSlices``).

Each gives its records' squared norms and the clipped sum ``sum_r f_r G_r`` at the cost of the summed
gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import tensorflow as tf

from tfe_lite.privacy.clipping.records import _sum_sq


class _OuterProducts(NamedTuple):
    """Per-record gradients ``G_r = L_r^T R_r`` of a 2-D variable kept as their factors, ``left [records, K,
    d]`` and ``right [records, K, u]`` (``K`` rows per record: 1 for a Dense layer on 2-D input)."""

    left: tf.Tensor
    right: tf.Tensor

    def squared_norms(self, dense: Callable[[], tf.Tensor]) -> tf.Tensor:
        """``||L_r^T R_r||^2`` per record: ``||l||^2 ||r||^2`` for ``K = 1``; else the cheaper of the Gram
        form ``<L L^T, R R^T>`` (``K^2 (d + u)`` per record) and the squares of ``dense()``, the
        materialized gradients (``K d u``)."""
        rows, d, u = self.left.shape[1], self.left.shape[2], self.right.shape[2]
        if rows == 1:
            return _sum_sq(self.left) * _sum_sq(self.right)
        if rows is not None and rows * (d + u) < d * u:
            gram_l = tf.einsum("rkd,rjd->rkj", self.left, self.left)
            gram_r = tf.einsum("rku,rju->rkj", self.right, self.right)
            return tf.reduce_sum(gram_l * gram_r, axis=[1, 2])
        return _sum_sq(dense())

    def weighted_sum(self, factors: tf.Tensor) -> tf.Tensor:
        """``sum_r f_r L_r^T R_r``: one matmul over every record's rows, what the summed gradient costs."""
        d, u = self.left.shape[2], self.right.shape[2]
        scaled = self.left * tf.reshape(tf.cast(factors, self.left.dtype), [-1, 1, 1])
        return tf.matmul(tf.reshape(scaled, [-1, d]), tf.reshape(self.right, [-1, u]), transpose_a=True)

    def take(self, count: tf.Tensor) -> _OuterProducts:
        return _OuterProducts(self.left[:count], self.right[:count])


class _SparseRows(NamedTuple):
    """Per-record gradients that touch a few rows of a variable (an Embedding's table, any ``tf.gather``):
    ``values [records, T, *shape[1:]]`` added to rows ``indices [records, T]`` of a ``[rows, ...]`` variable,
    as TensorFlow's ``IndexedSlices`` hold them (a row may repeat within a record)."""

    values: tf.Tensor
    indices: tf.Tensor

    def squared_norms(self) -> tf.Tensor:
        """``||sum_t e_{i_t} v_t||^2 = sum_{t,s} [i_t = i_s] <v_t, v_s>`` per record."""
        values = tf.reshape(self.values, tf.concat([tf.shape(self.values)[:2], [-1]], axis=0))
        if self.values.shape[1] == 1:
            return _sum_sq(values)
        same = tf.cast(tf.equal(self.indices[:, :, None], self.indices[:, None, :]), values.dtype)
        return tf.reduce_sum(same * tf.einsum("rtk,rsk->rts", values, values), axis=[1, 2])

    def weighted_sum(self, factors: tf.Tensor, shape: tf.TensorShape) -> tf.Tensor:
        """``sum_r f_r G_r`` as a dense ``shape`` tensor (one segment sum)."""
        scaled = self.values * tf.reshape(
            tf.cast(factors, self.values.dtype), [-1] + [1] * (self.values.shape.rank - 1)
        )
        rows = tf.reshape(scaled, [-1, *shape[1:]])
        return tf.math.unsorted_segment_sum(rows, tf.reshape(self.indices, [-1]), shape[0])

    def dense(self, shape: tf.TensorShape) -> tf.Tensor:
        """Every record's gradient, ``[records, *shape]``."""
        records = tf.shape(self.indices, out_type=self.indices.dtype)[0]
        offsets = tf.range(records)[:, None] * tf.cast(shape[0], self.indices.dtype)
        rows = tf.reshape(self.values, [-1, *shape[1:]])
        summed = tf.math.unsorted_segment_sum(
            rows, tf.reshape(self.indices + offsets, [-1]), records * tf.cast(shape[0], records.dtype)
        )
        return tf.reshape(summed, [-1, *shape])

    def take(self, count: tf.Tensor) -> _SparseRows:
        return _SparseRows(self.values[:count], self.indices[:count])


_BATCH_MATMUL_OPS = ("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")


def _outer_products(grad: tf.Tensor, shape: tf.TensorShape) -> _OuterProducts | None:
    """The factors of a vectorized gradient ``grad [records, d, u]`` of a 2-D variable of ``shape``, when
    pfor computed it as a batched product of two per-record tensors (a Dense kernel's gradient ``a^T g``,
    stacked over records) or a sum of such products (a layer called several times: ``sum_j a_j^T g_j``,
    whose factors are the ``a_j`` and ``g_j`` stacked along the rows), else ``None``. Only graph tensors
    have a producing op to look at."""
    if tf.executing_eagerly() or shape.rank != 2 or not hasattr(grad, "op"):
        return None
    op = grad.op
    while op.type == "Identity":
        op = op.inputs[0].op
    if op.type in ("AddN", "AddV2", "Add"):
        if any(t.shape != grad.shape for t in op.inputs):  # a broadcasting sum
            return None
        terms = [_outer_products(t, shape) for t in op.inputs]
        if any(term is None for term in terms):
            return None
        return _OuterProducts(
            tf.concat([term.left for term in terms], axis=1), tf.concat([term.right for term in terms], axis=1)
        )
    if op.type not in _BATCH_MATMUL_OPS:
        return None
    x, y = op.inputs
    if x.shape.rank != 3 or y.shape.rank != 3 or x.dtype != grad.dtype or y.dtype != grad.dtype:
        return None
    if not x.shape[0] == y.shape[0] == grad.shape[0]:  # both per record, no broadcast batch (None == None)
        return None
    left = x if op.get_attr("adj_x") else tf.transpose(x, [0, 2, 1])
    right = tf.transpose(y, [0, 2, 1]) if op.get_attr("adj_y") else y
    if left.shape[2] != shape[0] or right.shape[2] != shape[1]:
        return None
    return _OuterProducts(left, right)
