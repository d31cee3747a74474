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
    # open e = x - a and d = y - b both ways, c1 from the producer, one seed to each server
    theory = WORD * (2 * m * k + 2 * k * n + m * n) + 2 * SEED
    assert log.total_bytes() == theory
    assert log.by_link()[("crypto-producer", "server0")] == SEED
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
