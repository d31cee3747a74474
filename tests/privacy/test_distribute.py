"""DP-SGD under tf.distribute.MirroredStrategy on logical CPU devices (configured in tests/conftest.py).

Replicated DP-SGD must equal single-device DP-SGD on the global batch: each example clipped once, the clipped
sum over all replicas noised once, divided by the global batch size. Every entry point that trains is held to
it: ``fit``, ``train_on_batch`` (Keras gives every replica the whole batch), and custom loops that call
``strategy.run(model.train_step, ...)`` with a plain batch or with a distributed dataset's element.
"""

import json
import pathlib
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfe_lite.privacy.model import make_private

pytestmark = pytest.mark.slow


def _strategy(replicas):
    # ReductionToOneDevice: collective all-reduces of strategies with different sizes in one process
    # collide on their group keys.
    return tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(replicas)], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )


def _mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(3)]
    )


def _weights(model):
    return [v.numpy().astype(np.float64) for v in model.trainable_variables]


def _update(before, after):
    return np.concatenate([np.ravel(b - a) for b, a in zip(before, after)])


def _clipped_mean(model, x, y, clip):
    """Single-device DP-SGD gradient without noise, one example at a time (float64 sums)."""
    rows = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            errors = keras.losses.MeanSquaredError(reduction="none")(y[i : i + 1], model(x[i : i + 1]))
            loss = tf.reduce_mean(errors)
        grads = tape.gradient(loss, model.trainable_variables)
        rows.append(np.concatenate([np.ravel(g.numpy()) for g in grads]).astype(np.float64))
    grads = np.array(rows)
    norms = np.linalg.norm(grads, axis=1)
    return (grads * np.minimum(1.0, clip / norms)[:, None]).sum(0) / len(x)


ENTRIES = ["fit", "train_on_batch", "train_step", "train_step_distributed"]


def _fit_one_batch(model, x, y, entry="fit", strategy=None):
    """One DP-SGD step on the batch ``(x, y)`` through ``entry``."""
    if entry == "fit":
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x))
        model.fit(data, epochs=1, verbose=0, shuffle=False)
        return
    if entry == "train_on_batch":
        model.train_on_batch(x, y)
        return
    strategy = strategy or tf.distribute.get_strategy()
    if not model.optimizer.built:
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)
    batch = (tf.constant(x), tf.constant(y))
    if entry == "train_step_distributed":
        dataset = tf.data.Dataset.from_tensor_slices(batch).batch(len(x))
        batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
    tf.function(lambda b: strategy.run(model.train_step, args=(b,)))(batch)


def _assert_replicas_agree(strategy, model):
    for variable in model.trainable_variables:
        values = [v.numpy() for v in strategy.experimental_local_results(variable)]
        for value in values[1:]:
            np.testing.assert_array_equal(value, values[0])


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize(
    "method, replicas, batch",
    [("ghost", 2, 8), ("vectorized", 2, 8), ("ghost", 4, 6), ("vectorized", 3, 2)],  # uneven, empty replica
)
def test_mirrored_equals_single_device(method, replicas, batch, entry):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(batch, 4)).astype("float32")
    y = (3 * rng.normal(size=(batch, 3))).astype("float32")
    strategy = _strategy(replicas)
    with strategy.scope():
        model = make_private(_mlp(), l2_norm_clip=0.4, noise_multiplier=0.0, clipping=method)
        model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    expected = _clipped_mean(model.inner, x, y, 0.4)
    before = _weights(model)
    _fit_one_batch(model, x, y, entry, strategy)
    np.testing.assert_allclose(_update(before, _weights(model)), expected, rtol=1e-5, atol=1e-7)
    _assert_replicas_agree(strategy, model)
    assert model.steps_taken == 1


# Adaptive clipping with a frozen clip; the count's noise multiplier 2 * 4.0 takes a share of the total 2.0.
ADAPTIVE = {"learning_rate": 0.0, "expected_num_records": 8, "clipped_count_stddev": 4.0}
SUM_NOISE = {False: 2.0, True: (2.0**-2 - 8.0**-2) ** -0.5}  # the gradient sum's noise multiplier


def _noise_std(strategy, adaptive, units=64, batch=8, steps=2, entry="fit"):
    """Empirical std of the update when every gradient is zero (zero inputs, no bias)."""
    with strategy.scope():
        keras.utils.set_random_seed(2)
        inner = keras.Sequential([keras.Input((units,)), keras.layers.Dense(units, use_bias=False)])
        model = make_private(
            inner,
            l2_norm_clip=0.5,
            noise_multiplier=2.0,
            seed=3,
            adaptive_clipping=ADAPTIVE if adaptive else None,
        )
        model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    x, y = np.zeros((batch, units), "float32"), np.ones((batch, units), "float32")
    samples = []
    for _ in range(steps):
        before = _weights(model)
        _fit_one_batch(model, x, y, entry, strategy)
        samples.append(_update(before, _weights(model)))
        _assert_replicas_agree(strategy, model)
    return np.concatenate(samples)


