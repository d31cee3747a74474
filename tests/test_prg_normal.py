"""ChaCha20 normals (prg.expand_normal): the native ChaCha20Normal op against its pure-TensorFlow twin and a
numpy reference of the documented bit mapping, distribution, determinism, freshness, edge cases and XLA.

Native and twin differ only in their log/sin/cos (glibc's libmvec, or the C library, against TensorFlow's
Eigen kernels), each within a few ulp, and in the order of the summands' additions: the radius (at most
5.8 or 8.6) carries a few ulp of relative error into each normal, cos/sin a few ulp of absolute error, and
sums over sqrt(summands) keep that scale. The largest differences seen, over both dtypes, summands 1 to 7
and builds with and without libmvec and AVX-512, are 8 ulp absolute and 5 ulp relative to max(|z|, 1);
TWIN_ULPS = 16 as rtol and atol (|a - b| <= 16 ulp (1 + |b|)) leaves a factor of 3 or more over them.
"""

import ctypes
import os

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tfe_lite import ops, prg
from tfe_lite.errors import ConfigError, ShapeError

FORCED_TF = os.environ.get(ops.ENV_VAR) == "0"  # as tests/conftest.py NATIVE_FORCED_OFF
RFC_KEY = np.frombuffer(bytes(range(32)), dtype="<i8").astype(np.int64)  # key 00:01:02:...:1f
KEY = np.array([1, -2, 2**62 + 3, -(2**63)], np.int64)
DTYPES = [tf.float32, tf.float64]
PER_BLOCK = {tf.float32: 16, tf.float64: 8}
TWIN_ULPS = 16
# Largest |normal| a 24-bit / 53-bit uniform allows: sqrt(-2 ln 2^-bits).
BOUND = {tf.float32: np.sqrt(2 * 24 * np.log(2)), tf.float64: np.sqrt(2 * 53 * np.log(2))}


def _twin_tolerance(dtype):
    eps = np.finfo(dtype.as_numpy_dtype).eps
    return {"rtol": TWIN_ULPS * eps, "atol": TWIN_ULPS * eps}


def reference(key, size, stream, dtype, summands=1):
    """The module docstring's mapping in numpy float64, from the int64 keystream of prg.expand_seed."""
    per_block = PER_BLOCK[dtype]
    blocks = -(-size * summands // per_block)
    keystream = prg.expand_seed(key, [blocks * 8], stream=stream).numpy()
    if dtype == tf.float32:
        words = keystream.view(np.uint32).reshape(blocks, 2, 8)
        uniform = ((words >> np.uint32(8)).astype(np.float64) + 1) * 2.0**-24
    else:
        words = keystream.view(np.uint64).reshape(blocks, 2, 4)
        uniform = ((words >> np.uint64(11)).astype(np.float64) + 1) * 2.0**-53
    radius = np.sqrt(-2 * np.log(uniform[:, 0]))
    angle = 2 * np.pi * uniform[:, 1]
    z = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1).ravel()[: size * summands]
    return z.reshape(size, summands).sum(axis=1) / np.sqrt(summands)


