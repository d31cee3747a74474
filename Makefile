# Set-up contract: `make demo` and `make test` do everything on a fresh machine.
# TF_EXTRA=gpu selects the CUDA build of TensorFlow instead of tensorflow-cpu.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TF_EXTRA ?= cpu
STAMP := $(VENV)/.tfe_lite_installed

.PHONY: install demo test bench ops clean

$(STAMP): setup.cfg pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(TF_EXTRA),test,data,plot]'
	# tensorflow-privacy 0.9.0 pins numpy<2 and TF~=2.4; its DPQuery library works without them.
	$(PY) -m pip install --quiet --no-deps tensorflow-privacy==0.9.0
	touch $(STAMP)

install: $(STAMP) ops

# The native ring ops (wrapping int64 matmul, ChaCha20), compiled against the installed TensorFlow.
ops: $(STAMP)
	$(PY) -m tfe_lite.ops.build

demo: install
	$(PY) examples/private_inference_mnist.py

# The suite in TEST_WORKERS processes (pytest-xdist), each test file whole in one of them (its module
# fixtures made once): most tests keep one core busy, so two workers on two cores nearly halve the time
# (README, "Tests"). TEST_WORKERS=0 runs it in this process alone. Then the `serial` tests (time bounds of
# faults on a cluster of processes), alone. Either run finding no test fails (pytest's exit 5).
TEST_WORKERS ?= 2

test: install
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=20 -m "not serial" tests
	$(PY) -m pytest -q -p no:cacheprovider --durations=5 -m serial tests

bench: install
	$(PY) benchmarks/ring_matmul.py
	$(PY) benchmarks/matmul.py
	$(PY) benchmarks/dp_sgd.py

clean:
	rm -rf $(VENV) build *.egg-info tfe_lite/ops/*.so
