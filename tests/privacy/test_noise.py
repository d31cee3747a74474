"""Noise sources and the routing of tensorflow-privacy's Gaussian draws through them."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tfe_lite import prg
from tfe_lite.errors import ConfigError
from tfe_lite.privacy import _tf_privacy, noise
from tfe_lite.privacy.model import make_private
from tfe_lite.privacy.noise import (
    ChaCha20Noise,
    GeneratorNoise,
    NoiseSource,
    SecureNoise,
    _urandom_key,
    make_noise_source,
)
from tfe_lite.random import _as_words, _key_bytes

SOURCES = {"chacha20": lambda: ChaCha20Noise(seed=11), "secure": SecureNoise}


def _draw(source, n, stddev=1.0):
    return source.normal(tf.zeros([n]), stddev).numpy().astype(np.float64)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_samples_are_standard_normal(backend, name):
    n = 200_000
    sample = _draw(SOURCES[name](), n)
    assert abs(sample.mean()) < 5 / np.sqrt(n)
    assert abs(sample.std() - 1) < 5 / np.sqrt(2 * n)
    assert stats.kstest(sample, "norm").pvalue > 1e-4
    # Tails: P(|z| > 3) = 0.0027, binomial standard error sqrt(p / n).
    assert abs(np.mean(np.abs(sample) > 3) - 0.0027) < 5 * np.sqrt(0.0027 / n)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_structure_shapes_dtypes_and_scale(name):
    structure = {"a": tf.zeros([3, 4]), "b": [tf.zeros([5], tf.float64), tf.zeros([])]}
    noise = SOURCES[name]().normal(structure, 2.5)
    assert noise["a"].shape == (3, 4) and noise["a"].dtype == tf.float32
    assert noise["b"][0].shape == (5,) and noise["b"][0].dtype == tf.float64
    assert noise["b"][1].shape == ()
    big = _draw(SOURCES[name](), 50_000, stddev=2.5)
    assert abs(big.std() / 2.5 - 1) < 5 / np.sqrt(2 * 50_000)


def test_seed_fixes_the_stream():
    np.testing.assert_array_equal(_draw(ChaCha20Noise(seed=3), 10), _draw(ChaCha20Noise(seed=3), 10))
    assert not np.array_equal(_draw(ChaCha20Noise(seed=3), 10), _draw(ChaCha20Noise(seed=4), 10))
    assert not np.array_equal(_draw(ChaCha20Noise(), 10), _draw(ChaCha20Noise(), 10))  # os.urandom keys
    with pytest.raises(ConfigError, match="`seed`"):
        ChaCha20Noise(seed="3")


def test_generator_noise_is_the_former_name_of_the_default():
    assert GeneratorNoise is ChaCha20Noise
    assert type(make_noise_source(secure=False, seed=None)) is ChaCha20Noise
    assert not ChaCha20Noise.secure


def test_default_draws_are_the_chacha20_normals_of_a_run_time_counter(backend):
    """Draw k (k = 1, 2, ...) is prg.expand_normal of the key on stream k, in eager mode and inside a
    tf.function alike: every execution of a traced function gets fresh noise."""
    source = ChaCha20Noise(seed=5)
    key = _as_words(_key_bytes(5, "privacy/noise"))
    draw = tf.function(lambda: source.normal(tf.zeros([1000]), 1.0))
    draws = [_draw(source, 1000), draw().numpy(), draw().numpy(), _draw(source, 1000)]
    for stream, values in enumerate(draws, start=1):
        np.testing.assert_array_equal(values, prg.expand_normal(key, 1000, stream=stream).numpy())
    assert len({d.tobytes() for d in draws}) == len(draws)
    assert noise.ChaCha20Noise(seed=5).normal(tf.zeros([0]), 1.0).shape == (0,)


def test_secure_noise_is_fresh_and_unseedable(backend):
    source = SecureNoise()
    assert source.secure
    assert not np.array_equal(_draw(source, 10), _draw(source, 10))
    with pytest.raises(ConfigError, match="Received: seed=1"):
        make_noise_source(secure=True, seed=1)


def test_secure_noise_expands_a_new_urandom_key_every_step(backend, monkeypatch):
    """Each draw (also each execution of a traced function) reads one new key from os.urandom and expands
    it into float64 normals, each the sum of SECURE_SUMMANDS normals over sqrt(SECURE_SUMMANDS)."""
    keys = []

    def recorded_key():
        keys.append(_urandom_key())
        return keys[-1]

    monkeypatch.setattr(noise, "_urandom_key", recorded_key)
    source = SecureNoise()
    eager = lambda: source.normal(tf.zeros([333], tf.float64), 1.0)  # noqa: E731
    draw = tf.function(eager)
    draws = [draw().numpy(), draw().numpy(), eager().numpy()]
    assert len(keys) == 3 and len({k.tobytes() for k in keys}) == 3
    for key, values in zip(keys, draws):
        expected = prg.expand_normal(key, 333, dtype=tf.float64, summands=noise.SECURE_SUMMANDS)
        np.testing.assert_array_equal(values, expected.numpy())


def test_urandom_keys_are_fresh_256_bit_keys():
    keys = [_urandom_key() for _ in range(4)]
    assert all(k.dtype == np.int64 and k.shape == (4,) for k in keys)
    assert len({k.tobytes() for k in keys}) == 4


def test_default_source_under_xla_draws_philox_from_a_chacha20_seed():
    """Under jit_compile the native op cannot run: draws are stateless Philox normals seeded by
    ChaCha20(key, counter), still fresh per execution and standard normal."""
    source = ChaCha20Noise(seed=6)
    key = _as_words(_key_bytes(6, "privacy/noise"))
    draw = tf.function(lambda: source.normal(tf.zeros([200_000]), 1.0), jit_compile=True)
    # XLA's Philox sampler, which gives other values than TensorFlow's kernel for the same seed.
    philox = tf.function(
        lambda seed: tf.random.stateless_normal([200_000], seed, alg=source.xla_algorithm), jit_compile=True
    )
    first, second = draw().numpy(), draw().numpy()
    for stream, values in enumerate([first, second], start=1):
        seed = prg.derive_seed(key, tf.constant(stream, tf.int64))[:2]
        np.testing.assert_array_equal(values, philox(seed).numpy())
    n = first.size
    assert abs(first.mean()) < 5 / np.sqrt(n) and abs(first.std() - 1) < 5 / np.sqrt(2 * n)
    assert stats.kstest(first, "norm").pvalue > 1e-4
    assert not np.array_equal(first, second)


def test_secure_noise_refuses_xla():
    draw = tf.function(lambda: SecureNoise().normal(tf.zeros([10]), 1.0), jit_compile=True, autograph=False)
    with pytest.raises(ConfigError, match="XLA"):
        draw()


def test_dp_model_with_the_default_source_trains_under_xla():
    """make_private + compile(jit_compile=True) with the default source: the whole step is XLA-compiled and
    the update of a zero-gradient model is noise with std noise_multiplier * clip / batch."""
    units, batch = 64, 8  # no keras.utils.set_random_seed: later tests' datasets depend on the global seed
    inner = keras.Sequential([keras.Input((units,)), keras.layers.Dense(units, use_bias=False)])
    model = make_private(inner, l2_norm_clip=0.5, noise_multiplier=2.0, seed=3)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse", jit_compile=True)
    assert model.jit_compile
    x, y = np.zeros((batch, units), "float32"), np.ones((batch, units), "float32")
    updates = []
    for _ in range(2):
        before = model.trainable_variables[0].numpy()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
        updates.append((before - model.trainable_variables[0].numpy()).ravel())
    sample = np.concatenate(updates)
    expected = 2.0 * 0.5 / batch
    assert abs(sample.std() / expected - 1) < 5 / np.sqrt(2 * sample.size)
    assert not np.allclose(updates[0], updates[1])


class _Zero(NoiseSource):
    """Counts draws and returns zeros: shows which draws go through a source."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def _standard_normal(self, size):
        self.calls += 1
        return tf.zeros([size])


