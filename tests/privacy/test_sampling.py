"""Poisson-sampled batches: the statistics the accounting assumes, and use with model.fit."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tfe_lite.errors import ConfigError, ShapeError
from tfe_lite.privacy.sampling import batch_size_bounds, poisson_batches


def _ids(dataset):
    return [np.asarray(batch[0]).astype(np.int64) for batch in dataset]


def test_batch_sizes_follow_the_binomial():
    n, expected, steps = 1000, 50, 400
    ids = np.arange(n)
    batches = _ids(poisson_batches(ids, ids * 10, expected_batch_size=expected, steps=steps, seed=1))
    sizes = np.array([len(b) for b in batches])
    assert len(sizes) == steps
    q = expected / n
    # Mean of `steps` Binomial(n, q) sizes: within 5 standard errors of q * n.
    assert abs(sizes.mean() - q * n) < 5 * math.sqrt(n * q * (1 - q) / steps)
    # Their sample variance: within 30% of n q (1 - q) (its relative standard error is about 7% here).
    assert sizes.var(ddof=1) == pytest.approx(n * q * (1 - q), rel=0.3)
    low, high = batch_size_bounds(n, expected, num_stddevs=6)
    assert low <= sizes.min() and sizes.max() <= high
    assert len(set(sizes.tolist())) > 10  # batch sizes vary
    for batch in batches:
        assert len(np.unique(batch)) == len(batch)  # sampled without repetition inside a batch
    # Every example appears (it misses all 400 steps with probability 0.95 ** 400, about 1e-9).
    assert set(np.concatenate(batches).tolist()) == set(range(n))


def test_targets_stay_aligned_and_weights_pass_through():
    ids = np.arange(200)
    dataset = poisson_batches(ids, ids * 10, ids / 2.0, expected_batch_size=20, steps=5, seed=3)
    for x, y, w in dataset:
        np.testing.assert_array_equal(y.numpy(), x.numpy() * 10)
        np.testing.assert_array_equal(w.numpy(), x.numpy() / 2.0)
    assert dataset.cardinality().numpy() == 5


def test_epochs_differ_and_seeds_repeat():
    ids = np.arange(500)
    dataset = poisson_batches(ids, expected_batch_size=25, steps=4, seed=7)
    first, second = [b.numpy().tolist() for b in dataset], [b.numpy().tolist() for b in dataset]
    assert first != second  # every iteration (fit epoch) draws new batches
    again = poisson_batches(ids, expected_batch_size=25, steps=4, seed=7)
    assert [b.numpy().tolist() for b in again] == first
    assert [b.numpy().tolist() for b in again] == second
    other = poisson_batches(ids, expected_batch_size=25, steps=4, seed=8)
    assert [b.numpy().tolist() for b in other] != first
    unseeded = [poisson_batches(ids, expected_batch_size=25, steps=4) for _ in range(2)]
    assert [b.numpy().tolist() for b in unseeded[0]] != [b.numpy().tolist() for b in unseeded[1]]


def test_default_steps_is_one_expected_epoch():
    assert poisson_batches(np.zeros((1000, 2)), expected_batch_size=30).cardinality().numpy() == 34


def test_empty_batches_are_yielded_with_their_shape():
    x = np.zeros((10, 3, 2), np.float32)
    batches = list(poisson_batches(x, np.zeros(10), expected_batch_size=0.001, steps=20, seed=0))
    assert len(batches) == 20
    assert any(int(b[0].shape[0]) == 0 for b in batches)
    assert all(b[0].shape[1:] == (3, 2) for b in batches)


@settings(max_examples=10, deadline=None)
@given(
    n=st.integers(1, 40),
    feature_shape=st.sampled_from([(), (1,), (3,), (2, 2)]),
    fraction=st.floats(0.01, 1.0),
)
def test_shapes(n, feature_shape, fraction):
    x = np.arange(n * int(np.prod(feature_shape))).reshape((n, *feature_shape)).astype(np.float32)
    expected = max(fraction * n, 1e-3)
    for batch in poisson_batches(x, expected_batch_size=expected, steps=3, seed=0):
        assert batch.shape[1:] == feature_shape
        assert 0 <= batch.shape[0] <= n


@pytest.mark.parametrize("n", [1, 7])
def test_sampling_rate_one_takes_everything(n):
    x = np.arange(n, dtype=np.float32)
    batches = poisson_batches(x, expected_batch_size=n, steps=3, seed=0)
    assert all(np.array_equal(b.numpy(), x) for b in batches)


def test_nested_inputs():
    x = {"a": np.arange(50), "b": np.arange(50) * 2}
    for inputs, y in poisson_batches(x, np.arange(50), expected_batch_size=10, steps=3, seed=0):
        np.testing.assert_array_equal(inputs["b"].numpy(), inputs["a"].numpy() * 2)
        np.testing.assert_array_equal(y.numpy(), inputs["a"].numpy())


class _StepCounter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1


def _tiny_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    return model


def test_works_with_model_fit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = rng.integers(0, 3, 300)
    model = _tiny_model()
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    counter = _StepCounter()
    history = model.fit(poisson_batches(x, y, expected_batch_size=30, steps=7, seed=0), epochs=2, verbose=0,
                        callbacks=[counter])
    assert counter.steps == 14
    assert len(history.history["loss"]) == 2 and np.all(np.isfinite(history.history["loss"]))


def test_works_with_a_private_model_including_empty_batches():
    from tfe_lite.privacy.model import make_private

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    model = make_private(_tiny_model(), l2_norm_clip=1.0, noise_multiplier=1.0, expected_batch_size=1, seed=0)
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dataset = poisson_batches(x, y, expected_batch_size=1, steps=40, seed=2)
    # (1 - 1/20) ** 20 = 36% of steps are empty: none in 40 steps has probability 2e-8.
    assert any(int(b[0].shape[0]) == 0 for b in dataset)
    before = [w.copy() for w in model.get_weights()]
    model.fit(dataset, epochs=1, verbose=0)
    after = model.get_weights()
    assert all(np.all(np.isfinite(w)) for w in after)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"expected_batch_size": 0}, "Received: expected_batch_size=0"),
        ({"expected_batch_size": 11},
         "expected at most the number of examples 10. Received: expected_batch_size=11"),
        ({"expected_batch_size": 2, "steps": 0}, "Received: steps=0"),
        ({"expected_batch_size": 2, "seed": 1.5}, "Received: seed=1.5"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        poisson_batches(np.zeros(10), np.zeros(10), **kwargs)


def test_mismatched_rows():
    with pytest.raises(ShapeError, match=r"\[10, 9\]"):
        poisson_batches(np.zeros(10), np.zeros(9), expected_batch_size=2)
    with pytest.raises(ConfigError, match="sample_weight"):
        poisson_batches(np.zeros(10), None, np.zeros(10), expected_batch_size=2)


def test_dataset_is_a_tf_data_dataset():
    assert isinstance(poisson_batches(np.zeros(5), expected_batch_size=1), tf.data.Dataset)
