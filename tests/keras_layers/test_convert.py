"""secure(): Sequential and functional models against Keras within the propagated fixed-point bound, the
optimizations (BatchNormalization folded, ReLU after max pooling), every unsupported layer or setting in one
error before anything is shared, roles and models refused by name.

Outputs are computed eagerly through the private forward's Python function (the traced path, one trace per
batch shape, is tested in test_private_model.py)."""

import keras
import numpy as np
import pytest
from layer_tools import CLIENT, OWNER, assert_close, float64_models, model_tol

from tfe_lite import keras_layers as kl
from tfe_lite.errors import ConfigError, PlayerError, UnsupportedLayerError

L = keras.layers


def _forward(private, x):
    out = private.forward_function.python_function(*(x if isinstance(x, list) else [x]))
    return [o.numpy() for o in out]


def _randomize_batch_norm(model, rng):
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, c), rng.normal(0, 0.5, c), rng.normal(0, 0.5, c), rng.uniform(0.3, 2, c)])


@pytest.fixture(scope="module")
def cnn():
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    with float64_models():
        model = keras.Sequential([
            keras.Input((9, 9, 2)),
            L.Conv2D(4, 3, activation="relu"), L.MaxPooling2D(2), L.BatchNormalization(),
            L.Conv2D(3, 2, padding="same", use_bias=False), L.BatchNormalization(), L.ReLU(), L.MaxPooling2D(2, padding="same"),
            L.Flatten(), L.Dropout(0.3), L.Dense(6), L.Activation("tanh"), L.Dense(4, activation="softmax"),
        ])
    _randomize_batch_norm(model, rng)
    return model, rng.uniform(-1, 1, (3, 9, 9, 2))


@pytest.mark.parametrize("optimize", [True, False])
def test_sequential_cnn_matches_keras(prot, cnn, optimize):
    model, x = cnn
    private = kl.secure(model, protocol=prot, model_owner=OWNER, client=CLIENT, optimize=optimize)
    (tol,), (expected,) = model_tol(prot, model, x)
    (out,) = _forward(private, x)
    np.testing.assert_allclose(expected, np.asarray(model(x)), atol=1e-12)
    assert_close(out, expected, tol)
    classes = [type(s.layer).__name__ for s in private._steps]
    if optimize:
        # conv(relu) -> pool -> BN   becomes   conv -> pool -> relu -> BN (applied: it follows the pooling);
        # conv -> BN (folded) -> relu -> pool   becomes   conv -> pool -> relu
        assert classes == ["PrivateConv2D", "PrivateMaxPooling2D", "PrivateActivation", "PrivateBatchNormalization",
                           "PrivateConv2D", "PrivateMaxPooling2D", "PrivateReLU", "PrivateFlatten", "PrivateDropout",
                           "PrivateDense", "PrivateActivation", "PrivateDense"]
        assert private._steps[4].layer.use_bias  # the folded BatchNormalization's shift became a bias
    else:
        assert classes == [f"Private{type(layer).__name__}" for layer in model.layers]


def test_folding_is_exact_algebra(prot):
    """A folded Dense + BatchNormalization equals the float64 Keras pair within the bound of one Dense."""
    rng = np.random.default_rng(1)
    with float64_models():
        model = keras.Sequential([keras.Input((5,)), L.Dense(4, use_bias=False), L.BatchNormalization(), L.Dense(2)])
    _randomize_batch_norm(model, rng)
    x = rng.normal(0, 1, (6, 5))
    private = kl.secure(model, protocol=prot, model_owner=OWNER, client=CLIENT)
    assert [type(s.layer).__name__ for s in private._steps] == ["PrivateDense", "PrivateDense"]
    (tol,), (expected,) = model_tol(prot, model, x)
    assert_close(_forward(private, x)[0], expected, tol)


def test_functional_model_with_branches_shared_layers_and_two_inputs(prot):
    rng = np.random.default_rng(2)
    with float64_models():
        a, b = keras.Input((6,), name="a"), keras.Input((3,), name="b")
        h = L.Dense(8, activation="relu")(a)
        left, right = L.Dense(3)(h), L.Dense(3, activation="sigmoid")(h)
        shared = L.Dense(3)
        merged = L.Add()([left, right, shared(b)])
        both = L.Concatenate()([merged, shared(left), b * right])
        out1 = L.Dense(2)(both)
        out2 = L.Subtract()([merged, left]) + shared(right)
        model = keras.Model([a, b], [out1, out2])
    x = [rng.normal(0, 1, (4, 6)), rng.normal(0, 1, (4, 3))]
    private = kl.secure(model, protocol=prot, model_owner=OWNER, client=CLIENT)
    tols, expected = model_tol(prot, model, x)
    for out, want, tol in zip(_forward(private, x), expected, tols):
        assert_close(out, want, tol)
    # the shared Dense is one private layer with one set of shares, called three times
    calls = [s.layer for s in private._steps if s.layer.name == shared.name]
    assert len(calls) == 3 and all(c is calls[0] for c in calls)


