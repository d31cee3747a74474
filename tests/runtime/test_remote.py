"""Pond against four `tfe-lite serve` players (behind the README's TLS tunnels) and a driver process
running as the player bob.

The driver runs tests/runtime/scenarios.py: its results must equal local mode's (same seeds, bit for bit)
and the plaintext within the fixed-point bounds of tests/protocols/oracle.py; every op must run in the
process of the player the protocol placed it on (from each player's own profiler trace).
"""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import scenarios
import tfe_lite
from tfe_lite.protocols import Pond
from tfe_lite.protocols.pond import comparison

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "protocols"))
from oracle import assert_close, conv_tol, encode_tol, matmul_tol, mul_tol  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def remote(cluster_run):
    return cluster_run


def test_players_stop_cleanly_on_sigterm_and_sigint(remote):
    for name, (status, line) in remote["stopped"].items():
        assert status == 0 and line.startswith(f"tfe-lite serve: player {name!r} stopping"), (name, status, line)


#: What comparison="auto" runs on the cluster for the scenarios' comparisons (all small): local mode's twin
#: pins it, since auto runs the dealt protocol in local mode (test_auto_chooses_by_config_and_size).
ON_CLUSTER = "assisted"


@pytest.fixture(scope="module")
def local():
    config = tfe_lite.LocalConfig(["alice", "bob"])
    return scenarios.run(Pond(config, seed=scenarios.SEED, comparison=ON_CLUSTER)), config


def test_auto_chooses_by_config_and_size(remote):
    """On the cluster comparison="auto" takes the assisted protocol (3 rounds) up to the size limit."""
    limit = comparison.ASSISTED_MAX_ELEMENTS
    assert remote["auto"] == {"1": ON_CLUSTER, str(limit): ON_CLUSTER, str(limit + 1): "dealt"}


def test_players_take_their_thread_pool_sizes(remote):
    """The producer was served with --inter-op-threads 2 --intra-op-threads 1 (tests/runtime/tunnel.py), and
    its results are part of every scenario checked here; the others run with TensorFlow's defaults."""
    assert "2 inter-op threads, 1 intra-op threads" in remote["ready"]["crypto-producer"]
    assert "op threads" not in remote["ready"]["server0"]


def test_players_keep_freed_memory(remote):
    """Each served player sets its own process's malloc (tfe_lite.allocator; tests/test_allocator.py shows the
    effect) and says so when ready."""
    for name, line in remote["ready"].items():
        assert "glibc malloc keeps freed memory: trim threshold 1 GiB, mmap threshold 32 MiB" in line, name


def test_results_equal_local_mode_bit_for_bit(remote, local):
    results, _ = local
    assert sorted(remote["results"]) == sorted(results)
    for name, value in results.items():
        np.testing.assert_array_equal(np.asarray(remote["results"][name]), value, err_msg=name)


def test_results_equal_the_plaintext_within_fixed_point_bounds(remote):
    prot = Pond(tfe_lite.LocalConfig(["alice", "bob"]))  # for its fixed-point settings only
    v = scenarios.inputs()
    expected = scenarios.plaintext(v)
    got = {k: np.asarray(r) for k, r in remote["results"].items()}
    conv = lambda a, b: tf.nn.conv2d(a, b, 1, "SAME").numpy()  # noqa: E731
    tolerances = {
        "shared": encode_tol(prot), "sum": 2 * encode_tol(prot), "scaled": mul_tol(prot, v["x"], 1.5),
        "product": mul_tol(prot, v["x"], v["y"]), "square": mul_tol(prot, v["x"], v["x"]),
        "matmul": matmul_tol(prot, v["x"], v["w"]), "conv2d": conv_tol(prot, conv, v["images"], v["filters"]),
        "traced_1": matmul_tol(prot, v["batch"], v["w"]), "traced_2": matmul_tol(prot, v["batch"] + 1.0, v["w"]),
    }
    for name, tol in tolerances.items():
        assert_close(got[name], expected[name], tol)


def test_players_are_jobs_of_the_cluster_and_tensors_live_there(remote):
    players = remote["players"]
    assert players["crypto-producer"] == "/job:crypto_producer/replica:0/task:0/device:CPU:0"
    assert remote["devices"] == {
        "share0": players["server0"], "share1": players["server1"],
        "reveal_bob": players["bob"], "reveal_alice": players["alice"],
    }
    assert remote["soft_placement"] is False  # an op runs where it is placed or fails
    assert remote["grpc_fail_fast"] == "true"  # a call to a lost player fails instead of waiting for it


def test_traced_graph_places_every_op_on_the_same_player_as_local_mode(remote, local):
    _, config = local
    local_placed = scenarios.traced_placement(Pond(config, seed=scenarios.SEED), config)
    assert {name: tuple(p) for name, p in remote["placed"].items()} == {name: tuple(p) for name, p in local_placed.items()}
    assert {player for player, _ in remote["placed"].values()} == set(scenarios.PLAYERS)


