"""FedAvg against Keras's own training: SGD, weighted averaging, FedAdam, FedProx, replicas, bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfe_lite.errors import ConfigError, ShapeError
from tfe_lite.federated import ClientDP, FedAvg, SimulationConfig
from tfe_lite.federated.data import resolve_client_data
from tfe_lite.privacy import AdaptiveClipping

from fedtools import LOSS, keras_update, toy_data, toy_model, weights

SIZES = {"alice": 20, "bob": 36, "carol": 9}


def _data(sizes=SIZES):
    return {name: toy_data(n, seed) for seed, (name, n) in enumerate(sizes.items())}


def _fedavg(config, model_fn=toy_model, lr=0.1, momentum=0.0, **kwargs):
    return FedAvg(model_fn, config=config, loss=LOSS, client_optimizer=keras.optimizers.SGD(lr, momentum=momentum), seed=0, **kwargs)


def test_one_client_one_local_step_equals_sgd(config):
    model_fn = lambda: toy_model(kernel_regularizer="l2")  # noqa: E731 - the regularization loss counts too
    x, y = toy_data(8, 0)
    fed = _fedavg(config, model_fn)
    start = weights(fed.model)
    fed.fit({"alice": (x, y)}, rounds=1, batch_size=8, verbose=0)
    reference = model_fn()
    reference.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    reference.set_weights([w.astype(np.float32) for w in start])
    reference.train_on_batch(x, y)
    for got, want in zip(weights(fed.model), weights(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_updates_are_weighted_by_example_counts(config):
    data = _data()
    fed = _fedavg(config, momentum=0.9)
    start = weights(fed.model)
    history = fed.fit(data, rounds=1, local_epochs=2, batch_size=8, shuffle=False, verbose=0)
    updates = {n: keras_update(toy_model, start, *d, learning_rate=0.1, momentum=0.9, epochs=2, batch_size=8)
               for n, d in data.items()}
    total = sum(SIZES.values())
    for i, got in enumerate(weights(fed.model)):
        want = start[i] + sum(SIZES[n] * updates[n][i] for n in SIZES) / total
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert history.history["clients"] == [3]


def test_fedadam_applies_keras_adam_to_the_averaged_update(config):
    data = _data({"alice": 16, "bob": 24})
    fed = _fedavg(config, server_optimizer=keras.optimizers.Adam(0.05))
    reference = toy_model()
    reference.set_weights(fed.model.get_weights())
    adam = keras.optimizers.Adam(0.05)
    fed.fit(data, rounds=2, batch_size=8, shuffle=False, verbose=0)
    for _ in range(2):
        start = weights(reference)
        updates = [keras_update(toy_model, start, *d, learning_rate=0.1, epochs=1, batch_size=8) for d in data.values()]
        mean = [(16 * a + 24 * b) / 40 for a, b in zip(*updates)]
        adam.apply_gradients([(tf.constant(-m, tf.float32), v) for m, v in zip(mean, reference.trainable_variables)])
    for got, want in zip(weights(fed.model), weights(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_fedprox_adds_the_proximal_gradient(config):
    mu, lr = 0.5, 0.2
    x, y = toy_data(24, 3)
    fed = _fedavg(config, lr=lr, proximal_mu=mu)
    reference = toy_model()
    reference.set_weights(fed.model.get_weights())
    fed.fit({"alice": (x, y)}, rounds=1, batch_size=8, shuffle=False, verbose=0)
    start = [tf.identity(v) for v in reference.trainable_variables]
    for b in range(3):
        with tf.GradientTape() as tape:
            loss = LOSS(y[8 * b:8 * b + 8], reference(x[8 * b:8 * b + 8]))
            loss += mu / 2 * tf.add_n([tf.reduce_sum((v - s) ** 2) for v, s in zip(reference.trainable_variables, start)])
        for v, g in zip(reference.trainable_variables, tape.gradient(loss, reference.trainable_variables)):
            v.assign_sub(lr * g)
    for got, want in zip(weights(fed.model), weights(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _run(config, data, parallel, **fit):
    fed = _fedavg(config, momentum=0.5, parallel_clients=parallel)
    history = fed.fit(data, rounds=2, local_epochs=2, batch_size=4, verbose=0, **fit)
    return weights(fed.model), history.history["loss"]


def test_parallel_clients_on_replicas_equal_sequential(config):
    data = _data()
    (par, par_loss), (seq, seq_loss) = _run(config, data, True), _run(config, data, False)
    for a, b in zip(par, seq):
        np.testing.assert_array_equal(a, b)
    assert par_loss == seq_loss


def test_more_clients_than_replicas_run_in_waves(config):
    sim = SimulationConfig([f"client{i}" for i in range(6)], replicas=2)
    data = {f"client{i}": toy_data(5 + 3 * i, i) for i in range(6)}
    fed = _fedavg(sim)
    clients = resolve_client_data(data, sim)
    runner = fed._runner(clients, 4, True)
    assert len(runner.devices) == 2
    assert [len(w) for w in runner.waves(clients)] == [2, 2, 2]
    (par, par_loss), (seq, seq_loss) = _run(sim, data, True, clients_per_round=5), _run(sim, data, False, clients_per_round=5)
    for a, b in zip(par, seq):
        np.testing.assert_array_equal(a, b)
    assert par_loss == seq_loss


def test_history_progress_callbacks_and_sampling(config, capsys):
    class StopAfterTwo(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = epoch == 1

    fed = _fedavg(config, metrics=["accuracy"])
    history = fed.fit(_data(), rounds=4, batch_size=8, clients_per_round=2, validation_data=toy_data(30, 9),
                      callbacks=[StopAfterTwo()], verbose=2)
    out = capsys.readouterr().out
    assert "Round 1/4" in out and "Round 2/4" in out and "Round 3/4" not in out and "val_accuracy" in out
    assert set(history.history) == {"loss", "clients", "val_loss", "val_accuracy"}
    assert history.history["clients"] == [2, 2] and history.epoch == [0, 1]
    assert fed.model.history is history


@pytest.mark.parametrize("case, error, message", [
    ("unknown", ConfigError, "Unknown client 'mallory'"),
    ("empty", ConfigError, "'bob' is empty"),
    ("shapes", ShapeError, "do not fit the model"),
    ("clients_per_round", ConfigError, "clients_per_round"),
    ("rounds", ConfigError, "rounds"),
    ("aggregator", ConfigError, "'server0' cannot be a client"),
    ("adaptive", ConfigError, "clipped_count_stddev"),
])
def test_bad_fit_input_fails_before_the_first_round(config, case, error, message):
    x, y = toy_data(10, 0)
    data, kwargs, dp = {"alice": (x, y), "bob": toy_data(10, 1)}, {}, None
    if case == "unknown":
        data["mallory"] = (x, y)
    elif case == "empty":
        data["bob"] = (x[:0], y[:0])
    elif case == "shapes":
        data["bob"] = (x[:, :4], y)
        data["alice"] = (x[:, :4], y)
    elif case == "clients_per_round":
        kwargs["clients_per_round"] = 3
    elif case == "rounds":
        kwargs["rounds"] = 0
    elif case == "aggregator":
        data["server0"] = (x, y)
    elif case == "adaptive":
        dp = ClientDP(1.0, 1.0, adaptive_clipping=AdaptiveClipping())  # default count std 2/20: too little noise
    fed = _fedavg(config, dp=dp)
    before = weights(fed.model)
    with pytest.raises(error, match=message):
        fed.fit(data, verbose=0, **kwargs)
    for a, b in zip(before, weights(fed.model)):
        np.testing.assert_array_equal(a, b)


def test_bad_constructor_arguments_are_listed(config):
    with pytest.raises(ConfigError) as error:
        FedAvg(toy_model, config=config, loss=LOSS, client_optimizer="adam", proximal_mu=-1.0, aggregator="nobody")
    message = str(error.value)
    assert "client_optimizer" in message and "proximal_mu" in message and "aggregator" in message
    with pytest.raises(ConfigError, match="clipnorm=1.0"):
        FedAvg(toy_model, config=config, loss=LOSS, client_optimizer=keras.optimizers.SGD(0.1, clipnorm=1.0))
    with pytest.raises(ConfigError) as error:
        ClientDP(l2_norm_clip=0.0, noise_multiplier=-1.0, delta=1.5)
    assert all(name in str(error.value) for name in ("l2_norm_clip", "noise_multiplier", "delta"))


def test_models_with_batch_statistics_are_refused(config):
    def model_fn():
        return keras.Sequential([keras.Input((5,)), keras.layers.BatchNormalization(), keras.layers.Dense(3)])

    with pytest.raises(ConfigError, match="moving_mean"):
        _fedavg(config, model_fn).fit(_data(), verbose=0)


def test_loss_and_metrics_come_from_a_compiled_model(config):
    def model_fn():
        model = toy_model()
        model.compile(loss=LOSS, metrics=["accuracy"])
        return model

    fed = FedAvg(model_fn, config=config, client_optimizer=keras.optimizers.SGD(0.1), seed=0)
    history = fed.fit(_data({"alice": 16, "bob": 16}), rounds=1, batch_size=8, validation_data=toy_data(20, 5), verbose=0)
    assert {"val_loss", "val_accuracy"} <= set(history.history)
    with pytest.raises(ConfigError, match="No loss"):
        FedAvg(toy_model, config=config)


def test_simulation_config_checks_its_arguments():
    with pytest.raises(ConfigError, match="replicas"):
        SimulationConfig(["a"], replicas=0)
    with pytest.raises(ConfigError, match="distinct from"):
        SimulationConfig(["server0", "a"])
