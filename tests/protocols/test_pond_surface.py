"""The Pond surface as a new user meets it (issue 8): operators with every operand kind on either side,
range checks, plain tensors of players, encodings of shares, shape errors, and the help text."""

import numpy as np
import pytest
import tensorflow as tf

import tfe_lite
from tfe_lite import FixedPointConfig
from tfe_lite.protocols import Pond

from oracle import assert_close, matmul_tol, mul_tol

A = np.array([[1.0, 2.0, 3.0], [4.0, -5.0, 6.0]])
B = np.array([[2.0, 0.5, -1.0], [1.5, 3.0, 0.25]])


@pytest.mark.parametrize("kind", ["numpy", "python", "tensor"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("op", ["+", "-", "*"])
def test_operators_with_plain_operands_on_either_side(prot, kind, side, op):
    """A numpy array on the left used to broadcast over the Pond tensor (an object array of products)."""
    plain = {"numpy": B, "python": 2.5, "tensor": tf.constant(B)}[kind]
    value = B if kind != "python" else 2.5
    x = prot.share(A, "alice")
    fn = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}[op]
    out = fn(plain, x) if side == "left" else fn(x, plain)
    expected = fn(value, A) if side == "left" else fn(A, value)
    assert isinstance(out, tfe_lite.protocols.PrivateTensor), type(out)
    assert_close(out.reveal(to="alice").numpy(), expected, mul_tol(prot, A, np.broadcast_to(value, A.shape)))


@pytest.mark.parametrize("kind", ["numpy", "tensor"])
def test_matmul_with_plain_operands_on_either_side(prot, kind):
    x = prot.share(A, "alice")
    w = B.T if kind == "numpy" else tf.constant(B.T)
    assert_close((x @ w).reveal(to="alice").numpy(), A @ B.T, matmul_tol(prot, A, B.T))
    left = np.ones((1, 2)) if kind == "numpy" else tf.ones((1, 2), tf.float64)
    assert_close((left @ x).reveal(to="alice").numpy(), np.ones((1, 2)) @ A, matmul_tol(prot, np.ones((1, 2)), A))


def test_division_power_and_iteration(prot):
    x = prot.share(A, "alice")
    assert_close((x / 4.0).reveal(to="alice").numpy(), A / 4.0, mul_tol(prot, A, np.full(A.shape, 0.25)))
    assert_close((x ** 3).reveal(to="alice").numpy(), A ** 3, 1e-2)
    rows = [r.reveal(to="alice").numpy() for r in x]
    assert len(rows) == len(x) == 2
    assert_close(np.stack(rows), A, 1e-4)
    with pytest.raises(tfe_lite.ProtocolError, match="private value"):
        x / x
    with pytest.raises(tfe_lite.ProtocolError, match="exponent=0"):
        x ** 0
    with pytest.raises(TypeError, match="rank 0"):
        iter(prot.share(1.0, "alice")).__next__()


def test_integer_scalars_are_range_checked(prot):
    """``x * 2**50`` returned 0.0 and ``x * 2**63`` raised OverflowError."""
    x = prot.share(np.array([1.0, -2.0]), "alice")
    np.testing.assert_array_equal((x * 3).reveal(to="alice").numpy(), [3.0, -6.0])
    for k in (2**50, 2**63, -(2**12)):
        with pytest.raises(tfe_lite.EncodingError, match=f"`y`={k}"):
            x * k
    with pytest.raises(tfe_lite.EncodingError, match="`x`="):
        (2**50) * x


def test_the_margin_is_required_and_stated():
    """``FixedPointConfig(frac_bits=24, int_bits=14)`` was accepted; a product at the bound failed 1 in 4."""
    with pytest.raises(tfe_lite.ConfigError, match="margin 2 bits"):
        FixedPointConfig(frac_bits=24, int_bits=14)
    for name, config in tfe_lite.PRESETS.items():
        assert config.margin_bits >= tfe_lite.fixedpoint.MIN_MARGIN_BITS, name
        assert config.truncation_failure_probability(config.bound) <= 2.0**-20
    assert "2**-20" in tfe_lite.fixedpoint.__doc__ and "precise" in tfe_lite.fixedpoint.__doc__


def test_products_at_the_range_bound_truncate_correctly(config):
    """At the default preset's bound every element of 20,000 products is right (failure 2**-20 each)."""
    prot = Pond(config, seed=99)
    x = np.full(20000, 4095.0)
    z = (prot.share(x, "alice") * prot.share(np.ones(20000), "bob")).reveal(to="alice").numpy()
    assert_close(z, x, mul_tol(prot, x, np.ones(20000)))


def test_a_plain_tensor_on_a_players_device_is_refused(prot, config):
    """``z * t`` with ``t`` on alice's device copied alice's plaintext to both servers, uncounted."""
    z = prot.share(A, "alice")
    for player in ("alice", "server0", "server1"):
        with tf.device(config.get_player(player).device):
            t = tf.constant(B) * 1.0
            t_columns = tf.constant(B.T) * 1.0
        for op in (lambda: z * t, lambda: z @ t_columns, lambda: prot.public(t), lambda: prot.add(t, z)):
            with pytest.raises(tfe_lite.PlayerError, match=f"on {player}'s device"):
                op()
        # With the tf.Tensor on the left TensorFlow raises its own error, from within the Pond refusal.
        with pytest.raises(TypeError, match="cannot become a tf.Tensor") as info:
            t + z
        assert isinstance(info.value.__context__, tfe_lite.PlayerError)

    @tf.function
    def traced(x):
        with tf.device(config.get_player("bob").device):
            secret = x * 2.0
        return (z * secret).reveal(to="alice")

    with pytest.raises(Exception, match="PlayerError: `y` is a tf.Tensor on bob's device"):
        traced(tf.constant(B))


def test_public_operands_from_the_host_are_counted(prot):
    z = prot.share(A, "alice")
    t = tf.constant(B)
    with prot.count_communication() as log:
        z * t
    assert log.by_link() == {("driver", "server0"): 48, ("driver", "server1"): 48}
    with prot.count_communication() as log:
        z * B  # a numpy constant is part of the computation, not a message
    assert log.messages == 0


def test_shares_need_their_encoding(config):
    """``from_shares`` of default-encoded shares under 'precise' revealed [0.0625, 0.125] for [1, 2]."""
    x = Pond(config, seed=3).share(np.array([1.0, 2.0]), "alice")
    precise = Pond(config, fixedpoint="precise")
    with pytest.raises(tfe_lite.ConfigError, match="decode wrongly"):
        precise.from_shares(*x.shares, fixedpoint="default")
    with pytest.raises(TypeError, match="fixedpoint"):
        precise.from_shares(*x.shares)
    same = x.protocol.from_shares(*x.shares, fixedpoint="default")
    np.testing.assert_array_equal(same.reveal(to="alice").numpy(), [1.0, 2.0])


def test_local_config_refuses_a_bare_string():
    with pytest.raises(tfe_lite.ConfigError, match=r"did you mean \['alice'\]"):
        tfe_lite.LocalConfig("alice")


@pytest.mark.parametrize("op,match", [
    (lambda x: x.transpose([0, 2]), r"perm=\[0, 2\]"),
    (lambda x: x.transpose([0, 0]), "permutation"),
    (lambda x: x[5], r"shape \(2, 3\) with 5"),
    (lambda x: x[:, 7], r"with \(slice"),
    (lambda x: x.reduce_sum(axis=3), r"axis=3.*\[-2, 2\)"),
    (lambda x: x.reshape("ab"), "reshape|shape"),
])
def test_shape_errors_name_the_shapes(prot, op, match):
    x = prot.share(A, "alice")
    with pytest.raises(tfe_lite.ShapeError, match=match):
        op(x)


def test_public_operand_of_unknown_rank_inside_tf_function(prot):
    x = prot.share(A, "alice")

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float64)])
    def f(w):
        return (x @ w).reveal(to="alice")

    with pytest.raises(Exception, match="ShapeError: Cannot matmul: `y` has unknown rank"):
        f.get_concrete_function()


