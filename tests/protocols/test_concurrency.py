"""Concurrent use never repeats a seed, mask or triple, and gives correct results (issue 8, items 2 and 3).

Before the counters were atomic, threads sharing one protocol drew the same seed (an ``assign_add``
followed by a separate read), so two shares were masked alike and server1 could subtract two inputs; the
precomputed dealer's two per-server counters fell out of step. These tests count repeats over thousands
of draws.
"""

import threading

import numpy as np
import pytest
import tensorflow as tf

from tfe_lite.protocols import Pond, PrecomputedDealer
from tfe_lite.protocols.pond import TripleSpec
from tfe_lite.random import SeedStream

THREADS = 4


def _in_threads(work, per_thread: int):
    """Run ``work(thread, i)`` ``per_thread`` times in each of THREADS threads started together."""
    results, errors = [[] for _ in range(THREADS)], []
    barrier = threading.Barrier(THREADS)

    def run(t):
        try:
            barrier.wait()
            for i in range(per_thread):
                results[t].append(work(t, i))
        except Exception as error:  # noqa: BLE001 - re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    if errors:
        raise errors[0]
    return [r for rs in results for r in rs]


def test_seed_stream_never_repeats_under_threads():
    stream = SeedStream("/device:CPU:1", seed=3)
    draws = _in_threads(lambda t, i: tuple(stream.next_seed().numpy()), 1000)
    assert len(draws) == THREADS * 1000
    assert len(set(draws)) == len(draws)


def test_concurrent_executions_of_one_traced_draw_never_repeat():
    stream = SeedStream("/device:CPU:1", seed=4)
    draw = tf.function(lambda: tf.stack([stream.next_seed() for _ in range(8)]))
    draw()  # trace once, before the threads
    draws = _in_threads(lambda t, i: [tuple(row) for row in draw().numpy()], 100)
    seeds = [s for batch in draws for s in batch]
    assert len(seeds) == THREADS * 100 * 8 and len(set(seeds)) == len(seeds)
    assert draw.experimental_get_tracing_count() == 1


def test_threads_sharing_and_multiplying_get_fresh_masks_and_right_products(config):
    prot = Pond(config, seed=11)

    def work(t, i):
        x = prot.share(np.full(4, 1.0 + t), "alice")
        y = prot.share(np.full(4, 5.0), "bob")
        z = x * y
        return t, x.share0.numpy().tobytes(), z.reveal(to="alice").numpy()

    results = _in_threads(work, 200)
    masks = [m for _, m, _ in results]
    assert len(set(masks)) == len(masks), f"{len(masks) - len(set(masks))} repeated masks"
    wrong = [(t, z) for t, _, z in results if not np.allclose(z, 5.0 * (1.0 + t), atol=1e-3)]
    assert not wrong, f"{len(wrong)} wrong products, e.g. {wrong[0]}"


def test_precomputed_dealer_under_threads_uses_each_triple_once(config):
    dealer = PrecomputedDealer()
    prot = Pond(config, dealer=dealer, seed=12)
    spec = TripleSpec("mul", (3,), (3,))
    per_thread = 100
    dealer.precompute(spec, THREADS * per_thread)
    opened = []

    def work(t, i):
        x, y = prot.share(np.full(3, 1.5), "alice"), prot.share(np.full(3, 2.0), "bob")
        triple = dealer.triple(spec)
        parts = [t.numpy() for t in (x.share0, triple.a0, x.share1, triple.a1)]
        opened.append((parts[0] - parts[1] + parts[2] - parts[3]).tobytes())  # numpy int64 wraps like the ring
        return (x * y).reveal(to="alice").numpy()

    # Each work item takes two triples: one to look at, one for the product.
    dealer.precompute(spec, THREADS * per_thread)
    results = _in_threads(work, per_thread)
    wrong = [z for z in results if not np.allclose(z, 3.0, atol=1e-3)]
    assert not wrong, f"{len(wrong)} of {len(results)} products wrong, e.g. {wrong[0]}"
    assert dealer.remaining(spec) == 0
    assert len(set(opened)) == len(opened)
    with pytest.raises(Exception, match="no mul.*triple left"):
        prot.share(np.ones(3), "alice") * prot.share(np.ones(3), "bob")


def test_concurrent_executions_of_a_traced_product_with_precomputed_triples(config):
    dealer = PrecomputedDealer()
    prot = Pond(config, dealer=dealer, seed=13)

    @tf.function
    def product(x, y):
        z = prot.share(x, "alice") * prot.share(y, "bob")
        return z.reveal(to="alice")

    x, y = tf.constant(np.full(5, 1.5)), tf.constant(np.full(5, -2.0))
    made = dealer.precompute_for(product, x, y, runs=THREADS * 50)
    assert list(made.values()) == [THREADS * 50]
    results = _in_threads(lambda t, i: product(x, y).numpy(), 50)
    assert all(np.allclose(z, -3.0, atol=1e-3) for z in results)
    assert dealer.remaining(next(iter(made))) == 0
