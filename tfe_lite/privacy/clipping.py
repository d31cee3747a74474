"""Per-record gradients for DP-SGD: their L2 norms and their clipped sum, computed two ways.

A *record* is one example, or one microbatch of ``batch / num_microbatches`` consecutive examples whose loss
is the mean of its examples' losses. DP-SGD needs, for each record ``r`` with gradient ``g_r``, the norm
``||g_r||`` and then the re-weighted sum ``sum_r f_r g_r`` with clip factors ``f_r = min(1, C / ||g_r||)``.

:class:`VectorizedClipper` works for any model: ``tf.vectorized_map`` runs forward and backward on each
record (pfor vectorization, one batched program, no Python loop). It then looks at how pfor built each
per-record gradient. A gradient that is a batched product of per-record factors (a Dense kernel's ``a_r^T
g_r``), or a sum of such products (a layer called several times), is used through its factors. One that
TensorFlow gives as ``IndexedSlices`` (an Embedding's) is used as the rows it touches. Neither becomes a
``records x parameters`` tensor. Other gradients are materialized, and for them memory and time grow with
``records x parameters``. pfor's own rule for a convolution's kernel gradient is a ``while_loop`` of one
``Conv2DBackpropFilter`` per record; while tracing, :class:`VectorizedClipper` swaps in
:func:`tfe_lite.ops.dp.per_record_conv2d_kernel_grad`.

:class:`GhostClipper` ("ghost clipping", Goodfellow 2015; Li et al. 2022; Bu et al. 2023) computes record
norms from each supported layer's input activations and output gradients. A trainable layer computes
``z = a W (+ b)``, so a record's kernel gradient is ``A_r^T G_r`` with ``A_r`` its input rows (``T`` of them:
the positions of a sequence, the output pixels of a convolution as im2col patches) and ``G_r = dL_r / dz``
its output-gradient rows. Per layer it takes the cheapest of

* ``T = 1`` (a Dense layer on 2-D input): ``||A^T G||^2 = ||a||^2 ||g||^2``, with no per-record gradient;
* the Gram form ``<A A^T, G G^T>_F`` (``T^2 (d + u)`` per record), with no per-record gradient;
* the per-record gradient ``A_r^T G_r`` itself (``T d u`` per record: what the layer's summed kernel gradient
  costs). When it fits in :data:`MATERIALIZE_BYTES` it is kept and the layer's share of the clipped sum is
  ``sum_r f_r A_r^T G_r`` directly, so that layer's weight gradient is never computed a second time ("mixed"
  ghost clipping, Bu et al. 2023). For Conv2D the native op builds each record's im2col patches block by
  block in cache, never the whole im2col tensor;
* Embedding: ``sum_{t,s} [id_t = id_s] <g_t, g_s>``; a bias: ``||sum_t g_t||^2``.

One forward pass records every layer's input ``a`` and pre-activation ``z``, one backward pass gives ``G``;
the clipped sum of the layers without kept gradients is their weight gradient with output gradients
``f_r G_r`` (the layer's own backprop-to-weights op, no second pass through the network). Supported: Dense
(any input rank), Conv2D (channels_last, groups=1) and Embedding, in Functional or Sequential models whose
every trainable layer is one of these and is called once.

Layers whose per-example gradients do not exist (BatchNormalization in training mixes the examples of a
batch) or that add data-dependent losses (activity regularizers) are refused by :func:`check_layers`.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import keras
import tensorflow as tf
from keras.src.models.functional import Functional

from tfe_lite.errors import UnsupportedLayerError
from tfe_lite.ops.dp import per_record_conv2d_kernel_grad

#: ``loss_fn(y, y_pred, sample_weight) -> [batch]``: each example's loss.
LossFn = Callable[[Any, Any, Any], tf.Tensor]

CLIPPING_METHODS = ("auto", "vectorized", "ghost")


# --------------------------------------------------------------------------------------------------------
# Which layers can be used


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


# --------------------------------------------------------------------------------------------------------
# Records


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


# --------------------------------------------------------------------------------------------------------
# Vectorized per-record gradients


def _layers_in_scope(node_name: str, model: keras.Model) -> list[str]:
    """The layers of ``model`` whose name scope (``name`` or ``name_<n>``) is part of ``node_name``."""
    scopes = node_name.split("/")
    return [
        layer.name
        for layer in _all_layers(model)
        if any(re.fullmatch(rf"{re.escape(layer.name)}(_\d+)?", scope) for scope in scopes)
    ]


def _raised_in_pfor(error: BaseException) -> bool:
    """Whether ``error`` was raised by TensorFlow's vectorizer (pfor) while it converted the graph."""
    frame = error.__traceback__
    while frame is not None:
        if "parallel_for" in frame.tb_frame.f_code.co_filename:
            return True
        frame = frame.tb_next
    return "pfor" in str(error)


