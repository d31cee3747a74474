"""The clippers' faster paths against one-record-at-a-time oracles: space-to-depth convolution kernel
gradients, pooling layers (and the MaxPoolGrad pfor rule), the Gram form where it is chosen."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfe_lite.ops.dp import same_padding
from tfe_lite.privacy.clipping import GhostClipper, VectorizedClipper, ghost
from tfe_lite.privacy.clipping.conv import conv2d_kernel_grads, uses_space_to_depth


def _numpy_kernel_grads(a, g, kernel, strides, padding):
    """``grads[r, i, j, c, u] = sum_{y, x} a_pad[r, y sh + i, x sw + j, c] g[r, y, x, u]`` in float64 loops."""
    (kh, kw), (sh, sw) = kernel, strides
    if padding == "same":
        top, bottom = same_padding(a.shape[1], kh, sh, 1)
        left, right = same_padding(a.shape[2], kw, sw, 1)
        a = np.pad(a, [(0, 0), (top, bottom), (left, right), (0, 0)])
    out_h, out_w = g.shape[1], g.shape[2]
    grads = np.zeros((a.shape[0], kh, kw, a.shape[3], g.shape[3]))
    for i in range(kh):
        for j in range(kw):
            window = a[:, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw, :]
            grads[:, i, j] = np.einsum("ryxc,ryxu->rcu", window.astype(np.float64), g.astype(np.float64))
    return grads


CONVS = [  # height, width, channels, kernel, strides, padding, units
    (28, 28, 1, (8, 8), (2, 2), "same", 4),  # Opacus's MNIST network's first layer
    (13, 13, 1, (5, 5), (2, 2), "same", 3),  # a kernel the stride does not divide
    (9, 11, 2, (3, 2), (3, 2), "valid", 2),  # unequal strides and kernel sides, an input larger than read
    (7, 7, 2, (2, 3), (2, 1), "same", 3),
    (8, 8, 1, (1, 1), (2, 2), "valid", 2),  # stride above the kernel
    (10, 10, 3, (3, 3), (2, 2), "same", 2),  # three channels: the native op directly
    (10, 10, 1, (3, 3), (1, 1), "valid", 2),  # stride 1: the native op directly
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("height, width, channels, kernel, strides, padding, units", CONVS)
def test_conv2d_kernel_grads_match_the_loop_oracle(
    height, width, channels, kernel, strides, padding, units, dtype, backend
):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, height, width, channels)).astype(dtype)
    z = tf.nn.conv2d(a, np.zeros((*kernel, channels, units), dtype), strides, padding.upper())
    g = rng.normal(size=z.shape).astype(dtype)
    expected = _numpy_kernel_grads(a, g, kernel, strides, padding)
    got = conv2d_kernel_grads(tf.constant(a), tf.constant(g), kernel, strides=strides, padding=padding)
    assert got.dtype == dtype and got.shape == expected.shape
    tolerance = {"float32": 1e-4, "float64": 1e-12}[dtype]
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance * np.abs(expected).max())
    # Space-to-depth blocks for strided convolutions over one or two channels, on the pure-TF twin only.
    expected_route = backend == "tensorflow" and strides != (1, 1) and channels <= 2
    assert uses_space_to_depth(a.shape, z.shape, strides, 1, padding) == expected_route


def test_conv2d_kernel_grads_of_an_empty_batch():
    a = tf.zeros([0, 28, 28, 1])
    g = tf.zeros([0, 14, 14, 4])
    assert conv2d_kernel_grads(a, g, 8, strides=2, padding="same").shape == (0, 8, 8, 1, 4)


def _mse(y, y_pred, sample_weight):
    return keras.losses.MeanSquaredError().call(y, y_pred)


def _reference(model, x, y):
    """Flattened gradient of each example's loss, one example at a time."""
    rows = []
    for r in range(x.shape[0]):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(_mse(y[r : r + 1], model(x[r : r + 1], training=True), None))
        grads = tape.gradient(loss, model.trainable_variables)
        rows.append(np.concatenate([np.ravel(g) for g in grads]))
    return np.array(rows)


def _pooling_cnn(dtype, activation):
    return keras.Sequential(
        [
            keras.Input((12, 12, 1), dtype=dtype),
            keras.layers.Conv2D(4, 5, strides=2, padding="same", activation=activation, dtype=dtype),
            keras.layers.MaxPooling2D(2, strides=1, dtype=dtype),
            keras.layers.Conv2D(3, 2, strides=1, padding="valid", activation=activation, dtype=dtype),
            keras.layers.AveragePooling2D(2, dtype=dtype),
            keras.layers.Flatten(dtype=dtype),
            keras.layers.Dense(3, dtype=dtype),
        ]
    )


