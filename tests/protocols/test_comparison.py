"""The exact sign-bit protocol (comparison.py) and the checked mode built on it (issue 8, item 5)."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import tfe_lite
from tfe_lite.protocols import Pond, PrecomputedDealer
from tfe_lite.protocols.pond import comparison

from test_pond_security import _assert_uniform, _capture_views


def _bits(z):
    return (z.share0 + z.share1).numpy()


def test_sign_bit_is_exact_at_the_edges(compare_prot):
    prot = compare_prot
    f = prot.fixedpoint
    u = f.resolution
    edges = np.array([0.0, u, -u, 2 * u, -2 * u, f.bound - u, -(f.bound - u), 1.0, -1.0, 0.5 * u, -0.5 * u])
    encoded = np.round(edges * f.scale)
    np.testing.assert_array_equal(_bits(comparison.msb(prot, prot.share(edges, "alice"))), encoded < 0)


@given(values=hnp.arrays(np.int64, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
                         elements=st.integers(-2**63, 2**63 - 1)))
def test_sign_bit_of_any_ring_element(compare_prot, values):
    """Every int64 (the whole ring), any split into shares, any shape including empty ones."""
    prot = compare_prot
    rng = np.random.default_rng(values.size)
    share0 = rng.integers(-2**63, 2**63, values.shape, dtype=np.int64, endpoint=False)
    share1 = values - share0  # wraps like the ring
    x = prot.from_shares(tf.constant(share0), tf.constant(share1), fixedpoint=prot.fixedpoint)
    np.testing.assert_array_equal(_bits(comparison.msb(prot, x)), (values < 0).astype(np.int64))


def test_sign_bit_over_a_dense_grid_with_each_dealer(config):
    for dealer in ("online", PrecomputedDealer()):
        prot = Pond(config, dealer=dealer, seed=5)
        grid = np.linspace(-prot.fixedpoint.bound + 1, prot.fixedpoint.bound - 1, 4001)
        if isinstance(dealer, PrecomputedDealer):
            fn = lambda x: comparison.msb(prot, prot.share(x, "alice")).shares  # noqa: E731
            dealer.precompute_for(fn, tf.constant(grid))
            bits = tf.function(fn)(tf.constant(grid))
            bits = (bits[0] + bits[1]).numpy()
        else:
            bits = _bits(comparison.msb(prot, prot.share(grid, "alice")))
        np.testing.assert_array_equal(bits, np.round(grid * prot.fixedpoint.scale) < 0)


def test_traffic_matches_the_stated_cost(config):
    prot = Pond(config, seed=1234, comparison="dealt")
    n = 500  # 8 words per bit plane (the last one holds 52 elements)
    x = prot.share(np.ones(n), "alice")
    with prot.count_communication() as log:
        comparison.msb(prot, x)
    links = log.by_link()
    # each way: the mask (8 n); the carry tree over 63 positions: levels of 31, 16, 8, 4, 2 pairs open 3 plane
    # rows per pair, the last pair 2 rows (185 rows); the daBit plane (1 row); 8 bytes per row word
    assert links[("server0", "server1")] == links[("server1", "server0")] == 8 * n + 8 * 8 * (185 + 1)
    # the producer's corrections: edaBit planes (64 rows), AND outputs (62 + 32 + 16 + 8 + 4 + 1 rows), the
    # daBit's additive bits (8 n), each tensor's first half to server0 and the rest to server1 (all of even
    # size here); one 32-byte seed to each server for all of them (1 edaBit, 6 ANDs, 1 daBit, dealt together)
    corrections = 8 * 8 * (64 + 123) + 8 * n
    assert links[("crypto-producer", "server1")] == links[("crypto-producer", "server0")] == corrections // 2 + 32
    assert comparison.server_bytes(n) == links[("server0", "server1")]


@pytest.mark.parametrize("value", [0.0, -3.5, 4000.0])
def test_everything_a_server_receives_is_uniform(config, monkeypatch, value):
    prot = Pond(config)
    views = _capture_views(prot, monkeypatch)
    comparison.msb(prot, prot.share(np.full(20000, value), "alice"))
    for server in ("server0", "server1"):
        received = [(what, t.numpy()) for what, t in views[server]]
        kinds = {what for what, _ in received}
        assert {"open_mask", "xor_and", "xor_bit"} <= kinds
        for what, t in received:
            if what in ("open_mask", "xor_and", "xor_bit", "triple_c0", "triple_c1", "share"):
                _assert_uniform(t.ravel())


def test_checked_mode_finds_overflows_eagerly_and_in_graphs(config):
    prot = Pond(config, seed=31, checked=True)
    big = prot.share(np.array([3000.0, 1.0]), "alice")
    with pytest.raises(tfe_lite.EncodingError, match=r"result of mul .* overflowed.* 1\."):
        big * prot.share(np.array([3000.0, 1.0]), "bob")
    with pytest.raises(tfe_lite.EncodingError, match="result of square"):
        big * big
    with pytest.raises(tfe_lite.EncodingError, match="result of add"):
        big + big
    with pytest.raises(tfe_lite.EncodingError, match="result of matmul"):
        prot.share(np.full((1, 4), 2000.0), "alice") @ prot.share(np.ones((4, 1)), "bob")
    ok = big * 0.5 + 1.0
    np.testing.assert_allclose(ok.reveal(to="alice").numpy(), [1501.0, 1.5], atol=1e-3)

    @tf.function
    def square(x):
        return prot.share(x, "alice").square().reveal(to="alice")

    np.testing.assert_allclose(square(tf.constant([60.0, -3.0], tf.float64)).numpy(), [3600.0, 9.0], atol=1e-2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="result of square.*overflowed"):
        square(tf.constant([70.0, 3.0], tf.float64))
    unchecked = Pond(config, seed=31)
    wrapped = unchecked.share(np.array([3000.0]), "alice")
    cube = (wrapped * wrapped * wrapped).reveal(to="alice").numpy()[0]  # 2.7e10: wraps before truncation
    assert abs(cube - 2.7e10) > 1e6, "unchecked, a product beyond 2**(63 - 2f) wraps without an error"


def test_checked_mode_reveals_only_the_count(config, monkeypatch):
    prot = Pond(config, seed=32, checked=True)
    views = _capture_views(prot, monkeypatch)
    prot.share(np.full(10000, 2.0), "alice") * prot.share(np.full(10000, 3.0), "bob")
    counts = [t.numpy() for server in ("server0", "server1") for what, t in views[server] if what == "open_range_count"]
    assert len(counts) == 2 and all(c.shape == () for c in counts)
    assert int(counts[0]) + int(counts[1]) == 0  # the two halves open the count (0) and nothing else
    kinds = {what for server in ("server0", "server1") for what, _ in views[server]}
    assert kinds == {"share_seed", "share", "triple_c0", "triple_c1", "open_ed", "open_mask", "xor_and",
                     "xor_bit", "open_range_count"}
    with pytest.raises(tfe_lite.ConfigError, match="checked='yes'"):
        Pond(config, checked="yes")


def test_bounded_sign_bit_is_exact_and_cheaper(config):
    """With |x| < 2**K promised, the borrow runs on K bit positions only."""
    prot = Pond(config, seed=1234, comparison="dealt")
    k = prot.fixedpoint.int_bits + prot.fixedpoint.frac_bits + 1
    rng = np.random.default_rng(7)
    values = np.concatenate([[0, 1, -1, 2**k - 1, -(2**k - 1), 2**(k - 1), -(2**(k - 1))],
                             rng.integers(-(2**k) + 1, 2**k, 4001)]).astype(np.int64)
    x = prot.from_shares(tf.constant(values), tf.zeros_like(values), fixedpoint=prot.fixedpoint)
    with prot.count_communication() as log:
        bits = comparison.msb(prot, x, magnitude_bits=k)
    np.testing.assert_array_equal(_bits(bits), (values < 0).astype(np.int64))
    words = -(-values.size // 64)  # 63 words per plane, the last one partly padding
    # mask; carry tree over 29 positions (levels of 14, 7, 4, 2 pairs: 3 rows each; the last pair 2 rows); daBit
    assert k == 29 and log.by_link()[("server0", "server1")] == 8 * values.size + 8 * words * (3 * 27 + 2 + 1)
    assert comparison.server_bytes(values.size, k) == log.by_link()[("server0", "server1")]
    for shape in [(), (0,), (3, 0, 2), (1,)]:
        empty = prot.share(np.full(shape, -0.5), "alice")
        np.testing.assert_array_equal(_bits(comparison.msb(prot, empty, magnitude_bits=k)), np.ones(shape))