def _reason(message: str) -> str:
    """The line of an error message that says what went wrong, past the wrapping that autograph ("in user
    code:") and graph execution ("Graph execution error:", "Detected at node ...", stack lines) add."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if re.match(r"\w+(Error|Exception): ", line):
            return line.split(": ", 1)[1]
    wrapping = ("in user code:", "Graph execution error:", "Detected at node", "File ", "[[")
    return next((line for line in lines if not line.startswith(wrapping)), "")


def _unvectorizable(error: Exception, model: keras.Model) -> UnsupportedLayerError:
    """An error naming the op that pfor could not vectorize and the layer(s) it belongs to."""
    message = str(error)
    op_type = re.search(r"No pfor vectorization defined for (\w+)", message) or re.search(
        r"of op '(\w+)'", message
    )
    op_name = re.search(r'name: "([^"]+)"', message)
    layers = _layers_in_scope(op_name.group(1), model) if op_name else []
    what = f"op {op_type.group(1)}" if op_type else "an op"
    where = f" in layer(s) {layers}" if layers else ""
    reason = _reason(message) or type(error).__name__
    return UnsupportedLayerError(
        f"Per-example gradients of model {model.name!r} cannot be vectorized: {what}{where} has no working "
        f"tf.vectorized_map rule ({reason}). Replace the layer, or implement it with vectorizable TensorFlow "
        "ops."
    )


def vectorization_failure(error: Exception, model: keras.Model) -> UnsupportedLayerError | None:
    """For an error that a vectorized step raised *at run time* in an op that pfor built (its node name has a
    ``pfor`` scope), an :class:`UnsupportedLayerError` naming the layer(s); else ``None``.

    pfor converts some ops into graphs that fail only when they run (with TensorFlow 2.21, Keras's LSTM
    loop did for a single record, "Tried to append a tensor with incompatible shape to a list", until
    :data:`MIN_RECORDS` padded it), so the step says which layer's vectorization failed.
    """
    if not isinstance(error, tf.errors.OpError):
        return None
    message = str(error)
    node = re.search(r"node ([^\s\]}]*/pfor/[^\s\]}]*)", message)
    if node is None:
        return None
    layers = _layers_in_scope(node.group(1), model)
    where = f" in layer(s) {layers}" if layers else ""
    return UnsupportedLayerError(
        f"Per-example gradients of model {model.name!r} failed when run: TensorFlow's vectorization (pfor) of "
        f"node {node.group(1)!r}{where} does not compute ({_reason(message)}). This is a limit of tf.vectorized_map for "
        "this layer: replace it, or implement it with other TensorFlow ops."
    )


def _pfor_conv2d_kernel_grads(pfor_input: Any) -> Any:
    """pfor converter of ``Conv2DBackpropFilter`` with per-record inputs: each record's kernel gradient by
    :func:`tfe_lite.ops.dp.per_record_conv2d_kernel_grad` (TensorFlow's own converter runs a ``while_loop``
    of one small ``Conv2DBackpropFilter`` per record). Other cases go to TensorFlow's converter."""
    from tensorflow.python.ops.parallel_for import pfor

    inputs, inputs_stacked, _ = pfor_input.input(0)
    kernel = tf.get_static_value(pfor_input.unstacked_input(1))
    padding = pfor_input.get_attr("padding")
    if isinstance(padding, bytes):
        padding = padding.decode()
    data_format = pfor_input.get_attr("data_format")
    if isinstance(data_format, bytes):
        data_format = data_format.decode()
    strides, dilations = pfor_input.get_attr("strides"), pfor_input.get_attr("dilations")
    if (
        not inputs_stacked
        or kernel is None
        or kernel[2] != inputs.shape[-1]  # a grouped convolution
        or data_format != "NHWC"
        or padding not in ("VALID", "SAME")
        or inputs.shape.rank != 5
        or None in inputs.shape[2:4]
    ):
        return _TF_RULES["Conv2DBackpropFilter"](pfor_input)
    grads = pfor_input.stacked_input(2)
    records = tf.shape(inputs)[0]
    per_example = per_record_conv2d_kernel_grad(
        _merge_records(inputs),
        _merge_records(grads),
        [int(kernel[0]), int(kernel[1])],
        strides=list(strides[1:3]),
        dilations=list(dilations[1:3]),
        padding=padding,
    )
    shape = tf.concat([[records, -1], tf.shape(per_example)[1:]], axis=0)
    return pfor.wrap(tf.reduce_sum(tf.reshape(per_example, shape), axis=1), True)


