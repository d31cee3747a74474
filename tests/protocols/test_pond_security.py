"""Security properties: placement of plaintext, uniform server views, fresh randomness per execution."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tfe_lite.protocols import Pond

# Ops that TensorFlow places by their inputs or resources rather than by device scope.
_UNPLACED_OK = {"Placeholder", "NoOp", "ReadVariableOp"}


def _graph(fn, *specs):
    return fn.get_concrete_function(*specs).graph


def _tainted_ops(graph, source_name, stop_names):
    """Ops reachable from ``source_name`` without passing through an op named in ``stop_names``."""
    consumers = {}
    for op in graph.get_operations():
        for t in op.inputs:
            consumers.setdefault(t.op.name, []).append(op)
    seen, todo = set(), [graph.get_operation_by_name(source_name)]
    while todo:
        op = todo.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        if any(op.name.endswith(s) for s in stop_names):
            continue
        todo.extend(consumers.get(op.name, []))
    return [graph.get_operation_by_name(n) for n in seen]


def test_plaintext_never_leaves_its_owner(prot, config):
    alice = config.get_player("alice")
    w = np.random.default_rng(0).normal(size=(4, 2))

    @tf.function
    def compute(x):
        a = prot.share(x, "alice")
        b = prot.share(w, "bob")
        return (a @ b + a.reduce_sum(axis=1, keepdims=True) * 0.5).reveal(to="bob")

    graph = _graph(compute, tf.TensorSpec([3, 4], tf.float64))
    # Taint flows from the plaintext argument until the masking subtraction x - x0.
    tainted = [op for op in _tainted_ops(graph, "x", ["masked"]) if op.type not in ("Placeholder",)]
    assert any(op.name.endswith("masked") for op in tainted)
    off_owner = [(op.name, op.device) for op in tainted if op.device != alice.device]
    assert not off_owner, f"plaintext-derived ops outside alice's device: {off_owner}"
    # And every op of the computation is placed on a player's device (soft placement is off).
    devices = {p.device for p in config.players}
    unplaced = [(op.type, op.name, op.device) for op in graph.get_operations()
                if op.type not in _UNPLACED_OK and op.device not in devices and not op.name.startswith("Identity")]
    assert not unplaced, unplaced


def test_cross_device_edges_all_go_through_the_channel(prot, config):
    """Every graph edge between two players' devices is a counted transfer, with the counted size."""
    x0, y0 = np.ones((5, 6)), np.ones((6, 3))

    def compute(x, y):
        return ((prot.share(x, "alice") @ prot.share(y, "bob")).square() * 2.0).reveal(to="alice")

    traced = tf.function(compute)
    graph = _graph(traced, tf.TensorSpec(x0.shape, tf.float64), tf.TensorSpec(y0.shape, tf.float64))
    with prot.count_communication() as log:
        traced(x0, y0)
    devices = {p.device for p in config.players}
    crossing = 0
    for op in graph.get_operations():
        for t in op.inputs:
            if op.device in devices and t.op.device in devices and op.device != t.op.device:
                assert op.name.split("/")[-1].startswith("recv_"), f"uncounted transfer {t.op.name} -> {op.name}"
                crossing += t.shape.num_elements() * t.dtype.size
    assert crossing == log.total_bytes() > 0


