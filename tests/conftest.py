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


import os  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tfe_lite import ops  # noqa: E402

#: Set when a run compares the pure-TF paths on purpose (TFE_LITE_NATIVE_OPS=0); `make test` never sets it.
NATIVE_FORCED_OFF = os.environ.get(ops.ENV_VAR) == "0"


def use_backend(monkeypatch, name: str) -> None:
    """Switch the ring ops and PRG to ``name`` ("native" or "tensorflow") for one test."""
    if name == "native":
        if NATIVE_FORCED_OFF:
            pytest.skip("TFE_LITE_NATIVE_OPS=0: native ops disabled on purpose")
        monkeypatch.setenv(ops.ENV_VAR, "1")
        assert ops.available(), f"native ops library {ops.LIBRARY_PATH} not built: run `make ops`"
    else:
        monkeypatch.setenv(ops.ENV_VAR, "0")
    assert ops.backend() == name


@pytest.fixture(params=["native", "tensorflow"])
def backend(request, monkeypatch):
    """Runs a test with each backend: the native library (required unless forced off) and pure TF."""
    use_backend(monkeypatch, request.param)
    return request.param


@pytest.fixture
def switch_backend(monkeypatch):
    """A function that switches the backend within one test (for comparing both in the same test)."""
    return lambda name: use_backend(monkeypatch, name)


@pytest.fixture
def both_backends(monkeypatch):
    """A function ``fn -> [native result, pure-TF result]`` (numpy arrays): ``fn()`` run with each backend."""

    def run(fn):
        results = []
        for name in ("native", "tensorflow"):
            use_backend(monkeypatch, name)
            results.append(np.asarray(fn()))
        return results

    return run
