"""federate(), label_shards() and the checks of client data."""

import numpy as np
import pytest
import tensorflow as tf

from tfe_lite.errors import ConfigError, ShapeError
from tfe_lite.federated import VirtualWorker, federate, label_shards
from tfe_lite.federated.data import resolve_client_data
from tfe_lite.federated.workers import same_device

from fedtools import CLIENTS, toy_data


@pytest.fixture
def workers(config):
    ws = [VirtualWorker(name, config) for name in CLIENTS[:3]]
    yield ws
    for w in ws:
        w.clear_objects()


def test_even_split_keeps_every_row_once_on_its_worker(workers):
    x = np.arange(20.0).reshape(10, 2)
    y = np.arange(10)
    parts = federate((x, y), workers)
    assert list(parts) == ["alice", "bob", "carol"]
    sizes = [parts[w.name][0].shape[0] for w in workers]
    assert sizes == [4, 3, 3]
    for w in workers:
        xp, yp = parts[w.name]
        assert xp.location is w and same_device(w.objects[xp.id].device, w.device)
    xs = np.concatenate([parts[w.name][0].get().numpy() for w in workers])
    ys = np.concatenate([parts[w.name][1].get().numpy() for w in workers])
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ys, y)


def test_shuffled_split_is_a_permutation(workers):
    y = np.arange(30)
    parts = federate(y, workers, shuffle=True, seed=3)
    got = np.concatenate([parts[w.name][0].get().numpy() for w in workers])
    assert sorted(got) == list(y) and not np.array_equal(got, y)


def test_partition_non_iid_sizes_and_mapping(workers):
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    parts = federate((y,), workers, partition={"alice": [0, 1, 2], "bob": [3, 4], "carol": [5, 6, 7, 8]})
    assert [sorted(set(parts[n][0].get().numpy())) for n in ("alice", "bob", "carol")] == [[0], [1], [2]]


@pytest.mark.parametrize("partition, message", [
    ([[0, 1], [1, 2], [3]], "repeats rows"),
    ([[0, 1], [2], [9]], "outside"),
    ([[0, 1], [], [3]], "non-empty"),
    ([[0], [1]], "one index array per worker"),
])
def test_bad_partitions_are_refused(workers, partition, message):
    with pytest.raises(ConfigError, match=message):
        federate(np.arange(5), workers, partition=partition)


def test_label_shards_is_a_non_iid_partition():
    y = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 40))  # 40 shards of one label each
    parts = label_shards(y, 20, shards_per_client=2, seed=0)
    everything = np.concatenate(parts)
    assert len(parts) == 20 and sorted(everything) == list(range(400))  # disjoint and complete
    assert max(len(set(y[p])) for p in parts) <= 2 and sum(len(set(y[p])) == 1 for p in parts) < 20
    with pytest.raises(ConfigError, match="num_clients"):
        label_shards(y, 0)


def test_client_data_from_pointers_arrays_and_datasets(config, workers):
    x, y = toy_data(12, 0)
    alice_x, alice_y = workers[0].send(x[:4]), workers[0].send(y[:4])
    dataset = tf.data.Dataset.from_tensor_slices((x[8:], y[8:])).batch(3)
    clients = resolve_client_data({"alice": (alice_x, alice_y), "bob": (x[4:8], y[4:8]), "carol": dataset}, config)
    assert [c.num_examples for c in clients] == [4, 4, 4]
    for c, rows in zip(clients, (slice(0, 4), slice(4, 8), slice(8, 12))):
        assert same_device(c.x.device, c.player.device) and same_device(c.y.device, c.player.device)
        np.testing.assert_array_equal(c.x.numpy(), x[rows])
        assert c.x.dtype == tf.float32 and c.y.dtype == tf.int64


def test_client_data_errors_are_collected(config, workers):
    x, y = toy_data(6, 0)
    bobs = workers[1].send(x)
    with pytest.raises(ConfigError) as error:
        resolve_client_data({"mallory": (x, y), "server0": (x, y), "alice": (x[:0], y[:0]), "carol": (x, y[:3]),
                             "bob": (workers[0].send(x), y)}, config, reserved=("server0",))
    message = str(error.value)
    for part in ("Unknown client 'mallory'", "'server0' cannot be a client", "'alice' is empty", "6 inputs but 3 labels",
                 "object on 'alice'"):
        assert part in message, part
    with pytest.raises(ShapeError, match="'bob'"):
        resolve_client_data({"alice": (x, y), "bob": (bobs.apply(lambda t: t[:, :3]), workers[1].send(y))}, config)
    with pytest.raises(ConfigError, match="client_data"):
        resolve_client_data({}, config)
