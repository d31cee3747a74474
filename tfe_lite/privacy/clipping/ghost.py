"""Ghost clipping (Goodfellow 2015; Li et al. 2022; Bu et al. 2023): record norms from each layer's input
activations and output gradients, for Dense, Conv2D and Embedding layers.

A trainable layer computes ``z = a W (+ b)``, so a record's kernel gradient is ``A_r^T G_r`` with ``A_r`` its
input rows (``T`` of them: the positions of a sequence, the output pixels of a convolution as im2col
patches) and ``G_r = dL_r / dz`` its output-gradient rows. Per layer it takes the cheapest of

* ``T = 1`` (a Dense layer on 2-D input): ``||A^T G||^2 = ||a||^2 ||g||^2``, with no per-record gradient;
* the Gram form ``<A A^T, G G^T>_F`` (``T^2 (d + u)`` per record), with no per-record gradient;
* the per-record gradient ``A_r^T G_r`` itself (``T d u`` per record: what the layer's summed kernel gradient
  costs). When it fits in ``tfe_lite.privacy.clipping.MATERIALIZE_BYTES`` it is kept and the layer's share
  of the clipped sum is ``sum_r f_r A_r^T G_r`` directly, so that layer's weight gradient is never computed a
  second time ("mixed" ghost clipping, Bu et al. 2023). For Conv2D the native op reads each record's windows
  straight from its image in register blocks, never an im2col tensor;
* Embedding: ``sum_{t,s} [id_t = id_s] <g_t, g_s>``; a bias: ``||sum_t g_t||^2``.

One forward pass records every layer's input ``a`` and pre-activation ``z`` (the model rebuilt with a tap on
each layer, so only Functional and Sequential models), one backward pass gives ``G``; the clipped sum of the
layers without kept gradients is their weight gradient with output gradients ``f_r G_r`` (the layer's own
backprop-to-weights op, no second pass through the network).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from tfe_lite.errors import UnsupportedLayerError
from tfe_lite.privacy import clipping as _settings  # holds MATERIALIZE_BYTES (read when a step is traced)
from tfe_lite.privacy.clipping.conv import conv2d_kernel_grads
from tfe_lite.privacy.clipping.layers import ghost_blockers
from tfe_lite.privacy.clipping.records import (
    LossFn,
    PerRecordGradients,
    _expand_factors,
    _sum_sq,
    _to_records,
)


class _Tap(keras.layers.Layer):
    """Computes a tapped layer's pre-activation output with the tapped layer's own weights."""

    def __init__(self, target: keras.layers.Layer, **kwargs) -> None:
        super().__init__(dtype=target.dtype_policy, **kwargs)
        self.target = target
        self.supports_masking = True


class _DenseTap(_Tap):
    def call(self, a):
        z = keras.ops.matmul(a, self.target.kernel)
        return z if self.target.bias is None else z + self.target.bias

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.target.units)


class _Conv2DTap(_Tap):
    def call(self, a):
        z = self.target.convolution_op(a, self.target.kernel)
        return z if self.target.bias is None else z + self.target.bias

    def compute_output_shape(self, input_shape):
        return self.target.compute_output_shape(input_shape)


class _EmbeddingTap(_Tap):
    def call(self, ids):
        if ids.dtype not in ("int32", "int64"):
            ids = keras.ops.cast(ids, "int32")
        return keras.ops.take(self.target.embeddings, ids, axis=0)

    def compute_mask(self, ids, mask=None):
        return self.target.compute_mask(ids, mask)

    def compute_output_shape(self, input_shape):
        return self.target.compute_output_shape(input_shape)


_TAPS = {
    keras.layers.Dense: _DenseTap,
    keras.layers.Conv2D: _Conv2DTap,
    keras.layers.Embedding: _EmbeddingTap,
}


class _LayerRecords:
    """One tapped layer's per-record squared gradient norms ``sq [records]`` and, when they were formed
    anyway and fit in :data:`MATERIALIZE_BYTES`, its per-record gradients ``{id(weight): [records, *shape]}``
    (then the clipped sum is their weighted sum, with no second backward pass). ``method`` names how the
    norms were formed (``benchmarks/dp_sgd.py --profile`` prints it)."""

    def __init__(self, sq: tf.Tensor, grads: dict[int, tf.Tensor] | None = None, method: str = "") -> None:
        self.sq = sq
        self.grads = grads
        self.method = method


def _fits(layer: keras.layers.Layer, records: int | None, dtype: tf.DType) -> bool:
    """Whether ``records`` per-record gradients of ``layer`` fit in :data:`MATERIALIZE_BYTES` (an unknown
    record count, as when Keras traces with a dynamic batch size, is taken as 1024)."""
    size = sum(math.prod(w.shape) for w in layer.trainable_weights)
    return (records or 1024) * size * dtype.size <= _settings.MATERIALIZE_BYTES


def _with_bias(
    layer, kernel_grads: tf.Tensor | None, sq: tf.Tensor, g: tf.Tensor, method: str
) -> _LayerRecords:
    """Adds the bias (``g [records, rows, units]``) to a layer's norms and, if materialized, its gradients."""
    bias_grads = tf.reduce_sum(g, axis=1) if layer.bias is not None else None
    if bias_grads is not None:
        sq = sq + _sum_sq(bias_grads)
    if kernel_grads is None:
        return _LayerRecords(sq, method=method)
    grads = {id(layer.kernel): tf.reshape(kernel_grads, [-1, *layer.kernel.shape])}
    if bias_grads is not None:
        grads[id(layer.bias)] = bias_grads
    return _LayerRecords(sq, grads, method=method + " (kept)")