def _pfor_batch_matmul(pfor_input: Any) -> Any:
    """pfor converter of ``BatchMatMulV2``/``V3`` for a per-record left operand times a shared right one
    (a Dense or EinsumDense layer on a record of sequences: ``[records, 1, T, d] @ [d, u]``): one 2-D matmul
    over every row of every record.

    TensorFlow's rule broadcasts the shared operand in a ``BatchMatMulV2``. With oneDNN (the default in
    TensorFlow's x86 CPU builds) a float32 ``[n, 1, m, k] @ [k, u]`` product (``m > 1``; the right operand
    ``[k, u]``, ``[1, k, u]`` or ``[1, 1, k, u]``) returns different values from run to run and corrupts the
    heap: seen with TensorFlow 2.21 on this project's machines, where a MultiHeadAttention model's
    per-example gradients aborted the process. The 2-D matmul avoids it and is one larger GEMM. Other cases
    go to TensorFlow's rule.
    """
    from tensorflow.python.ops.parallel_for import pfor

    x, x_stacked, _ = pfor_input.input(0)
    y, y_stacked, _ = pfor_input.input(1)
    op = pfor_input.op
    fallback = _TF_RULES[op.type]
    if (
        not x_stacked
        or y_stacked
        or pfor_input.get_attr("adj_x")
        or x.shape.rank is None
        or y.shape.rank is None
        or y.shape.rank > x.shape.rank - 1
        or any(d != 1 for d in y.shape[:-2])
        or not x.dtype == y.dtype == op.outputs[0].dtype
    ):
        return fallback(pfor_input)
    weight = tf.reshape(y, tf.shape(y)[-2:])
    if pfor_input.get_attr("adj_y"):
        weight = tf.linalg.adjoint(weight)
    rows = tf.matmul(tf.reshape(x, [-1, tf.shape(x)[-1]]), weight)
    out = tf.reshape(rows, tf.concat([tf.shape(x)[:-1], tf.shape(weight)[-1:]], axis=0))
    out.set_shape(x.shape[:-1].concatenate(weight.shape[-1:]))
    return pfor.wrap(out, True)


