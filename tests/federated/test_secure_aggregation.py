"""Secure aggregation: equal to plain within fixed-point tolerance, placement audit, dropouts, range, bytes."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tfe_lite.errors import EncodingError
from tfe_lite.fixedpoint import FixedPointConfig
from tfe_lite.federated import ClientDP, FedAvg, PlacementError
from tfe_lite.federated.aggregation import PlainAggregator, SecureAggregator, Traffic
from tfe_lite.federated.clients import ClientRunner
from tfe_lite.federated.data import resolve_client_data
from tfe_lite.federated.workers import same_device
from tfe_lite.protocols import Pond

from fedtools import LOSS, toy_data, toy_model, weights

SIZES = {"alice": 20, "bob": 36, "carol": 9}


def _data(names=SIZES):
    return {name: toy_data(SIZES[name], list(SIZES).index(name)) for name in names}


def _fit(config, data, *, secure=True, rounds=1, **fit):
    fed = FedAvg(toy_model, config=config, loss=LOSS, client_optimizer=keras.optimizers.SGD(0.1), secure_aggregation=secure, seed=0)
    history = fed.fit(data, rounds=rounds, batch_size=8, shuffle=False, verbose=0, **fit)
    return fed, history


@pytest.fixture(scope="module")
def prot(config):
    return Pond(config, seed=11)


def _ulp(fed_or_prot) -> float:
    """Half a unit of the fixed-point encoding: the largest rounding error of one encoded entry."""
    prot = getattr(fed_or_prot, "protocol", fed_or_prot)
    return 2.0 ** -(prot.fixedpoint.frac_bits + 1)


@pytest.mark.parametrize("size", [1, 7, 1000])
def test_secure_sum_equals_the_exact_sum(config, prot, size):
    vectors = {n: np.random.default_rng(i).uniform(-100, 100, size).astype(np.float32) for i, n in enumerate(SIZES)}
    aggregator = SecureAggregator(prot, "server0")
    bounds = [("update", size, 100.0)]
    for name, v in vectors.items():
        with tf.device(config.get_player(name).device):
            aggregator.submit(config.get_player(name), tf.constant(v), bounds)
    total = aggregator.result()
    assert same_device(total.device, config.get_player("server0").device)  # revealed to the aggregator only
    exact = sum(v.astype(np.float64) for v in vectors.values())
    # Each encoding rounds to the nearest 2**-frac_bits; the ring sum is exact, so k vectors err by k * ulp / 2.
    np.testing.assert_allclose(total.numpy(), exact, rtol=0, atol=len(vectors) * _ulp(prot))


def test_secure_fedavg_equals_plain_fedavg(config):
    plain, _ = _fit(config, _data(), secure=False)
    secure, _ = _fit(config, _data(), secure=True)
    # Three encodings err by 3 half-ulps; their sum is divided by the weights' total, 3: one half-ulp. Adding
    # it to float32 weights of magnitude < 2 rounds each result by at most 2**-23 more.
    for a, b in zip(weights(plain.model), weights(secure.model)):
        np.testing.assert_allclose(b, a, rtol=0, atol=_ulp(secure) + 2.0**-23)


def _is_mask(op) -> bool:
    """Pond's masking subtraction ``x - expand(seed)`` (named "masked", uniquified inside a graph)."""
    return re.fullmatch(r"masked(_\d+)?", op.name.split("/")[-1]) is not None


def _tainted(graph, sources):
    consumers = {}
    for op in graph.get_operations():
        for t in op.inputs:
            consumers.setdefault(t.op.name, []).append(op)
    seen, todo = {}, list(sources)
    while todo:
        op = todo.pop()
        if op.name in seen:
            continue
        seen[op.name] = op
        if not _is_mask(op):
            todo.extend(consumers.get(op.name, []))
    return list(seen.values())


def _on(device):
    index = tf.DeviceSpec.from_string(device).device_index
    return lambda op: bool(op.device) and tf.DeviceSpec.from_string(op.device).device_index == index


def _vector_function(fed, client):
    return tf.function(lambda update, loss: fed._client_vector(client, update, loss, 1.0, 1000.0, None, Traffic())[0])


