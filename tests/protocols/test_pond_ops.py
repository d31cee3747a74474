"""Every Pond op against a float64 numpy oracle, tolerances from the fixed-point precision (oracle.py)."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from oracle import assert_close, conv_tol, encode_tol, matmul_tol, mul_tol

VALUE = st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=64)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)


def arrays(shape):
    return hnp.arrays(np.float64, shape, elements=VALUE)


@st.composite
def broadcast_pair(draw):
    shape = draw(SHAPES)
    other = draw(hnp.broadcastable_shapes(shape, min_side=0, max_side=5))
    return draw(arrays(shape)), draw(arrays(other))


def kinds(prot, x, y, kind):
    """The operand kinds: private-private, private-public, public-private."""
    a = prot.share(x, "alice") if kind[0] == "s" else prot.public(x)
    b = prot.share(y, "bob") if kind[1] == "s" else prot.public(y)
    return a, b


def reveal(prot, t):
    return t.reveal(to="alice").numpy() if hasattr(t, "reveal") else t.decode().numpy()


@pytest.mark.parametrize("kind", ["ss", "sp", "ps", "pp"])
@given(pair=broadcast_pair())
def test_add_sub(prot, kind, pair):
    x, y = pair
    a, b = kinds(prot, x, y, kind)
    assert_close(reveal(prot, a + b), x + y, 2 * encode_tol(prot))
    assert_close(reveal(prot, a - b), x - y, 2 * encode_tol(prot))
    assert_close(reveal(prot, -a), -x, encode_tol(prot))


@pytest.mark.parametrize("kind", ["ss", "sp", "ps", "pp"])
@given(pair=broadcast_pair())
def test_mul(prot, kind, pair):
    x, y = pair
    a, b = kinds(prot, x, y, kind)
    assert_close(reveal(prot, a * b), x * y, mul_tol(prot, x, y))


@given(x=hnp.arrays(np.float64, SHAPES, elements=VALUE))
def test_square_and_self_product(prot, x):
    a = prot.share(x, "alice")
    assert_close(reveal(prot, a.square()), x * x, mul_tol(prot, x, x))
    assert_close(reveal(prot, a * a), x * x, mul_tol(prot, x, x))
    assert_close(reveal(prot, prot.public(x).square()), x * x, mul_tol(prot, x, x))


@given(x=hnp.arrays(np.float64, SHAPES, elements=VALUE), k=st.integers(-1000, 1000))
def test_mul_by_python_int_is_exact(prot, x, k):
    a = prot.share(x, "alice")
    assert_close(reveal(prot, a * k), x * k, abs(k) * encode_tol(prot))
    assert_close(reveal(prot, k * a), x * k, abs(k) * encode_tol(prot))


@st.composite
def matmul_operands(draw):
    m, k, n = (draw(st.integers(0, 6)) for _ in range(3))
    batch = draw(st.sampled_from([(), (2,)]))
    return draw(arrays(batch + (m, k))), draw(arrays(batch + (k, n)))


@pytest.mark.parametrize("kind", ["ss", "sp", "ps", "pp"])
@given(ops=matmul_operands())
def test_matmul(prot, kind, ops):
    x, y = ops
    a, b = kinds(prot, x, y, kind)
    assert_close(reveal(prot, a @ b), x @ y, matmul_tol(prot, x, y))
    assert_close(reveal(prot, prot.matmul(a, b)), x @ y, matmul_tol(prot, x, y))


def test_matmul_large(prot):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 130)), rng.normal(size=(130, 33))
    assert_close(reveal(prot, prot.share(x, "alice") @ prot.share(y, "bob")), x @ y, matmul_tol(prot, x, y))


def _conv(x, w, strides, padding):
    return tf.nn.conv2d(x, w, strides, padding).numpy()


@st.composite
def conv_operands(draw):
    n, h, w, cin, cout = draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 6)), \
        draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding = draw(st.sampled_from(["SAME", "VALID"]))
    kh = draw(st.integers(1, h if padding == "VALID" else 3))
    kw = draw(st.integers(1, w if padding == "VALID" else 3))
    strides = draw(st.integers(1, 2))
    return draw(arrays((n, h, w, cin))), draw(arrays((kh, kw, cin, cout))), strides, padding


@pytest.mark.parametrize("kind", ["ss", "sp", "ps"])
@given(ops=conv_operands())
def test_conv2d(prot, kind, ops):
    x, w, strides, padding = ops
    a, b = kinds(prot, x, w, kind)
    expected = _conv(x, w, strides, padding)
    tol = conv_tol(prot, lambda p, q: _conv(p, q, strides, padding), x, w)
    assert_close(reveal(prot, prot.conv2d(a, b, strides=strides, padding=padding)), expected, tol)


@given(x=arrays((2, 7, 5, 3)), pool=st.integers(1, 3), strides=st.integers(1, 3),
       padding=st.sampled_from(["SAME", "VALID"]))
def test_avg_pool2d(prot, x, pool, strides, padding):
    expected = tf.nn.avg_pool2d(x, pool, strides, padding).numpy()
    got = reveal(prot, prot.avg_pool2d(prot.share(x, "alice"), pool, strides, padding))
    # window sum S of encoded values (|err| <= count u/2) times encoded 1/count (|err| <= u/2), truncated:
    # |S| u/2 + u/2 + u (+ a u^2 term)
    u = 2.0 ** -prot.fixedpoint.frac_bits
    counts = tf.nn.conv2d(np.ones(x.shape[:3] + (1,)), np.ones((pool, pool, 1, 1)), strides, padding).numpy()
    assert_close(got, expected, np.abs(expected) * counts * u / 2 + 1.5 * u + counts * u * u)


@given(x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4), elements=VALUE),
       data=st.data())
def test_shape_ops(prot, x, data):
    a = prot.share(x, "alice")
    tol = x.size * encode_tol(prot) + encode_tol(prot)
    axis = data.draw(st.one_of(st.none(), st.integers(0, x.ndim - 1)))
    keep = data.draw(st.booleans())
    assert_close(reveal(prot, a.reduce_sum(axis=axis, keepdims=keep)), x.sum(axis=axis, keepdims=keep), tol)
    assert_close(reveal(prot, a.reshape([-1])), x.reshape(-1), encode_tol(prot))
    perm = data.draw(st.permutations(range(x.ndim)))
    assert_close(reveal(prot, a.transpose(perm)), x.transpose(perm), encode_tol(prot))
    assert_close(reveal(prot, a[..., ::2]), x[..., ::2], encode_tol(prot))
    assert_close(reveal(prot, a[:1]), x[:1], encode_tol(prot))
    both = prot.concat([a, prot.public(x), a], axis=0)
    assert_close(reveal(prot, both), np.concatenate([x, x, x], 0), encode_tol(prot))
    assert isinstance(both, type(a))


def test_scalars_and_mixed_python_values(prot):
    a = prot.share(2.0, "alice")
    b = prot.share(5.0, "bob")
    assert reveal(prot, a + b) == 7.0
    assert reveal(prot, a + 1.5) == 3.5
    assert reveal(prot, 10.0 - a) == 8.0
    assert reveal(prot, a * 0.5) == 1.0


def test_reveal_is_on_the_receivers_device(prot, config):
    a = prot.share(np.ones(3), "alice")
    out = a.reveal(to="bob")
    assert out.device.endswith(config.get_player("bob").device.split("/")[-1])
    assert out.dtype == tf.float64
    assert a.reveal(to="alice", dtype=tf.float32).dtype == tf.float32


def test_ops_inside_tf_function(prot):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(3, 4)), rng.normal(size=(4, 2))

    @tf.function
    def run(x, y):
        a, b = prot.share(x, "alice"), prot.share(y, "bob")
        return ((a @ b) * 2.0 + prot.public(np.ones((3, 2)))).reveal(to="alice")

    expected = (x @ y) * 2 + 1
    tol = 2 * matmul_tol(prot, x, y) + mul_tol(prot, x @ y, np.full_like(x @ y, 2.0)) + encode_tol(prot)
    for _ in range(2):
        assert_close(run(tf.constant(x), tf.constant(y)).numpy(), expected, tol)