def test_each_op_executes_in_the_process_of_the_player_it_was_placed_on(remote):
    placed, executed = remote["placed"], remote["executed"]
    assert set(executed) == {"server0", "server1", "crypto-producer", "alice"}
    for player, ops in executed.items():
        # Eager ops (the keys of new protocols) show as name == type: not the traced graph's.
        ours = {name: kind for name, kind in ops.items() if name in placed and name != kind}
        assert len(ours) >= 10, f"too few ops of the traced graph seen executing on {player}: {ours}"
        wrong = {name: placed[name][0] for name in ours if placed[name][0] != player}
        assert not wrong, f"ops executed on {player} but placed elsewhere: {wrong}"
    # The protocol's stateful and heavy ops (which Grappler neither folds nor prunes) were each seen
    # running where they were placed; with soft placement off, TensorFlow runs an op there or fails.
    kinds = {"RingMatMul", "ChaCha20Keystream", "RngReadAndSkip", "MatMul"}
    heavy = {name: player for name, (player, kind) in placed.items() if kind in kinds and player in executed}
    assert len(heavy) >= 8
    missing = {name: player for name, player in heavy.items() if name not in executed[player]}
    assert not missing, missing


def test_native_kernels_run_on_the_players(remote):
    executed = remote["executed"]
    if tfe_lite.ops.available():
        assert "RingMatMul" in executed["server0"].values() and "RingMatMul" in executed["server1"].values()
        assert "RingMatMul" in executed["crypto-producer"].values()  # the triple's c = a @ b
        assert "ChaCha20Keystream" in executed["alice"].values()  # alice's share mask
    else:
        assert "RingMatMul" not in {k for ops in executed.values() for k in ops.values()}


def test_keys_are_made_on_each_players_own_process_and_fresh(remote):
    if tfe_lite.ops.available():
        for player, ops in remote["executed"].items():
            assert "SystemRandomKey" in ops.values(), player  # its OS CSPRNG, in its own process
    first, second = (np.asarray(s, np.int64) for s in remote["fresh"])
    assert (first != second).all()  # two unseeded protocols: independent keys, independent shares


def test_the_example_gives_the_local_result_on_the_cluster(remote):
    local, multi = remote["example"]["local"], remote["example"]["remote"]
    assert "== local, one process" in local and "== multi-host" in multi and "driver runs as bob" in multi
    assert "/job:crypto_producer/replica:0/task:0/device:CPU:0" in multi
    digest = re.compile(r"result digest \(sha256\): ([0-9a-f]{16})")
    assert digest.search(multi)[1] == digest.search(local)[1]
    error = float(re.search(r"max \|private - plaintext\| = (\S+)", multi)[1])
    assert error < 33.01 * 2.0 ** -16  # oracle.matmul_tol: sum_k (|x| + |w|) u/2 + u, values in [-1, 1], k = 32


# ------------------------------------------------------------------- a private Keras model's predict
@pytest.fixture(scope="module")
def local_keras():
    config = tfe_lite.LocalConfig(["alice", "bob"])
    private, outputs = scenarios.keras_predict(Pond(config, seed=scenarios.SEED, comparison=ON_CLUSTER))
    return outputs, scenarios.graph_placement(scenarios.forward_graph(private), config)


def test_private_keras_predict_with_the_dealt_comparison_equals_local_mode_bit_for_bit(remote):
    _, outputs = scenarios.keras_predict(Pond(tfe_lite.LocalConfig(["alice", "bob"]), seed=scenarios.SEED, comparison="dealt"))
    np.testing.assert_array_equal(np.asarray(remote["keras_dealt"]), outputs)


def test_private_keras_predict_equals_local_mode_bit_for_bit(remote, local_keras):
    outputs, _ = local_keras
    assert remote["keras"]["dtype"] == "float64" == str(outputs.dtype)
    np.testing.assert_array_equal(np.asarray(remote["keras"]["outputs"]), outputs)


def test_private_keras_predict_equals_keras_within_the_propagated_bound(remote):
    from layer_tools import model_tol

    prot = Pond(tfe_lite.LocalConfig(["alice", "bob"]))  # for its fixed-point settings only
    (tol,), (expected,) = model_tol(prot, scenarios.keras_model(), scenarios.keras_inputs())
    got = np.asarray(remote["keras"]["outputs"])
    assert got.shape == expected.shape == (6, 3)
    assert_close(got, expected, tol)


def test_private_keras_forward_runs_where_local_mode_places_it(remote, local_keras):
    from collections import Counter

    _, local_placed = local_keras
    placed, executed = remote["keras"]["placed"], remote["keras"]["executed"]
    # Keras numbers its layers per process, so the graphs are compared by (player, op type).
    assert Counter(map(tuple, placed.values())) == Counter(map(tuple, local_placed.values()))
    by_player = Counter(player for player, _ in placed.values())
    assert set(by_player) == {"server0", "server1", "crypto-producer", "bob"}  # the model owner, alice, is absent
    for player in ("server0", "server1", "crypto-producer"):
        ours = {name for name, kind in executed[player].items() if name in placed and name != kind}
        assert len(ours) >= 100, f"too few ops of the private forward seen executing on {player}"
        wrong = {name: placed[name][0] for name in ours if placed[name][0] != player}
        assert not wrong, f"ops executed on {player} but placed elsewhere: {wrong}"
    assert not {name for name in executed["alice"] if name in placed}  # the model owner runs nothing per batch
