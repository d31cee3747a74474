"""The computations run both in local mode (in the test process) and against `tfe-lite serve` players
(by driver.py in a driver process): same protocol code, same seeds, so the results must be equal.

Players: server0, server1, crypto-producer, alice and bob (alice and bob own data; results go to both).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfe_lite.protocols import Pond

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "keras_layers"))  # layer_tools: float64 models, bounds

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
    return graph_placement(predict_fn(prot, w).get_concrete_function(tf.TensorSpec([2, 4], tf.float64)).graph, config)


# ------------------------------------------------------------------------ a private Keras model's predict
#: alice owns the model (shares its weights), bob (the driver in the remote runs) is the client: predict
#: returns the client's revealed outputs to the program that calls it.
MODEL_OWNER, CLIENT = "alice", "bob"
PREDICT_BATCH = 4  # 6 records: a full batch and a last one padded by the client


def keras_model():
    """A float64 Keras model (Conv2D with relu, max pooling, Flatten, Dense), weights from a seeded numpy
    generator so every process builds the same one. Build it after the config connects: TensorFlow's
    ``connect_to_cluster`` invalidates variables made before it (on ``/job:localhost``)."""
    import keras
    from layer_tools import float64_models

    L = keras.layers
    with float64_models():
        model = keras.Sequential([keras.Input((6, 6, 1)), L.Conv2D(2, 3, activation="relu"), L.MaxPooling2D(2),
                                  L.Flatten(), L.Dense(3)])
    rng = np.random.default_rng(SEED + 1)
    model.set_weights([rng.uniform(-0.8, 0.8, w.shape) for w in model.get_weights()])
    return model


def keras_inputs() -> np.ndarray:
    return np.random.default_rng(SEED + 2).uniform(-1, 1, (6, 6, 6, 1))


def private_model(prot: Pond):
    from tfe_lite.keras_layers import secure

    return secure(keras_model(), protocol=prot, model_owner=MODEL_OWNER, client=CLIENT)


def keras_predict(prot: Pond):
    """``(private model, its predict on keras_inputs())`` (Keras's own predict loop)."""
    private = private_model(prot)
    return private, private.predict(keras_inputs(), batch_size=PREDICT_BATCH, verbose=0)


def graph_placement(graph, config) -> dict[str, list[str]]:
    """Op name -> [the player whose device it was placed on, op type], for every placed op of ``graph``."""
    by_device = {tf.DeviceSpec.from_string(p.device).to_string(): p.name for p in config.players}
    return {op.name: [by_device.get(tf.DeviceSpec.from_string(op.device).to_string(), op.device), op.type]
            for op in graph.get_operations() if op.device}


def forward_graph(private):
    """The private forward's graph for predict's batch shape."""
    return private.forward_function.get_concrete_function(
        tf.TensorSpec((PREDICT_BATCH, *private.private_input_shapes[0]), tf.float64)).graph
