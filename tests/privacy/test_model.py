"""DPModel: DP-SGD steps against a float64 oracle, noise statistics, Keras integration, bad arguments."""

import dp_accounting
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfe_lite.errors import ConfigError, UnsupportedLayerError
from tfe_lite.privacy.accounting import compute_epsilon
from tfe_lite.privacy.model import AdaptiveClipping, DPModel, make_private

METHODS = ["vectorized", "ghost"]


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(3)]
    )


def _mse_model(model, **kwargs):
    private = make_private(model, **kwargs)
    private.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    return private


def _weights(model):
    return [v.numpy().astype(np.float64) for v in model.trainable_variables]


def _per_example_grads(model, x, y, records=None):
    """Flattened gradient of each record's mean MSE, one record at a time, in float64."""
    batch = len(x)
    records = batch if records is None else records
    size = batch // records
    out = []
    for r in range(records):
        xr, yr = x[r * size : (r + 1) * size], y[r * size : (r + 1) * size]
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.MeanSquaredError(reduction="none")(yr, model(xr)))
        grads = tape.gradient(loss, model.trainable_variables)
        out.append(np.concatenate([np.ravel(g.numpy()) for g in grads]).astype(np.float64))
    return np.array(out)


def _clipped_mean(grads, clip):
    norms = np.linalg.norm(grads, axis=1)
    return (grads * np.minimum(1.0, clip / np.maximum(norms, 1e-300))[:, None]).sum(0) / len(grads)


def _update(before, after):
    return np.concatenate([np.ravel(b - a) for b, a in zip(before, after)])


# ------------------------------------------------------------------------------------------------------------
# The step itself


@pytest.mark.parametrize("method", METHODS)
def test_clipping_bounds_an_outlier(method):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype("float32")
    y = rng.normal(size=(8, 3)).astype("float32")
    x[3] *= 1e3  # one example with a huge gradient
    y[3] = 1e4
    model = _mse_model(_mlp(), l2_norm_clip=0.5, noise_multiplier=0.0, clipping=method)
    grads = _per_example_grads(model.inner, x, y)
    assert np.linalg.norm(grads[3]) > 1e3  # clipping matters
    before = _weights(model)
    model.train_on_batch(x, y)
    update = _update(before, _weights(model))  # SGD(1.0): the update is the DP gradient
    np.testing.assert_allclose(update, _clipped_mean(grads, 0.5), rtol=1e-5, atol=1e-7)
    assert np.linalg.norm(update) <= 0.5 * (1 + 1e-6)
    # The outlier moves the update by at most 2 * clip / batch compared with dropping its gradient.
    without = _clipped_mean(np.delete(grads, 3, axis=0), 0.5) * 7 / 8
    assert np.linalg.norm(update - without) <= 0.5 / 8 * (1 + 1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_microbatches_clip_each_microbatch_mean(method):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 4)).astype("float32")
    y = (5 * rng.normal(size=(8, 3))).astype("float32")
    model = _mse_model(_mlp(), l2_norm_clip=0.3, noise_multiplier=0.0, num_microbatches=4, clipping=method)
    grads = _per_example_grads(model.inner, x, y, records=4)
    before = _weights(model)
    model.train_on_batch(x, y)
    np.testing.assert_allclose(
        _update(before, _weights(model)), _clipped_mean(grads, 0.3), rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("method", METHODS)
def test_sample_weights_weight_each_example_before_clipping(method):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 4)).astype("float32")
    y = rng.normal(size=(6, 3)).astype("float32")
    weights = np.array([1.0, 0.0, 3.0, 0.5, 1.0, 2.0], "float32")
    model = _mse_model(_mlp(), l2_norm_clip=0.2, noise_multiplier=0.0, clipping=method)
    grads = _per_example_grads(model.inner, x, y) * weights[:, None]
    before = _weights(model)
    model.train_on_batch(x, y, sample_weight=weights)
    np.testing.assert_allclose(
        _update(before, _weights(model)), _clipped_mean(grads, 0.2), rtol=1e-5, atol=1e-7
    )


