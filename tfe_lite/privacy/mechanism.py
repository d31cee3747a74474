"""The Gaussian mechanism of one DP-SGD step: tensorflow-privacy's sum query, its state, and where its noise
is added under ``tf.distribute``.

Each replica clips its own records and forms the query's sample state from their clipped sum and norms
(:meth:`Mechanism.sample_state`). :meth:`Mechanism.noised_mean` then gives every replica its part of the
noised mean, ready for the optimizer's cross-replica sum:

* fixed clip: the first replica adds the noise to its local sum and the optimizer's all-reduce sums the
  replicas, so no other replica ever sees an unnoised sum (as Opacus does);
* adaptive clipping: the query's state update needs the global clipped count, so the replicas first
  all-reduce their sample states and then all apply the same noise, drawn on the first replica and shared
  by an all-reduce (:mod:`tfe_lite.privacy.noise`); each replica passes on its share of the mean.

Either way the update equals single-device DP-SGD on the global batch in distribution, provided every
example is on one replica (:mod:`tfe_lite.privacy.replicas`). The query's state (the adaptive clip) lives
in non-trainable weights of the model, aggregated "only first replica", and is saved with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from tfe_lite.privacy import _tf_privacy
from tfe_lite.privacy.config import DPConfig


class Mechanism:
    """The query of ``config`` and its state, held in weights made by ``add_weight`` (the model's)."""

    def __init__(self, config: DPConfig, add_weight: Callable[..., keras.Variable]) -> None:
        self._expected_batch_size = config.expected_batch_size
        self.query = config.make_query()
        self.state_variables = [
            add_weight(
                shape=(),
                dtype=leaf.dtype.name,
                initializer=keras.initializers.Constant(float(leaf)),
                trainable=False,
                aggregation="only_first_replica",
                name=f"dp_query_state_{i}",
            )
            for i, leaf in enumerate(tf.nest.flatten(self.query.initial_global_state()))
        ]

    def global_state(self) -> Any:
        template = self.query.initial_global_state()
        return tf.nest.pack_sequence_as(template, [tf.convert_to_tensor(v) for v in self.state_variables])

    def clip(self, global_state: Any = None) -> tf.Tensor:
        """The L2 clip the query applies now (it moves with adaptive clipping)."""
        state = self.global_state() if global_state is None else global_state
        return _tf_privacy.clip_norm(self.query, self.query.derive_sample_params(state))

    def sample_state(self, global_state: Any, clipped_sum: list[tf.Tensor], norms: tf.Tensor) -> Any:
        """This replica's sample state: the clipped sum of its records, and their norms (for the count)."""
        params = self.query.derive_sample_params(global_state)
        return _tf_privacy.sample_state(self.query, params, clipped_sum, norms)

    def noised_mean(self, sample: Any, global_state: Any, records: tf.Tensor) -> tuple[list, tf.Tensor]:
        """The noised sum divided by the global record count (or the expected batch size), per replica,
        ready for the optimizer's cross-replica sum; and the query's clip for the next step."""
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        expected = self._expected_batch_size
        if _tf_privacy.has_adaptive_state(self.query):
            if replicas > 1:
                sample, records = context.all_reduce(tf.distribute.ReduceOp.SUM, (sample, records))
            noised, new_state, _ = self.query.get_noised_result(sample, global_state)
            for variable, value in zip(self.state_variables, tf.nest.flatten(new_state)):
                variable.assign(value)
            share = float(replicas)  # every replica holds the same noised sum
        else:
            noised, new_state, _ = self.query.get_noised_result(sample, global_state)
            if replicas > 1 and expected is None:
                records = context.all_reduce(tf.distribute.ReduceOp.SUM, records)
            share = 1.0  # noise only on the first replica: the replicas' sum is the noised global sum
        denominator = float(expected) if expected is not None else tf.maximum(records, 1.0)
        grads = [g / (tf.cast(denominator, g.dtype) * share) for g in tf.nest.flatten(noised)]
        return grads, self.clip(new_state)