def _pfor_depthwise_conv(pfor_input: Any) -> Any:
    """pfor converter of ``DepthwiseConv2dNative`` and its input gradient with a shared (loop-invariant)
    kernel, the case of per-example gradients: the records are merged into the image batch.

    TensorFlow's rules fold the records into the channels and need a per-record kernel, so with a shared
    one they fail (``Input "filter" ... expected to be not loop invariant``). Other cases go to them.
    """
    from tensorflow.python.ops.parallel_for import pfor

    op = pfor_input.op
    data_format = pfor_input.get_attr("data_format")
    if isinstance(data_format, bytes):
        data_format = data_format.decode()
    kernel, kernel_stacked, _ = pfor_input.input(1)
    images = 0 if op.type == "DepthwiseConv2dNative" else 2  # the per-record image (or its gradient)
    _, images_stacked, _ = pfor_input.input(images)
    if kernel_stacked or not images_stacked or data_format != "NHWC":
        return _TF_RULES[op.type](pfor_input)
    stacked = pfor_input.stacked_input(images)
    merged = _merge_records(stacked)
    attrs = {
        name: pfor_input.get_attr(name)
        for name in ("strides", "padding", "explicit_paddings", "data_format", "dilations")
    }
    if op.type == "DepthwiseConv2dNative":
        out = tf.raw_ops.DepthwiseConv2dNative(input=merged, filter=kernel, **attrs)
    else:
        sizes = pfor_input.unstacked_input(0)
        records = tf.cast(tf.shape(stacked)[0], sizes.dtype)
        sizes = sizes * tf.concat([[records], tf.ones([3], sizes.dtype)], axis=0)
        out = tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
            input_sizes=sizes, filter=kernel, out_backprop=merged, **attrs
        )
    shape = tf.concat([tf.shape(stacked)[:2], tf.shape(out)[1:]], axis=0)
    return pfor.wrap(tf.reshape(out, shape), True)


#: The pfor rules :class:`VectorizedClipper` uses instead of TensorFlow's, by op type.
_RULES: dict[str, Callable[[Any], Any]] = {
    "Conv2DBackpropFilter": _pfor_conv2d_kernel_grads,
    "BatchMatMulV2": _pfor_batch_matmul,
    "BatchMatMulV3": _pfor_batch_matmul,
    "DepthwiseConv2dNative": _pfor_depthwise_conv,
    "DepthwiseConv2dNativeBackpropInput": _pfor_depthwise_conv,
}
#: TensorFlow's own rules for those ops, while ours are in place (the fallback of ours).
_TF_RULES: dict[str, Callable[[Any], Any]] = {}
_rules_lock = threading.RLock()


@contextlib.contextmanager
def _vectorization_rules():
    """While tracing ``tf.vectorized_map``, convert the ops of :data:`_RULES` by our rules.

    pfor has no public way to register a converter for an op it already knows, so this swaps the entries of
    its registry for the duration of the trace (under a lock; a nested trace finds ours in place and swaps
    nothing) and restores TensorFlow's afterwards. An op TensorFlow has no rule for keeps none.
    """
    from tensorflow.python.ops.parallel_for import pfor

    registry = pfor._pfor_converter_registry
    with _rules_lock:
        swapped = {op: registry[op] for op in _RULES if op in registry and registry[op] is not _RULES[op]}
        _TF_RULES.update(swapped)
        registry.update({op: _RULES[op] for op in swapped})
        try:
            yield
        finally:
            registry.update(swapped)


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


def _vectorized_map(fn: Callable[[Any], Any], elems: Any) -> Any:
    """``tf.vectorized_map(fn, elems, fallback_to_while_loop=False)`` whose ops land in the current graph.

    Under XLA (``jit_compile=True``) ``tf.vectorized_map`` wraps its ops in a nested ``tf.function``, and its
    outputs come out of a call op: :func:`_outer_products` could not see how a gradient was built. In a
    graph this calls pfor's own implementation directly (what ``tf.vectorized_map`` does outside XLA);
    eagerly, or on a TensorFlow without it, it is ``tf.vectorized_map``.
    """
    from tensorflow.python.ops.parallel_for import control_flow_ops

    pfor_impl = getattr(control_flow_ops, "_pfor_impl", None)
    if tf.executing_eagerly() or pfor_impl is None:
        return tf.vectorized_map(fn, elems, fallback_to_while_loop=False)
    flat = tf.nest.flatten(elems)
    sizes = [t.shape[0] for t in flat]
    if None in sizes:
        iterations = tf.reduce_max([tf.shape(t)[0] for t in flat])
    else:
        iterations = max(sizes)
    return pfor_impl(
        lambda i: fn(tf.nest.map_structure(lambda t: tf.gather(t, i), elems)),
        iterations,
        fallback_to_while_loop=False,
        parallel_iterations=None,
    )


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


