"""Contract tests every triple dealer passes, and the precomputed dealer's own behaviour."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import tfe_lite
from tfe_lite.protocols import OnlineDealer, Pond, PrecomputedDealer
from tfe_lite.protocols.pond import TripleSpec
from tfe_lite.protocols.pond.dealer import _join  # how the dealer joins two parts (add or XOR)

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
    # the three in one deal: one seed to each server (2 x 32 bytes) and each triple's c correction
    assert log.total_bytes("offline") == 64 + 3 * 8 * 4 * 6
    assert log.total_bytes("online") == 0


def test_a_dealer_serves_one_protocol(config):
    dealer = OnlineDealer()
    Pond(config, dealer=dealer)
    with pytest.raises(tfe_lite.ConfigError, match="already bound"):
        Pond(config, dealer=dealer)


def test_precompute_for_a_tf_function_uses_the_pool_and_never_zero_triples(config):
    """Issue 8 item 1: planning swapped in a recorder of all-zero triples, and a tf.function traced during
    the plan kept them: every later call opened e = x - 0 (both servers saw both inputs) and the pool was
    never used."""
    dealer = PrecomputedDealer()
    prot = Pond(config, dealer=dealer, seed=21)
    opened = []
    send = prot.channel.send

    def spy(tensor, src, dst, what):
        out = send(tensor, src, dst, what)
        if what == "open_ed" and dst.name == "server1":
            opened.append(out[:3])  # e = x - a (d follows in the same message)
        return out

    prot.channel.send = spy

    @tf.function
    def model(x, y):
        opened.clear()
        z = prot.share(x, "alice") * prot.share(y, "bob")
        return z.reveal(to="alice"), opened[0]

    x, y = tf.constant([1.5, -2.0, 3.0], tf.float64), tf.constant([2.0, 4.0, -1.0], tf.float64)
    assert prot.dealer is dealer
    made = dealer.precompute_for(model, x, y, runs=3)
    spec = TripleSpec("mul", (3,), (3,))
    assert made == {spec: 3} and dealer.remaining(spec) == 3
    encoded = np.round(x.numpy() * prot.fixedpoint.scale).astype(np.int64)
    for run in range(3):
        z, e = model(x, y)
        np.testing.assert_allclose(z.numpy(), x.numpy() * y.numpy(), atol=1e-3)
        assert not np.any(e.numpy() == encoded), "an opened value equals the input: the triple was zero"
        assert dealer.remaining(spec) == 2 - run
    with pytest.raises(tf.errors.InvalidArgumentError, match="no mul.*triple left"):
        model(x, y)


def test_plan_does_not_change_the_dealer_other_code_sees(config):
    dealer = PrecomputedDealer()
    prot = Pond(config, dealer=dealer, seed=22)
    seen = []

    def fn(x):
        seen.append(prot.dealer)
        return (prot.share(x, "alice") @ prot.share(np.ones((2, 2)), "bob")).reveal(to="alice")

    assert dealer.plan(fn, tf.ones([1, 2], tf.float64)) == [TripleSpec("matmul", (1, 2), (2, 2))]
    assert seen == [dealer]


def test_plan_counts_nested_functions_and_refuses_loops(config):
    dealer = PrecomputedDealer()
    prot = Pond(config, dealer=dealer, seed=23)
    inner = tf.function(lambda a: a * a)

    def nested(x):
        a = prot.share(x, "alice")
        return inner(a.share0), (a * a).reveal(to="alice")

    def twice(x):
        a = prot.share(x, "alice")
        return ((a * prot.share(x, "bob")) * a).reveal(to="alice")

    assert collections.Counter(dealer.plan(twice, tf.ones([4], tf.float64))) == {TripleSpec("mul", (4,), (4,)): 2}
    assert dealer.plan(nested, tf.ones([4], tf.float64)) == [TripleSpec("square", (4,))]

    def loop(x):
        a = prot.share(x, "alice")
        return tf.while_loop(lambda i, s: i < 3, lambda i, s: (i + 1, (prot.from_shares(s, a.share1, fixedpoint=prot.fixedpoint) * a).share0),
                             (0, a.share0))

    with pytest.raises(tfe_lite.ConfigError, match="loop"):
        dealer.plan(loop, tf.ones([4], tf.float64))


def test_pools_are_resolved_at_run_time(config):
    """Issue 8 item 4: a traced function kept reading the pool that existed when it was traced, and
    remaining() went wrong (negative) after failed runs."""
    dealer = PrecomputedDealer()
    prot = Pond(config, dealer=dealer, seed=24)
    spec = TripleSpec("mul", (2,), (2,))

    @tf.function
    def product(x):
        return (prot.share(x, "alice") * prot.share(x, "bob")).reveal(to="alice")

    x = tf.constant([1.5, 2.0], tf.float64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="no mul.*triple left"):
        product(x)  # traced before any triple exists
    assert dealer.remaining(spec) == 0
    dealer.precompute(spec, 1)
    np.testing.assert_allclose(product(x).numpy(), [2.25, 4.0], atol=1e-3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="no mul.*triple left"):
        product(x)
    assert dealer.remaining(spec) == 0
    dealer.precompute(spec, 2)  # a second batch, made after the trace: the same trace uses it
    assert dealer.remaining(spec) == 2
    np.testing.assert_allclose(product(x).numpy(), [2.25, 4.0], atol=1e-3)
    assert dealer.remaining(spec) == 1
    assert product.experimental_get_tracing_count() == 1


def test_a_failed_run_does_not_put_the_servers_out_of_step(config):
    """Issue 8 item 2: each server advanced its own counter; a run failing between the two increments left
    server0 on triple i and server1 on j, and every later product was garbage."""
    dealer = PrecomputedDealer()
    prot = Pond(config, dealer=dealer, seed=25)
    spec = TripleSpec("mul", (2,), (2,))
    dealer.precompute(spec, 6)

    @tf.function
    def product(x, y):
        return (prot.share(x, "alice") * prot.share(y, "bob")).reveal(to="alice")

    good = tf.constant([1.5, 1.5], tf.float64)
    for bad in (tf.constant([1e9, 1.0], tf.float64), tf.constant([np.nan, 1.0], tf.float64)):
        with pytest.raises(tf.errors.InvalidArgumentError, match="Cannot encode"):
            product(good, bad)
        np.testing.assert_allclose(product(good, tf.constant([2.0, -2.0], tf.float64)).numpy(), [3.0, -3.0], atol=1e-3)


def test_a_precomputed_comparison_takes_its_triples_in_one_message(config):
    """The online phase of a relu with precomputed triples: nothing from the producer, and the pool
    indices of its edaBit-and-daBit (one spec: its product is with its own input) and AND triples go to
    server1 in one message beside the 7 rounds."""
    from tfe_lite.protocols.pond import comparison

    dealer = PrecomputedDealer()
    prot = Pond(config, dealer=dealer, seed=24)
    values = np.linspace(-2, 2, 130)

    @tf.function
    def relu(x):
        return prot.relu(prot.share(x, "alice")).reveal(to="alice")

    x = tf.constant(values)
    made = dealer.precompute_for(relu, x, runs=2)
    assert sum(made.values()) == 2 * (1 + len(comparison.and_levels(29)))
    for _ in range(2):
        with prot.count_communication() as log:
            out = relu(x)
        np.testing.assert_allclose(out.numpy(), np.maximum(values, 0), atol=2e-4)
        messages = collections.Counter()
        for t in log.transfers:
            messages[(t.src, t.dst, t.what)] += t.count
        assert not [key for key in messages if key[0] == "crypto-producer"]
        assert messages[("server0", "server1", "triple_index")] == 1
        assert sum(n for (src, dst, _), n in messages.items() if (src, dst) == ("server0", "server1")) == 7 + 1
    with pytest.raises(tf.errors.InvalidArgumentError, match="triple left"):
        relu(x)


@pytest.mark.parametrize("spec", [TripleSpec("mul", (101, 201), (101, 201)), TripleSpec("edabit_dabit", (25000,), (25000,), bits=30)],
                         ids=str)
def test_the_producer_splits_its_corrections_between_the_servers(config, monkeypatch, spec):
    """Each server receives its seed and half of the correction's elements (server0 the first floor(size/2),
    server1 the rest): neither link from the producer carries all of them; each half is uniform to the server
    that receives it (it is masked by the other server's expansion); the joined parts are still the triple."""
    from test_pond_security import _assert_uniform, _capture_views

    prot = Pond(config)  # keys from os.urandom, as in production
    views = _capture_views(prot, monkeypatch)
    with prot.count_communication() as log:
        t = prot.dealer.triple(spec)
    size = int(np.prod(spec.shape_c))
    links = log.by_link()
    assert links[("crypto-producer", "server0")] == 32 + 8 * (size // 2)
    assert links[("crypto-producer", "server1")] == 32 + 8 * (size - size // 2)
    for server, what in (("server0", "triple_c0"), ("server1", "triple_c1")):
        # one message: the seed (4 words), then the half
        corrections = [m.numpy().ravel() for kind, m in views[server] if kind == what]
        assert [c.size for c in corrections] == [4 + (size // 2 if server == "server0" else size - size // 2)]
        _assert_uniform(corrections[0])  # XOR and additive parts alike: masked by uniform words
    join = {"add": np.add, "xor": np.bitwise_xor}
    a = join[spec.kind.ab_a](t.a0.numpy(), t.a1.numpy())
    b = join[spec.kind.ab_b](t.b0.numpy(), t.b1.numpy())
    expected = spec.apply(tf.constant(a), tf.constant(b)).numpy()
    np.testing.assert_array_equal(spec.join_c(t.c0, t.c1).numpy(), expected)


def test_one_deal_draws_one_seed_pair_and_one_keystream_per_party(config, monkeypatch):
    # Several triples dealt together: one counter draw on the producer (both seeds from one keystream op),
    # one expansion of each seed on the producer and one on its server, however many specs.
    from tfe_lite import prg

    prot = Pond(config, seed=3)
    made = []
    real = prg._keystream

    def keystream(*args):
        out = real(*args)
        made.append(out.device)
        return out

    monkeypatch.setattr(prg, "_keystream", keystream)
    specs = [SPECS[0], SPECS[3], SPECS[4], TripleSpec("edabit", (70,), bits=5), TripleSpec("and", (2, 3), (2, 3))]

    def parts(triple):
        return [p for p in (triple.a0, triple.b0, triple.c0, triple.a1, triple.b1, triple.c1) if p is not None]

    tf.function(lambda: [p for t in prot.dealer.triples(specs) for p in parts(t)]).get_concrete_function()
    names = {prot.producer.device: "crypto-producer", prot.server0.device: "server0", prot.server1.device: "server1"}
    assert collections.Counter(names[tf.DeviceSpec.from_string(d).to_string()] for d in made) == \
        {"crypto-producer": 3, "server0": 1, "server1": 1}
    # a large part (here a and b of a 200 x 100 product) gets a keystream op of its own: no copy out of a split
    made.clear()
    big = TripleSpec("mul", (200, 100), (200, 100))
    tf.function(lambda: [p for t in prot.dealer.triples(specs + [big]) for p in parts(t)]).get_concrete_function()
    assert collections.Counter(names[tf.DeviceSpec.from_string(d).to_string()] for d in made) == \
        {"crypto-producer": 9, "server0": 4, "server1": 4}  # small parts, a, b, then the half of c
    specs = specs + [big]
    # and the triples are right (eagerly): c = f(a, b) from the joined parts, as every dealer's
    for spec, triple in zip(specs, prot.dealer.triples(specs)):
        kind = spec.kind
        a = _join(kind.ab_a, triple.a0, triple.a1)
        b = _join(kind.ab_b, triple.b0, triple.b1) if kind.has_b else None
        np.testing.assert_array_equal(spec.join_c(triple.c0, triple.c1).numpy(), spec.apply(a, b).numpy())


@pytest.mark.parametrize("spec", [
    TripleSpec("mul", (3, 5), (3, 5)),  # additive, an odd size
    TripleSpec("and", (2, 3), (2, 3)),  # XOR
    # mixed (XOR planes, then additive values): the boundary in the second half (1 element: 29 plane words
    # and 2 values) and in the first (100 elements: 58 plane words and 200 values)
    TripleSpec("edabit_dabit", (1,), (1,), bits=29),
    TripleSpec("edabit_dabit", (100,), (100,), bits=29),
])
def test_the_correction_halves_are_c_less_the_other_part_element_by_element(spec):
    size = int(np.prod(spec.shape_c))
    rng = np.random.default_rng(3)
    c, other = (tf.constant(rng.integers(-2**63, 2**63, size=size, dtype=np.int64)) for _ in range(2))
    low, high = spec.split_off_c_halves(tf.reshape(c, spec.shape_c), other[:size // 2], other[size // 2:])
    assert (low.shape[0], high.shape[0]) == (size // 2, size - size // 2)
    # the oracle, element by element: XOR for the planes of a mixed kind (and every element of a XOR kind)
    xor_count = spec.kind.c_xor_size(spec) if spec.kind.c == "mixed" else (size if spec.kind.c == "xor" else 0)
    c_, o_ = c.numpy(), other.numpy()
    with np.errstate(over="ignore"):
        expected = np.where(np.arange(size) < xor_count, c_ ^ o_, c_ - o_)
    np.testing.assert_array_equal(np.concatenate([low.numpy(), high.numpy()]), expected)
    # and joining the halves back with the other part gives c
    joined = spec.join_c(tf.concat([low, high], 0), other) if spec.kind.c == "mixed" else None
    if joined is not None:
        np.testing.assert_array_equal(joined.numpy(), c_)
