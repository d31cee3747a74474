"""Bad input: each a clear error naming the problem, never a crash or a silent wrong answer."""

import numpy as np
import pytest
import tensorflow as tf

import tfe_lite
from tfe_lite.protocols import Pond


@pytest.mark.parametrize("bad,match", [
    (np.array([1.0, np.nan]), "non-finite value nan at index \\(1,\\)"),
    (np.array([np.inf]), "non-finite value inf"),
    (np.array([[0.0, 5000.0]]), "value 5000.0 at index \\(0, 1\\) is outside the fixed-point range \\(-4096, 4096\\)"),
    (-4096.0, "outside the fixed-point range"),
])
def test_unencodable_inputs(prot, bad, match):
    with pytest.raises(tfe_lite.EncodingError, match=match):
        prot.share(bad, "alice")
    with pytest.raises(tfe_lite.EncodingError, match=match):
        prot.public(bad)


def test_unencodable_inputs_inside_tf_function(prot):
    @tf.function
    def f(x):
        return prot.share(x, "alice").reveal(to="alice")

    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        f(tf.constant([1.0, np.nan], tf.float64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the fixed-point range"):
        f(tf.constant([1.0, 1e9], tf.float64))
    np.testing.assert_array_equal(f(tf.constant([1.0, 2.0], tf.float64)).numpy(), [1.0, 2.0])


def test_non_numeric_input(prot):
    with pytest.raises(tfe_lite.EncodingError, match="dtype"):
        prot.share(tf.constant(["a"]), "alice")


@pytest.mark.parametrize("op,x,y", [
    ("add", (2, 3), (4,)),
    ("mul", (2, 3), (3, 2)),
    ("matmul", (2, 3), (2, 3)),
    ("matmul", (3,), (3, 1)),
    ("matmul", (2, 2, 3), (3, 3, 1)),
])
def test_mismatched_shapes(prot, op, x, y):
    a, b = prot.share(np.ones(x), "alice"), prot.share(np.ones(y), "bob")
    with pytest.raises(tfe_lite.ShapeError, match=r"shapes"):
        getattr(prot, op)(a, b)


def test_bad_conv_and_pool_arguments(prot):
    x = prot.share(np.ones((1, 4, 4, 2)), "alice")
    with pytest.raises(tfe_lite.ShapeError, match="filters.shape=\\(3, 3, 3, 1\\)"):
        prot.conv2d(x, np.ones((3, 3, 3, 1)))
    with pytest.raises(tfe_lite.ConfigError, match="padding='FULL'"):
        prot.conv2d(x, np.ones((3, 3, 2, 1)), padding="FULL")
    with pytest.raises(tfe_lite.ConfigError, match="strides=0"):
        prot.conv2d(x, np.ones((3, 3, 2, 1)), strides=0)
    with pytest.raises(tfe_lite.ShapeError, match="VALID"):
        prot.conv2d(x, np.ones((5, 5, 2, 1)), padding="VALID")
    with pytest.raises(tfe_lite.ShapeError, match="avg_pool2d"):
        prot.avg_pool2d(prot.share(np.ones((4, 4)), "alice"), 2)
    with pytest.raises(tfe_lite.ShapeError, match="reshape"):
        x.reshape([5, -1])


def test_unknown_players(prot):
    with pytest.raises(tfe_lite.PlayerError, match="unknown player: 'mallory'.*knows \\['server0'"):
        prot.share(np.ones(2), "mallory")
    x = prot.share(np.ones(2), "alice")
    with pytest.raises(tfe_lite.PlayerError, match="'eve'"):
        x.reveal(to="eve")


def test_mixing_two_protocol_instances(config):
    first, second = Pond(config), Pond(config)
    a, b = first.share(np.ones(2), "alice"), second.share(np.ones(2), "alice")
    for op in (lambda: a + b, lambda: a * b, lambda: b - a, lambda: first.concat([a, b])):
        with pytest.raises(tfe_lite.ProtocolError, match="another protocol instance"):
            op()
    with pytest.raises(tfe_lite.ProtocolError):
        first.reveal(b, to="alice")


def test_bad_protocol_arguments(config):
    with pytest.raises(tfe_lite.ConfigError, match="dealer='magic'"):
        Pond(config, dealer="magic")
    with pytest.raises(tfe_lite.ConfigError, match="name='huge'"):
        Pond(config, fixedpoint="huge")
    with pytest.raises(tfe_lite.ConfigError, match="seed='x'"):
        Pond(config, seed="x")
    with pytest.raises(tfe_lite.ConfigError, match="config"):
        Pond("local")


def test_truth_value_is_refused(prot):
    with pytest.raises(TypeError, match="reveal it first"):
        bool(prot.share(1.0, "alice"))