def test_fixed_clip_query_draws_through_the_source():
    source = _Zero()
    query = _tf_privacy.gaussian_sum_query(1.0, 2.0, source)
    state = query.initial_global_state()
    record = [tf.constant([3.0, 4.0])]  # norm 5: clipped to 1
    params = query.derive_sample_params(state)
    sample = _tf_privacy.sample_state(query, params, [record[0] / 5.0], tf.constant([5.0]))
    result, new_state, _ = query.get_noised_result(sample, state)
    np.testing.assert_allclose(result[0], [0.6, 0.8])
    assert source.calls == 1 and float(new_state.stddev) == 2.0


def test_adaptive_query_routes_both_draws_and_updates_the_clip():
    source = _Zero()
    query = _tf_privacy.adaptive_clip_sum_query(
        1.0,
        1.0,
        target_unclipped_quantile=0.5,
        learning_rate=0.2,
        clipped_count_stddev=1.0,
        expected_num_records=4,
        geometric_update=True,
        noise=source,
    )
    state = query.initial_global_state()
    params = query.derive_sample_params(state)
    assert float(_tf_privacy.clip_norm(query, params)) == 1.0
    norms = tf.constant([0.1, 0.2, 0.3, 0.4])  # all unclipped: the clip must shrink
    sample = _tf_privacy.sample_state(query, params, [tf.ones([2])], norms)
    result, new_state, _ = query.get_noised_result(sample, state)
    assert source.calls == 2  # gradient sum and unclipped count
    np.testing.assert_allclose(result[0], [1.0, 1.0])
    new_clip = float(_tf_privacy.clip_norm(query, query.derive_sample_params(new_state)))
    # Unclipped fraction 1 (noise-free), target 0.5: clip * exp(-0.2 * 0.5).
    assert new_clip == pytest.approx(np.exp(-0.1), rel=1e-6)


def test_mirrored_strategy_draws_on_the_first_replica_only(monkeypatch):
    """Under MirroredStrategy the counter lives on the first replica, which alone draws: fresh noise per
    step there, zeros elsewhere (or the first replica's noise with shared=True), one os.urandom key a step."""
    keys = []
    monkeypatch.setattr(noise, "_urandom_key", lambda: keys.append(_urandom_key()) or keys[-1])
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    with strategy.scope():
        sources = [ChaCha20Noise(seed=7), ChaCha20Noise(seed=7, shared=True), SecureNoise()]

    @tf.function
    def step():
        return strategy.run(lambda: [s.normal(tf.zeros([100], s._dtype), 1.0) for s in sources])

    key = _as_words(_key_bytes(7, "privacy/noise"))
    for counter in (1, 2):
        local, shared, secure = [strategy.experimental_local_results(x) for x in step()]
        expected = prg.expand_normal(key, 100, stream=counter).numpy()
        np.testing.assert_array_equal(local[0], expected)
        np.testing.assert_array_equal(local[1], np.zeros(100))
        np.testing.assert_array_equal(shared[0], expected)
        np.testing.assert_array_equal(shared[1], expected)
        assert len(keys) == counter and np.any(secure[0] != 0) and not np.any(secure[1])
    assert int(sources[0]._counter.read_value()) == 2  # the first replica's copy
