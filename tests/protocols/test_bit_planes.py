"""Bit planes, the native ring ops behind comparisons and convolutions, and the comparison's dealt randomness.

``ring.bit_slice`` / ``bit_unslice`` (bit planes of 64 elements per word), ``ring.patches`` (im2col) and
``ring.deinterleave``: native ops and their pure TensorFlow twins against numpy oracles. The edaBit and
daBit planes from every dealer, the bounded comparison at every width, and its traffic formula.
"""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from tfe_lite import ops, ring
from tfe_lite.protocols import Pond, PrecomputedDealer
from tfe_lite.protocols.pond import TripleSpec, comparison

from oracle import comparison_server_bytes
from test_pond_security import _assert_uniform, _capture_views

BACKENDS = ["native", "tensorflow"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    if request.param == "tensorflow":
        monkeypatch.setenv("TFE_LITE_NATIVE_OPS", "0")
    else:
        assert ops.available(), "the native ops library must be built (make ops)"
    return request.param


def _planes_oracle(values: np.ndarray, bits: int) -> np.ndarray:
    """numpy: plane j, word w, bit l = bit j of element 64 w + l."""
    flat = values.ravel().view(np.uint64)
    words = -(-flat.size // 64)
    padded = np.zeros(words * 64, np.uint64)
    padded[:flat.size] = flat
    bit = (padded[None, :] >> np.arange(bits, dtype=np.uint64)[:, None]) & np.uint64(1)  # [bits, 64 words]
    lanes = bit.reshape(bits, words, 64) << np.arange(64, dtype=np.uint64)
    return np.bitwise_or.reduce(lanes, axis=2).view(np.int64) if words else np.zeros((bits, 0), np.int64)


@settings(deadline=None, max_examples=25)
@given(n=st.integers(0, 300), bits=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_bit_slice_equals_numpy_with_both_backends(n, bits, seed):
    values = np.random.default_rng(seed).integers(-2**63, 2**63, (n,), dtype=np.int64, endpoint=False)
    expected = _planes_oracle(values, bits)
    for native in ("1", "0"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("TFE_LITE_NATIVE_OPS", native)
            planes = ring.bit_slice(tf.constant(values), bits)
            assert planes.shape == (bits, -(-n // 64))
            np.testing.assert_array_equal(planes.numpy(), expected)
            for j in {0, bits - 1, bits // 2}:
                np.testing.assert_array_equal(ring.bit_unslice(planes[j], n).numpy(),
                                              (values.view(np.uint64) >> np.uint64(j)) & np.uint64(1))


def test_bit_slice_of_edge_values_and_shapes(backend):
    edges = np.array([0, 1, -1, 2**63 - 1, -2**63, 2**31, -(2**31)], np.int64)
    np.testing.assert_array_equal(ring.bit_slice(tf.constant(edges), 64).numpy(), _planes_oracle(edges, 64))
    grid = np.arange(-70, 70, dtype=np.int64).reshape(2, 7, 10)  # any rank: the elements in C order
    np.testing.assert_array_equal(ring.bit_slice(tf.constant(grid), 9).numpy(), _planes_oracle(grid, 9))
    traced = tf.function(lambda t: ring.bit_slice(t, 3))(tf.constant(grid))
    np.testing.assert_array_equal(traced.numpy(), _planes_oracle(grid, 3))
    with pytest.raises(ValueError, match="bits=65"):
        ring.bit_slice(tf.constant(edges), 65)


@pytest.mark.parametrize("shape,ksize,strides", [
    ((2, 7, 6, 3), (2, 2), (2, 2)), ((2, 7, 6, 3), (3, 3), (2, 2)), ((1, 5, 5, 2), (3, 3), (1, 1)),
    ((2, 6, 6, 1), (2, 3), (1, 2)), ((1, 2, 2, 1), (3, 3), (1, 1)), ((3, 4, 9, 2), (1, 4), (3, 1)),
    ((0, 4, 4, 1), (2, 2), (1, 1)), ((2, 28, 28, 1), (5, 5), (1, 1)),
])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_patches_equal_extract_patches(backend, shape, ksize, strides, padding):
    x = tf.constant(np.random.default_rng(sum(shape)).integers(-2**63, 2**63, shape, dtype=np.int64))
    expected = tf.image.extract_patches(x, [1, *ksize, 1], [1, *strides, 1], [1, 1, 1, 1], padding).numpy()
    np.testing.assert_array_equal(ring.patches(x, ksize, strides, padding).numpy(), expected)
    traced = tf.function(lambda t: ring.patches(t, ksize, strides, padding))
    np.testing.assert_array_equal(traced(x).numpy(), expected)


def test_patches_of_an_unknown_spatial_shape(backend):
    fn = tf.function(lambda t: ring.patches(t, (2, 2), (1, 1), "SAME"),
                     input_signature=[tf.TensorSpec([None, None, None, 2], tf.int64)])
    x = tf.constant(np.arange(2 * 3 * 5 * 2, dtype=np.int64).reshape(2, 3, 5, 2) - 30)
    expected = tf.image.extract_patches(x, [1, 2, 2, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME").numpy()
    np.testing.assert_array_equal(fn(x).numpy(), expected)


@pytest.mark.parametrize("shape,axis,pairs", [((7,), 0, 3), ((4, 6, 2), 1, 3), ((3, 5, 2), -2, 2), ((2, 2), 1, 1)])
def test_deinterleave_equals_strided_slices(shape, axis, pairs):
    x = np.arange(np.prod(shape), dtype=np.int64).reshape(shape)
    even, odd = ring.deinterleave(tf.constant(x), axis, pairs)
    index = [slice(None)] * len(shape)
    index[axis] = slice(0, 2 * pairs, 2)
    np.testing.assert_array_equal(even.numpy(), x[tuple(index)])
    index[axis] = slice(1, 2 * pairs, 2)
    np.testing.assert_array_equal(odd.numpy(), x[tuple(index)])
    assert even.shape == x[tuple(index)].shape


def test_deinterleave_of_an_unknown_leading_dimension():
    fn = tf.function(lambda t: ring.deinterleave(t, 1, 2), input_signature=[tf.TensorSpec([None, 5, 3], tf.int64)])
    x = np.arange(4 * 5 * 3, dtype=np.int64).reshape(4, 5, 3)
    even, odd = fn(tf.constant(x))
    np.testing.assert_array_equal(even.numpy(), x[:, 0:4:2])
    np.testing.assert_array_equal(odd.numpy(), x[:, 1:4:2])


@pytest.mark.parametrize("dealer", ["online", "precomputed"])
def test_edabit_and_dabit_planes_from_each_dealer(config, dealer):
    specs = [TripleSpec("edabit", (3, 50), bits=30), TripleSpec("edabit", (70,), bits=64), TripleSpec("dabit", (2, 65)),
             TripleSpec("and", (2, 3), (2, 2, 3))]
    source = PrecomputedDealer() if dealer == "precomputed" else "online"
    prot = Pond(config, dealer=source, seed=11)
    if dealer == "precomputed":
        for spec in specs:
            source.precompute(spec, 2)
    for spec in specs:
        first, second = prot.dealer.triple(spec), prot.dealer.triple(spec)
        assert not np.array_equal(first.a0.numpy(), second.a0.numpy())
        assert not np.array_equal(first.c1.numpy(), second.c1.numpy())
        t = first
        assert t.a0.device.endswith(prot.server0.device[-5:]) and t.c0.device.endswith(prot.server0.device[-5:])
        assert t.a1.device.endswith(prot.server1.device[-5:]) and t.c1.device.endswith(prot.server1.device[-5:])
        if spec.op == "edabit":
            a = (t.a0 + t.a1).numpy()
            assert a.shape == spec.shape_a and t.c0.shape == (spec.bits, -(-a.size // 64))
            np.testing.assert_array_equal((t.c0.numpy() ^ t.c1.numpy()), _planes_oracle(a, spec.bits))
        elif spec.op == "dabit":
            plane = t.a0.numpy() ^ t.a1.numpy()
            n = int(np.prod(spec.shape_a))
            assert plane.shape == (-(-n // 64),)
            bits = (t.c0 + t.c1).numpy()
            np.testing.assert_array_equal(bits.ravel(), (plane.view(np.uint64)[np.arange(n) // 64]
                                                         >> (np.arange(n) % 64).astype(np.uint64)) & np.uint64(1))
            assert bits.shape == spec.shape_a
        else:
            a, b = t.a0.numpy() ^ t.a1.numpy(), t.b0.numpy() ^ t.b1.numpy()
            np.testing.assert_array_equal(t.c0.numpy() ^ t.c1.numpy(), a & b)


def test_edabit_spec_needs_its_bits():
    with pytest.raises(Exception, match="needs `bits`"):
        TripleSpec("edabit", (3,))
    with pytest.raises(Exception, match="takes no `bits`"):
        TripleSpec("dabit", (3,), bits=4)
    with pytest.raises(Exception, match="bits=0"):
        TripleSpec("edabit", (3,), bits=0)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 29, 31, 32, 40, 62])
def test_bounded_sign_bit_is_exact_at_every_width(compare_prot, k):
    """Every width up to 62 positions: the edges of |x| < 2**K, with uniformly random shares."""
    rng = np.random.default_rng(k)
    top = 2**k - 1
    values = np.array(sorted({0, 1, -1, top, -top, 2**(k - 1), -(2**(k - 1)), top - 1, -(top - 1)}), np.int64)
    values = np.concatenate([values, rng.integers(-top, top + 1, 200)])
    share0 = rng.integers(-2**63, 2**63, values.shape, dtype=np.int64)
    prot = compare_prot
    x = prot.from_shares(tf.constant(share0), tf.constant(values - share0), fixedpoint=prot.fixedpoint)
    with prot.count_communication() as log:
        bits = comparison.msb(prot, x, magnitude_bits=k)
    np.testing.assert_array_equal((bits.share0 + bits.share1).numpy(), (values < 0).astype(np.int64))
    assert log.by_link()[("server1", "server0")] == comparison_server_bytes(prot, values.size, k)


def test_rounds_and_bytes_per_element_of_the_default_comparison():
    assert comparison.and_levels(29) == [14, 7, 4, 2, 1]  # 5 AND rounds + mask + daBit = 7 rounds
    assert comparison.and_levels(63) == [31, 16, 8, 4, 2, 1]
    assert comparison.server_bytes(64 * 1000, 29) * 2 / (64 * 1000) == 37.0
    assert comparison.server_bytes(64 * 1000) * 2 / (64 * 1000) == 62.5


@pytest.mark.parametrize("value", [0.0, -1.0, 2000.0])
def test_bounded_comparison_messages_are_uniform(config, monkeypatch, value):
    """Everything a server receives in relu of a constant input (the bounded comparison and the product)."""
    prot = Pond(config)
    views = _capture_views(prot, monkeypatch)
    prot.relu(prot.share(np.full(30000, value), "alice"))
    for server in ("server0", "server1"):
        kinds = set()
        for what, t in views[server]:
            kinds.add(what)
            if what in ("open_mask", "xor_and", "xor_bit", "triple_c0", "triple_c1", "share"):
                _assert_uniform(t.numpy().ravel())
        # the product is fused: its factor's masked opening travels with the mask, no Beaver opening
        assert {"open_mask", "xor_and", "xor_bit"} <= kinds and not kinds & {"open_e", "open_ed"}


@settings(deadline=None, max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 150))
def test_fused_product_is_exact_for_any_factor(compare_prot, seed, n):
    """msb(x, times=f) gives [x < 0] and [x < 0] * f exactly, f any ring element (no truncation, no wrap)."""
    prot = compare_prot
    rng = np.random.default_rng(seed)
    k = 29
    values = rng.integers(-(2**k) + 1, 2**k, n)
    factors = rng.integers(-2**63, 2**63, n, dtype=np.int64)
    factors[:3] = [-2**63, 2**63 - 1, 0][:min(3, n)]

    def private(v):
        share0 = rng.integers(-2**63, 2**63, v.shape, dtype=np.int64)
        return prot.from_shares(tf.constant(share0), tf.constant(v - share0), fixedpoint=prot.fixedpoint)

    with prot.count_communication() as log:
        bit, product = comparison.msb(prot, private(values), magnitude_bits=k, times=private(factors))
    negative = (values < 0).astype(np.int64)
    np.testing.assert_array_equal((bit.share0 + bit.share1).numpy(), negative)
    np.testing.assert_array_equal((product.share0 + product.share1).numpy(), negative * factors)
    if n:
        assert log.by_link()[("server1", "server0")] == comparison_server_bytes(prot, n, k, product=True)


@settings(deadline=None, max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 150), bounded=st.booleans())
def test_fused_product_with_x_itself_is_exact(compare_prot, seed, n, bounded):
    """msb(x, times=x) (relu, the tournaments): the mask r serves as the product's mask too (u = -r), so
    nothing but the mask is opened for the product; [x < 0] and [x < 0] * x exactly, bounded and full ring."""
    prot = compare_prot
    rng = np.random.default_rng(seed)
    k = 29 if bounded else None
    values = (rng.integers(-(2**29) + 1, 2**29, n) if bounded
              else rng.integers(-2**63, 2**63, n, dtype=np.int64))
    edges = [-(2**29) + 1, 2**29 - 1, 0, -1] if bounded else [-2**63, 2**63 - 1, 0, -1]
    values[:4] = edges[:min(4, n)]
    share0 = rng.integers(-2**63, 2**63, values.shape, dtype=np.int64)
    x = prot.from_shares(tf.constant(share0), tf.constant(values - share0), fixedpoint=prot.fixedpoint)
    with prot.count_communication() as log:
        bit, product = comparison.msb(prot, x, magnitude_bits=k, times=x)
    negative = (values < 0).astype(np.int64)
    np.testing.assert_array_equal((bit.share0 + bit.share1).numpy(), negative)
    np.testing.assert_array_equal((product.share0 + product.share1).numpy(), negative * values)
    if n:
        sent = log.by_link()[("server1", "server0")]
        assert sent == comparison_server_bytes(prot, n, k, product=True, self_product=True)
        assert sent == comparison_server_bytes(prot, n, k)  # as without a product
        assert sent < comparison_server_bytes(prot, n, k, product=True)


@pytest.mark.parametrize("dealer", ["online", "precomputed"])
def test_edabit_dabit_from_each_dealer(config, dealer):
    """The comparison's mask r with its low bit planes and a daBit s with s * r, from one spec."""
    spec = TripleSpec("edabit_dabit", (3, 30), (3, 30), bits=30)
    source = PrecomputedDealer() if dealer == "precomputed" else "online"
    prot = Pond(config, dealer=source, seed=13)
    if dealer == "precomputed":
        source.precompute(spec, 1)
    t = prot.dealer.triple(spec)
    r = (t.b0 + t.b1).numpy()
    plane = t.a0.numpy() ^ t.a1.numpy()
    lanes = np.arange(90)
    s = ((plane.view(np.uint64)[lanes // 64] >> (lanes % 64).astype(np.uint64)) & np.uint64(1)).astype(np.int64)
    (planes0, stack0), (planes1, stack1) = spec.c_parts(t.c0), spec.c_parts(t.c1)
    np.testing.assert_array_equal(planes0.numpy() ^ planes1.numpy(), _planes_oracle(r, 30))
    stack = (stack0 + stack1).numpy()
    np.testing.assert_array_equal(stack[0].ravel(), s)
    np.testing.assert_array_equal(stack[1], s.reshape(3, 30) * r)
    np.testing.assert_array_equal(spec.join_c(t.c0, t.c1).numpy()[-90:], (s.reshape(3, 30) * r).ravel())
    assert 0.3 < s.mean() < 0.7
    with pytest.raises(Exception, match="shape_b == shape_a"):
        TripleSpec("edabit_dabit", (3,), (4,), bits=30)
    with pytest.raises(Exception, match="needs `bits`"):
        TripleSpec("edabit_dabit", (3,), (3,))


def test_fused_product_needs_the_shape_of_x(prot):
    x = prot.share(np.ones(4), "alice")
    with pytest.raises(Exception, match=r"times.shape=\[2\]"):
        comparison.msb(prot, x, magnitude_bits=29, times=prot.share(np.ones(2), "alice"))
    with pytest.raises(Exception, match="shape_b == shape_a"):
        TripleSpec("dabit_mul", (3,), (4,))


@pytest.mark.parametrize("dealer", ["online", "precomputed"])
def test_dabit_mul_from_each_dealer(config, dealer):
    spec = TripleSpec("dabit_mul", (3, 30), (3, 30))
    source = PrecomputedDealer() if dealer == "precomputed" else "online"
    prot = Pond(config, dealer=source, seed=12)
    if dealer == "precomputed":
        source.precompute(spec, 1)
    t = prot.dealer.triple(spec)
    plane = t.a0.numpy() ^ t.a1.numpy()
    lanes = np.arange(90)
    bits = ((plane.view(np.uint64)[lanes // 64] >> (lanes % 64).astype(np.uint64)) & np.uint64(1)).astype(np.int64)
    c = (t.c0 + t.c1).numpy()
    assert c.shape == (2, 3, 30)
    np.testing.assert_array_equal(c[0].ravel(), bits)
    np.testing.assert_array_equal(c[1], bits.reshape(3, 30) * (t.b0 + t.b1).numpy())
    assert 0.3 < bits.mean() < 0.7
