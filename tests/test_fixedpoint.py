import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from tfe_lite import ConfigError, EncodingError, FixedPointConfig, decode, encode
from tfe_lite.fixedpoint import PRESETS


@pytest.mark.parametrize("name", sorted(PRESETS))
@given(data=st.data())
def test_round_trip_error_is_half_an_ulp(name, data):
    config = FixedPointConfig.preset(name)
    bound = config.bound
    x = data.draw(hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_side=6),
                             elements=st.floats(-bound, bound, exclude_min=True, exclude_max=True)))
    out = decode(encode(x, config), config).numpy()
    assert np.all(np.abs(out - x) <= config.resolution / 2)


def test_encoding_is_int64_and_decode_dtype():
    config = FixedPointConfig()
    enc = encode([1.5, -2.25], config)
    assert enc.dtype == tf.int64
    np.testing.assert_array_equal(enc.numpy(), [1.5 * 65536, -2.25 * 65536])
    assert decode(enc, config, tf.float32).dtype == tf.float32


def test_config_is_frozen_and_validated():
    config = FixedPointConfig()
    with pytest.raises(Exception):
        config.frac_bits = 3
    with pytest.raises(ConfigError, match="frac_bits=0"):
        FixedPointConfig(frac_bits=0)
    with pytest.raises(ConfigError, match="int_bits=30, frac_bits=20"):
        FixedPointConfig(frac_bits=20, int_bits=30)
    with pytest.raises(ConfigError, match="frac_bits=1.5"):
        FixedPointConfig(frac_bits=1.5)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 65536.0, -1e30])
def test_refuses_values_that_would_wrap(value):
    with pytest.raises(EncodingError, match="values"):
        encode(np.array([0.0, value]), FixedPointConfig())


def test_error_names_the_argument_and_the_bound():
    with pytest.raises(EncodingError, match=r"`weights`: value 5000.0 at index \(2,\) .* \(-4096, 4096\)"):
        encode(np.array([0.0, 1.0, 5000.0]), FixedPointConfig(frac_bits=16, int_bits=12), argument="weights")


def test_truncation_failure_probability_formula():
    config = FixedPointConfig()
    assert config.truncation_failure_probability(1.0) == 2.0**-32
    assert config.truncation_failure_probability(2.0**10) == 2.0**-22


def test_host_data_are_checked_and_encoded_while_tracing_into_one_constant():
    config = FixedPointConfig()

    @tf.function
    def public_values():
        return encode(np.array([0.5, -2.25]), config), encode(3, config)

    graph = public_values.get_concrete_function().graph
    assert sorted(op.type for op in graph.get_operations()) == ["Const", "Const", "Identity", "Identity"]
    values, number = public_values()
    np.testing.assert_array_equal(values.numpy(), [config.scale // 2, -9 * config.scale // 4])
    assert number.numpy() == 3 * config.scale
    # a bad host value fails while tracing, before anything runs, with the eager message
    with pytest.raises(EncodingError, match=r"`values`: it holds a non-finite value nan at index \(1,\)"):
        tf.function(lambda: encode(np.array([1.0, np.nan]), config), autograph=False).get_concrete_function()
    with pytest.raises(EncodingError, match="expected a real number type. Received: bool"):
        tf.function(lambda: encode(np.array([True]), config), autograph=False).get_concrete_function()