# --------------------------------------------------------------------------------------------------------
# Ghost clipping


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


#: Largest per-record gradient of one layer (``records x weights``, in bytes) that :class:`GhostClipper`
#: keeps in memory to reuse for the clipped sum; above it only the norms are formed and the clipped sum
#: takes a second backward pass through the layer.
MATERIALIZE_BYTES = 256 * 2**20


class _LayerRecords:
    """One tapped layer's per-record squared gradient norms ``sq [records]`` and, when they were formed
    anyway and fit in :data:`MATERIALIZE_BYTES`, its per-record gradients ``{id(weight): [records, *shape]}``
    (then the clipped sum is their weighted sum, with no second backward pass)."""

    def __init__(self, sq: tf.Tensor, grads: dict[int, tf.Tensor] | None = None) -> None:
        self.sq = sq
        self.grads = grads


def _fits(layer: keras.layers.Layer, records: int | None, dtype: tf.DType) -> bool:
    """Whether ``records`` per-record gradients of ``layer`` fit in :data:`MATERIALIZE_BYTES` (an unknown
    record count, as when Keras traces with a dynamic batch size, is taken as 1024)."""
    size = sum(math.prod(w.shape) for w in layer.trainable_weights)
    return (records or 1024) * size * dtype.size <= MATERIALIZE_BYTES


def _sum_sq(t: tf.Tensor) -> tf.Tensor:
    """Sum of squares over every axis but the first."""
    return tf.reduce_sum(tf.square(tf.reshape(t, [tf.shape(t)[0], -1])), axis=1)


def _with_bias(layer, kernel_grads: tf.Tensor | None, sq: tf.Tensor, g: tf.Tensor) -> _LayerRecords:
    """Adds the bias (``g [records, rows, units]``) to a layer's norms and, if materialized, its gradients."""
    bias_grads = tf.reduce_sum(g, axis=1) if layer.bias is not None else None
    if bias_grads is not None:
        sq = sq + _sum_sq(bias_grads)
    if kernel_grads is None:
        return _LayerRecords(sq)
    grads = {id(layer.kernel): tf.reshape(kernel_grads, [-1, *layer.kernel.shape])}
    if bias_grads is not None:
        grads[id(layer.bias)] = bias_grads
    return _LayerRecords(sq, grads)


def _dense_records(layer: keras.layers.Layer, a: tf.Tensor, g: tf.Tensor) -> _LayerRecords:
    """Norms (and maybe gradients) of a Dense layer, ``a [R, T, d]``, ``g [R, T, u]``: ``T = 1`` gives
    ``||a||^2 ||g||^2``; else the cheaper of the per-record gradient ``A^T G`` (``T d u`` per record, kept for
    the clipped sum when it fits) and the Gram form ``<A A^T, G G^T>`` (``T^2 (d + u)``)."""
    rows, d, u = a.shape[1], a.shape[-1], g.shape[-1]
    if rows == 1:
        sq = tf.reduce_sum(tf.square(a), axis=[1, 2]) * tf.reduce_sum(tf.square(g), axis=[1, 2])
        return _with_bias(layer, None, sq, g)
    if rows is not None and rows * (d + u) < d * u:
        gram_a = tf.einsum("rtd,rsd->rts", a, a)
        gram_g = tf.einsum("rtu,rsu->rts", g, g)
        return _with_bias(layer, None, tf.reduce_sum(gram_a * gram_g, axis=[1, 2]), g)
    per_record = tf.einsum("rtd,rtu->rdu", a, g)
    keep = _fits(layer, a.shape[0], g.dtype)
    return _with_bias(layer, per_record if keep else None, _sum_sq(per_record), g)


