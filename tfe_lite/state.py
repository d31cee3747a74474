"""Variables that protocol code creates on first use, which may be while a ``tf.function`` traces.

Pools of precomputed triples and the run-time traffic counters are made the first time a computation
needs them. ``tf.function`` refuses ``tf.Variable`` creation after its first trace, so these variables are
created in the eager context (``tf.init_scope``) as plain resource variables, outside the function's
variable-creator scope: the function captures them like any variable created before it was traced. Use
this only for protocol state that must outlive every trace; model weights go through ``tf.Variable``
(and so through ``tf.distribute`` creators) as usual.
"""

from __future__ import annotations

import tensorflow as tf

# ``ResourceVariable(...)`` skips the variable-creator stack that ``tf.Variable(...)`` runs through; there is
# no public spelling of that.
from tensorflow.python.ops.resource_variable_ops import ResourceVariable


def lifted_variable(initial_value, *, device: str, name: str, shape=None) -> tf.Variable:
    """A non-trainable variable on ``device``, created eagerly even when called inside a trace."""
    with tf.init_scope(), tf.device(device):
        return ResourceVariable(initial_value, trainable=False, name=name, shape=shape)