def test_graph_mode_encoding_errors_name_the_index_and_not_the_value(prot):
    @tf.function
    def f(x):
        return prot.share(x, "alice").reveal(to="alice")

    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        f(tf.constant([[1.0, 2.0], [3.0, 12345.678]], tf.float64))
    message = info.value.message
    assert "outside the fixed-point range" in message and "[1 1]" in message and "count:] [1]" in message
    assert "12345" not in message, "the private value left the owner's device in the error message"


def test_eager_tensor_encoding_errors_carry_no_value(prot, config):
    with tf.device(config.get_player("alice").device):
        secret = tf.constant([0.5, -9876.5], tf.float64)
    with pytest.raises(tfe_lite.EncodingError, match=r"index \(1,\) \(1 such values\)") as info:
        prot.share(secret, "alice")
    assert "9876" not in str(info.value)


def test_help_states_ranges_costs_and_operators():
    doc = Pond.__doc__
    for words in ("Usage::", "Operations and their cost", "Ranges that must hold", "50000 * 50000", "no ``/`` by a private",
                  "matmul: both operands", "Concurrency"):
        assert words in doc, words
    for method in ("neg", "sub", "reduce_sum", "reshape", "transpose", "slice", "decode", "share", "reveal", "matmul"):
        assert getattr(Pond, method).__doc__, method
    assert "loop" in tfe_lite.protocols.PrecomputedDealer.plan.__doc__
