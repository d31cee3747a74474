"""The one place that imports tensorflow-privacy, and the glue between its DPQuery objects and DP-SGD.

tensorflow-privacy 0.9.0's package ``__init__`` imports its Keras-2 optimizers, which fail on TensorFlow
2.21 / Keras 3. Its DPQuery library is self-contained and works. The package skips its own imports when
``sys.skip_tf_privacy_import`` exists, so :func:`_import` sets that flag for the duration of the first import
only and removes it again (no lasting change to ``sys``). Other tfe_lite modules import tensorflow-privacy
through this module, never directly.

DP-SGD uses two queries, both sum queries that clip each record (a per-example or per-microbatch gradient) to
an L2 norm and add Gaussian noise to the sum:

* ``GaussianSumQuery`` with a fixed clip, and
* ``QuantileAdaptiveClipSumQuery`` (Andrew et al., "Differentially Private Learning with Adaptive Clipping",
  2021), whose clip follows a quantile of the record norms, estimated privately from a noised count.

Their noise normally comes from TensorFlow's global stateful RNG. :func:`gaussian_sum_query` and
:func:`adaptive_clip_sum_query` route every Gaussian draw of the query (the gradient noise and, for adaptive
clipping, the count noise) through a :class:`tfe_lite.privacy.noise.NoiseSource` instead, so the noise can be
seeded, come from ``os.urandom`` or be drawn once per global batch under ``tf.distribute``.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

import dp_accounting
import tensorflow as tf


def _import(name: str) -> ModuleType:
    if "tensorflow_privacy" not in sys.modules:
        had_flag = hasattr(sys, "skip_tf_privacy_import")
        sys.skip_tf_privacy_import = True
        try:
            importlib.import_module("tensorflow_privacy")
        finally:
            if not had_flag:
                del sys.skip_tf_privacy_import
    return importlib.import_module(name)


dp_query = _import("tensorflow_privacy.privacy.dp_query.dp_query")
gaussian_query = _import("tensorflow_privacy.privacy.dp_query.gaussian_query")
quantile_adaptive_clip_sum_query = _import(
    "tensorflow_privacy.privacy.dp_query.quantile_adaptive_clip_sum_query"
)

DPQuery = dp_query.DPQuery
GaussianSumQuery = gaussian_query.GaussianSumQuery
QuantileAdaptiveClipSumQuery = quantile_adaptive_clip_sum_query.QuantileAdaptiveClipSumQuery


class NoisedGaussianSumQuery(GaussianSumQuery):
    """A ``GaussianSumQuery`` whose noise comes from a tfe_lite noise source.

    Only the draw changes: clipping, accumulation, state and the DP event are the parent's. ``noise.normal``
    gets the whole sample-state structure at once, so a distributed source can share it in one all-reduce.
    """

    def __init__(self, l2_norm_clip: Any, stddev: Any, noise: Any) -> None:
        super().__init__(l2_norm_clip, stddev)
        self._noise = noise

    def get_noised_result(self, sample_state, global_state):
        noise = self._noise.normal(sample_state, global_state.stddev)
        result = tf.nest.map_structure(tf.add, sample_state, noise)
        event = dp_accounting.GaussianDpEvent(global_state.stddev / global_state.l2_norm_clip)
        return result, global_state, event


def _route_noise(query: Any, noise: Any) -> int:
    """Replaces every plain ``GaussianSumQuery`` inside ``query`` by a :class:`NoisedGaussianSumQuery`.

    Composite queries keep their parts in private attributes, so this walks the attributes of every DPQuery
    it reaches. Returns how many queries it replaced, so callers can check the structure they expect.
    """
    replaced = 0
    for name, value in list(vars(query).items()):
        if type(value) is GaussianSumQuery:  # noqa: E721 - exactly the parent, never a subclass
            setattr(query, name, NoisedGaussianSumQuery(value._l2_norm_clip, value._stddev, noise))
            replaced += 1
        elif isinstance(value, DPQuery):
            replaced += _route_noise(value, noise)
    return replaced


def gaussian_sum_query(l2_norm_clip: float, noise_multiplier: float, noise: Any) -> GaussianSumQuery:
    """A fixed-clip Gaussian sum query: noise std ``noise_multiplier * l2_norm_clip``."""
    return NoisedGaussianSumQuery(l2_norm_clip, noise_multiplier * l2_norm_clip, noise)


def adaptive_clip_sum_query(
    l2_norm_clip: float,
    noise_multiplier: float,
    *,
    target_unclipped_quantile: float,
    learning_rate: float,
    clipped_count_stddev: float,
    expected_num_records: float,
    geometric_update: bool,
    noise: Any,
) -> QuantileAdaptiveClipSumQuery:
    """An adaptive-clip Gaussian sum query; both of its Gaussian draws use ``noise``."""
    query = QuantileAdaptiveClipSumQuery(
        initial_l2_norm_clip=l2_norm_clip,
        noise_multiplier=noise_multiplier,
        target_unclipped_quantile=target_unclipped_quantile,
        learning_rate=learning_rate,
        clipped_count_stddev=clipped_count_stddev,
        expected_num_records=expected_num_records,
        geometric_update=geometric_update,
    )
    replaced = _route_noise(query, noise)
    if replaced != 2:  # the gradient sum and the clipped count
        raise RuntimeError(
            "tensorflow-privacy's QuantileAdaptiveClipSumQuery no longer has the structure tfe_lite expects "
            f"(found {replaced} Gaussian sum queries, expected 2); its noise cannot be routed."
        )
    return query


def has_adaptive_state(query: DPQuery) -> bool:
    """Whether ``get_noised_result`` changes the query's global state from the (noised) data."""
    return isinstance(query, QuantileAdaptiveClipSumQuery)


def clip_norm(query: DPQuery, params: Any) -> tf.Tensor:
    """The L2 clip that ``query`` applies to each record, given its sample params."""
    if isinstance(query, QuantileAdaptiveClipSumQuery):
        return params.sum_params
    if isinstance(query, GaussianSumQuery):
        return params
    raise TypeError(f"Unsupported DPQuery {type(query).__name__}.")


def sample_state(query: DPQuery, params: Any, clipped_sum: list[tf.Tensor], norms: tf.Tensor) -> Any:
    """The query's sample state after accumulating every record of a batch.

    Args:
        query: a query made by :func:`gaussian_sum_query` or :func:`adaptive_clip_sum_query`.
        params: ``query.derive_sample_params(global_state)``.
        clipped_sum: the sum over records of each record clipped to :func:`clip_norm` (what summing
            ``query.preprocess_record`` would give, computed without materializing every record).
        norms: the L2 norm of each record before clipping, shape ``[records]``.

    For adaptive clipping the record's norm is all that the quantile estimate needs: the query's own
    ``preprocess_record`` runs on a one-element record ``[norm]`` (its clipped part is discarded), which
    yields exactly the clipped/unclipped indicator it would compute from the full record.
    """
    state = query.initial_sample_state(clipped_sum)
    if isinstance(query, QuantileAdaptiveClipSumQuery):
        # map_fn, not vectorized_map: pfor has no rule for the L2Loss op inside clip_by_global_norm.
        unclipped = tf.map_fn(
            lambda norm: query.preprocess_record(params, [norm]).quantile_estimator_state,
            tf.cast(norms, tf.float32),
            fn_output_signature=tf.float32,
        )
        count = tf.reduce_sum(unclipped, axis=0)
        record = query._SampleState(clipped_sum, count)
    else:
        record = clipped_sum
    return query.accumulate_preprocessed_record(state, record)
