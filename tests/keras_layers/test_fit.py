"""Private training through Keras's ``fit``: against the plaintext twin trained identically, several data
owners, what is revealed to whom, per-server checkpoints and resuming, ``reveal_model``, and bad input.

Tolerances: each private step's gradients are within a few ``u = 2**-16`` per element of the exact ones
(test_backward.py), and an SGD step moves a weight by ``lr`` times its gradient, so after ``s`` steps the
weights differ from the float twin's by about ``s * lr * (fan-in) * u`` plus the growth of earlier
differences (measured here: about ``1e-4`` after 8 steps). One more effect is not small: a ReLU whose input
is within the fixed-point error of 0 (``|z| < ~1e-4``; it happens every few steps) may take the other side
in the private run, and that sample's contribution to its unit's weight gradients, ``lr |dz| |x| / batch``
(at most ``0.2 * 1 * 1 / 25``), goes the other way. Hence ``WEIGHT_TOL = 1e-2``, and the logged means
(over a batch, so one flipped prediction moves an accuracy by ``1 / 50``) within ``2e-2``.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import tfe_lite.keras_layers as kl
from tfe_lite.errors import ConfigError, PlayerError, ProtocolError, ShapeError, UnsupportedLayerError
from tfe_lite.keras_layers import ShareCheckpoint
from tfe_lite.keras_layers.optimizers import UnsupportedOptimizerError

from layer_tools import CLIENT, OWNER

L = keras.layers
WEIGHT_TOL = 1e-2


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.target))[:400]
    return (data.data[order] / 16.0).astype(np.float32), data.target[order]


def _net(seed=0, final="softmax", classes=10):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((64,)), L.Dense(16, activation="relu"), L.Dense(classes, activation=final)])


def _twins(prot, seed=0, **compile_args):
    model = _net(seed)
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    private = kl.secure(model, protocol=prot, model_owner=OWNER, client=CLIENT)
    private_only = {k: compile_args.pop(k) for k in ("reveal_to",) if k in compile_args}
    args = dict(loss="sparse_categorical_crossentropy", metrics=["accuracy"]) | compile_args
    private.compile(optimizer=keras.optimizers.SGD(0.2, momentum=0.5), **args, **private_only)
    twin.compile(optimizer=keras.optimizers.SGD(0.2, momentum=0.5), **args)
    return private, twin


def _assert_same_weights(revealed, twin, tol=WEIGHT_TOL):
    for a, b in zip(revealed.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(a, b, atol=tol)


@pytest.fixture(scope="module")
def trained(prot, digits, tmp_path_factory):
    """One private fit (traced once: traces are slow) that the tests below inspect: 2 epochs with validation,
    stopped by EarlyStopping, with per-epoch share checkpoints; and its plaintext twin."""
    x, y = digits
    private, twin = _twins(prot)
    directory = tmp_path_factory.mktemp("shares")
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=0, min_delta=10.0)  # no epoch improves by 10
    halve = keras.callbacks.LearningRateScheduler(lambda epoch, rate: 0.2 if epoch == 0 else 0.05)
    with prot.count_communication() as log:
        history = private.fit(x[:200], y[:200], batch_size=50, epochs=5, shuffle=False, verbose=0,
                              validation_data=(x[200:300], y[200:300]),
                              callbacks=[stop, halve, ShareCheckpoint(str(directory / "epoch{epoch}"))])
    twin_history = twin.fit(x[:200], y[:200], batch_size=50, epochs=2, shuffle=False, verbose=0,
                            validation_data=(x[200:300], y[200:300]), callbacks=[halve])
    return private, twin, history, twin_history, log, directory


def test_fit_ends_within_tolerance_of_the_plaintext_twin_and_kerass_callbacks_steer_it(trained):
    private, twin, history, twin_history, *_ = trained
    assert len(history.history["loss"]) == 2  # stopped by EarlyStopping after the second epoch
    np.testing.assert_allclose(history.history["learning_rate"], [0.2, 0.05])  # LearningRateScheduler's rates
    _assert_same_weights(private.reveal_model(to=OWNER), twin)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(history.history[key], twin_history.history[key], atol=2e-2, err_msg=key)


def test_fit_reveals_only_the_loss_and_metrics_to_the_model_owner(trained):
    *_, log, _ = trained
    transfers = log.transfers
    reveals = [t for t in transfers if t.what == "reveal"]
    # two scalars (loss, accuracy) per step, one 8-byte share from each server, 8 steps
    to_owner = [t for t in reveals if t.dst == OWNER]
    assert sum(t.nbytes for t in to_owner) == 2 * 2 * 8 * 8 and sum(t.count for t in to_owner) == 2 * 2 * 8
    # the only other reveal: the validation outputs to the client (100 rows x 10 classes, 2 epochs)
    to_client = [t for t in reveals if t.dst == CLIENT]
    assert sum(t.nbytes for t in to_client) == 2 * 2 * 100 * 10 * 8
    assert {t.dst for t in reveals} == {OWNER, CLIENT}
    # the model owner sends nothing during fit (its weights were shared by secure()); the client only
    # masks its rows and labels, to the servers
    assert not [t for t in transfers if t.src == OWNER]
    assert {t.dst for t in transfers if t.src == CLIENT} == {"server0", "server1"}


def test_the_training_step_runs_nothing_on_the_client_and_only_decoding_on_the_model_owner(prot, trained):
    private = trained[0]
    graph = private._last_step_graph
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    client = prot.config.get_player(CLIENT).device
    on_client = [f"{n.name} ({n.op})" for n in nodes if n.device == client]
    assert not on_client, f"ops of the training step on the client's device: {on_client[:5]}"
    owner = prot.config.get_player(OWNER).device
    # the model owner only adds the two shares of each revealed scalar and decodes it (and counts the bytes in
    # its traffic counters, captured as placeholders)
    assert {n.op for n in nodes if n.device == owner} <= {"Identity", "AddV2", "Cast", "RealDiv", "Mul", "Const",
                                                         "Pack", "AssignAddVariableOp", "Placeholder"}


def test_checkpoints_hold_one_servers_shares_each_and_resume_to_the_same_weights(prot, digits, trained):
    x, y = digits
    private, *_, directory = trained
    first = directory / "epoch1"
    assert json.loads((first / "state.json").read_text())["epoch"] == 1
    # each file holds one server's shares: server0's alone decodes to noise, the two together to the weights
    last = directory / "epoch2"
    reader0 = tf.train.load_checkpoint(str(last / "server0"))
    reader1 = tf.train.load_checkpoint(str(last / "server1"))
    key = "layer0_kernel/.ATTRIBUTES/VARIABLE_VALUE"
    share0, share1 = reader0.get_tensor(key), reader1.get_tensor(key)
    np.testing.assert_array_equal(share0, private.private_layers[0]._shares["kernel"][0].numpy())
    decoded = (share0 + share1).astype(np.float64) / 2**16
    np.testing.assert_allclose(decoded, private.reveal_model(to=OWNER).layers[0].kernel.numpy(), atol=2**-15)
    assert np.abs(share0.astype(np.float64) / 2**16).mean() > 1e9  # one share alone: uniform over the ring
    # resume from epoch 1 in a fresh private model of the same architecture (other initial weights)
    resumed, _ = _twins(prot, seed=9)
    assert resumed.load_shares(str(first)) == 1
    halve = keras.callbacks.LearningRateScheduler(lambda epoch, rate: 0.2 if epoch == 0 else 0.05)  # as the first run
    resumed.fit(x[:200], y[:200], batch_size=50, epochs=2, initial_epoch=1, shuffle=False, verbose=0, callbacks=[halve])
    _assert_same_weights(resumed.reveal_model(to=OWNER), private.reveal_model(to=OWNER))
    with pytest.raises(ProtocolError, match="both shares"):
        resumed.save_weights(str(directory / "w.weights.h5"))
    with pytest.raises(ProtocolError, match="both shares"):
        resumed.save(str(directory / "m.keras"))


def test_a_later_fit_on_other_rows_reuses_the_trace_and_trains_on_those_rows(digits, trained):
    # After the tests above that read the fixture's final state: this one trains its model further.
    x, y = digits
    private, twin, *_ = trained
    step = private._step_function
    traces = step.experimental_get_tracing_count()
    assert traces == 1
    # 75 rows the first fit never saw (a padded last batch); the step reads this fit's rows, not the first's
    private.fit(x[300:375], y[300:375], batch_size=50, epochs=1, shuffle=False, verbose=0)
    twin.fit(x[300:375], y[300:375], batch_size=50, epochs=1, shuffle=False, verbose=0)
    assert private._step_function is step and step.experimental_get_tracing_count() == traces
    _assert_same_weights(private.reveal_model(to=OWNER), twin)


def test_several_data_owners_train_on_mixed_batches_and_reveal_to_none_reveals_nothing(prot, digits):
    x, y = digits
    private, twin = _twins(prot, seed=1, reveal_to=None)
    owners = {"client": (x[:60], y[:60]), "eve": (x[60:100], y[60:100])}
    with prot.count_communication() as log:
        history = private.fit(owners, batch_size=25, epochs=1, shuffle=False, verbose=0)
    twin.fit(x[:100], y[:100], batch_size=25, epochs=1, shuffle=False, verbose=0)
    _assert_same_weights(private.reveal_model(to=OWNER), twin)
    assert history.history == {}
    assert not [t for t in log.transfers if t.what == "reveal"]
    for owner, rows in (("client", 60), ("eve", 40)):
        sent = [t for t in log.transfers if t.src == owner]
        assert {t.dst for t in sent} == {"server0", "server1"}
        # each owner masks its rows (64 features) and one-hot labels (10): seeds to server0, the rest to server1
        assert sum(t.nbytes for t in sent if t.dst == "server1") == rows * (64 + 10) * 8
    with pytest.raises(ConfigError, match="validation_data` with reveal_to=None"):
        private.fit(x[:100], y[:100], validation_data=(x[:10], y[:10]), verbose=0)


@pytest.mark.parametrize("loss, final, metric", [
    ("binary_crossentropy", "sigmoid", "accuracy"),
    (keras.losses.BinaryCrossentropy(from_logits=True), "linear", "binary_accuracy"),
    ("mse", "linear", "mse"),
])
def test_binary_and_regression_losses_match_keras(prot, loss, final, metric):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = (x[:, :1] + 0.5 * x[:, 1:2] > 0).astype(np.float32)
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((5,)), L.Dense(4, activation="relu"), L.Dense(1, activation=final)])
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    private = kl.secure(model, protocol=prot, model_owner=OWNER, client=CLIENT)
    for m in (private, twin):
        m.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss, metrics=[metric])
    # validation_split: the last quarter of the client's rows, as Keras splits them
    h = private.fit(x, y, batch_size=15, epochs=1, shuffle=False, verbose=0, validation_split=0.25).history
    h2 = twin.fit(x, y, batch_size=15, epochs=1, shuffle=False, verbose=0, validation_split=0.25).history
    _assert_same_weights(private.reveal_model(to=OWNER), twin)
    assert set(h) == set(h2) and any(key.startswith("val_") for key in h)
    for key in h2:
        np.testing.assert_allclose(h[key], h2[key], atol=2e-2, err_msg=f"{loss} {key}")


# ------------------------------------------------------------------------------------------ bad input
def _private(prot, layers, inputs=(64,)):
    keras.utils.set_random_seed(0)
    return kl.secure(keras.Sequential([keras.Input(inputs), *layers]), protocol=prot, model_owner=OWNER, client=CLIENT,
                     optimize=False)


def test_layers_that_cannot_train_are_all_named_at_compile(prot):
    private = _private(prot, [L.Dense(8), L.BatchNormalization(name="bn1"), L.Dense(4), L.BatchNormalization(name="bn2"),
                              L.Dense(3, activation="softmax")])
    with pytest.raises(UnsupportedLayerError, match=r"2 problem\(s\)") as error:
        private.compile(optimizer="sgd", loss="categorical_crossentropy")
    assert "'bn1'" in str(error.value) and "'bn2'" in str(error.value) and "batch statistics" in str(error.value)


@pytest.mark.parametrize("compile_args, error, message", [
    (dict(loss="mae"), ConfigError, r"'mae' has no private version"),
    (dict(loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1)), ConfigError, "label_smoothing=0.1"),
    (dict(loss="categorical_crossentropy", metrics=["auc"]), ConfigError, "'auc' has no private version"),
    (dict(loss=keras.losses.CategoricalCrossentropy(from_logits=True)), UnsupportedLayerError, "from_logits=True, but the model ends in a 'softmax'"),
    (dict(loss="binary_crossentropy"), UnsupportedLayerError, "needs the model to end in a sigmoid"),
    (dict(loss="categorical_crossentropy", optimizer=keras.optimizers.RMSprop()), UnsupportedOptimizerError, "RMSprop has no private version"),
    (dict(loss="categorical_crossentropy", optimizer=keras.optimizers.SGD(5000.0)), ConfigError, "overflows the fixed-point range"),
    (dict(loss="categorical_crossentropy", reveal_to="mallory"), PlayerError, "mallory"),
])
def test_losses_metrics_and_optimizers_without_a_private_version_are_refused_at_compile(prot, compile_args, error, message):
    private = _private(prot, [L.Dense(3, activation="softmax")])
    compile_args = {"optimizer": keras.optimizers.SGD(0.1)} | compile_args
    with pytest.raises(error, match=message):
        private.compile(**compile_args)


@pytest.mark.parametrize("x, y, error, message", [
    (np.zeros((10, 64)), np.full(10, 3), ShapeError, r"class label in `y`: y\[0\] = 3, expected 0 to 2"),
    (np.zeros((10, 64)), np.zeros((10, 2)), ShapeError, "integer class indices of shape"),
    (np.zeros((10, 64)), np.zeros(9), ShapeError, "10 rows but 9 labels"),
    (np.zeros((10, 63)), np.zeros(10), ShapeError, r"expected \(n, 64\)"),
    (np.full((10, 64), np.nan), np.zeros(10), Exception, "NaN"),
    (np.full((10, 64), 1e5), np.zeros(10), Exception, "outside the fixed-point range"),
    ({"server0": (np.zeros((2, 64)), np.zeros(2))}, None, PlayerError, "protocol player as a data owner"),
    ({"mallory": (np.zeros((2, 64)), np.zeros(2))}, None, PlayerError, "unknown data owner"),
    (tf.data.Dataset.from_tensor_slices(np.zeros((4, 64))), None, ConfigError, "takes arrays"),
])
def test_bad_training_data_is_refused_before_anything_is_shared(prot, x, y, error, message):
    private = _private(prot, [L.Dense(3, activation="softmax")])
    private.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    with prot.count_communication() as log:
        with pytest.raises(error, match=message):
            private.fit(x, y, verbose=0)
    assert log.total_bytes() == 0


@pytest.mark.slow
def test_a_functional_cnn_with_a_branch_trains_like_its_twin(prot):
    """Conv2D, max pooling (its ReLU moved after it by secure()), a residual Add (a tensor read by two layers:
    its gradients add up), average pooling, Dropout, Dense: through fit, against the float twin."""
    data = load_digits()
    x, y = (data.images[:100] / 16.0).astype(np.float32)[..., None], data.target[:100]
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    pooled = L.MaxPooling2D(2)(L.Conv2D(6, 3, padding="same", activation="relu")(inputs))
    merged = L.ReLU()(L.Add()([pooled, L.Conv2D(6, 3, padding="same")(pooled)]))
    features = L.Dropout(0.0)(L.Flatten()(L.AveragePooling2D(2)(merged)))
    model = keras.Model(inputs, L.Dense(10, activation="softmax")(features))
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    private = kl.secure(model, protocol=prot, model_owner=OWNER, client=CLIENT)
    for m in (private, twin):
        m.compile(optimizer=keras.optimizers.SGD(0.2), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    h = private.fit(x, y, batch_size=50, epochs=1, shuffle=False, verbose=0).history
    h2 = twin.fit(x, y, batch_size=50, epochs=1, shuffle=False, verbose=0).history
    _assert_same_weights(private.reveal_model(to=OWNER), twin)
    np.testing.assert_allclose(h["loss"], h2["loss"], atol=2e-2)
