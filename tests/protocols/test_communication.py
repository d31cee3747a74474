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


def test_counting_inside_tf_function_counts_the_trace(prot):
    @tf.function
    def f(x):
        return (prot.share(x, "alice").square()).reveal(to="alice")

    with prot.count_communication() as log:
        f(tf.ones([7]))
        f(tf.ones([7]))
    # one trace: share (32 + 56), square (open 2 * 56, seeds 64, c1 56), reveal (2 * 56)
    assert log.total_bytes() == SEED + 56 + 2 * 56 + 2 * SEED + 56 + 2 * 56