def test_placement_audit_updates_never_leave_their_client_unmasked(config):
    """Walk the graphs fit runs, from each client's data and update until Pond masks it: all on its device.

    Three traced pieces make a client's part of a round: the wave (local training, writing the update to a
    slot variable on the client's device), the client's vector (weighting its update and loss), and its
    submission (bounds check, encoding and masking). Outside them, fit only moves the slot's value through
    these functions eagerly, and ``submit`` refuses a vector that is not on its client's device.
    """
    data = _data(("alice", "bob"))
    fed = FedAvg(toy_model, config=config, loss=LOSS, client_optimizer=keras.optimizers.SGD(0.1), secure_aggregation=True, seed=0)
    clients = resolve_client_data(data, config)
    fed._check_model(clients[0])
    runner = fed._runner(clients, 8, True)
    aggregator = SecureAggregator(fed.protocol, "server0")
    wave = runner._wave_function().get_concrete_function().graph
    size = runner.training.size
    for client in clients:
        on_client = _on(client.player.device)
        # 1. The wave: the client's training call on its device, and everything its outputs feed.
        calls = [op for op in wave.get_operations() if "PartitionedCall" in op.type and "_train" in op.get_attr("f").name
                 and on_client(op)]
        assert len(calls) == 1, client.name
        tainted = _tainted(wave, calls)
        assert any(op.type == "AssignVariableOp" for op in tainted)
        off = [(op.type, op.name, op.device) for op in tainted if not on_client(op)]
        assert not off, f"{client.name}'s update left its device in the wave: {off}"
        # 2. The vector it submits, built from its update and loss.
        graph = _vector_function(fed, client).get_concrete_function(tf.TensorSpec([size]), tf.TensorSpec([])).graph
        tainted = _tainted(graph, [op for op in graph.get_operations() if op.type == "Placeholder"])
        off = [(op.type, op.name, op.device) for op in tainted if op.type not in ("Placeholder", "Identity") and not on_client(op)]
        assert not off, f"{client.name}'s vector built off its device: {off}"
        # 3. Its submission: checked, encoded and masked on its device; only shares leave.
        submit = aggregator._submitter(client.player, size + 1, (size, 1)).get_concrete_function().graph
        vector = next(op for op in submit.get_operations() if op.type == "Placeholder")
        tainted = _tainted(submit, [vector])
        assert any(_is_mask(op) for op in tainted), "the audit must reach Pond's masking op"
        assert any(op.type == "Assert" for op in tainted), "the range check runs on the client's data"
        off = [(op.type, op.name, op.device) for op in tainted if op.type != "Placeholder" and not on_client(op)]
        assert not off, f"{client.name}'s vector left its device unmasked: {off}"
    # And in a real round the updates and vectors are tensors on their clients' devices.
    fed.fit(data, rounds=1, batch_size=8, verbose=0)
    for client in clients:
        update, loss = runner.result(client)
        assert same_device(update.device, client.player.device) and same_device(loss.device, client.player.device)


def test_a_vector_off_its_clients_device_is_refused(config, prot):
    with tf.device(config.get_player("bob").device):
        bobs = tf.ones([3])
    for aggregator in (SecureAggregator(prot, "server0"), PlainAggregator(config.get_player("server0"))):
        with pytest.raises(PlacementError, match="'alice'"):
            aggregator.submit(config.get_player("alice"), bobs, [("update", 3, 1.0)])