def _unsupported_model():
    inputs = keras.Input((10, 10, 1))
    h = L.Conv2D(2, 3, dilation_rate=2)(inputs)
    h = L.Conv2D(2, 3, activation="elu")(h)
    h = L.DepthwiseConv2D(2)(h)
    h = L.Flatten()(h)
    h = L.Dense(4, activation="gelu", name="gelu_dense")(h)
    h = L.ReLU(threshold=0.5, name="thresholded")(h)
    h = L.Lambda(lambda t: t * 2, name="doubling")(h)
    return keras.Model(inputs, L.Dense(2)(h), name="many_problems")


def test_every_unsupported_layer_and_setting_in_one_error_before_anything_is_shared(prot):
    model = _unsupported_model()
    with prot.count_communication() as log:
        with pytest.raises(UnsupportedLayerError) as info:
            kl.secure(model, protocol=prot, model_owner=OWNER, client=CLIENT)
    message = str(info.value)
    assert "'many_problems'" in message and "6 unsupported" in message
    for expected in ["(Conv2D): dilation_rate=(2, 2)", "(Conv2D): activation='elu'", "(DepthwiseConv2D): has no private",
                     "'gelu_dense' (Dense): activation='gelu'", "'thresholded' (ReLU): threshold=0.5",
                     "'doubling' (Lambda): has no private version"]:
        assert expected in message, expected
    assert len(info.value.problems) == 6
    assert log.total_bytes() == 0  # nothing was shared


def test_refused_models_are_named(prot):
    with pytest.raises(ConfigError, match="model 'unbuilt' is not built"):
        kl.secure(keras.Sequential([L.Dense(2)], name="unbuilt"), protocol=prot)
    with pytest.raises(ConfigError, match="expected a keras.Model. Received: model='model'"):
        kl.secure("model", protocol=prot)

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(2)

        def call(self, x):
            return self.dense(x)

    sub = Subclassed()
    sub(np.zeros((1, 3)))
    with pytest.raises(UnsupportedLayerError, match=r"\(Subclassed\) cannot be made private: secure\(\) converts Sequential and functional"):
        kl.secure(sub, protocol=prot)
    inner = keras.Sequential([keras.Input((3,)), L.Dense(2)], name="inner")
    outer = keras.Sequential([keras.Input((3,)), inner, L.Dense(1)])
    with pytest.raises(UnsupportedLayerError, match="layer 'inner' \\(Sequential\\): a nested model"):
        kl.secure(outer, protocol=prot)
    ragged = keras.Model(i := keras.Input((None, 3)), L.Dense(2)(i))
    with pytest.raises(UnsupportedLayerError, match=r"of shape \(None, None, 3\): every dimension but the batch"):
        kl.secure(ragged, protocol=prot)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(client="mallory"), PlayerError, r"`client`: client='mallory'. The protocol's configuration knows \["),
    (dict(model_owner="owner"), PlayerError, "`model_owner`: model_owner='owner'"),
    (dict(client="server1"), PlayerError, "protocol player for `client`: client='server1'"),
    (dict(model_owner="crypto-producer"), PlayerError, "model_owner='crypto-producer'"),
    (dict(model_owner="client"), PlayerError, "`model_owner` and `client` are the same player"),
    (dict(client=3), PlayerError, "client=3"),
    (dict(protocol="pond"), ConfigError, "`protocol`, expected a tfe_lite Pond protocol. Received: protocol='pond'"),
    (dict(optimize="yes"), ConfigError, "optimize='yes'"),
])
def test_bad_roles_and_arguments(prot, kwargs, error, message):
    model = keras.Sequential([keras.Input((3,)), L.Dense(2)])
    arguments = {**dict(protocol=prot, model_owner=OWNER, client=CLIENT), **kwargs}
    with pytest.raises(error, match=message):
        kl.secure(model, **arguments)


def test_weights_are_shared_once_from_the_model_owner(prot):
    model = keras.Sequential([keras.Input((4,)), L.Dense(3), L.Dense(2, use_bias=False)])
    with prot.count_communication() as log:
        private = kl.secure(model, protocol=prot, model_owner=OWNER, client=CLIENT)
    # each weight: a 32-byte seed to server0 and its masked encoding (8 bytes an element) to server1
    sizes = [w.size for w in model.get_weights()]
    assert log.by_link() == {(OWNER, "server0"): 32 * len(sizes), (OWNER, "server1"): 8 * sum(sizes)}
    assert len(private.weights) == 2 * len(sizes)