def _conv2d_records(
    layer: keras.layers.Layer, a: tf.Tensor, g: tf.Tensor, microbatches: int | None
) -> _LayerRecords:
    """Norms (and maybe gradients) of a Conv2D layer (channels_last, groups=1), ``a`` and ``g`` per example.

    With ``T`` output pixels and ``d = kh kw in`` the kernel gradient of a record is ``P^T G`` with ``P`` its
    im2col patches. The per-example kernel gradients (:func:`tfe_lite.ops.dp.per_record_conv2d_kernel_grad`,
    ``T d u`` per example, no im2col tensor in memory) cost what the summed kernel gradient costs, so when
    they fit they are kept and the clipped sum is their weighted sum. The Gram form ``<P P^T, G G^T>``
    (``T^2 (d + u)``) serves when it is cheaper.
    """
    kh, kw = layer.kernel_size
    (sh, sw), (dh, dw) = layer.strides, layer.dilation_rate
    height, width, out_h, out_w = a.shape[1], a.shape[2], g.shape[1], g.shape[2]
    g_rows = _to_records(g, microbatches, 1)
    if None in (height, width, out_h, out_w) or out_h * out_w * (kh * kw * a.shape[-1] + g.shape[-1]) < (
        kh * kw * a.shape[-1] * g.shape[-1]
    ):
        patches = tf.image.extract_patches(
            a, sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1], rates=[1, dh, dw, 1], padding=layer.padding.upper()
        )
        p_rows = _to_records(patches, microbatches, 1)
        rows = p_rows.shape[1]
        if rows is not None and rows * (p_rows.shape[-1] + g.shape[-1]) < p_rows.shape[-1] * g.shape[-1]:
            gram = tf.einsum("rtd,rsd->rts", p_rows, p_rows) * tf.einsum("rtu,rsu->rts", g_rows, g_rows)
            return _with_bias(layer, None, tf.reduce_sum(gram, axis=[1, 2]), g_rows)
        per_record = tf.einsum("rtd,rtu->rdu", p_rows, g_rows)
        return _with_bias(layer, None, _sum_sq(per_record), g_rows)
    per_example = per_record_conv2d_kernel_grad(
        a, g, layer.kernel_size, strides=layer.strides, dilations=layer.dilation_rate, padding=layer.padding
    )
    if microbatches is not None:
        per_example = tf.reduce_sum(
            tf.reshape(per_example, [microbatches, -1, *per_example.shape[1:]]), axis=1
        )
    records = a.shape[0] if microbatches is None else microbatches
    keep = _fits(layer, records, g.dtype)
    return _with_bias(layer, per_example if keep else None, _sum_sq(per_example), g_rows)


def _layer_records(layer: keras.layers.Layer, a: tf.Tensor, g: tf.Tensor, microbatches: int | None) -> _LayerRecords:
    """Each record's squared gradient norm for all of ``layer``'s weights (and maybe the gradients)."""
    if isinstance(layer, keras.layers.Embedding):
        ids = _to_records(a, microbatches, 0)
        g = _to_records(g, microbatches, 1)
        if ids.shape[1] == 1:
            return _LayerRecords(tf.reduce_sum(tf.square(g), axis=[1, 2]))
        same = tf.cast(tf.equal(ids[:, :, None], ids[:, None, :]), g.dtype)
        return _LayerRecords(tf.reduce_sum(same * tf.einsum("rtu,rsu->rts", g, g), axis=[1, 2]))
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


def make_clipper(
    model: keras.Model,
    variables: Sequence[keras.Variable],
    loss_fn: LossFn,
    *,
    method: str = "auto",
    num_microbatches: int | None = None,
) -> VectorizedClipper | GhostClipper:
    """The clipper for ``method``: "ghost", "vectorized", or "auto" (ghost when every layer allows it)."""
    if method == "vectorized" or (method == "auto" and ghost_blockers(model)):
        return VectorizedClipper(model, variables, loss_fn, num_microbatches)
    try:
        return GhostClipper(model, variables, loss_fn, num_microbatches)
    except UnsupportedLayerError:
        if method == "ghost":
            raise
        return VectorizedClipper(model, variables, loss_fn, num_microbatches)
