"""Virtual workers and pointers: where operations run, the cross-location error, get / move / objects."""

import numpy as np
import pytest
import tensorflow as tf

from tfe_lite.federated import LocationError, ObjectNotFoundError, Pointer, VirtualWorker
from tfe_lite.federated.workers import same_device
from tfe_lite.protocols import Pond


@pytest.fixture
def workers(config):
    alice, bob = VirtualWorker("alice", config), VirtualWorker("bob", config)
    yield alice, bob
    alice.clear_objects(), bob.clear_objects()


def _on(worker, ptr):
    return same_device(worker.objects[ptr.id].device, worker.device)


def test_send_places_the_value_on_the_worker(workers):
    alice, _ = workers
    ptr = alice.send(np.array([1.0, 2.0], np.float32))
    assert isinstance(ptr, Pointer) and ptr.location is alice and ptr.id in alice.objects
    assert ptr.shape == (2,) and ptr.dtype == tf.float32
    assert _on(alice, ptr)
    assert "alice" in repr(ptr) and "[1." not in repr(ptr)  # the pointer shows metadata, never the value


def test_operations_run_on_the_worker_and_stay_there(workers):
    alice, _ = workers
    x, y = alice.send(np.array([1.0, 2.0])), alice.send(np.array([10.0, 20.0]))
    results = {"add": x + y, "sub": y - x, "mul": x * 3.0, "rsub": 1.0 - x, "div": y / x, "neg": -x,
               "apply": x.apply(lambda a, b: tf.reduce_sum(a * b), y)}
    for name, ptr in results.items():
        assert isinstance(ptr, Pointer) and ptr.location is alice, name
        assert _on(alice, ptr), name
    expected = {"add": [11, 22], "sub": [9, 18], "mul": [3, 6], "rsub": [0, -1], "div": [10, 10], "neg": [-1, -2],
                "apply": 50}
    for name, ptr in results.items():
        np.testing.assert_allclose(ptr.get().numpy(), expected[name], err_msg=name)


def test_matmul_and_numpy_reflected_operands(workers):
    alice, _ = workers
    a = alice.send(np.eye(2) * 2.0)
    np.testing.assert_allclose((a @ np.ones((2, 1))).get().numpy(), [[2.0], [2.0]])
    np.testing.assert_allclose((np.ones(2) + a[0]).get().numpy(), [3.0, 1.0])  # numpy defers to the pointer


def test_mixing_two_workers_names_both(workers):
    alice, bob = workers
    x, y = alice.send([1.0]), bob.send([2.0])
    for op in (lambda: x + y, lambda: y * x, lambda: x.apply(tf.add, y)):
        with pytest.raises(LocationError) as error:
            op()
        assert "'alice'" in str(error.value) and "'bob'" in str(error.value)


def test_a_tensor_held_by_another_worker_is_refused(workers):
    alice, bob = workers
    x = alice.send([1.0])
    with tf.device(bob.device):
        bobs = tf.constant([5.0])
    with pytest.raises(LocationError, match="'bob'"):
        x + bobs
    with pytest.raises(LocationError, match="move"):
        bob.send(x)


def test_get_returns_the_value_and_deletes_it(workers):
    alice, _ = workers
    ptr = alice.send([4.0, 5.0])
    value = ptr.get()
    np.testing.assert_array_equal(value.numpy(), [4.0, 5.0])
    assert not same_device(value.device, alice.device)  # back with the caller
    assert ptr.id not in alice.objects
    with pytest.raises(ObjectNotFoundError, match="get"):
        ptr.get()
    with pytest.raises(ObjectNotFoundError):
        ptr + 1.0


def test_move_sends_worker_to_worker(workers):
    alice, bob = workers
    ptr = alice.send([7.0])
    moved = ptr.move(bob)
    assert moved.location is bob and _on(bob, moved)
    assert ptr.id not in alice.objects and moved.id in bob.objects
    with pytest.raises(ObjectNotFoundError, match="moved to 'bob'"):
        ptr.get()
    assert moved.move(bob) is moved
    np.testing.assert_array_equal((moved + bob.send([1.0])).get().numpy(), [8.0])


def test_objects_and_clear_objects(workers):
    alice, _ = workers
    a, b = alice.send([1.0]), alice.send([2.0])
    c = a + b
    assert set(alice.objects) == {a.id, b.id, c.id}
    with pytest.raises(TypeError):
        alice.objects[99] = None  # a read-only view
    b.get()
    assert set(alice.objects) == {a.id, c.id}
    alice.clear_objects()
    assert not alice.objects
    with pytest.raises(ObjectNotFoundError, match="clear_objects"):
        c.get()


def test_share_keeps_the_plaintext_on_the_worker(config, workers):
    alice, _ = workers
    prot = Pond(config, seed=5)
    ptr = alice.send(np.array([1.5, -2.25]))
    shared = ptr.share(prot)
    share0, share1 = shared.shares
    assert same_device(share0.device, prot.server0.device) and same_device(share1.device, prot.server1.device)
    np.testing.assert_allclose(shared.reveal(to="bob").numpy(), [1.5, -2.25], atol=2.0**-16)
    assert ptr.id in alice.objects  # sharing keeps the worker's object


def test_worker_must_be_a_player(config):
    with pytest.raises(Exception, match="unknown player"):
        VirtualWorker("mallory", config)