def _zero_gradient_model(units=64):
    """Zero inputs and no bias: every gradient is exactly zero, so an update is pure noise."""
    return keras.Sequential([keras.Input((units,)), keras.layers.Dense(units, use_bias=False)])


def _noise_sample(model, steps, batch, units=64):
    x = np.zeros((batch, units), "float32")
    y = np.ones((batch, units), "float32")
    samples = []
    for _ in range(steps):
        before = _weights(model)
        model.train_on_batch(x, y)
        samples.append(_update(before, _weights(model)))
    return np.concatenate(samples)


def _assert_std(sample, expected_std):
    """Sample std and mean within 5 standard errors of a Gaussian's (std error of std: std / sqrt(2n))."""
    n = sample.size
    assert abs(sample.std() / expected_std - 1) < 5 / np.sqrt(2 * n), sample.std() / expected_std
    assert abs(sample.mean()) < 5 * expected_std / np.sqrt(n)


@pytest.mark.parametrize("method", METHODS)
def test_noise_std_is_multiplier_times_clip_over_batch(method):
    model = _mse_model(
        _zero_gradient_model(), l2_norm_clip=0.5, noise_multiplier=2.0, clipping=method, seed=3
    )
    sample = _noise_sample(model, steps=3, batch=8)  # 3 x 4096 noise values
    _assert_std(sample, 2.0 * 0.5 / 8)


def test_secure_noise_std():
    model = _mse_model(_zero_gradient_model(), l2_norm_clip=0.5, noise_multiplier=2.0, secure_noise=True)
    _assert_std(_noise_sample(model, steps=3, batch=8), 2.0 * 0.5 / 8)


@pytest.mark.parametrize("method", METHODS)
def test_expected_batch_size_divides_the_noise_and_empty_batches_work(method):
    model = _mse_model(
        _zero_gradient_model(16),
        l2_norm_clip=1.0,
        noise_multiplier=1.0,
        expected_batch_size=4,
        clipping=method,
        seed=4,
    )
    sizes = [5, 0, 3, 0, 4]

    def batches():
        for size in sizes:
            yield np.ones((size, 16), "float32"), np.ones((size, 16), "float32")

    signature = (tf.TensorSpec([None, 16], tf.float32), tf.TensorSpec([None, 16], tf.float32))
    data = tf.data.Dataset.from_generator(batches, output_signature=signature)
    data = data.apply(tf.data.experimental.assert_cardinality(len(sizes)))
    before = _weights(model)
    history = model.fit(data, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])
    update = _update(before, _weights(model))
    # Zero inputs: five pure-noise steps of std 1 / 4 each.
    assert np.all(np.isfinite(update))
    assert abs(update.std() / (np.sqrt(5) / 4) - 1) < 5 / np.sqrt(2 * update.size)


def test_multi_output_losses_are_weighted_per_example():
    keras.utils.set_random_seed(10)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(5, activation="tanh")(inputs)
    inner = keras.Model(inputs, {"a": keras.layers.Dense(2)(h), "b": keras.layers.Dense(3)(h)})
    model = make_private(inner, l2_norm_clip=0.3, noise_multiplier=0.0)
    crossentropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(
        optimizer=keras.optimizers.SGD(1.0),
        loss={"a": "mse", "b": crossentropy},
        loss_weights={"a": 0.5, "b": 2.0},
    )
    rng = np.random.default_rng(11)
    x = rng.normal(size=(6, 4)).astype("float32")
    y = {"a": rng.normal(size=(6, 2)).astype("float32"), "b": rng.integers(0, 3, 6)}
    rows = []
    for i in range(6):
        with tf.GradientTape() as tape:
            out = inner(x[i : i + 1])
            loss = 0.5 * tf.reduce_mean(tf.square(out["a"] - y["a"][i : i + 1])) + 2.0 * tf.reduce_mean(
                crossentropy(y["b"][i : i + 1], out["b"])
            )
        rows.append(np.concatenate([np.ravel(g) for g in tape.gradient(loss, inner.trainable_variables)]))
    before = _weights(model)
    logs = model.train_on_batch(x, y, return_dict=True)
    expected = _clipped_mean(np.array(rows, np.float64), 0.3)
    np.testing.assert_allclose(_update(before, _weights(model)), expected, rtol=1e-5, atol=1e-7)
    assert logs["loss"] == pytest.approx(0.5 * logs["a_loss"] + 2.0 * logs["b_loss"], rel=1e-5)


