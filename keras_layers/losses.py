"""Losses on secret shares: the gradients a private backward pass starts from, and the mean squared error.

Each function takes the Pond protocol ``prot``, private model outputs and labels (private, shared by their
owner, or public), and follows Keras's conventions: the loss of a sample is the mean over the last axis
(MSE, binary cross-entropy) or the sum over classes (categorical cross-entropy), and ``reduction`` is
``"sum_over_batch_size"`` (Keras's default: the mean over the samples) or ``"sum"``. Gradients are taken
with respect to the *logits* (the inputs of the final sigmoid or softmax), which needs no private
logarithm: ``d/dz CE(softmax(z), y) = softmax(z) - y`` and ``d/dz BCE(sigmoid(z), y) = sigmoid(z) - y``.

Error bounds (default preset, ``u = 2**-16``; ``D`` is the reduction's divisor, ``g`` the exact gradient):
they add the protocol's approximation bound (:mod:`tfe_lite.protocols.pond.approximations`), divided by
``D``, to the error of the public scaling (:mod:`.scaling`: ``u |g| + 3 u``).

=================================== ============================= =============================================
function                            computes                      error bound per element
=================================== ============================= =============================================
``softmax_cross_entropy_gradient``  ``(softmax(z) - y) / D``      ``2**-12 / D + u |g| + 3 u``
``sigmoid_cross_entropy_gradient``  ``(sigmoid(z) - y) / D``      ``2**-13 / D + u |g| + 3 u``
``mean_squared_error_gradient``     ``2 (p - y) / D``             ``u |g| + 3 u`` (``p - y`` is exact)
``mean_squared_error``              ``sum((p - y)**2) / D``       ``(n / D) u + u |L| + 3 u`` (one truncation
                                                                  per square; ``n`` elements, ``L`` the loss)
=================================== ============================= =============================================

Labels must have the shape of the outputs. Public labels (numpy, numbers) are checked for their range here:
one-hot or probability rows for the cross-entropy, values in [0, 1] for the binary one. Private labels
cannot be checked without revealing them: their owner checks them on its own device with
:func:`validate_labels` before sharing.
"""

from __future__ import annotations

import numpy as np

from tfe_lite.errors import ConfigError, ProtocolError, ShapeError, TfeLiteError
from tfe_lite.protocols import PrivateTensor, PublicTensor

from .scaling import scale

REDUCTIONS = ("sum_over_batch_size", "sum")
#: Rows of probability labels must sum to 1 within this (float32 one-hot rows and smoothed labels pass).
SUM_TOLERANCE = 1e-5


class LabelError(TfeLiteError, ValueError):
    """Labels of the wrong shape, kind or range for a loss."""


def validate_labels(labels, kind: str, *, name: str = "labels") -> np.ndarray:
    """Check plaintext ``labels`` for a loss ``kind`` (``"categorical"``: rows of non-negative values summing
    to 1 over the last axis; ``"binary"``: values in [0, 1]; ``"regression"``: finite values) and return them
    as float64. Raises :class:`LabelError` naming the first bad value and its index."""
    values = np.asarray(labels, np.float64)
    if kind not in ("categorical", "binary", "regression"):
        raise ConfigError(f"Received an invalid value for `kind`, expected 'categorical', 'binary' or 'regression'. Received: kind={kind!r}")
    finite = np.isfinite(values)
    if not finite.all():
        index = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise LabelError(f"Received an invalid value for `{name}`: a non-finite value {float(values[index])!r} at index {index}.")
    if kind == "regression":
        return values
    outside = (values < 0) | (values > 1)
    if outside.any():
        index = tuple(int(i) for i in np.argwhere(outside)[0])
        what = "probabilities (one-hot rows)" if kind == "categorical" else "values in [0, 1]"
        raise LabelError(f"Received an invalid value for `{name}`, expected {what}. Received: {name}[{index}]={float(values[index])!r}")
    if kind == "categorical":
        if values.ndim == 0:
            raise LabelError(f"Received an invalid value for `{name}`, expected one-hot rows (rank >= 1). Received: a scalar {values!r}")
        sums = values.sum(axis=-1)
        bad = np.abs(sums - 1.0) > SUM_TOLERANCE
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise LabelError(f"Received an invalid value for `{name}`, expected one-hot rows summing to 1 over the last axis "
                             f"(integer class labels must be one-hot encoded first). Received: the row at {index} sums to {float(sums[index])!r}")
    return values


