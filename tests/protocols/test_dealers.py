"""Contract tests every triple dealer passes, and the precomputed dealer's own behaviour."""

import numpy as np
import pytest
import tensorflow as tf

import tfe_lite
from tfe_lite.protocols import OnlineDealer, Pond, PrecomputedDealer
from tfe_lite.protocols.pond import TripleSpec

from oracle import assert_close, matmul_tol, mul_tol

SPECS = [
    TripleSpec("mul", (3, 4), (3, 4)),
    TripleSpec("mul", (3, 4), (4,)),
    TripleSpec("square", (5,)),
    TripleSpec("matmul", (3, 4), (4, 2)),
    TripleSpec("conv2d", (1, 5, 5, 2), (3, 3, 2, 3), (1, 1), "SAME"),
    TripleSpec("conv2d", (2, 6, 6, 1), (2, 2, 1, 2), (2, 2), "VALID"),
]


def _dealer(kind, config):
    dealer = OnlineDealer() if kind == "online" else PrecomputedDealer()
    prot = Pond(config, dealer=dealer, seed=5)
    if kind == "precomputed":
        for spec in SPECS:
            dealer.precompute(spec, 2)
    return prot, dealer


@pytest.fixture(params=["online", "precomputed"])
def dealer_and_prot(request, config):
    prot, dealer = _dealer(request.param, config)
    return dealer, prot


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_triples_are_correct_and_placed(dealer_and_prot, spec):
    dealer, prot = dealer_and_prot
    t = dealer.triple(spec)
    a = t.a0 + t.a1
    b = None if spec.shape_b is None else t.b0 + t.b1
    np.testing.assert_array_equal((t.c0 + t.c1).numpy(), spec.apply(a, b).numpy())
    for name in ("a0", "b0", "c0"):
        if getattr(t, name) is not None:
            assert getattr(t, name).device.endswith(prot.server0.device[-5:])
    for name in ("a1", "b1", "c1"):
        if getattr(t, name) is not None:
            assert getattr(t, name).device.endswith(prot.server1.device[-5:])
    assert t.a0.shape == spec.shape_a


def test_consecutive_triples_differ(dealer_and_prot):
    dealer, _ = dealer_and_prot
    first, second = dealer.triple(SPECS[0]), dealer.triple(SPECS[0])
    assert not np.array_equal(first.a0.numpy(), second.a0.numpy())
    assert not np.array_equal(first.c1.numpy(), second.c1.numpy())


@pytest.mark.parametrize("kind", ["online", "precomputed"])
def test_protocol_results_with_each_dealer(config, kind):
    prot, dealer = _dealer(kind, config)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(3, 4)), rng.normal(size=(4, 2))
    a, b = prot.share(x, "alice"), prot.share(y, "bob")
    assert_close((a @ b).reveal(to="alice").numpy(), x @ y, matmul_tol(prot, x, y))
    xx = rng.normal(size=(3, 4))
    assert_close((a * prot.share(xx, "bob")).reveal(to="alice").numpy(), x * xx, mul_tol(prot, x, xx))


def test_precomputed_dealer_runs_out_eagerly(config):
    dealer = PrecomputedDealer()
    prot = Pond(config, dealer=dealer, seed=1)
    spec = TripleSpec("matmul", (2, 3), (3, 2))
    dealer.precompute(spec, 1)
    a, b = prot.share(np.ones((2, 3)), "alice"), prot.share(np.ones((3, 2)), "bob")
    _ = a @ b
    assert dealer.remaining(spec) == 0
    with pytest.raises(tfe_lite.TripleExhaustedError, match=r"matmul\(\[2, 3\], \[3, 2\]\).*all 1 were used"):
        _ = a @ b
    with pytest.raises(tfe_lite.TripleExhaustedError, match="no pool"):
        _ = a * a


def test_precompute_for_plans_by_tracing_and_serves_a_tf_function(config):
    dealer = PrecomputedDealer()
    prot = Pond(config, dealer=dealer, seed=2)
    rng = np.random.default_rng(4)
    w = rng.normal(size=(4, 3))

    def predict(x):
        h = prot.share(x, "alice") @ prot.share(w, "bob")
        return (h * h).reveal(to="alice")

    x = tf.constant(rng.normal(size=(2, 4)))
    made = dealer.precompute_for(predict, x, runs=2)
    assert made == {TripleSpec("matmul", (2, 4), (4, 3)): 2, TripleSpec("square", (2, 3)): 2}
    with prot.count_communication() as log:
        traced = tf.function(predict)
        out1, out2 = traced(x), traced(x)
    assert not any(t.src == "crypto-producer" for t in log.transfers), "online phase must not involve the producer"
    h = x.numpy() @ w
    mt = matmul_tol(prot, x.numpy(), w)  # error of h, then squared and truncated
    tol = 2 * np.abs(h) * mt + mt**2 + mul_tol(prot, h, h)
    assert_close(out1.numpy(), h * h, tol)
    assert_close(out2.numpy(), h * h, tol)
    # The graph's run-time counter refuses a third run rather than reuse a triple.
    with pytest.raises(tf.errors.InvalidArgumentError, match="no matmul.*triple left"):
        traced(x)


def test_offline_traffic_is_logged_as_offline(config):
    dealer = PrecomputedDealer()
    prot = Pond(config, dealer=dealer)
    with prot.count_communication() as log:
        dealer.precompute(TripleSpec("matmul", (4, 5), (5, 6)), 3)
    assert log.total_bytes("offline") == 3 * (64 + 8 * 4 * 6)
    assert log.total_bytes("online") == 0


def test_a_dealer_serves_one_protocol(config):
    dealer = OnlineDealer()
    Pond(config, dealer=dealer)
    with pytest.raises(tfe_lite.ConfigError, match="already bound"):
        Pond(config, dealer=dealer)
