"""The TensorFlow internals the vectorized path uses, in one place: pfor's converter rules and entry point.

``tf.vectorized_map`` (pfor) is public, but three things it does are not good enough for per-example
gradients, and changing them needs TensorFlow's private modules (``tensorflow.python.ops.parallel_for``):

* **Converter rules** (:data:`_RULES`): our converters for ``Conv2DBackpropFilter`` (one native op instead of
  a ``while_loop`` of one small op per record), ``MaxPoolGrad`` (fed so that oneDNN's kernel runs),
  ``BatchMatMulV2``/``V3`` against a shared operand (one 2-D matmul, avoiding a oneDNN bug), and
  ``DepthwiseConv2dNative`` and its input gradient with a shared kernel (which TensorFlow's rules refuse).
  They use the ``PForInput`` interface (``input``, ``stacked_input``, ``unstacked_input``, ``get_attr``,
  ``op``) and ``pfor.wrap``, and are put in pfor's registry
  ``pfor._pfor_converter_registry`` only while a clipper traces (:func:`_vectorization_rules`). Each rule
  hands the cases it does not handle to TensorFlow's own rule.
* **The entry point** :func:`_vectorized_map` calls ``control_flow_ops._pfor_impl`` so that, under XLA, the
  vectorized ops stay in the current graph where :func:`tfe_lite.privacy.clipping.factors._outer_products`
  can see how each gradient was built.
* **Where an error came from** (:func:`_raised_in_pfor`): a frame of TensorFlow's ``parallel_for`` package
  in the traceback.

What falls back when these internals change: without ``_pfor_impl``, ``tf.vectorized_map`` itself (under
XLA the Dense kernels' per-record gradients are then materialized: slower, same values); without
``_pfor_converter_registry`` (an ``AttributeError`` names it when a clipper traces), nothing is swapped
silently. The tests compare every path with a one-record-at-a-time float64 oracle, so a changed interface
shows up there.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from tfe_lite.privacy.clipping.conv import conv2d_kernel_grads
from tfe_lite.privacy.clipping.records import _merge_records


def _raised_in_pfor(error: BaseException) -> bool:
    """Whether ``error`` was raised by TensorFlow's vectorizer (pfor) while it converted the graph."""
    frame = error.__traceback__
    while frame is not None:
        if "parallel_for" in frame.tb_frame.f_code.co_filename:
            return True
        frame = frame.tb_next
    return "pfor" in str(error)


def _pfor_conv2d_kernel_grads(pfor_input: Any) -> Any:
    """pfor converter of ``Conv2DBackpropFilter`` with per-record inputs: each record's kernel gradient by
    :func:`tfe_lite.privacy.clipping.conv.conv2d_kernel_grads` (TensorFlow's own converter runs a ``while_loop``
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
    per_example = conv2d_kernel_grads(
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


def _pfor_max_pool_grad(pfor_input: Any) -> Any:
    """pfor converter of ``MaxPoolGrad``: the records merged into the image batch, as TensorFlow's rule does,
    with the forward pool recomputed on the merged input right before.

    TensorFlow's rule hands ``MaxPoolGrad`` a reshaped ``orig_output``, and then (TensorFlow 2.21, oneDNN CPU
    build) the op runs TensorFlow's own kernel instead of oneDNN's, which took 11.5 ms instead of 0.3 ms for
    Opacus's MNIST network at batch 256 (a third of its whole vectorized step). Fed by a ``MaxPool`` op, it
    runs oneDNN's; the pool is recomputed (cheap) and the gradient is the same.
    """
    from tensorflow.python.ops.parallel_for import pfor

    pfor_input.stack_inputs()
    images = pfor_input.stacked_input(0)
    attrs = {name: pfor_input.get_attr(name) for name in ("ksize", "strides", "padding", "data_format")}
    merged = _merge_records(images)
    pooled = tf.raw_ops.MaxPool(input=merged, **attrs)
    grads = tf.raw_ops.MaxPoolGrad(
        orig_input=merged, orig_output=pooled, grad=_merge_records(pfor_input.stacked_input(2)), **attrs
    )
    return pfor.wrap(tf.reshape(grads, tf.shape(images)), True)


#: The pfor rules :class:`VectorizedClipper` uses instead of TensorFlow's, by op type.
_RULES: dict[str, Callable[[Any], Any]] = {
    "Conv2DBackpropFilter": _pfor_conv2d_kernel_grads,
    "MaxPoolGrad": _pfor_max_pool_grad,
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
