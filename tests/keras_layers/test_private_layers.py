"""Every private layer against its Keras twin (float64, same weights), eagerly, within the fixed-point bounds
of layer_tools; relu and max pooling exactly equal to the plaintext function of the encodings."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from layer_tools import (assert_close, activation_tol, conv_tol, dense_tol, encoded, keras_float64, run, twin, ulp)

from tfe_lite.errors import ConfigError, ProtocolError
from tfe_lite import keras_layers as kl

L = keras.layers


def _built(layer, shape, rng=None):
    """A built float64 Keras layer; Dense/Conv2D biases set random so the bias path is exercised."""
    layer.build(shape)
    if rng is not None and getattr(layer, "use_bias", False):
        layer.bias.assign(rng.normal(0, 0.5, layer.bias.shape))
    return layer


def _keras(layer, *inputs):
    out = layer(list(inputs) if len(inputs) > 1 else inputs[0])
    return np.asarray(out, np.float64)


@pytest.mark.parametrize("activation", ["linear", "relu", "sigmoid", "tanh", "softmax"])
def test_dense(prot, activation):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 2, (4, 6))
    layer = _built(keras_float64(L.Dense, 5, activation=activation), x.shape, rng)
    private = twin(prot, layer, x.shape)
    kernel = np.asarray(layer.kernel)
    assert_close(run(prot, private, x), _keras(layer, x), dense_tol(prot, x, kernel, activation))


def test_dense_on_rank3_inputs_without_bias(prot):
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (2, 3, 4))
    layer = _built(keras_float64(L.Dense, 3, use_bias=False), x.shape)
    private = twin(prot, layer, x.shape)
    assert private.private_weight_names == ("kernel",)
    assert_close(run(prot, private, x), _keras(layer, x), dense_tol(prot, x, np.asarray(layer.kernel), bias=False))


@settings(max_examples=8)
@given(batch=st.integers(1, 3), features=st.integers(1, 5), units=st.integers(1, 4), seed=st.integers(0, 99))
def test_dense_shapes(prot, batch, features, units, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-8, 8, (batch, features))
    layer = _built(keras_float64(L.Dense, units), x.shape, rng)
    private = twin(prot, layer, x.shape)
    assert_close(run(prot, private, x), _keras(layer, x), dense_tol(prot, x, np.asarray(layer.kernel)))


@pytest.mark.parametrize("kernel_size, strides, padding, activation", [
    (3, 1, "valid", "linear"), (3, 2, "same", "relu"), ((2, 3), (1, 2), "same", "linear"), (1, 1, "valid", "tanh"),
])
def test_conv2d(prot, kernel_size, strides, padding, activation):
    rng = np.random.default_rng(3)
    x = rng.uniform(-2, 2, (2, 7, 6, 2))
    layer = _built(keras_float64(L.Conv2D, 3, kernel_size, strides=strides, padding=padding, activation=activation), x.shape, rng)
    private = twin(prot, layer, x.shape)
    w = np.asarray(layer.kernel)

    def conv(a, b):
        return tf.nn.conv2d(a, b, strides, padding.upper()).numpy()

    tol = activation_tol(activation, conv_tol(prot, conv, x, w) + ulp(prot) / 2)
    assert_close(run(prot, private, x), _keras(layer, x), tol)


POOLS = [(2, None, "valid"), (3, 2, "same"), ((2, 3), (1, 2), "valid"), (2, 1, "same")]


@pytest.mark.parametrize("pool_size, strides, padding", POOLS)
def test_max_pooling_is_exact_on_the_encodings(prot, pool_size, strides, padding):
    x = np.random.default_rng(4).uniform(-3, 3, (2, 7, 6, 3))
    x[0, :2, :2, 0] = x[0, 0, 0, 0]  # ties
    layer = _built(keras_float64(L.MaxPooling2D, pool_size, strides=strides, padding=padding), x.shape)
    out = run(prot, twin(prot, layer, x.shape), x)
    expected = tf.nn.max_pool2d(encoded(prot, x), layer.pool_size, layer.strides, padding.upper()).numpy()
    np.testing.assert_array_equal(out, expected)
    assert_close(out, _keras(layer, x), ulp(prot) / 2)


def _average_tol(prot, x, average_abs, count):
    """Window sums are exact sums of encodings; the product with the encoded 1/count adds |sum| u/2 and u."""
    u = ulp(prot)
    return u / 2 + count * u * u / 4 + average_abs * count * u / 2 + u


@pytest.mark.parametrize("pool_size, strides, padding", POOLS)
def test_average_pooling(prot, pool_size, strides, padding):
    x = np.random.default_rng(5).uniform(-3, 3, (2, 7, 6, 3))
    layer = _built(keras_float64(L.AveragePooling2D, pool_size, strides=strides, padding=padding), x.shape)
    out = run(prot, twin(prot, layer, x.shape), x)
    average_abs = tf.nn.avg_pool2d(np.abs(x), layer.pool_size, layer.strides, padding.upper()).numpy()
    assert_close(out, _keras(layer, x), _average_tol(prot, x, average_abs, np.prod(layer.pool_size)))


@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling(prot, keepdims):
    x = np.random.default_rng(6).uniform(-3, 3, (2, 4, 5, 3))
    average = _built(keras_float64(L.GlobalAveragePooling2D, keepdims=keepdims), x.shape)
    out = run(prot, twin(prot, average, x.shape), x)
    assert_close(out, _keras(average, x), _average_tol(prot, x, np.abs(x).mean(axis=(1, 2), keepdims=keepdims), 20))
    maximum = _built(keras_float64(L.GlobalMaxPooling2D, keepdims=keepdims), x.shape)
    out = run(prot, twin(prot, maximum, x.shape), x)
    np.testing.assert_array_equal(out, encoded(prot, x).max(axis=(1, 2), keepdims=keepdims))


@pytest.mark.parametrize("make, shape", [
    (lambda: L.Flatten(), (2, 3, 4, 2)),
    (lambda: L.Flatten(), (3, 5)),
    (lambda: L.Reshape((4, -1)), (2, 3, 4, 2)),
    (lambda: L.ZeroPadding2D(1), (2, 3, 4, 2)),
    (lambda: L.ZeroPadding2D(((0, 2), (1, 0))), (1, 3, 2, 1)),
    (lambda: L.Dropout(0.5), (2, 3)),
    (lambda: L.SpatialDropout2D(0.3), (2, 3, 3, 2)),
])
def test_rearranging_layers_are_exact(prot, make, shape):
    x = np.random.default_rng(7).uniform(-9, 9, shape)
    layer = _built(make(), shape)
    out = run(prot, twin(prot, layer, shape), x)
    np.testing.assert_array_equal(out, np.asarray(layer(encoded(prot, x)), np.float64))


@pytest.mark.parametrize("activation", ["linear", "relu", "sigmoid", "tanh", "softmax"])
def test_activation(prot, activation):
    x = np.random.default_rng(8).normal(0, 3, (3, 7))
    x[0, :3] = [0.0, 2.0**-16, -(2.0**-16)]
    layer = _built(keras_float64(L.Activation, activation), x.shape)
    out = run(prot, twin(prot, layer, x.shape), x)
    assert_close(out, _keras(layer, x), activation_tol(activation, np.full_like(x, ulp(prot) / 2)))
    if activation == "relu":
        np.testing.assert_array_equal(out, np.maximum(encoded(prot, x), 0))


@pytest.mark.parametrize("make", [
    lambda: L.ReLU(), lambda: L.ReLU(max_value=1.5), lambda: L.ReLU(negative_slope=0.2),
    lambda: L.ReLU(max_value=2.0, negative_slope=0.1), lambda: L.LeakyReLU(0.3),
])
def test_relu_layers(prot, make):
    x = np.random.default_rng(9).normal(0, 2, (4, 5))
    x[0, :3] = [0.0, 1.5, -(2.0**-16)]
    layer = _built(make(), x.shape)
    out = run(prot, twin(prot, layer, x.shape), x)
    u = ulp(prot)
    # input encoding u/2 (f is 1-Lipschitz), the encoded slopes and cap |x| u + u/2, two truncations 2u
    assert_close(out, np.asarray(layer(x), np.float64), u / 2 + np.abs(x) * u + u / 2 + 2 * u)


def test_softmax_layer_over_an_inner_axis(prot):
    x = np.random.default_rng(10).normal(0, 3, (2, 3, 4))
    layer = _built(L.Softmax(axis=1), x.shape)
    out = run(prot, twin(prot, layer, x.shape), x)
    assert_close(out, tf.nn.softmax(x, axis=1).numpy(), 0.5 * ulp(prot) / 2 + 2.0**-12)


@pytest.mark.parametrize("axis, shape", [(-1, (3, 4, 5)), (1, (3, 4, 5)), (-1, (2, 3, 3, 2))])
def test_batch_normalization_applied_as_an_affine(prot, axis, shape):
    rng = np.random.default_rng(11)
    x = rng.normal(0, 2, shape)
    layer = _built(keras_float64(L.BatchNormalization, axis=axis), shape)
    channels = shape[axis]
    layer.set_weights([rng.uniform(0.5, 2, channels), rng.normal(0, 1, channels), rng.normal(0, 1, channels),
                       rng.uniform(0.2, 3, channels)])
    private = twin(prot, layer, shape)
    assert isinstance(private, kl.PrivateBatchNormalization)
    scale = np.asarray(layer.gamma) / np.sqrt(np.asarray(layer.moving_variance) + layer.epsilon)
    bshape = [1] * len(shape)
    bshape[axis] = channels
    s = np.abs(scale).reshape(bshape)
    u = ulp(prot)
    # x~ s~ = (x + dx)(s + ds): |x| u/2 + s u/2 + u^2/4, the truncation u, the offset's encoding u/2
    assert_close(run(prot, private, x), _keras(layer, x), np.abs(x) * u / 2 + s * u / 2 + u * u / 4 + u + u / 2)


def test_rescaling(prot):
    x = np.random.default_rng(12).uniform(0, 255, (2, 3, 3, 1))
    layer = _built(L.Rescaling(1 / 255, offset=-0.5), x.shape)
    u = ulp(prot)
    assert_close(run(prot, twin(prot, layer, x.shape), x), x / 255 - 0.5, np.abs(x) * u / 2 + u / 2 / 255 + u + u / 2)


@pytest.mark.parametrize("make, count", [
    (lambda: L.Add(), 3), (lambda: L.Subtract(), 2), (lambda: L.Average(), 3), (lambda: L.Multiply(), 2),
    (lambda: L.Concatenate(), 2), (lambda: L.Concatenate(axis=1), 3),
])
def test_merging(prot, make, count):
    rng = np.random.default_rng(13)
    inputs = [rng.normal(0, 2, (2, 3, 4)) for _ in range(count)]
    layer = _built(make(), [x.shape for x in inputs])
    out = run(prot, twin(prot, layer, [x.shape for x in inputs]), *inputs)
    u = ulp(prot)
    if isinstance(layer, L.Multiply):
        a, b = (np.abs(x) for x in inputs)
        tol = a * u / 2 + b * u / 2 + u * u / 4 + u
    elif isinstance(layer, L.Average):
        tol = u / 2 + np.abs(sum(inputs)) * u / 2 + u * u + u
    else:
        tol = count * u / 2
    assert_close(out, np.asarray(layer(inputs), np.float64), tol)


def test_keras_tensor_operations_have_private_versions(prot):
    rng = np.random.default_rng(14)
    a, b = rng.normal(0, 2, (2, 3)), rng.normal(0, 2, (2, 3))
    inputs = [keras.Input((3,)), keras.Input((3,))]
    for node_output, expected in ((inputs[0] + inputs[1], a + b), (inputs[0] - inputs[1], a - b), (inputs[0] * inputs[1], a * b)):
        op = node_output._keras_history.operation
        out = run(prot, twin(prot, op, [(2, 3), (2, 3)]), a, b)
        assert_close(out, expected, np.abs(a) * ulp(prot) / 2 + np.abs(b) * ulp(prot) / 2 + 2 * ulp(prot))


CONFIGS = [
    (kl.PrivateDense, dict(units=3, activation="relu", use_bias=False)),
    (kl.PrivateConv2D, dict(filters=2, kernel_size=(3, 2), strides=2, padding="same", activation="tanh")),
    (kl.PrivateMaxPooling2D, dict(pool_size=3, strides=(1, 2), padding="same")),
    (kl.PrivateAveragePooling2D, dict(pool_size=2)),
    (kl.PrivateGlobalAveragePooling2D, dict(keepdims=True)),
    (kl.PrivateGlobalMaxPooling2D, dict()),
    (kl.PrivateFlatten, dict()),
    (kl.PrivateReshape, dict(target_shape=(2, -1))),
    (kl.PrivateZeroPadding2D, dict(padding=((1, 2), (0, 3)))),
    (kl.PrivateActivation, dict(activation="sigmoid")),
    (kl.PrivateReLU, dict(max_value=6.0, negative_slope=0.1)),
    (kl.PrivateSoftmax, dict(axis=1)),
    (kl.PrivateBatchNormalization, dict(axis=2)),
    (kl.PrivateRescaling, dict(scale=0.5, offset=1.0)),
    (kl.PrivateDropout, dict(rate=0.25)),
    (kl.PrivateAdd, dict()), (kl.PrivateSubtract, dict()), (kl.PrivateAverage, dict()), (kl.PrivateMultiply, dict()),
    (kl.PrivateConcatenate, dict(axis=2)),
]


@pytest.mark.parametrize("cls, kwargs", CONFIGS, ids=[c.__name__ for c, _ in CONFIGS])
def test_get_config_round_trip(cls, kwargs):
    layer = cls(name="probe", **kwargs)
    config = layer.get_config()
    for key, value in kwargs.items():  # every argument, as given (an int pool size as its pair)
        assert config[key] == value or config[key] == (value, value), key
    assert cls.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is cls and restored.get_config() == config


def test_a_layer_without_protocol_says_how_to_give_it_one(prot):
    layer = kl.PrivateDense(2)
    with pytest.raises(ProtocolError, match=r"layer.bind\(prot\)"):
        layer.build((1, 3))
    layer.bind(prot)
    layer.build((1, 3))
    with pytest.raises(ConfigError, match="`protocol`"):
        kl.PrivateDense(2, protocol="pond")


@pytest.mark.parametrize("make, message", [
    (lambda: kl.PrivateDense(0), "units=0"),
    (lambda: kl.PrivateDense(2, activation="elu"), "activation='elu'"),
    (lambda: kl.PrivateConv2D(2, 0), "kernel_size=0"),
    (lambda: kl.PrivateConv2D(2, 3, padding="causal"), "padding='causal'"),
    (lambda: kl.PrivateMaxPooling2D((2, 2, 2)), r"pool_size=\(2, 2, 2\)"),
    (lambda: kl.PrivateDropout(1.5), "rate=1.5"),
    (lambda: kl.PrivateReLU(negative_slope=-1), "negative_slope=-1"),
    (lambda: kl.PrivateReshape((0, 2)), r"target_shape=\(0, 2\)"),
    (lambda: kl.PrivateZeroPadding2D(-1), "padding=-1"),
    (lambda: kl.PrivateRescaling(float("nan")), "scale=nan"),
])
def test_bad_arguments_are_named(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_weights_are_share_variables_on_the_servers(prot):
    layer = _built(keras_float64(L.Dense, 3), (2, 4), np.random.default_rng(15))
    private = twin(prot, layer, (2, 4))
    assert {v.name for v in private.weights} == {"kernel_share0", "kernel_share1", "bias_share0", "bias_share1"}
    for v in private.weights:
        assert v.dtype == "int64" and not v.trainable
        server = prot.server0 if v.name.endswith("share0") else prot.server1
        placed, expected = (tf.DeviceSpec.from_string(d) for d in (v.value.device, server.device))
        assert (placed.device_type, placed.device_index) == (expected.device_type, expected.device_index)
    # The shares add up to the encoded kernel, and neither one is it.
    k0, k1 = (v.numpy() for v in private.weights if v.name.startswith("kernel"))
    np.testing.assert_array_equal(prot.decode(tf.constant(k0 + k1)).numpy(), encoded(prot, layer.kernel))
    assert not np.array_equal(k0, np.round(np.asarray(layer.kernel) * 2**16))


@settings(max_examples=10)
@given(batch=st.integers(1, 2), height=st.integers(2, 6), width=st.integers(2, 6), channels=st.integers(1, 3),
       pool=st.integers(1, 3), stride=st.integers(1, 3), same=st.booleans(), seed=st.integers(0, 99))
def test_max_pooling_shapes(prot, batch, height, width, channels, pool, stride, same, seed):
    pool = min(pool, height, width)
    x = np.random.default_rng(seed).integers(-3, 4, (batch, height, width, channels)) / 4.0  # many ties
    padding = "same" if same else "valid"
    layer = _built(keras_float64(L.MaxPooling2D, pool, strides=stride, padding=padding), x.shape)
    out = run(prot, twin(prot, layer, x.shape), x)
    np.testing.assert_array_equal(out, _keras(layer, x))  # quarters are exact encodings


@settings(max_examples=10)
@given(batch=st.integers(1, 2), side=st.integers(3, 6), channels=st.integers(1, 3), filters=st.integers(1, 3),
       kernel=st.integers(1, 3), stride=st.integers(1, 2), same=st.booleans(), seed=st.integers(0, 99))
def test_conv2d_shapes(prot, batch, side, channels, filters, kernel, stride, same, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-4, 4, (batch, side, side, channels))
    padding = "same" if same else "valid"
    layer = _built(keras_float64(L.Conv2D, filters, kernel, strides=stride, padding=padding), x.shape, rng)
    w = np.asarray(layer.kernel)

    def conv(a, b):
        return tf.nn.conv2d(a, b, stride, padding.upper()).numpy()

    assert_close(run(prot, twin(prot, layer, x.shape), x), _keras(layer, x), conv_tol(prot, conv, x, w) + ulp(prot) / 2)


def test_forward_keeps_what_a_backward_rule_needs(prot):
    """forward(save=True): the same outputs, the relu's 0/1 derivative mask (no second comparison) and a
    Dense layer's input; save=False keeps nothing."""
    rng = np.random.default_rng(16)
    x = rng.normal(0, 1, (3, 4))
    x[0, 0] = 0.0
    dense = twin(prot, _built(keras_float64(L.Dense, 5, activation="relu"), x.shape, rng), x.shape)
    shared = prot.share(x, "client")
    y, kept = dense.forward(shared, save=True)
    assert set(kept) == {"x", "mask"} and kept["x"] is shared
    pre = kept["mask"].reveal(to="client").numpy()
    out = y.reveal(to="client").numpy()
    np.testing.assert_array_equal(pre, (out > 0) | (pre == 1))  # a 0/1 mask, 1 wherever the output is positive
    assert set(np.unique(pre)) <= {0.0, 1.0}
    assert dense.forward(shared, save=False)[1] is None
    relu = twin(prot, _built(L.ReLU(max_value=1.0), x.shape), x.shape)
    _, kept = relu.forward(shared, save=True)
    # [0 <= x < max_value] and [x >= 0], from the masks of x and x - max_value of one comparison batch
    assert kept["mask"].shape == (3, 4) and kept["below"].shape == (3, 4)
    inside = kept["mask"].reveal(to="client").numpy()
    np.testing.assert_array_equal(inside, ((x >= 0) & (x < 1.0)).astype(float))
