"""Which examples each ``tf.distribute`` replica clips, so that every example of a global batch counts once.

DP-SGD on several replicas sums the replicas' clipped sums and adds the noise once (see
:mod:`tfe_lite.privacy.noise`). That equals single-device DP-SGD only if every example of the global batch
is on exactly one replica. ``fit`` distributes its dataset that way. ``train_on_batch``, and a custom loop
that calls ``strategy.run(model.train_step, args=(batch,))`` with a plain batch, give *the whole batch to
every replica*: each example would be clipped and summed once per replica, multiplying the sensitivity by
the number of replicas while the noise stays the same (with 2 replicas, half the noise multiplier that is
accounted for).

:func:`local_batch` detects a batch given whole to every replica (while the step is traced: the replicas'
inputs, gathered by ``merge_call``, are one object rather than per-replica values) and gives each replica
its own contiguous slice of it, as distributing the batch would have. A batch that is already
per-replica is left as it is. Under ``MultiWorkerMirroredStrategy`` each worker feeds its own batch, which
the model cannot tell from the others', so there every worker's batch is taken as its own: feed such
strategies elements of ``strategy.experimental_distribute_dataset``.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf


def _is_per_replica(value: Any) -> bool:
    return isinstance(value, tf.distribute.DistributedValues)


def local_batch(data: Any) -> Any:
    """``data`` as this replica's share of the global batch (see the module docstring)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return data
    replicas = context.num_replicas_in_sync
    if len(context.strategy.extended.worker_devices) != replicas:
        return data  # several workers: each worker's batch is its own
    leaves = [leaf for leaf in tf.nest.flatten(data) if leaf is not None]
    if not leaves:
        return data
    whole = context.merge_call(lambda _, value: not _is_per_replica(value), args=(leaves[0],))
    if not whole:
        return data
    size = tf.shape(tf.convert_to_tensor(leaves[0]))[0]
    index = tf.cast(context.replica_id_in_sync_group, size.dtype)
    start, end = index * size // replicas, (index + 1) * size // replicas

    def take(leaf: Any) -> Any:
        if leaf is None:
            return None
        leaf = tf.convert_to_tensor(leaf)
        return leaf[start:end] if leaf.shape.rank else leaf

    return tf.nest.map_structure(take, data)


def first_replica_batch(strategy: tf.distribute.Strategy, batches: Any) -> Any:
    """The first replica's part of a distributed batch (plain values pass through).

    Keras builds metrics from a template batch that it gets by averaging the replicas' first batches, which
    fails when replicas hold different numbers of examples (a global batch that does not split evenly, or a
    Poisson-sampled one). Any one replica's batch is as good a template.
    """
    return tf.nest.map_structure(
        lambda v: strategy.experimental_local_results(v)[0] if _is_per_replica(v) else v, batches
    )