def test_regularizer_gradient_is_added_unclipped_and_unnoised():
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(2, use_bias=False, kernel_regularizer=keras.regularizers.L2(0.5)),
        ]
    )
    private = _mse_model(model, l2_norm_clip=1e-6, noise_multiplier=0.0)
    before = _weights(private)
    private.train_on_batch(np.zeros((4, 3), "float32"), np.ones((4, 2), "float32"))
    # Data gradients are zero; L2(0.5) adds 0.5 * 2 * w.
    np.testing.assert_allclose(_update(before, _weights(private)), np.ravel(before[0]), rtol=1e-6)


def test_adaptive_clipping_moves_the_clip():
    rng = np.random.default_rng(6)
    x = (1e-3 * rng.normal(size=(64, 4))).astype("float32")  # tiny gradients: the median norm is far below 1
    y = np.zeros((64, 3), "float32")
    model = make_private(
        _mlp(),
        l2_norm_clip=1.0,
        noise_multiplier=0.5,
        adaptive_clipping={"target_unclipped_quantile": 0.5, "learning_rate": 0.2},
        expected_batch_size=16,
        seed=7,
    )
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    clips = history.history["l2_norm_clip"]
    assert clips[0] < 1.0 and clips[1] < clips[0]  # at most exp(-0.2) per step, 4 steps per epoch
    assert model.l2_norm_clip == pytest.approx(clips[1], rel=1e-6)
    assert model.l2_norm_clip >= np.exp(-0.2 * 8) * (1 - 1e-6)


# ------------------------------------------------------------------------------------------------------------
# Keras integration


class _Counter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


def test_fit_evaluate_predict_callbacks_and_save_load(tmp_path, capsys):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(40, 4)).astype("float32")
    y = rng.integers(0, 3, size=40)
    model = make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=0.7, seed=9)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    counter = _Counter()
    history = model.fit(x, y, batch_size=10, epochs=2, callbacks=[counter], verbose=1)
    assert counter.batches == 8
    assert set(history.history) == {"loss", "accuracy"}
    assert "4/4" in capsys.readouterr().out  # the progress bar
    loss, accuracy = model.evaluate(x, y, verbose=0)
    assert np.isfinite(loss) and 0 <= accuracy <= 1
    predictions = model.predict(x, verbose=0)
    np.testing.assert_allclose(predictions, model.inner(x), rtol=1e-6, atol=1e-6)

    path = tmp_path / "private.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, DPModel)
    assert loaded.dp_config == model.dp_config
    np.testing.assert_allclose(loaded.predict(x, verbose=0), predictions, rtol=1e-6, atol=1e-6)
    assert loaded.optimizer.__class__ is keras.optimizers.Adam
    loaded.fit(x, y, batch_size=10, epochs=1, verbose=0)  # training continues after loading


def test_get_config_round_trip():
    model = make_private(
        _mlp(),
        l2_norm_clip=0.8,
        noise_multiplier=1.1,
        num_microbatches=2,
        clipping="vectorized",
        adaptive_clipping=AdaptiveClipping(expected_num_records=32),
        seed=1,
    )
    config = model.get_config()
    assert DPModel.from_config(config).get_config() == config