@pytest.mark.parametrize(
    "dtype, activation, rtol",
    [("float64", "relu", 1e-9), ("float32", "tanh", 2e-4)],  # float32: oneDNN's MaxPoolGrad; tanh, no ties
)
def test_pooling_models_match_one_at_a_time(dtype, activation, rtol):
    keras.utils.set_random_seed(3)
    model = _pooling_cnn(dtype, activation)
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(6, 12, 12, 1)).astype(dtype))
    y = tf.constant(rng.normal(size=(6, 3)).astype(dtype))
    expected = _reference(model, x, y)
    norms = np.linalg.norm(expected, axis=1)
    factors = tf.constant(rng.uniform(0.1, 1.0, size=6).astype(dtype))
    expected_sum = factors.numpy().astype(np.float64) @ expected
    atol = rtol * np.abs(expected).max()
    vectorized = VectorizedClipper(model, model.trainable_variables, _mse)
    grads, _, _ = vectorized.per_record_gradients(x, y)
    np.testing.assert_allclose(np.concatenate([np.reshape(g, (6, -1)) for g in grads], 1), expected, rtol=rtol,
                               atol=atol)
    for clipper in (vectorized, GhostClipper(model, model.trainable_variables, _mse)):
        step = tf.function(lambda x, y, f: (lambda r: (r.norms, r.weighted_sum(f)))(clipper(x, y)))
        got_norms, got_sum = step(x, y, factors)
        np.testing.assert_allclose(got_norms, norms, rtol=rtol)
        np.testing.assert_allclose(np.concatenate([np.ravel(s) for s in got_sum]), expected_sum, rtol=rtol,
                                   atol=atol)


def test_the_max_pool_grad_rule_runs_inside_the_vectorized_graph():
    model = _pooling_cnn("float32", "tanh")
    clipper = VectorizedClipper(model, model.trainable_variables, _mse)
    graph = tf.function(clipper.per_record_gradients).get_concrete_function(
        tf.TensorSpec([4, 12, 12, 1]), tf.TensorSpec([4, 3])
    ).graph
    pool_grads = [op for op in graph.get_operations() if op.type == "MaxPoolGrad"]
    assert pool_grads and all(op.inputs[1].op.type == "MaxPool" for op in pool_grads)


@pytest.mark.parametrize(
    "rows, d, u, keep, gram",
    [
        (1, 8, 8, True, True),  # one row: Gram is the norm product
        (2, 16, 16, True, True),  # 4 * 32 < 256
        (2, 8, 8, True, False),  # 4 * 16 = 64 is not below 64: the kept gradients serve the clipped sum too
        (2, 8, 8, False, True),  # not kept: only the norms compare, 2 * 16 < 64
        (196, 64, 16, True, False),  # Opacus's first convolution: per-record gradients
        (None, 8, 8, True, False),  # unknown rows
    ],
)
def test_gram_is_chosen_where_it_makes_the_step_cheaper(rows, d, u, keep, gram):
    assert ghost._gram_is_cheaper(rows, d, u, keep) is gram


@pytest.mark.parametrize(
    "build, shape, method",
    [
        (lambda: keras.layers.Dense(16, dtype="float64"), (2, 16), "Gram"),
        (lambda: keras.layers.Dense(8, dtype="float64"), (2, 8), "per-record (kept)"),
        (lambda: keras.layers.Conv2D(8, 3, dtype="float64"), (3, 3, 4), "Gram of patches"),  # one output pixel
        (lambda: keras.layers.Conv2D(4, 3, strides=2, dtype="float64"), (9, 9, 1), "per-record (kept)"),
    ],
)
def test_ghost_norms_by_each_method_match_one_at_a_time(build, shape, method):
    keras.utils.set_random_seed(5)
    inputs = keras.Input(shape, dtype="float64")
    h = keras.layers.Flatten(dtype="float64")(build()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, dtype="float64")(h))
    rng = np.random.default_rng(6)
    x, y = tf.constant(rng.normal(size=(5, *shape))), tf.constant(rng.normal(size=(5, 3)))
    expected = _reference(model, x, y)
    clipper = GhostClipper(model, model.trainable_variables, _mse)
    grads_z, acts = _tapped(clipper, x, y)
    (layer, _, _) = clipper._taps[0]
    assert ghost._layer_records(layer, acts[0], grads_z[0], None).method == method
    factors = tf.constant(rng.uniform(0.1, 1.0, size=5))
    result = clipper(x, y)
    np.testing.assert_allclose(result.norms, np.linalg.norm(expected, axis=1), rtol=1e-9)
    got = np.concatenate([np.ravel(s) for s in result.weighted_sum(factors)])
    np.testing.assert_allclose(got, factors.numpy() @ expected, rtol=1e-9, atol=1e-12)


def _tapped(clipper, x, y):
    with tf.GradientTape() as tape:
        y_pred, zs, acts = clipper._tap_model(x, training=True)
        total = tf.reduce_sum(_mse(y, y_pred, None))
    return tape.gradient(total, zs), acts
