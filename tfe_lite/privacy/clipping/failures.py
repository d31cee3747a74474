"""Errors that name the layer whose per-example gradients TensorFlow's vectorizer (pfor) cannot build.

pfor fails while it converts a graph (no rule for an op, a rule that rejects its inputs) or, for a few
converted graphs, only when they run. Its messages name an op and a node; the node's name scopes are the
Keras layers it belongs to. The message formats are TensorFlow's (2.21), not an API: when they change, the
errors below lose the op or layer names and keep TensorFlow's own message as the reason.
"""

from __future__ import annotations

import re

import keras
import tensorflow as tf

from tfe_lite.errors import UnsupportedLayerError
from tfe_lite.privacy.clipping.layers import _all_layers


def _layers_in_scope(node_name: str, model: keras.Model) -> list[str]:
    """The layers of ``model`` whose name scope (``name`` or ``name_<n>``) is part of ``node_name``."""
    scopes = node_name.split("/")
    return [
        layer.name
        for layer in _all_layers(model)
        if any(re.fullmatch(rf"{re.escape(layer.name)}(_\d+)?", scope) for scope in scopes)
    ]


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
        f"node {node.group(1)!r}{where} does not compute ({_reason(message)}). This is a limit of "
        "tf.vectorized_map for this layer: replace it, or implement it with other TensorFlow ops."
    )