def test_server1_receives_uniform_shares(config, prot):
    aggregator = SecureAggregator(prot, "server0")
    with tf.device(config.get_player("alice").device):
        aggregator.submit(config.get_player("alice"), tf.ones([4096]), [("update", 4096, 1.0)])
    share1 = aggregator._sums[4096][1].numpy().view(np.uint64)  # server1's running sum: alice's masked vector
    bits = (share1[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    p_values = [stats.binomtest(int(k), len(share1)).pvalue for k in bits.sum(0)]
    assert min(p_values) > 1e-4 / 64  # every bit of the masked input is a fair coin (Bonferroni over 64 bits)


def test_client_dropping_before_sending_is_left_out_of_sum_and_weights(config):
    dropped, _ = _fit(config, _data(), dropouts={0: {"carol": "before_sending"}})
    without, _ = _fit(config, _data(("alice", "bob")))
    for a, b in zip(weights(dropped.model), weights(without.model)):
        np.testing.assert_allclose(a, b, rtol=0, atol=2 * _ulp(dropped) + 2.0**-23)


def test_client_dropping_after_sending_still_counts(config):
    late, history = _fit(config, _data(), dropouts=lambda r, name: "after_sending" if name == "bob" else None)
    full, _ = _fit(config, _data())
    for a, b in zip(weights(late.model), weights(full.model)):
        np.testing.assert_array_equal(a, b)
    assert history.history["clients"] == [3]


def test_too_few_senders_reveal_nothing_and_the_next_round_goes_on(config):
    fed, history = _fit(config, _data(("alice", "bob")), rounds=2, dropouts={0: {"bob": "before_sending"}})
    assert history.history["clients"] == [0, 2] and np.isnan(history.history["loss"][0])
    one_round, _ = _fit(config, _data(("alice", "bob")))  # round 0 changed nothing: round 1 is a first round
    for a, b in zip(weights(fed.model), weights(one_round.model)):
        np.testing.assert_allclose(a, b, rtol=0, atol=2 * _ulp(fed) + 2.0**-23)


def test_a_failing_client_is_dropped_and_the_round_completes(config, monkeypatch):
    original = ClientRunner._run_one

    def flaky(self, client, *args):
        if client.name == "bob":
            raise tf.errors.UnavailableError(None, None, "bob's connection reset")
        return original(self, client, *args)

    monkeypatch.setattr(ClientRunner, "_run_one", flaky)
    fed = FedAvg(toy_model, config=config, loss=LOSS, client_optimizer=keras.optimizers.SGD(0.1), secure_aggregation=True,
                 parallel_clients=False, seed=0)
    history = fed.fit(_data(), rounds=1, batch_size=8, shuffle=False, verbose=0)
    monkeypatch.setattr(ClientRunner, "_run_one", original)
    without, _ = _fit(config, _data(("alice", "carol")))
    assert history.history["clients"] == [2]
    for a, b in zip(weights(fed.model), weights(without.model)):
        np.testing.assert_allclose(a, b, rtol=0, atol=2 * _ulp(fed) + 2.0**-23)


def test_range_of_the_sum_is_checked_before_sharing(config):
    fed = FedAvg(toy_model, config=config, loss=LOSS, secure_aggregation=True, dp=ClientDP(3000.0, 0.0), seed=0)
    before = weights(fed.model)
    with pytest.raises(EncodingError, match=rf"fixed-point range ±{fed.protocol.fixedpoint.bound:g}.*update"):
        fed.fit(_data(("alice", "bob")), verbose=0)  # 2 clients x clip 3000 > 2**12
    assert all(np.array_equal(a, b) for a, b in zip(before, weights(fed.model)))
    narrow = Pond(config, fixedpoint=FixedPointConfig(frac_bits=16, int_bits=3), seed=1)
    fed = FedAvg(toy_model, config=config, loss=LOSS, client_optimizer=keras.optimizers.SGD(80.0), secure_aggregation=narrow, seed=0)
    with pytest.raises(EncodingError, match=r"Client '(alice|bob)' cannot share its `update` entries"):
        fed.fit(_data(("alice", "bob")), verbose=0)


def test_bytes_per_client_per_round_match_the_theory(config):
    params = toy_model().count_params()
    secure, _ = _fit(config, _data(("alice", "bob")))
    plain, _ = _fit(config, _data(("alice", "bob")), secure=False)
    entries = params + 1  # the weighted update and the weighted loss
    for name in ("alice", "bob"):
        assert secure.round_traffic[0][("server0", name)] == 4 * params  # the float32 model
        assert secure.round_traffic[0][(name, "server0")] == 32  # the seed of server0's share
        assert secure.round_traffic[0][(name, "server1")] == 8 * entries  # the masked vector
        assert plain.round_traffic[0][(name, "server0")] == 4 * entries
    assert secure.round_traffic[0][("server1", "server0")] == 8 * entries  # the reveal of the sum, once