def _bits(shares: np.ndarray) -> np.ndarray:
    return np.unpackbits(shares.astype("<i8").view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")


def _assert_uniform(shares: np.ndarray):
    """Each of the 64 bit positions is 1 with frequency 1/2 (6-sigma binomial bound), and the top 32 bits
    as a fraction of 2^32 pass a KS test against U(0, 1)."""
    bits = _bits(shares)
    n = bits.shape[0]
    freq = bits.mean(axis=0)
    assert np.all(np.abs(freq - 0.5) < 6 * np.sqrt(0.25 / n)), freq
    top = (shares.astype(np.int64).view(np.uint64) >> np.uint64(32)).astype(np.float64) / 2.0**32
    assert stats.kstest(top, "uniform").pvalue > 1e-4


def _capture_views(prot, monkeypatch):
    views = {"server0": [], "server1": []}
    send = prot.channel.send

    def spy(tensor, src, dst, what):
        out = send(tensor, src, dst, what)
        if dst.name in views:
            views[dst.name].append((what, out))
        return out

    monkeypatch.setattr(prot.channel, "send", spy)
    return views


def _server_views(config, monkeypatch, value):
    prot = Pond(config)  # keys from os.urandom, as in production
    views = _capture_views(prot, monkeypatch)
    x = prot.share(np.full(20000, value), "alice")
    y = prot.share(np.full(20000, 3.0), "bob")
    z = x * y
    received = {name: [t.numpy().ravel() for what, t in got if t.dtype == tf.int64 and t.shape.num_elements() >= 20000]
                for name, got in views.items()}
    return prot, x, z, received


@pytest.mark.parametrize("value", [0.0, 1.0, -1234.25])
def test_input_shares_and_opened_values_are_uniform(config, monkeypatch, value):
    _, x, _, received = _server_views(config, monkeypatch, value)
    _assert_uniform(x.share0.numpy())
    _assert_uniform(x.share1.numpy())
    assert received["server0"] and received["server1"]
    for tensors in received.values():
        for t in tensors:
            _assert_uniform(t)


def test_truncated_shares_do_not_depend_on_the_input(config, monkeypatch):
    """After local truncation a share is ``x0 >> f``: uniform on [-2^(63-f), 2^(63-f)), whatever the secret."""
    f = Pond(config).fixedpoint.frac_bits
    views = [_server_views(config, monkeypatch, value)[2] for value in (0.0, -1234.25)]
    for i in range(2):
        first, second = (v.shares[i].numpy() for v in views)
        half = 2.0 ** (63 - f)
        for share in (first, second):
            assert np.all(np.abs(share) <= half)
            assert stats.kstest((share + half) / (2 * half), "uniform").pvalue > 1e-4
        assert stats.ks_2samp(first.astype(np.float64), second.astype(np.float64)).pvalue > 1e-4


def test_same_input_gives_independent_shares(config):
    prot = Pond(config)
    a, b = prot.share(np.zeros(20000), "alice"), prot.share(np.zeros(20000), "alice")
    # Differences of independent uniform shares are uniform too.
    _assert_uniform(a.share0.numpy() - b.share0.numpy())


def test_traced_computation_draws_fresh_randomness_each_run(prot, monkeypatch):
    views = _capture_views(prot, monkeypatch)

    @tf.function
    def compute(x):
        views["server0"].clear()
        views["server1"].clear()
        a = prot.share(x, "alice")
        z = a * a + a * prot.share(x, "bob")
        opened = [t for what, t in views["server1"] if what.startswith("open")]
        triples = [t for what, t in views["server1"] if what.startswith("triple")]
        return a.shares, z.shares, opened, triples, z.reveal(to="alice")

    x = tf.constant(np.linspace(-2, 2, 64))
    runs = [compute(x) for _ in range(2)]
    assert compute.experimental_get_tracing_count() == 1
    for first, second in zip(tf.nest.flatten(runs[0][:4]), tf.nest.flatten(runs[1][:4])):
        assert not np.array_equal(first.numpy(), second.numpy()), "a share, mask or triple repeated across runs"
    np.testing.assert_allclose(runs[0][4].numpy(), runs[1][4].numpy(), atol=1e-3)


def test_fixed_seed_is_repeatable_across_instances(config):
    first = Pond(config, seed=7).share(np.arange(4.0), "alice").share0.numpy()
    second = Pond(config, seed=7).share(np.arange(4.0), "alice").share0.numpy()
    third = Pond(config, seed=8).share(np.arange(4.0), "alice").share0.numpy()
    assert np.array_equal(first, second) and not np.array_equal(first, third)
