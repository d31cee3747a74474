"""Comparisons, relu, maximum, reduce_max, argmax and max pooling: exact on the fixed-point encodings."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import tfe_lite
from tfe_lite.protocols import Pond, PrecomputedDealer


def _enc(prot, a):
    """The real values the protocol actually compares: the fixed-point encodings, decoded."""
    return np.round(np.asarray(a, np.float64) * prot.fixedpoint.scale) / prot.fixedpoint.scale


def _reveal(t):
    return t.reveal(to="alice").numpy()


def _values(prot):
    bound = prot.fixedpoint.bound - 1
    u = prot.fixedpoint.resolution
    edges = st.sampled_from([0.0, u, -u, 2 * u, -2 * u, bound, -bound, 1.0, -1.0])
    return st.one_of(edges, st.floats(-bound, bound))


@given(data=st.data())
def test_comparisons_are_exact(prot, data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    a = data.draw(hnp.arrays(np.float64, shape, elements=_values(prot)))
    b = data.draw(st.one_of(hnp.arrays(np.float64, shape, elements=_values(prot)), st.just(a.copy())))
    ea, eb = _enc(prot, a), _enc(prot, b)
    x, y = prot.share(a, "alice"), prot.share(b, "bob")
    for op, expected in ((lambda: x < y, ea < eb), (lambda: x > y, ea > eb), (lambda: x <= y, ea <= eb),
                         (lambda: x >= y, ea >= eb), (lambda: x < 0.5, ea < 0.5), (lambda: prot.sign(x), np.sign(ea))):
        np.testing.assert_array_equal(_reveal(op()), expected.astype(np.float64))


@given(data=st.data())
def test_relu_maximum_and_the_mask(compare_prot, data):
    prot = compare_prot
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
    a = data.draw(hnp.arrays(np.float64, shape, elements=_values(prot)))
    b = data.draw(hnp.arrays(np.float64, shape, elements=_values(prot)))
    ea, eb = _enc(prot, a), _enc(prot, b)
    value, mask = prot.relu(prot.share(a, "alice"), return_mask=True)
    np.testing.assert_array_equal(_reveal(value), np.maximum(ea, 0))
    np.testing.assert_array_equal(_reveal(mask), (ea >= 0).astype(np.float64))
    np.testing.assert_array_equal(_reveal(prot.maximum(prot.share(a, "alice"), prot.share(b, "bob"))), np.maximum(ea, eb))


@given(data=st.data())
def test_reduce_max_and_argmax_with_ties(compare_prot, data):
    prot = compare_prot
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=5))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    a = data.draw(hnp.arrays(np.float64, shape, elements=st.sampled_from([-2.0, 0.0, 1.5, 3.25])))  # many ties
    x = prot.share(a, "alice")
    np.testing.assert_array_equal(_reveal(prot.reduce_max(x, axis=axis)), a.max(axis=axis))
    np.testing.assert_array_equal(_reveal(prot.reduce_max(x, axis=axis, keepdims=True)), a.max(axis=axis, keepdims=True))
    onehot = np.moveaxis(np.eye(shape[axis])[a.argmax(axis=axis)], -1, axis)  # numpy: first maximum
    np.testing.assert_array_equal(_reveal(prot.argmax(x, axis=axis)), onehot)


def _max_pool(x, pool, strides, padding):
    """float64 max pooling with TensorFlow's padding rule (TensorFlow's own kernel rounds to float32)."""
    (kh, kw), (sh, sw) = [(v, v) if isinstance(v, int) else v for v in (pool, strides)]
    if padding == "SAME":
        pads = []
        for size, k, st_ in ((x.shape[1], kh, sh), (x.shape[2], kw, sw)):
            total = max((-(-size // st_) - 1) * st_ + k - size, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=-np.inf)
    out_h, out_w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    return np.stack([np.stack([x[:, i * sh:i * sh + kh, j * sw:j * sw + kw].max(axis=(1, 2)) for j in range(out_w)], 1)
                     for i in range(out_h)], 1)


@pytest.mark.parametrize("pool,strides,padding", [(2, None, "VALID"), (2, None, "SAME"), (3, 2, "SAME"), ((2, 3), (1, 2), "VALID")])
def test_max_pool2d_equals_tensorflow(compare_prot, pool, strides, padding):
    prot = compare_prot
    img = np.random.default_rng(1).uniform(-4000, 4000, size=(2, 7, 6, 3))
    expected = _max_pool(_enc(prot, img), pool, strides or pool, padding)
    assert np.allclose(expected, tf.nn.max_pool2d(img, pool, strides or pool, padding).numpy(), atol=1e-3)
    np.testing.assert_array_equal(_reveal(prot.max_pool2d(prot.share(img, "alice"), pool, strides, padding)), expected)


def test_traced_with_the_precomputed_dealer(config):
    dealer = PrecomputedDealer()
    prot = Pond(config, dealer=dealer, seed=8)
    img = np.random.default_rng(2).normal(size=(1, 4, 4, 2))

    def fn(t):
        return prot.max_pool2d(prot.relu(prot.share(t, "alice")), 2).reveal(to="alice")

    dealer.precompute_for(fn, tf.constant(img), runs=2)
    traced = tf.function(fn)
    expected = _max_pool(np.maximum(_enc(prot, img), 0), 2, 2, "VALID")
    for _ in range(2):
        np.testing.assert_array_equal(traced(tf.constant(img)).numpy(), expected)
    with pytest.raises(tf.errors.InvalidArgumentError, match="triple left"):
        traced(tf.constant(img))


def test_bad_arguments(prot):
    x = prot.share(np.ones((2, 3)), "alice")
    with pytest.raises(tfe_lite.ShapeError, match="axis=2"):
        prot.reduce_max(x, axis=2)
    with pytest.raises(tfe_lite.ShapeError, match="one axis"):
        prot.argmax(x, axis=(0, 1))
    with pytest.raises(tfe_lite.ShapeError, match="empty axis"):
        prot.reduce_max(prot.share(np.ones((2, 0)), "alice"), axis=1)
    with pytest.raises(tfe_lite.ShapeError, match="max_pool2d expects x of shape"):
        prot.max_pool2d(x, 2)
    with pytest.raises(tfe_lite.ShapeError, match="broadcast"):
        x < prot.share(np.ones(4), "bob")


def test_every_op_of_the_nonlinear_functions_is_placed_on_a_player(prot, config):
    """Found by the Keras placement audit: max_pool2d wrapped both shares in an unplaced op (it would run on
    the driver's device, holding both shares of one value)."""
    def compute(x):
        h = prot.max_pool2d(prot.relu(prot.share(x, "alice")), 2, padding="SAME")
        h = prot.reshape(h, [1, -1])
        return prot.softmax(prot.sigmoid(h) + prot.argmax(h) + prot.reduce_max(h, axis=1, keepdims=True)).reveal(to="alice")

    graph = tf.function(compute).get_concrete_function(tf.TensorSpec([1, 5, 5, 2], tf.float64)).graph
    devices = {p.device for p in config.players}
    unplaced = [(op.type, op.name, op.device) for op in graph.get_operations()
                if op.type not in ("Placeholder", "NoOp", "ReadVariableOp") and op.device not in devices
                and not op.name.startswith("Identity")]
    assert not unplaced, unplaced