def _gram_is_cheaper(rows: int | None, d: int, u: int, keep: bool) -> bool:
    """Whether a layer's norms should come from the Gram form ``<A A^T, G G^T>`` (``T^2 (d + u)`` per record
    of ``T`` rows), its clipped sum then from the layer's weight-gradient op (``T d u``), rather than from
    per-record gradients ``A_r^T G_r`` (``T d u``), kept for a clipped sum of ``d u`` per record when they
    fit (``keep``) or else followed by the weight-gradient op too. The ``T d u`` terms cancel (Bu et al.
    2023's choice per layer)."""
    if rows is None:
        return False
    return rows * rows * (d + u) < d * u if keep else rows * (d + u) < d * u


def _dense_records(layer: keras.layers.Layer, a: tf.Tensor, g: tf.Tensor) -> _LayerRecords:
    """Norms (and maybe gradients) of a Dense layer, ``a [R, T, d]``, ``g [R, T, u]``: ``T = 1`` gives
    ``||a||^2 ||g||^2``; else the per-record gradient ``A^T G`` (``T d u`` per record, kept for the clipped
    sum when it fits) or the Gram form ``<A A^T, G G^T>`` (``T^2 (d + u)``), whichever makes the step
    cheaper (:func:`_gram_is_cheaper`)."""
    rows, d, u = a.shape[1], a.shape[-1], g.shape[-1]
    if rows == 1:
        sq = tf.reduce_sum(tf.square(a), axis=[1, 2]) * tf.reduce_sum(tf.square(g), axis=[1, 2])
        return _with_bias(layer, None, sq, g, "norm product")
    keep = _fits(layer, a.shape[0], g.dtype)
    if _gram_is_cheaper(rows, d, u, keep):
        gram_a = tf.einsum("rtd,rsd->rts", a, a)
        gram_g = tf.einsum("rtu,rsu->rts", g, g)
        return _with_bias(layer, None, tf.reduce_sum(gram_a * gram_g, axis=[1, 2]), g, "Gram")
    per_record = tf.einsum("rtd,rtu->rdu", a, g)
    return _with_bias(layer, per_record if keep else None, _sum_sq(per_record), g, "per-record")