@pytest.mark.parametrize("summands", [1, 4])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_follows_the_documented_bit_mapping(backend, dtype, summands):
    expected = reference(KEY, 1001, 2**64 - 1, dtype, summands)
    z = prg.expand_normal(KEY, 1001, stream=2**64 - 1, dtype=dtype, summands=summands).numpy()
    assert z.dtype == dtype.as_numpy_dtype and z.shape == (1001,)
    # float32 output against a float64 computation of the same uniforms: float32 rounding of each step.
    tolerance = 2e-6 if dtype == tf.float32 else 1e-14
    np.testing.assert_allclose(z, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("summands", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("size", [0, 1, 2, 7, 15, 16, 17, 127, 128, 129, 255, 256, 257, 1000, 4099, 100_003])
def test_native_equals_twin(both_backends, size, dtype, summands):
    native, twin = both_backends(
        lambda: prg.expand_normal(KEY, size, stream=12345, dtype=dtype, summands=summands)
    )
    assert native.shape == twin.shape == (size,) and native.dtype == twin.dtype == dtype.as_numpy_dtype
    np.testing.assert_allclose(native, twin, **_twin_tolerance(dtype))


@pytest.mark.parametrize("first_block", [2**32 - 5, 2**63 - 5, -3])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_native_equals_twin_across_counter_carries(both_backends, dtype, first_block):
    """Block counters crossing 2^32 (carry into state word 13) and 2^64 (wrap) inside a 16-block group."""

    def draw():
        size = tf.constant(300, tf.int64)
        return prg._normal(RFC_KEY, size, tf.constant(9, tf.int64), first_block, dtype, 3)

    native, twin = both_backends(draw)
    np.testing.assert_allclose(native, twin, **_twin_tolerance(dtype))


@pytest.mark.parametrize("summands", [1, 4])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_samples_are_standard_normal(backend, dtype, summands):
    n = 200_000
    sample = prg.expand_normal(RFC_KEY, n, stream=3, dtype=dtype, summands=summands).numpy()
    sample = sample.astype(np.float64)
    assert abs(sample.mean()) < 5 / np.sqrt(n)
    assert abs(sample.std() - 1) < 5 / np.sqrt(2 * n)
    assert stats.kstest(sample, "norm").pvalue > 1e-4
    # Tails: P(|z| > 3) = 0.0027 and P(|z| > 4) = 6.3e-5, binomial standard error sqrt(p / n).
    for threshold in (3, 4):
        p = 2 * stats.norm.sf(threshold)
        assert abs(np.mean(np.abs(sample) > threshold) - p) < 5 * np.sqrt(p / n), threshold
    # The two halves of each block (cos and sin of one pair) are uncorrelated, as are neighbours.
    assert abs(np.corrcoef(sample[:-1], sample[1:])[0, 1]) < 5 / np.sqrt(n)
    if summands == 1:
        half = PER_BLOCK[dtype] // 2
        pairs = sample[: n // (2 * half) * 2 * half].reshape(-1, 2, half)
        assert abs(np.corrcoef(pairs[:, 0].ravel(), pairs[:, 1].ravel())[0, 1]) < 5 / np.sqrt(n / 2)


def test_deterministic_prefix_and_different_inputs(backend):
    long = prg.expand_normal(KEY, 1000, stream=5).numpy()
    np.testing.assert_array_equal(prg.expand_normal(KEY, 1000, stream=5).numpy(), long)
    np.testing.assert_array_equal(prg.expand_normal(KEY, 21, stream=5).numpy(), long[:21])
    outputs = [
        long,
        prg.expand_normal(KEY, 1000, stream=6),
        prg.expand_normal(KEY, 1000, stream=2**63 + 5),
        prg.expand_normal(KEY + np.array([0, 0, 0, 1]), 1000, stream=5),
    ]
    flat = [np.asarray(x).tobytes() for x in outputs]
    assert len(set(flat)) == len(flat)
    # float64 and summands draw from the same keystream, but give other values.
    assert not np.allclose(prg.expand_normal(KEY, 10, stream=5, summands=2).numpy(), long[:10])


def test_dynamic_size_in_a_tf_function(backend):
    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def draw(size):
        return prg.expand_normal(KEY, size, stream=4, dtype=tf.float64, summands=4)

    for size in (0, 1, 33):
        np.testing.assert_array_equal(draw(tf.constant(size)).numpy(), prg.expand_normal(
            KEY, size, stream=4, dtype=tf.float64, summands=4))
    assert draw.get_concrete_function().structured_outputs.shape.as_list() == [None]


def test_fresh_per_call_with_a_counter_variable(backend):
    counter = tf.Variable(np.int64(0), trainable=False)

    @tf.function
    def draw():
        return prg.expand_normal(KEY, 64, stream=counter.assign_add(1))

    first, second = draw().numpy(), draw().numpy()
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(second, prg.expand_normal(KEY, 64, stream=2))


# Streams of RFC_KEY where, within the first 2^19 blocks, the top 24 bits of a float32 radius word (w_0..w_7
# of a block) or angle word (w_8..w_15) are all 0 (U = 2^-24, the smallest uniform) or all 1 (U = 1), found
# by searching streams 0..39: (stream, block, word). The test re-checks that the words are there.
EXTREME_WORDS = [
    (5, 35095, 4, 0),  # radius word, U = 2^-24: the largest radius, 5.77
    (5, 338299, 6, 0xFFFFFF),  # radius word, U = 1: radius 0
    (7, 124835, 10, 0xFFFFFF),  # angle word, U = 1: angle 2 pi (float32)
    (26, 192368, 10, 0),  # angle word, U = 2^-24: the smallest angle
]


@pytest.mark.parametrize("stream, block, word, top", EXTREME_WORDS)
def test_extreme_uniforms_in_the_keystream(both_backends, stream, block, word, top):
    words = prg._keystream(RFC_KEY, tf.constant([8], tf.int64), tf.constant(stream, tf.int64), block)
    words = words.numpy().view(np.uint32)
    assert words[word] >> 8 == top

    def draw():
        size = tf.constant(16, tf.int64)
        return prg._normal(RFC_KEY, size, tf.constant(stream, tf.int64), block, tf.float32, 1)

    native, twin = both_backends(draw)
    assert np.all(np.isfinite(native)) and np.all(np.isfinite(twin))
    np.testing.assert_allclose(native, twin, **_twin_tolerance(tf.float32))
    j = word % 8  # the pair the word feeds: normals j (cos) and 8 + j (sin)
    radius = np.hypot(native[j], native[8 + j])
    if word < 8:
        expected = BOUND[tf.float32] if top == 0 else 0.0
        assert radius == pytest.approx(expected, abs=1e-5)
    else:
        assert abs(native[8 + j]) < 1e-5 * max(radius, 1)  # sin of an angle near 0 or 2 pi


def test_no_nan_or_inf_over_many_draws():
    """2^23 float32 normals of stream 5, which holds both extreme radius words, and 2^21 float64 ones."""
    if FORCED_TF:
        pytest.skip("the pure TensorFlow twin takes seconds here; its edge cases are tested above and below")
    z = prg.expand_normal(RFC_KEY, 2**23, stream=5).numpy()
    assert np.all(np.isfinite(z)) and np.abs(z).max() <= BOUND[tf.float32] * (1 + 1e-6)
    pairs = z.reshape(-1, 2, 8)  # [block, cos/sin, j]
    radius = np.hypot(pairs[:, 0], pairs[:, 1])
    assert radius[35095, 4] == pytest.approx(BOUND[tf.float32], rel=1e-6)  # U = 2^-24
    assert radius[338299, 6] == 0  # U = 1
    z = prg.expand_normal(RFC_KEY, 2**21, stream=6, dtype=tf.float64, summands=4).numpy()
    assert np.all(np.isfinite(z)) and np.abs(z).max() <= 2 * BOUND[tf.float64]


def _edge_blocks(dtype):
    """Keystream blocks (int64[blocks * 8]) with the extreme uniforms of `dtype` in every radius and angle
    position: U = the smallest value (bits 0), U = 1 (bits 1), their neighbours, and a midpoint."""
    if dtype == tf.float32:  # 32-bit words; U uses the top 24 bits
        values = [0, 0xFF, 0x100, 0x7FFFFFFF, 0x80000000, 0xFFFFFEFF, 0xFFFFFF00, 0xFFFFFFFF]
        word_type, per_block = np.uint32, 16
    else:  # 64-bit words; U uses the top 53 bits
        values = [0, 2**11 - 1, 2**11, 2**63 - 1, 2**63, 2**64 - 2**11 - 1, 2**64 - 2**11, 2**64 - 1]
        word_type, per_block = np.uint64, 8
    blocks = [np.full(per_block, v, word_type) for v in values]  # radius and angle words alike
    mixed = np.array(values * (per_block // 8), word_type)
    blocks += [mixed, mixed[::-1], np.roll(mixed, per_block // 2)]  # radii and angles from different values
    return np.stack(blocks).view(np.int64).ravel()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_box_muller_edge_cases(dtype):
    """The Box-Muller stage on chosen words, natively (through the library's test entry point) and in TF."""
    keystream = _edge_blocks(dtype)
    twin = prg._box_muller_tf(tf.constant(keystream), dtype).numpy()
    assert np.all(np.isfinite(twin)) and np.abs(twin).max() <= BOUND[dtype] * (1 + 1e-6)
    assert np.abs(twin).max() > BOUND[dtype] * (1 - 1e-6)  # U = the smallest uniform: the largest radius
    if FORCED_TF:
        return
    assert ops.available()
    box_muller = ctypes.CDLL(str(ops.LIBRARY_PATH)).tfe_lite_box_muller
    box_muller.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p]
    per_block = PER_BLOCK[dtype]
    for skip in range(2):  # an odd block count (the last block by the scalar code) and an even one
        keys, expected = keystream[8 * skip :], twin[per_block * skip :]
        native = np.empty_like(expected)
        box_muller(keys.ctypes.data, keys.size // 8, int(dtype == tf.float64), native.ctypes.data)
        assert np.all(np.isfinite(native))
        np.testing.assert_allclose(native, expected, **_twin_tolerance(dtype))


def test_library_reports_vector_normals():
    if FORCED_TF:
        pytest.skip("TFE_LITE_NATIVE_OPS=0")
    assert ops.available()  # loaded by TensorFlow first: a plain dlopen would register its ops unseen
    assert ctypes.CDLL(str(ops.LIBRARY_PATH)).tfe_lite_vector_normals() in (0, 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_xla_compiles_the_twin(dtype):
    """Inside jit_compile the native op is never used (it has no XLA kernel): the twin compiles and agrees."""

    @tf.function(jit_compile=True)
    def draw(stream):
        return prg.expand_normal(KEY, 1000, stream=stream, dtype=dtype, summands=2)

    stream = tf.constant(77, tf.int64)
    compiled = draw(stream).numpy()
    eager = prg.expand_normal(KEY, 1000, stream=77, dtype=dtype, summands=2).numpy()
    # XLA's own log/sin/cos approximations: a little looser than the twin's tolerance.
    eps = np.finfo(dtype.as_numpy_dtype).eps
    np.testing.assert_allclose(compiled, eager, rtol=64 * eps, atol=64 * eps)
    graph = draw.get_concrete_function(stream).graph
    assert "ChaCha20Normal" not in {op.type for op in graph.get_operations()}


def test_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="`seed`"):
        prg.expand_normal(KEY.astype(np.int32), 4)
    with pytest.raises(ShapeError, match="`size`.*Received: size=-1"):
        prg.expand_normal(KEY, -1)
    with pytest.raises(ShapeError, match="`size`"):
        prg.expand_normal(KEY, 2.5)
    with pytest.raises(ShapeError, match="`size`.*scalar"):
        prg.expand_normal(KEY, tf.constant([3]))
    with pytest.raises(ConfigError, match="`dtype`.*float16"):
        prg.expand_normal(KEY, 4, dtype=tf.float16)
    for summands in (0, True, 1.5):
        with pytest.raises(ConfigError, match="`summands`"):
            prg.expand_normal(KEY, 4, summands=summands)
    with pytest.raises(ConfigError, match="`stream`"):
        prg.expand_normal(KEY, 4, stream=-1)


def test_native_op_rejects_bad_sizes_at_run_time():
    if FORCED_TF:
        pytest.skip("TFE_LITE_NATIVE_OPS=0")
    library = ops.library()
    zero = tf.constant(0, tf.int64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="size must be in"):
        library.cha_cha20_normal(KEY, zero, zero, tf.constant(-1, tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="size must be in"):
        library.cha_cha20_normal(KEY, zero, zero, tf.constant(2**55, tf.int64), summands=4)