def test_dp_event_matches_the_query():
    fixed = make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=1.3)
    assert fixed.dp_event() == dp_accounting.GaussianDpEvent(1.3)
    adaptive = make_private(
        _mlp(), l2_norm_clip=1.0, noise_multiplier=1.3, adaptive_clipping=True, expected_batch_size=40
    )
    query = adaptive._query
    state = query.initial_global_state()
    sample = query.initial_sample_state([tf.zeros([2])])
    _, _, event = query.get_noised_result(sample, state)  # eager: the event holds numbers
    expected = dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(float(e.noise_multiplier)) for e in event.events]
    )
    # The count (std 40 / 20, sensitivity 0.5) takes its share of the total 1.3; the sum keeps the rest.
    assert expected.events[1].noise_multiplier == pytest.approx(40 / 20 / 0.5)
    assert expected.events[0].noise_multiplier == pytest.approx((1.3**-2 - 4.0**-2) ** -0.5)
    actual = adaptive.dp_event()
    assert [e.noise_multiplier for e in actual.events] == pytest.approx(
        [e.noise_multiplier for e in expected.events]
    )
    # Both mechanisms over Poisson-sampled steps cost what compute_epsilon reports for noise_multiplier=1.3.
    steps = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(40 / 1000, actual), 500)
    epsilon = dp_accounting.rdp.RdpAccountant().compose(steps).get_epsilon(1e-5)
    assert epsilon == pytest.approx(
        compute_epsilon(num_examples=1000, batch_size=40, noise_multiplier=1.3, steps=500, delta=1e-5,
                        sampling="poisson"), rel=1e-9
    )
    # A count noisier than the sum leaves it no share of the budget: refused, naming the argument.
    with pytest.raises(ConfigError, match="clipped_count_stddev.*more than noise_multiplier / 2 = 0.65"):
        make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=1.3,
                     adaptive_clipping={"clipped_count_stddev": 0.6}, expected_batch_size=40)


def test_compile_picks_the_clipper():
    model = make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=1.0)
    assert model.clipping_method is None
    model.compile(optimizer="sgd", loss="mse")
    assert model.clipping_method == "ghost"
    inputs = keras.Input((4,))
    norm = keras.layers.LayerNormalization()(keras.layers.Dense(3)(inputs))
    mixed = make_private(keras.Model(inputs, norm), l2_norm_clip=1.0, noise_multiplier=1.0)
    mixed.compile(optimizer="sgd", loss="mse")
    assert mixed.clipping_method == "vectorized"


class _SubclassedMLP(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(6, activation="tanh")
        self.out = keras.layers.Dense(3)

    def call(self, x):
        return self.out(self.hidden(x))


def test_auto_gives_a_subclassed_model_the_vectorized_path():
    # Documented rule (make_private's `clipping`): every layer is Dense, but a subclassed call has no graph
    # for ghost clipping's taps, so "auto" picks the vectorized path and "ghost" says why it cannot.
    inner = _SubclassedMLP()
    inner(np.zeros((1, 4), "float32"))
    model = make_private(inner, l2_norm_clip=0.5, noise_multiplier=0.0)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    assert model.clipping_method == "vectorized"
    rng = np.random.default_rng(12)
    x, y = rng.normal(size=(6, 4)).astype("float32"), rng.normal(size=(6, 3)).astype("float32")
    grads = _per_example_grads(inner, x, y)
    before = _weights(model)
    model.train_on_batch(x, y)
    np.testing.assert_allclose(_update(before, _weights(model)), _clipped_mean(grads, 0.5), rtol=1e-5, atol=1e-7)
    with pytest.raises(UnsupportedLayerError, match="subclassed model .*write it as a Functional or Sequential"):
        make_private(inner, l2_norm_clip=0.5, noise_multiplier=0.0, clipping="ghost")


# ------------------------------------------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"l2_norm_clip": 0}, "Received an invalid value for `l2_norm_clip`, expected a positive float. "
         "Received: l2_norm_clip=0"),
        ({"l2_norm_clip": -1.5}, "Received: l2_norm_clip=-1.5"),
        ({"l2_norm_clip": "1.0"}, "Received: l2_norm_clip='1.0'"),
        ({"l2_norm_clip": float("nan")}, "Received: l2_norm_clip=nan"),
        (
            {"noise_multiplier": -0.1},
            "Received an invalid value for `noise_multiplier`, expected a non-negative float. "
            "Received: noise_multiplier=-0.1",
        ),
        ({"noise_multiplier": None}, "Received: noise_multiplier=None"),
        ({"num_microbatches": 0}, "Received: num_microbatches=0"),
        ({"num_microbatches": 2.5}, "Received: num_microbatches=2.5"),
        ({"clipping": "fast"}, "Received: clipping='fast'"),
        ({"secure_noise": True, "seed": 3}, "Received: seed=3"),
        ({"adaptive_clipping": True}, "expected_num_records"),
        ({"adaptive_clipping": {"target_unclipped_quantile": 2.0}, "expected_batch_size": 8},
         "Received: target_unclipped_quantile=2.0"),
        ({"adaptive_clipping": {"quantile": 0.5}}, "unknown options: ['quantile']"),
        ({"expected_batch_size": 0}, "Received: expected_batch_size=0"),
    ],
)
def test_invalid_arguments(kwargs, message):
    arguments = {"l2_norm_clip": 1.0, "noise_multiplier": 1.0, **kwargs}
    with pytest.raises(ConfigError) as error:
        make_private(_mlp(), **arguments)
    assert message in str(error.value)
    assert isinstance(error.value, ValueError)