def _conv2d_records(
    layer: keras.layers.Layer, a: tf.Tensor, g: tf.Tensor, microbatches: int | None
) -> _LayerRecords:
    """Norms (and maybe gradients) of a Conv2D layer (channels_last, groups=1), ``a`` and ``g`` per example.

    With ``T`` output pixels and ``d = kh kw in`` the kernel gradient of a record is ``P^T G`` with ``P`` its
    im2col patches. The per-example kernel gradients (:func:`tfe_lite.privacy.clipping.conv.conv2d_kernel_grads`,
    ``T d u`` per example, no im2col tensor in memory) cost what the summed kernel gradient costs, so when
    they fit they are kept and the clipped sum is their weighted sum. The Gram form ``<P P^T, G G^T>``
    (``T^2 (d + u)``) serves when it makes the step cheaper (:func:`_gram_is_cheaper`), and when the spatial
    sizes are unknown.
    """
    kh, kw = layer.kernel_size
    (sh, sw), (dh, dw) = layer.strides, layer.dilation_rate
    height, width, out_h, out_w = a.shape[1], a.shape[2], g.shape[1], g.shape[2]
    g_rows = _to_records(g, microbatches, 1)
    records = a.shape[0] if microbatches is None else microbatches
    keep = _fits(layer, records, g.dtype)
    d, u = kh * kw * a.shape[-1], g.shape[-1]
    if None in (height, width, out_h, out_w) or _gram_is_cheaper(g_rows.shape[1], d, u, keep):
        patches = tf.image.extract_patches(
            a, sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1], rates=[1, dh, dw, 1], padding=layer.padding.upper()
        )
        p_rows = _to_records(patches, microbatches, 1)
        rows = p_rows.shape[1]
        if rows is not None and rows * (p_rows.shape[-1] + g.shape[-1]) < p_rows.shape[-1] * g.shape[-1]:
            gram = tf.einsum("rtd,rsd->rts", p_rows, p_rows) * tf.einsum("rtu,rsu->rts", g_rows, g_rows)
            return _with_bias(layer, None, tf.reduce_sum(gram, axis=[1, 2]), g_rows, "Gram of patches")
        per_record = tf.einsum("rtd,rtu->rdu", p_rows, g_rows)
        return _with_bias(layer, None, _sum_sq(per_record), g_rows, "per-record from patches")
    per_example = conv2d_kernel_grads(
        a, g, layer.kernel_size, strides=layer.strides, dilations=layer.dilation_rate, padding=layer.padding
    )
    if microbatches is not None:
        per_example = tf.reduce_sum(
            tf.reshape(per_example, [microbatches, -1, *per_example.shape[1:]]), axis=1
        )
    return _with_bias(layer, per_example if keep else None, _sum_sq(per_example), g_rows, "per-record")


def _layer_records(layer: keras.layers.Layer, a: tf.Tensor, g: tf.Tensor, microbatches: int | None) -> _LayerRecords:
    """Each record's squared gradient norm for all of ``layer``'s weights (and maybe the gradients)."""
    if isinstance(layer, keras.layers.Embedding):
        ids = _to_records(a, microbatches, 0)
        g = _to_records(g, microbatches, 1)
        if ids.shape[1] == 1:
            return _LayerRecords(tf.reduce_sum(tf.square(g), axis=[1, 2]), method="rows")
        same = tf.cast(tf.equal(ids[:, :, None], ids[:, None, :]), g.dtype)
        return _LayerRecords(tf.reduce_sum(same * tf.einsum("rtu,rsu->rts", g, g), axis=[1, 2]), method="rows")
    if isinstance(layer, keras.layers.Conv2D):
        return _conv2d_records(layer, a, g, microbatches)
    return _dense_records(layer, _to_records(a, microbatches, 1), _to_records(g, microbatches, 1))


