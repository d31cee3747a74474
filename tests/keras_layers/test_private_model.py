"""PrivateModel through Keras's own predict/evaluate: results within the propagated bound, one trace per batch
shape (a smaller last batch padded by the client), callbacks and progress bar, metrics for the client, and
bad input refused by name before anything runs."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from layer_tools import CLIENT, OWNER, assert_close, float64_models, model_tol

from tfe_lite import keras_layers as kl
from tfe_lite.errors import ConfigError, EncodingError, ProtocolError, ShapeError

L = keras.layers


@pytest.fixture(scope="module")
def models(prot):
    keras.utils.set_random_seed(1)
    with float64_models():
        model = keras.Sequential([keras.Input((6, 6, 1)), L.Conv2D(2, 3, activation="relu"), L.MaxPooling2D(2),
                                  L.Flatten(), L.Dense(3)])
    rng = np.random.default_rng(2)
    for layer in model.layers[::3]:  # biases that keep the ReLUs and the logits apart
        layer.bias.assign(rng.uniform(-0.5, 0.5, layer.bias.shape))
    private = kl.secure(model, protocol=prot, model_owner=OWNER, client=CLIENT)
    x = rng.uniform(-1, 1, (10, 6, 6, 1))
    return model, private, x


def test_predict_matches_keras_with_one_trace_per_batch_shape(prot, models):
    model, private, x = models
    traces = private.forward_function.experimental_get_tracing_count()
    out = private.predict(x, batch_size=4, verbose=0)  # batches of 4, 4 and 2 (padded to 4 by the client)
    assert isinstance(out, np.ndarray) and out.shape == (10, 3) and out.dtype == np.float64
    (tol,), (expected,) = model_tol(prot, model, x)
    assert_close(out, expected, tol)
    assert private.forward_function.experimental_get_tracing_count() == traces + 1
    again = private.predict(x[:7], batch_size=4, verbose=0)
    assert private.forward_function.experimental_get_tracing_count() == traces + 1  # no new trace
    assert_close(again, expected[:7], tol[:7])


def test_predict_runs_keras_callbacks_and_progress_bar(models, capsys):
    _, private, x = models
    seen = []

    class Recorder(keras.callbacks.Callback):
        def on_predict_batch_end(self, batch, logs=None):
            seen.append((batch, logs["outputs"].shape))

        def on_predict_end(self, logs=None):
            seen.append("end")

    private.predict(x, batch_size=4, verbose=1, callbacks=[Recorder()])
    assert seen == [(0, (4, 3)), (1, (4, 3)), (2, (2, 3)), "end"]
    assert "3/3" in capsys.readouterr().out


def test_evaluate_gives_the_client_kerass_metrics(prot, models):
    model, private, x = models
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for m in (model, private):
        m.compile(loss=loss, metrics=["accuracy"])
    (tol,), (logits,) = model_tol(prot, model, x)
    ordered = np.sort(logits, axis=1)
    assert np.all(ordered[:, -1] - ordered[:, -2] > 2 * tol.max()), "a margin within the bound: accuracy may differ"
    private_logs = private.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    plain_logs = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    assert private_logs["accuracy"] == plain_logs["accuracy"]
    # |d CE / d logits| sums to at most 2 per example: the loss moves by at most 2 max(e)
    assert abs(private_logs["loss"] - plain_logs["loss"]) <= 2 * tol.max()


def test_calling_the_model_runs_the_private_forward(prot, models):
    model, private, x = models
    (tol,), (expected,) = model_tol(prot, model, x[:4])
    assert_close(private(x[:4]).numpy(), expected, tol)


def test_data_sets_are_batched_by_keras_and_checked_in_the_graph(models):
    model, private, x = models
    data = tf.data.Dataset.from_tensor_slices(x).batch(5)
    np.testing.assert_allclose(private.predict(data, verbose=0), private.predict(x, batch_size=5, verbose=0), atol=1e-3)
    bad = x.copy()
    bad[7, 1, 2, 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        private.predict(tf.data.Dataset.from_tensor_slices(bad).batch(5), verbose=0)


@pytest.mark.parametrize("make, error, message", [
    (lambda x: x[..., 0], ShapeError, r"invalid shape for `x`, expected \(n, 6, 6, 1\). Received: x.shape=\(10, 6, 6\)"),
    (lambda x: np.zeros((3, 5, 6, 1)), ShapeError, r"x.shape=\(3, 5, 6, 1\)"),
    (lambda x: x.astype(str), ConfigError, "invalid dtype for `x`, expected real numbers"),
    (lambda x: x.astype(np.complex64), ConfigError, "x.dtype=complex64"),
    (lambda x: np.where(np.arange(360).reshape(10, 6, 6, 1) == 41, np.nan, x), EncodingError,
     r"`x`: x\[1, 0, 5, 0\] = nan \(1 NaN or infinite values in all\)"),
    (lambda x: np.full_like(x, -np.inf), EncodingError, r"x\[0, 0, 0, 0\] = -inf \(360 NaN"),
    (lambda x: x * 5000, EncodingError, r"is outside the fixed-point range \(-4096, 4096\)"),
    (lambda x: x[:0], ShapeError, "empty `x`"),
    (lambda x: None, ConfigError, "x=None"),
    (lambda x: [x, x], ShapeError, "Received 2 inputs in `x`; the model takes 1"),
])
def test_bad_inputs_are_refused_before_anything_runs(prot, models, make, error, message):
    _, private, x = models
    with prot.count_communication() as log:
        with pytest.raises(error, match=message):
            private.predict(make(x), verbose=0)
    assert log.total_bytes() == 0


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, "8", True])
def test_bad_batch_sizes_are_named(models, batch_size):
    _, private, x = models
    with pytest.raises(ConfigError, match=f"batch_size={batch_size!r}"):
        private.predict(x, batch_size=batch_size)


def test_training_needs_an_optimizer_at_compile(models):
    _, private, x = models
    private.compile(loss="mse")  # for evaluate only
    with pytest.raises(ProtocolError, match=r"compile\(optimizer=..., loss=...\)"):
        private.fit(x, np.zeros((10, 3)), verbose=0)


def test_float32_models_return_float32_like_keras(prot):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, activation="relu"), L.Dense(2)])
    private = kl.secure(model, protocol=prot, model_owner=OWNER, client=CLIENT)
    x = np.random.default_rng(4).normal(size=(5, 4)).astype(np.float32)
    out = private.predict(x, verbose=0)
    assert out.dtype == np.float32
    # float32: Keras's own rounding (~1e-7 relative) sits far below the fixed-point bound of 1e-3
    np.testing.assert_allclose(out, model.predict(x, verbose=0), atol=1e-3)