def test_every_invalid_argument_is_reported_at_once():
    with pytest.raises(ConfigError) as error:
        make_private(_mlp(), l2_norm_clip=0, noise_multiplier=-1)
    assert "l2_norm_clip=0" in str(error.value) and "noise_multiplier=-1" in str(error.value)


def test_unsupported_layers_fail_before_training():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(4),
            keras.layers.BatchNormalization(name="bn_a"),
            keras.layers.Dense(4, activity_regularizer="l1", name="dense_reg"),
            keras.layers.BatchNormalization(name="bn_b"),
        ]
    )
    with pytest.raises(UnsupportedLayerError) as error:
        make_private(model, l2_norm_clip=1.0, noise_multiplier=1.0)
    assert all(name in str(error.value) for name in ("'bn_a'", "'dense_reg'", "'bn_b'"))


def test_ghost_on_unsupported_layers_fails_before_training():
    inputs = keras.Input((4,))
    h = keras.layers.LayerNormalization(name="ln")(keras.layers.Dense(3)(inputs))
    with pytest.raises(UnsupportedLayerError, match="LayerNormalization 'ln'"):
        make_private(keras.Model(inputs, h), l2_norm_clip=1.0, noise_multiplier=1.0, clipping="ghost")


def test_unbuilt_model_and_missing_loss():
    with pytest.raises(ConfigError, match="unbuilt model"):
        make_private(keras.Sequential([keras.layers.Dense(2)]), l2_norm_clip=1.0, noise_multiplier=1.0)
    model = make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="needs a `loss`"):
        model.compile(optimizer="sgd")


def test_microbatches_must_divide_every_batch():
    model = make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=1.0, num_microbatches=4)
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((30, 4), "float32"), np.zeros((30, 3), "float32")
    with pytest.raises(ConfigError) as error:
        model.fit(x, y, batch_size=8, verbose=0)
    assert "Received: num_microbatches=4 with batch_size=8 (6 examples in the last batch)" in str(error.value)
    with pytest.raises(ConfigError, match="batch_size=6"):
        model.fit(x, y, batch_size=6, verbose=0)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(6, drop_remainder=True)
    with pytest.raises(ConfigError, match="dataset batches of 6"):
        model.fit(data, verbose=0, shuffle=False)
    model.fit(x[:24], y[:24], batch_size=8, verbose=0)  # 8 | 24: fine
    # Batch sizes unknown before training: checked at run time, before the batch is split.
    unknown = tf.data.Dataset.from_generator(
        lambda: iter([(x[:6], y[:6])]),
        output_signature=(tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None, 3], tf.float32)),
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="Received: num_microbatches=4 with a batch"):
        model.fit(unknown, verbose=0, shuffle=False)


def test_secure_noise_refuses_xla():
    model = make_private(_mlp(), l2_norm_clip=1.0, noise_multiplier=1.0, secure_noise=True)
    with pytest.raises(ConfigError, match="jit_compile"):
        model.compile(optimizer="sgd", loss="mse", jit_compile=True)

