"""Shared test set-up: logical CPU devices exist before TensorFlow's runtime starts."""

from tfe_lite.devices import ensure_logical_cpus

# Players of LocalConfig and tf.distribute replicas each need a logical CPU device; this must run before
# any test module executes a TensorFlow op.
ensure_logical_cpus(8)

from hypothesis import settings  # noqa: E402

# Deterministic examples (with the protocol tests' fixed seeds, runs are repeatable); TensorFlow's first
# calls are slow, so no per-example deadline.
settings.register_profile("tfe_lite", derandomize=True, deadline=None, max_examples=25)
settings.load_profile("tfe_lite")
