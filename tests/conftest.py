"""Shared test set-up: logical CPU devices exist before TensorFlow's runtime starts."""

from tfe_lite.devices import ensure_logical_cpus

# Players of LocalConfig and tf.distribute replicas each need a logical CPU device; this must run before
# any test module executes a TensorFlow op.
ensure_logical_cpus(8)