@pytest.mark.parametrize(
    "entry, replicas", [(e, 2) for e in ENTRIES] + [("train_on_batch", 4), ("train_step", 3)]
)
@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed_clip", "adaptive_clip"])
def test_mirrored_adds_noise_once_per_global_batch(adaptive, entry, replicas):
    sample = _noise_std(_strategy(replicas), adaptive, entry=entry)
    # The sum's noise multiplier * clip / global batch; noise per replica would give sqrt(2) x.
    expected = SUM_NOISE[adaptive] * 0.5 / 8
    n = sample.size
    assert abs(sample.std() / expected - 1) < 5 / np.sqrt(2 * n), sample.std() / expected
    assert abs(sample.mean()) < 5 * expected / np.sqrt(n)


def test_mirrored_adaptive_clip_uses_the_global_count():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, 4)).astype("float32")
    y = rng.normal(size=(8, 3)).astype("float32")
    options = {"learning_rate": 0.3, "clipped_count_stddev": 0.0, "expected_num_records": 8}
    clips = []
    for strategy in (tf.distribute.get_strategy(), _strategy(2)):
        with strategy.scope():
            model = make_private(_mlp(), l2_norm_clip=1e-3, noise_multiplier=0.0, adaptive_clipping=options)
            model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat(3)
        clips.append(model.fit(data, epochs=1, verbose=0, shuffle=False).history["l2_norm_clip"][0])
    # Every norm is above the tiny clip: the clip grows by exp(0.3 * 0.5) per step on both.
    assert clips[0] == pytest.approx(1e-3 * np.exp(0.15 * 3), rel=1e-5)
    assert clips[1] == pytest.approx(clips[0], rel=1e-6)


# A worker of a two-process MultiWorkerMirroredStrategy cluster: trains a zero-gradient model (so updates are
# pure noise) with fixed and adaptive clipping, and prints the updates' std over the single-noise std and a
# checksum of the weights. Keras 3.15's `fit` cannot run under MultiWorkerMirroredStrategy for any model
# (its log reduction fails on scalars), so the worker drives `train_step` with `strategy.run`.
_WORKER = """
import json, os, sys
config = json.loads(sys.argv[1])
config["task"]["type"] = "worker"
os.environ["TF_CONFIG"] = json.dumps(config)
import numpy as np, keras, tensorflow as tf
from tfe_lite.privacy.model import make_private
strategy = tf.distribute.MultiWorkerMirroredStrategy()
units, batch, results = 64, 8, {}
adaptive_options = {"learning_rate": 0.0, "expected_num_records": batch, "clipped_count_stddev": 4.0}
for name, adaptive in [("fixed", None), ("adaptive", adaptive_options)]:
    with strategy.scope():
        keras.utils.set_random_seed(2)
        inner = keras.Sequential([keras.Input((units,)), keras.layers.Dense(units, use_bias=False)])
        model = make_private(inner, l2_norm_clip=0.5, noise_multiplier=2.0, adaptive_clipping=adaptive)
        model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
        model.optimizer.build(model.trainable_variables)
    step = tf.function(lambda element: strategy.run(model.train_step, args=(element,)))
    x, y = np.zeros((batch, units), "float32"), np.ones((batch, units), "float32")
    data = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch))
    before = model.trainable_variables[0].numpy().copy()
    for _ in range(3):
        for element in data:
            step(element)
    update = before - model.trainable_variables[0].numpy()
    sum_noise = model._dp_config.sum_noise_multiplier
    results[name] = [float(update.std() / np.sqrt(3) / (sum_noise * 0.5 / batch)), float(update.sum()), update.size]
print("RESULT " + json.dumps({"replicas": strategy.num_replicas_in_sync, **results}))
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_multi_worker_mirrored_adds_noise_once():
    workers = [f"localhost:{_free_port()}" for _ in range(2)]
    root = pathlib.Path(__file__).resolve().parents[2]
    configs = [json.dumps({"cluster": {"worker": workers}, "task": {"index": i}}) for i in range(2)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, configs[i]],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=240) for p in processes]
    finally:
        for p in processes:
            p.kill()
    results = []
    for (out, err), p in zip(outputs, processes):
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert p.returncode == 0 and lines, err[-3000:]
        results.append(json.loads(lines[-1][len("RESULT ") :]))
    assert results[0]["replicas"] == 2
    for name in ("fixed", "adaptive"):
        ratio, checksum, size = results[0][name]
        assert results[1][name][1] == checksum  # both workers hold the same weights
        # Three steps of noise std sum_noise * 0.5 / 8 each; once per replica would give sqrt(2).
        assert abs(ratio - 1) < 5 / np.sqrt(2 * size), (name, ratio)