def _operands(prot, outputs, labels, kind: str, outputs_name: str):
    if not isinstance(outputs, PrivateTensor) or outputs.protocol is not prot:
        raise ProtocolError(f"Received an invalid value for `{outputs_name}`, expected a private tensor of this protocol. Received: {outputs_name}={outputs!r}")
    if isinstance(labels, (PrivateTensor, PublicTensor)):
        if labels.protocol is not prot:
            raise ProtocolError(f"`labels` belong to another protocol instance. Received: labels={labels!r}")
    else:
        labels = validate_labels(labels, kind)
    if tuple(labels.shape) != tuple(outputs.shape):
        raise LabelError(f"Received an invalid shape for `labels`, expected the shape of `{outputs_name}` "
                         f"{tuple(outputs.shape)}. Received: labels.shape={tuple(labels.shape)}")
    if kind == "categorical" and outputs.shape.rank < 1:
        raise ShapeError(f"Received an invalid shape for `{outputs_name}`, expected rank >= 1 (classes on the last axis). Received: {tuple(outputs.shape)}")
    return outputs, labels


def divisor(shape, reduction: str) -> int:
    """``D``: the element count for ``sum_over_batch_size`` (Keras's mean over the last axis, then over the
    samples), the last axis for ``sum`` (the sum over samples of the per-sample means)."""
    if reduction not in REDUCTIONS:
        raise ConfigError(f"Received an invalid value for `reduction`, expected one of {list(REDUCTIONS)}. Received: reduction={reduction!r}")
    dims = [int(d) for d in shape]
    last = dims[-1] if dims else 1
    if reduction == "sum":
        return last
    return max(int(np.prod(dims)), 1)


def softmax_cross_entropy_gradient(prot, logits: PrivateTensor, labels, *, reduction: str = "sum_over_batch_size") -> PrivateTensor:
    """Gradient with respect to ``logits`` of Keras's ``CategoricalCrossentropy(from_logits=True)``:
    ``(softmax(logits) - labels) / D``, classes on the last axis; ``D`` is the number of samples
    (``sum_over_batch_size``) or 1 (``sum``). Error per element: ``2**-12 / D + u |g| + 3 u``."""
    logits, labels = _operands(prot, logits, labels, "categorical", "logits")
    d = divisor(logits.shape, reduction)  # validates `reduction`
    d = d // int(logits.shape[-1]) if reduction == "sum_over_batch_size" else 1  # the samples, or 1
    g = prot.sub(prot.softmax(logits, axis=-1), labels)
    return g if d == 1 else scale(prot, g, 1.0 / d)


def sigmoid_cross_entropy_gradient(prot, logits: PrivateTensor, labels, *, reduction: str = "sum_over_batch_size") -> PrivateTensor:
    """Gradient with respect to ``logits`` of Keras's ``BinaryCrossentropy(from_logits=True)``:
    ``(sigmoid(logits) - labels) / D`` (``D`` from :func:`divisor`). Error per element:
    ``2**-13 / D + u |g| + 3 u``."""
    logits, labels = _operands(prot, logits, labels, "binary", "logits")
    g = prot.sub(prot.sigmoid(logits), labels)
    d = divisor(logits.shape, reduction)
    return g if d == 1 else scale(prot, g, 1.0 / d)


def mean_squared_error_gradient(prot, predictions: PrivateTensor, targets, *, reduction: str = "sum_over_batch_size") -> PrivateTensor:
    """Gradient with respect to ``predictions`` of Keras's ``MeanSquaredError``: ``2 (predictions - targets)
    / D`` (``D`` from :func:`divisor`). Error per element: ``u |g| + 3 u`` (the difference is exact)."""
    predictions, targets = _operands(prot, predictions, targets, "regression", "predictions")
    return scale(prot, prot.sub(predictions, targets), 2.0 / divisor(predictions.shape, reduction))


def mean_squared_error(prot, predictions: PrivateTensor, targets, *, reduction: str = "sum_over_batch_size") -> PrivateTensor:
    """Keras's ``MeanSquaredError`` as a private scalar: ``sum((predictions - targets)**2) / D``. Error:
    ``(n / D) u + u |L| + 3 u`` for ``n`` elements and loss ``L``; the sum of squares must stay below
    ``2**int_bits``."""
    predictions, targets = _operands(prot, predictions, targets, "regression", "predictions")
    total = prot.reduce_sum(prot.square(prot.sub(predictions, targets)))
    d = divisor(predictions.shape, reduction)
    return total if d == 1 else scale(prot, total, 1.0 / d)
