"""AutoGraph calls the protocol and private-layer code unconverted inside a user's tf.function (tracing the
comparison circuits converted took about 3x as long), and still converts the user's own code."""

import numpy as np
import tensorflow as tf
from tensorflow.python.autograph.impl import conversion

import tfe_lite
from tfe_lite.keras_layers import PrivateDense, PrivateModel, secure
from tfe_lite.protocols import Pond, PrivateTensor
from tfe_lite.protocols.pond import comparison
from tfe_lite.tracing import UNCONVERTED, leave_unconverted


def test_protocol_and_layer_code_is_left_unconverted_and_user_code_is_not():
    for entity in (Pond.relu, Pond.max_pool2d, Pond.softmax, PrivateTensor.__matmul__, PrivateTensor.reveal,
                   comparison.msb, secure, PrivateModel.predict, PrivateDense.call):
        assert conversion.is_allowlisted(entity), entity

    def users_own(x):
        return x

    assert not conversion.is_allowlisted(users_own)
    import tfe_lite.federated.fedavg as fedavg
    import tfe_lite.privacy as privacy
    assert not conversion.is_allowlisted(fedavg.FedAvg.fit)  # left to AutoGraph, as before
    assert not any(conversion.is_allowlisted(getattr(privacy, name)) for name in privacy.__all__
                   if callable(getattr(privacy, name)) and getattr(getattr(privacy, name), "__module__", "").startswith("tfe_lite"))


def test_the_rule_is_added_once():
    from tensorflow.python.autograph.core import config

    before = len(config.CONVERSION_RULES)
    assert leave_unconverted() and leave_unconverted()
    assert len(config.CONVERSION_RULES) == before
    assert sum(str(rule).endswith(UNCONVERTED[0]) for rule in config.CONVERSION_RULES) == 1


def test_a_users_tf_function_with_tensor_control_flow_around_private_ops():
    """The user's `if` on a tensor is still AutoGraph's tf.cond; the private ops inside trace as they are."""
    config = tfe_lite.LocalConfig(["alice"])
    prot = Pond(config, seed=3)
    x = np.random.default_rng(0).normal(size=(3, 4))

    @tf.function
    def f(t):
        if tf.reduce_sum(t) > 0:  # a tensor condition: converted by AutoGraph
            scale = tf.constant(2.0, tf.float64)
        else:
            scale = tf.constant(-1.0, tf.float64)
        return prot.relu(prot.share(t * scale, "alice")).reveal(to="alice")

    for sign in (1.0, -1.0):
        t = tf.constant(sign * np.abs(x))
        scale = 2.0 if sign > 0 else -1.0
        np.testing.assert_allclose(f(t).numpy(), np.maximum(t.numpy() * scale, 0), atol=2.0 ** -prot.fixedpoint.frac_bits)  # encoding rounds by half a unit; relu is exact
