"""The native ring matmul against numpy's int64 ``@`` (which wraps modulo 2^64), and its pure-TF twin.

The native library is built by ``make``; when it is missing these tests fail unless TFE_LITE_NATIVE_OPS=0
selects the pure TensorFlow ops on purpose.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tfe_lite import ops
from tfe_lite.errors import ConfigError, ProtocolError, RuntimeConfigError, ShapeError

FORCED_TF = os.environ.get(ops.ENV_VAR) == "0"  # as tests/conftest.py NATIVE_FORCED_OFF
dims = st.integers(min_value=0, max_value=70)


def random_ring(rng, shape):
    return rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=shape, dtype=np.int64, endpoint=True)


def test_native_library_is_built():
    if FORCED_TF:
        assert not ops.available() and ops.backend() == "tensorflow"
    else:
        assert ops.available(), f"native ops library {ops.LIBRARY_PATH} not built: run `make ops`"


@settings(max_examples=40)
@given(m=dims, k=dims, n=dims, seed=st.integers(0, 2**32 - 1))
def test_matmul_matches_numpy_on_all_shapes(m, k, n, seed):
    if not FORCED_TF:
        assert ops.available()
    rng = np.random.default_rng(seed)
    a, b = random_ring(rng, (m, k)), random_ring(rng, (k, n))
    np.testing.assert_array_equal(ops.matmul(a, b).numpy(), a @ b)


@pytest.mark.parametrize("m, k, n", [(257, 130, 67), (1, 600, 1), (33, 1, 129), (5, 300, 40), (96, 513, 80)])
def test_matmul_larger_shapes(backend, m, k, n):
    rng = np.random.default_rng(m * k * n)
    a, b = random_ring(rng, (m, k)), random_ring(rng, (k, n))
    np.testing.assert_array_equal(ops.matmul(a, b).numpy(), a @ b)


KERNELS = ["amx", "vector"]


def native_kernel(kernel):
    """The native op with a forced kernel; AMX is skipped only on machines without it."""
    if FORCED_TF:
        pytest.skip("TFE_LITE_NATIVE_OPS=0: native ops disabled on purpose")
    assert ops.available(), f"native ops library {ops.LIBRARY_PATH} not built: run `make ops`"
    if kernel not in ops.native_kernels():
        pytest.skip(f"this machine cannot run the {kernel!r} kernel")
    return lambda a, b: ops.library().ring_mat_mul(a, b, kernel=kernel)


@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=30)
@given(m=dims, k=dims, n=dims, seed=st.integers(0, 2**32 - 1))
def test_each_native_kernel_on_all_shapes(kernel, m, k, n, seed):
    matmul = native_kernel(kernel)
    rng = np.random.default_rng(seed)
    a, b = random_ring(rng, (m, k)), random_ring(rng, (k, n))
    np.testing.assert_array_equal(matmul(a, b).numpy(), a @ b)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("m, k, n", [(257, 130, 67), (16, 64, 16), (17, 65, 33), (130, 300, 1), (4, 70, 20)])
def test_each_native_kernel_larger_and_batched(kernel, m, k, n):
    matmul = native_kernel(kernel)
    rng = np.random.default_rng(m + k + n)
    a, b = random_ring(rng, (m, k)), random_ring(rng, (k, n))
    np.testing.assert_array_equal(matmul(a, b).numpy(), a @ b)
    a, b = random_ring(rng, (2, 3, m % 40, k % 50)), random_ring(rng, (2, 3, k % 50, n % 30))
    np.testing.assert_array_equal(matmul(a, b).numpy(), a @ b)


@pytest.mark.parametrize("kernel", KERNELS)
def test_each_native_kernel_on_extreme_values_and_long_k(kernel):
    """All-ones words maximize every partial sum: the AMX byte-plane sums must stay exact past k = 16384."""
    matmul = native_kernel(kernel)
    a, b = np.full((17, 16500), -1, np.int64), np.full((16500, 18), -1, np.int64)
    np.testing.assert_array_equal(matmul(a, b).numpy(), a @ b)
    extremes = np.array([-1, np.iinfo(np.int64).min, np.iinfo(np.int64).max, 2**52 - 1, 2**52, 255, -(2**40)])
    a = np.resize(extremes, (19, 100)).astype(np.int64)
    b = np.resize(extremes[::-1], (100, 21)).astype(np.int64)
    np.testing.assert_array_equal(matmul(a, b).numpy(), a @ b)


def test_matmul_extreme_values(backend):
    """All-ones bit patterns and the int64 extremes exercise every carry of the 52-bit limb split."""
    extremes = np.array([-1, np.iinfo(np.int64).min, np.iinfo(np.int64).max, 2**52 - 1, 2**52, 4095, -(2**40)])
    a = np.resize(extremes, (9, 40)).astype(np.int64)
    b = np.resize(extremes[::-1], (40, 17)).astype(np.int64)
    np.testing.assert_array_equal(ops.matmul(a, b).numpy(), a @ b)


def test_long_inner_dimension_crosses_k_blocks(backend):
    rng = np.random.default_rng(7)
    a, b = random_ring(rng, (6, 5000)), random_ring(rng, (5000, 18))
    np.testing.assert_array_equal(ops.matmul(a, b).numpy(), a @ b)


def test_backends_agree_with_tf_matmul(monkeypatch):
    rng = np.random.default_rng(3)
    a, b = tf.constant(random_ring(rng, (64, 50))), tf.constant(random_ring(rng, (50, 31)))
    monkeypatch.setenv(ops.ENV_VAR, "0")
    pure = ops.matmul(a, b).numpy()
    monkeypatch.setenv(ops.ENV_VAR, "1")
    np.testing.assert_array_equal(ops.matmul(a, b).numpy(), pure)
    np.testing.assert_array_equal(tf.matmul(a, b).numpy(), pure)


def test_matmul_inside_tf_function_on_another_device(backend):
    rng = np.random.default_rng(11)
    a, b = random_ring(rng, (37, 29)), random_ring(rng, (29, 45))

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int64)] * 2)
    def product(x, y):
        with tf.device("/device:CPU:1"):
            return ops.matmul(x, y)

    previous = tf.config.get_soft_device_placement()
    tf.config.set_soft_device_placement(False)  # as in the protocol: the kernel must exist on CPU:1
    try:
        result = product(a, b)
        np.testing.assert_array_equal(result.numpy(), a @ b)
        np.testing.assert_array_equal(product(b.T, a.T).numpy(), b.T @ a.T)  # same trace, new shapes
    finally:
        tf.config.set_soft_device_placement(previous)
    graph = product.get_concrete_function().graph
    matmuls = [op for op in graph.get_operations() if op.type in ("RingMatMul", "MatMul", "BatchMatMulV2")]
    assert [op.type for op in matmuls] == ["RingMatMul" if backend == "native" else "MatMul"]
    assert matmuls[0].device.endswith("device:CPU:1")


def test_static_shape_inference(backend):
    @tf.function
    def shapes(x, y):
        return ops.matmul(x, y)

    graph = shapes.get_concrete_function(tf.TensorSpec([5, None], tf.int64), tf.TensorSpec([None, 7], tf.int64))
    assert graph.structured_outputs.shape.as_list() == [5, 7]


def test_batched_matmul(backend):
    rng = np.random.default_rng(5)
    a, b = random_ring(rng, (3, 2, 9, 20)), random_ring(rng, (3, 2, 20, 6))
    np.testing.assert_array_equal(ops.matmul(a, b).numpy(), a @ b)
    broadcast = random_ring(rng, (20, 6))[None]  # unequal batch dims: tf.matmul broadcasts
    np.testing.assert_array_equal(ops.matmul(a[0], np.repeat(broadcast, 2, 0)).numpy(), a[0] @ broadcast)


def test_native_op_rejects_mismatched_shapes_at_run_time():
    if FORCED_TF:
        pytest.skip("TFE_LITE_NATIVE_OPS=0: native ops disabled on purpose")
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        ops.library().ring_mat_mul(tf.zeros([2, 3], tf.int64), tf.zeros([4, 5], tf.int64))


@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.uint64])
def test_rejects_other_dtypes(dtype):
    good = np.zeros((2, 2), np.int64)
    with pytest.raises(ProtocolError, match="`a`.*int64.*Received: a with dtype"):
        ops.matmul(good.astype(dtype), good)
    with pytest.raises(ProtocolError, match="`b`.*Received: b with dtype"):
        ops.matmul(good, good.astype(dtype))


def test_rejects_rank_below_two():
    with pytest.raises(ShapeError, match=r"`a`.*Received: a with shape \(3,\)"):
        ops.matmul(np.zeros(3, np.int64), np.zeros((3, 2), np.int64))
    with pytest.raises(ShapeError, match=r"`b`.*Received: b with shape \(\)"):
        ops.matmul(np.zeros((2, 3), np.int64), np.int64(4))


def test_rejects_mismatched_inner_dimensions(backend):
    with pytest.raises(ShapeError, match=r"a.shape\[-1\] == b.shape\[-2\].*\(2, 3\).*\(4, 2\)"):
        ops.matmul(np.zeros((2, 3), np.int64), np.zeros((4, 2), np.int64))


def test_rejects_unknown_switch_value(monkeypatch):
    monkeypatch.setenv(ops.ENV_VAR, "yes")
    with pytest.raises(ConfigError, match="TFE_LITE_NATIVE_OPS"):
        ops.available()


def test_missing_library_falls_back_to_pure_tensorflow(monkeypatch, tmp_path):
    monkeypatch.setenv(ops.ENV_VAR, "1")
    monkeypatch.setattr(ops, "_library", None)
    monkeypatch.setattr(ops, "LIBRARY_PATH", tmp_path / "_ring_ops.so")
    assert not ops.available() and ops.backend() == "tensorflow"
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    np.testing.assert_array_equal(ops.matmul(a, a.T).numpy(), a @ a.T)


def test_broken_library_raises_with_the_remedy(monkeypatch, tmp_path):
    broken = tmp_path / "_ring_ops.so"
    broken.write_bytes(b"not a shared library")
    monkeypatch.setenv(ops.ENV_VAR, "1")
    monkeypatch.setattr(ops, "_library", None)
    monkeypatch.setattr(ops, "LIBRARY_PATH", broken)
    with pytest.raises(RuntimeConfigError, match="make ops"):
        ops.available()
    monkeypatch.setenv(ops.ENV_VAR, "0")  # the escape hatch named in the message
    assert ops.backend() == "tensorflow"


@pytest.mark.parametrize("shape,ksize,strides,padding", [
    ((2, 7, 6, 3), (3, 3), (1, 1), "VALID"), ((2, 7, 6, 3), (3, 2), (2, 3), "SAME"), ((1, 5, 5, 1), (5, 5), (1, 1), "VALID"),
    ((1, 4, 4, 2), (1, 1), (2, 2), "SAME"), ((3, 9, 8, 2), (2, 2), (2, 2), "VALID"), ((1, 6, 6, 1), (4, 4), (3, 3), "SAME"),
])
def test_patches_by_slices_equal_extract_patches(shape, ksize, strides, padding):
    from tfe_lite import ring

    x = tf.constant(np.random.default_rng(0).integers(-2**62, 2**62, size=shape), tf.int64)
    expected = tf.image.extract_patches(x, [1, *ksize, 1], [1, *strides, 1], [1, 1, 1, 1], padding)
    np.testing.assert_array_equal(ring.patches(x, ksize, strides, padding).numpy(), expected.numpy())
