"""Bytes between players against the theoretical Pond cost with seeded triples."""

import numpy as np
import pytest
import tensorflow as tf

SEED = 32  # bytes of a 256-bit seed
WORD = 8   # bytes of a ring element


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (8, 16, 4), (64, 64, 64)])
def test_private_matmul_costs_exactly_the_pond_formula(prot, m, k, n):
    a = prot.share(np.ones((m, k)), "alice")
    b = prot.share(np.ones((k, n)), "bob")
    with prot.count_communication() as log:
        _ = a @ b
    # open e = x - a and d = y - b both ways, c's correction from the producer (its first half of the elements
    # to server0, the rest to server1), one seed to each server
    theory = WORD * (2 * m * k + 2 * k * n + m * n) + 2 * SEED
    assert log.total_bytes() == theory
    assert log.by_link()[("crypto-producer", "server0")] == SEED + WORD * (m * n // 2)
    assert log.by_link()[("crypto-producer", "server1")] == SEED + WORD * (m * n - m * n // 2)
    assert log.by_link()[("server0", "server1")] == WORD * (m * k + k * n)


def test_sharing_and_revealing_cost(prot):
    with prot.count_communication() as log:
        x = prot.share(np.ones((10, 3)), "alice")
    assert log.by_link() == {("alice", "server0"): SEED, ("alice", "server1"): WORD * 30}
    with prot.count_communication() as log:
        x.reveal(to="bob")
    assert log.total_bytes() == 2 * WORD * 30
    with prot.count_communication() as log:
        x.reveal(to="server0")
    assert log.total_bytes() == WORD * 30


def test_local_operations_send_nothing(prot):
    x = prot.share(np.ones((2, 3)), "alice")
    with prot.count_communication() as log:
        y = (x + 1.0) * 2.5 - x
        _ = y @ prot.public(np.ones((3, 2)))
        _ = y.reduce_sum(axis=0)[1:]
    assert log.messages == 0


def test_traced_functions_are_counted_at_every_execution_not_when_traced(prot):
    """Issue 8 item 6: traffic was counted when a computation was built (10 runs of a traced function
    counted one trace, and a trace that never ran counted bytes)."""

    @tf.function
    def f(x):
        return (prot.share(x, "alice").square()).reveal(to="alice")

    one_run = SEED + 56 + 2 * 56 + 2 * SEED + 56 + 2 * 56  # share, square (open, seeds, c1), reveal
    with prot.count_communication() as log:
        f.get_concrete_function(tf.TensorSpec([7], tf.float64))
    assert log.total_bytes() == 0 and log.messages == 0, "tracing alone sends nothing"
    with prot.count_communication() as log:
        for _ in range(10):
            f(tf.ones([7], tf.float64))
    assert log.total_bytes() == 10 * one_run
    assert log.by_link()[("alice", "server0")] == 10 * SEED
    eager = prot.share(np.ones(7), "alice").square()
    with prot.count_communication() as log:
        eager.reveal(to="alice")
    assert log.total_bytes() == 2 * 56


def test_count_communication_inside_a_trace_is_refused(prot):
    @tf.function
    def f():
        with prot.count_communication():
            pass

    with pytest.raises(Exception, match="ProtocolError: count_communication.. counts executions"):
        f()


def _messages(log):
    links = {}
    for t in log.transfers:
        links[(t.src, t.dst)] = links.get((t.src, t.dst), 0) + t.count
    return links


@pytest.mark.parametrize("traced", [False, True])
def test_one_message_per_link_and_round(compare_prot, traced):
    """What goes over one link in one round travels as one message (between processes each is an RPC):
    a product opens e and d together, the producer deals a triple (or a comparison's whole correlated
    randomness) in one message to each server, a relu sends one message each way per round (7 rounds of
    the dealt protocol; the assisted one: one round between the servers, one to the producer from each,
    the producer's dealing and its answer to server1)."""
    from tfe_lite.protocols.pond import comparison

    prot = compare_prot
    x = prot.share(np.linspace(-3, 3, 300).reshape(3, 100), "alice")
    y = prot.share(np.ones((3, 100)), "bob")
    cases = {"product": lambda a, b: a * b, "relu": lambda a, b: prot.relu(a)}
    rounds = 2 + len(comparison.and_levels(prot.fixedpoint.int_bits + prot.fixedpoint.frac_bits + 1))
    producer = {("crypto-producer", "server0"): 1, ("crypto-producer", "server1"): 1}
    expected = {"product": {("server0", "server1"): 1, ("server1", "server0"): 1, **producer},
                "relu": {("server0", "server1"): rounds, ("server1", "server0"): rounds, **producer}}
    if prot.comparison == "assisted":
        expected["relu"] = {("server0", "server1"): 1, ("server1", "server0"): 1, ("crypto-producer", "server0"): 1,
                            ("crypto-producer", "server1"): 2, ("server0", "crypto-producer"): 1,
                            ("server1", "crypto-producer"): 1}
    for name, op in cases.items():
        fn = tf.function(lambda a0, a1, b0, b1, op=op: op(
            prot.from_shares(a0, a1, fixedpoint=prot.fixedpoint), prot.from_shares(b0, b1, fixedpoint=prot.fixedpoint)).shares)
        run = fn if traced else fn.python_function
        with prot.count_communication() as log:
            z = run(*x.shares, *y.shares)
        assert _messages(log) == expected[name], name
        value = (z[0] + z[1]).numpy() / prot.fixedpoint.scale
        truth = np.linspace(-3, 3, 300).reshape(3, 100)
        np.testing.assert_allclose(value, np.maximum(truth, 0) if name == "relu" else truth, atol=2e-4)


def test_send_many_packs_parts_of_unknown_shape_by_the_receivers_own(prot):
    """Inside a trace with an unknown batch, the receiver splits a packed opening by its own parts' shapes."""
    channel, s0, s1 = prot.channel, prot.server0, prot.server1

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.int64), tf.TensorSpec([None], tf.int64)])
    def swap(a, b):
        with tf.device(s0.device):
            a0, b0 = a + 1, b + 2
        with tf.device(s1.device):
            like = [tf.zeros_like(a), tf.zeros_like(b)]
        return channel.send_many([a0, b0], s0, s1, "test", like=like)

    a, b = swap(tf.reshape(tf.range(12, dtype=tf.int64), [4, 3]), tf.range(5, dtype=tf.int64))
    np.testing.assert_array_equal(a.numpy(), np.arange(12).reshape(4, 3) + 1)
    np.testing.assert_array_equal(b.numpy(), np.arange(5) + 2)
    with pytest.raises(Exception, match="one dtype"):
        channel.send_many([tf.constant([1], tf.int64), tf.constant([1], tf.int32)], s0, s1, "test")
