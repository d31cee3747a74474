"""Noise sources and the routing of tensorflow-privacy's Gaussian draws through them."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tfe_lite.errors import ConfigError
from tfe_lite.privacy import _tf_privacy
from tfe_lite.privacy.noise import (
    GeneratorNoise,
    NoiseSource,
    SecureNoise,
    _urandom_uniform,
    make_noise_source,
)

SOURCES = {"generator": lambda: GeneratorNoise(seed=11), "secure": SecureNoise}


def _draw(source, n, stddev=1.0):
    return source.normal(tf.zeros([n]), stddev).numpy().astype(np.float64)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_samples_are_standard_normal(name):
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


def test_generator_seed_fixes_the_stream():
    np.testing.assert_array_equal(_draw(GeneratorNoise(seed=3), 10), _draw(GeneratorNoise(seed=3), 10))
    assert not np.array_equal(_draw(GeneratorNoise(seed=3), 10), _draw(GeneratorNoise(seed=4), 10))
    assert not np.array_equal(_draw(GeneratorNoise(), 10), _draw(GeneratorNoise(), 10))  # os.urandom seeds


def test_secure_noise_is_fresh_and_unseedable():
    source = SecureNoise()
    assert source.secure
    assert not np.array_equal(_draw(source, 10), _draw(source, 10))
    with pytest.raises(ConfigError, match="Received: seed=1"):
        make_noise_source(secure=True, seed=1)
    assert isinstance(make_noise_source(secure=False, seed=None), GeneratorNoise)


def test_urandom_uniforms_are_in_the_half_open_unit_interval():
    u = _urandom_uniform(np.int64(100_000))
    assert u.dtype == np.float64 and u.min() > 0 and u.max() <= 1
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / u.size)


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