class GhostClipper:
    """Record norms from activations and output gradients, for Dense, Conv2D and Embedding layers."""

    def __init__(
        self,
        model: keras.Model,
        variables: Sequence[keras.Variable],
        loss_fn: LossFn,
        num_microbatches: int | None = None,
    ) -> None:
        blockers = ghost_blockers(model)
        self._taps: list[tuple[keras.layers.Layer, Any, Any]] = []
        calls: dict[int, int] = {}
        tap_model = None
        if not blockers:
            tap_model = self._build_tap_model(model, calls)
            for layer in model.layers:
                count = calls.get(id(layer), 0)
                if layer.trainable_weights and count != 1:
                    blockers.append(
                        f"{type(layer).__name__} {layer.name!r}: called {count} times in the model's graph "
                        "(ghost clipping needs exactly once; a shared layer sums several gradients)"
                    )
        tapped = {id(v) for layer, _, _ in self._taps for v in layer.trainable_weights}
        if not blockers and tapped != {id(v) for v in variables}:
            blockers.append(f"model {model.name!r}: trainable variables outside the tapped layers")
        if blockers:
            raise UnsupportedLayerError(
                "Ghost clipping does not support:\n  - " + "\n  - ".join(blockers)
                + "\nUse clipping='vectorized' (or 'auto', which falls back to it)."
            )
        self._model = model
        self._tap_model = tap_model
        self._variables = list(variables)
        self._loss_fn = loss_fn
        self._microbatches = num_microbatches

    def _build_tap_model(self, model: keras.Model, calls: dict[int, int]) -> keras.Model:
        def call_function(layer, *args, **kwargs):
            calls[id(layer)] = calls.get(id(layer), 0) + 1
            tap = _TAPS.get(type(layer))
            if tap is None or not layer.trainable_weights:
                return layer(*args, **kwargs)
            a = args[0]
            z = tap(layer)(a)
            self._taps.append((layer, a, z))
            activation = getattr(layer, "activation", None)
            if activation is None:
                return z
            return keras.layers.Activation(activation, dtype=layer.dtype_policy)(z)

        if isinstance(model, keras.Sequential):
            inputs = keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype)
            outputs = inputs
            for layer in model.layers:
                outputs = call_function(layer, outputs)
        else:
            clone = keras.models.clone_model(
                model, clone_function=lambda layer: layer, call_function=call_function
            )
            inputs, outputs = clone.inputs, clone.output
        zs = [z for _, _, z in self._taps]
        acts = [a for _, a, _ in self._taps]
        return keras.Model(inputs, [outputs, zs, acts], name=f"{model.name}_ghost_taps")

    def __call__(self, x: Any, y: Any = None, sample_weight: Any = None) -> PerRecordGradients:
        microbatches = self._microbatches
        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        with tf.GradientTape(persistent=True) as tape:
            y_pred, zs, acts = self._tap_model(x, training=True)
            losses = self._loss_fn(y, y_pred, sample_weight)
            total = tf.reduce_sum(losses)
            if microbatches is not None:
                total = total / tf.cast(tf.maximum(batch // microbatches, 1), total.dtype)
        grads_z = tape.gradient(total, zs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        layers = [
            _layer_records(layer, a, g, microbatches)
            for (layer, _, _), a, g in zip(self._taps, acts, grads_z)
        ]
        norms = tf.sqrt(tf.add_n([records.sq for records in layers]))

        def weighted_sum(factors):
            per_example = _expand_factors(factors, microbatches, batch)
            result = {}
            for (layer, _, _), z, g, records in zip(self._taps, zs, grads_z, layers):
                if records.grads is not None:  # per-record gradients at hand: sum_r f_r g_r
                    for w in layer.trainable_weights:
                        per_record = records.grads[id(w)]
                        result[id(w)] = tf.tensordot(tf.cast(factors, per_record.dtype), per_record, axes=1)
                    continue
                scale = tf.reshape(tf.cast(per_example, g.dtype), [-1] + [1] * (g.shape.rank - 1))
                weights = layer.trainable_weights
                grads = tape.gradient(z, weights, output_gradients=g * scale)
                for w, grad in zip(weights, grads):
                    result[id(w)] = tf.convert_to_tensor(grad)
            return [result[id(v)] for v in self._variables]

        return PerRecordGradients(y_pred, losses, norms, weighted_sum)
