"""Per-record gradients for DP-SGD: their L2 norms and their clipped sum, computed two ways.

A *record* is one example, or one microbatch of ``batch / num_microbatches`` consecutive examples whose loss
is the mean of its examples' losses. DP-SGD needs, for each record ``r`` with gradient ``g_r``, the norm
``||g_r||`` and then the re-weighted sum ``sum_r f_r g_r`` with clip factors ``f_r = min(1, C / ||g_r||)``.

* :class:`VectorizedClipper` (:mod:`.vectorized`) works for any model: ``tf.vectorized_map`` runs forward
  and backward on each record (pfor vectorization, one batched program, no Python loop). Gradients that
  pfor builds as outer products, or TensorFlow gives as ``IndexedSlices``, are used through their factors
  and rows (:mod:`.factors`); the others are materialized. pfor's own rule for a convolution's kernel
  gradient is a ``while_loop`` of one ``Conv2DBackpropFilter`` per record; while tracing, the clipper swaps
  in the native per-record op (:mod:`.conv`; :mod:`.pfor_rules` is the one module that uses TensorFlow
  internals). A layer pfor cannot vectorize is named in the error (:mod:`.failures`).
* :class:`GhostClipper` (:mod:`.ghost`, "ghost clipping") computes record norms from each supported layer's
  input activations and output gradients, keeping per-record gradients only where they cost no more than
  the layer's own weight gradient. Supported: Dense (any input rank), Conv2D (channels_last, groups=1) and
  Embedding, in Functional or Sequential models whose every trainable layer is one of these and is called
  once.

Layers whose per-example gradients do not exist (BatchNormalization in training mixes the examples of a
batch) or that add data-dependent losses (activity regularizers) are refused by :func:`check_layers`
(:mod:`.layers`). Records and the clippers' common result are in :mod:`.records`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from tfe_lite.errors import UnsupportedLayerError

CLIPPING_METHODS = ("auto", "vectorized", "ghost")

#: Largest per-record gradient of one layer (``records x weights``, in bytes) that :class:`GhostClipper`
#: keeps in memory to reuse for the clipped sum; above it only the norms are formed and the clipped sum
#: takes a second backward pass through the layer. Read when a step is traced.
MATERIALIZE_BYTES = 256 * 2**20

# The modules below read MATERIALIZE_BYTES from here; import them after it is defined.
from tfe_lite.privacy.clipping.failures import vectorization_failure  # noqa: E402
from tfe_lite.privacy.clipping.ghost import GhostClipper, _layer_records  # noqa: E402
from tfe_lite.privacy.clipping.layers import check_layers, ghost_blockers  # noqa: E402
from tfe_lite.privacy.clipping.records import LossFn, PerRecordGradients  # noqa: E402
from tfe_lite.privacy.clipping.vectorized import MIN_RECORDS, VectorizedClipper  # noqa: E402

__all__ = [
    "CLIPPING_METHODS", "GhostClipper", "LossFn", "MATERIALIZE_BYTES", "MIN_RECORDS", "PerRecordGradients",
    "VectorizedClipper", "check_layers", "ghost_blockers", "make_clipper", "vectorization_failure",
]
# _layer_records (one layer's ghost norms) is imported here for tests that check a layer's budget.


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
