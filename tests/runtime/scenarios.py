"""The computations run both in local mode (in the test process) and against `tfe-lite serve` players
(by driver.py in a driver process): same protocol code, same seeds, so the results must be equal.

Players: server0, server1, crypto-producer, alice and bob (alice and bob own data; results go to both).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfe_lite.protocols import Pond

SEED = 2024
PLAYERS = ("server0", "server1", "crypto-producer", "alice", "bob")


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    return {
        "x": rng.uniform(-10, 10, size=(3, 4)),
        "y": rng.uniform(-10, 10, size=(3, 4)),
        "w": rng.uniform(-2, 2, size=(4, 2)),
        "images": rng.uniform(0, 1, size=(2, 5, 5, 1)),
        "filters": rng.normal(0, 0.5, size=(3, 3, 1, 2)),
        "batch": rng.uniform(-5, 5, size=(2, 4)),
    }


def plaintext(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float64 oracle of :func:`run`."""
    conv = tf.nn.conv2d(v["images"], v["filters"], 1, "SAME").numpy()
    return {
        "shared": v["x"], "sum": v["x"] + v["y"], "scaled": v["x"] * 1.5, "product": v["x"] * v["y"],
        "square": v["x"] * v["x"], "matmul": v["x"] @ v["w"], "conv2d": conv,
        "traced_1": v["batch"] @ v["w"], "traced_2": (v["batch"] + 1.0) @ v["w"],
    }


def predict_fn(prot: Pond, w):
    """The traced computation: alice's batch times bob's private weights, revealed to bob."""

    @tf.function
    def predict(batch):
        return (prot.share(batch, owner="alice") @ w).reveal(to="bob")

    return predict


def run(prot: Pond) -> dict[str, np.ndarray]:
    """Sharing, products and a traced computation; every value revealed (to alice or bob) as float64."""
    v = inputs()
    x, y = prot.share(v["x"], owner="alice"), prot.share(v["y"], owner="bob")
    w = prot.share(v["w"], owner="bob")
    results = {
        "shared": x.reveal(to="alice"),
        "sum": (x + y).reveal(to="bob"),
        "scaled": (x * 1.5).reveal(to="alice"),
        "product": (x * y).reveal(to="alice"),
        "square": x.square().reveal(to="bob"),
        "matmul": (x @ w).reveal(to="alice"),
        "conv2d": prot.conv2d(prot.share(v["images"], "alice"), prot.share(v["filters"], "bob")).reveal(to="alice"),
    }
    predict = predict_fn(prot, w)
    results["traced_1"] = predict(tf.constant(v["batch"]))
    results["traced_2"] = predict(tf.constant(v["batch"] + 1.0))
    return {name: np.asarray(value.numpy(), np.float64) for name, value in results.items()}


def traced_placement(prot: Pond, config) -> dict[str, list[str]]:
    """Op name -> [the player whose device the protocol placed it on, op type], in predict_fn's graph."""
    w = prot.share(inputs()["w"], owner="bob")
    graph = predict_fn(prot, w).get_concrete_function(tf.TensorSpec([2, 4], tf.float64)).graph
    by_device = {tf.DeviceSpec.from_string(p.device).to_string(): p.name for p in config.players}
    placed = {}
    for op in graph.get_operations():
        if op.device:
            placed[op.name] = [by_device.get(tf.DeviceSpec.from_string(op.device).to_string(), op.device), op.type]
    return placed
