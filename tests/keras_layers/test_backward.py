"""Each private layer's backward rule against TensorFlow's gradient of its Keras twin (same weights, same
batch, same upstream gradient), within bounds derived from the fixed-point resolution.

Bounds (``u = 2**-16``): the upstream gradient ``g`` and the inputs are encoded within ``u/2``; a product
adds :func:`oracle.mul_tol`; a matmul or convolution :func:`oracle.matmul_tol` / ``conv_tol``, plus the error
of its operands times the other operand's absolute sums. An activation's derivative adds the error of its
kept output (the approximation's stated bound plus the forward's error times its Lipschitz constant) times
``|g|`` and the derivative's own Lipschitz constant (1 for ``y (1 - y)``, 2 for ``1 - y**2``, 3 for softmax's
Jacobian rows). Local rules (pooling sums, reshapes, merges) are exact on the shares: they keep ``g``'s
encoding error, times the number of terms they add.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from layer_tools import APPROXIMATION, CLIENT, OWNER, assert_close, ulp
from oracle import matmul_tol

import tfe_lite.keras_layers as kl

L = keras.layers


def _keras_gradients(model, inputs, upstream):
    """TF's gradients of ``sum(model(inputs) * upstream)`` with respect to the inputs and the weights."""
    xs = [tf.constant(x, tf.float64) for x in inputs]
    with tf.GradientTape() as tape:
        tape.watch(xs)
        out = model(xs if len(xs) > 1 else xs[0], training=False)
        out = tf.cast(out, tf.float64)
        total = tf.reduce_sum(out * tf.constant(upstream, tf.float64))
    grads = tape.gradient(total, xs + [w.value for w in model.trainable_weights])
    return out.numpy(), [g.numpy() for g in grads[:len(xs)]], [g.numpy() for g in grads[len(xs):]]


def _private_gradients(prot, private, inputs, upstream):
    """The private layer's forward (save=True) and backward on the same batch and upstream gradient."""
    (step,) = private._steps
    shared = [prot.share(x, CLIENT) for x in inputs]
    out, kept = step.layer.forward(shared if step.as_list else shared[0], save=True)
    dx, dw = step.layer.backward(prot.share(upstream, CLIENT), kept)
    dxs = dx if step.as_list else [dx]
    reveal = lambda t: t.reveal(to=CLIENT).numpy()  # noqa: E731
    return reveal(out), [reveal(d) for d in dxs], {name: reveal(g) for name, g in dw.items()}


def _one_layer(layer, shapes, rng):
    inputs = [keras.Input(s, dtype="float64") for s in shapes]
    out = layer(inputs if len(inputs) > 1 else inputs[0])
    model = keras.Model(inputs, out)
    for w in model.weights:  # non-trivial biases
        w.assign(rng.normal(size=w.shape) * 0.4)
    return model


def _activation_derivative_tol(name, g, y, e_y, u):
    """Error of ``d activation`` applied to ``g``, from the kept output's error ``e_y`` (module docstring)."""
    lipschitz = {"linear": 0.0, "relu": 0.0, "sigmoid": 1.0, "tanh": 2.0, "softmax": 3.0}[name]
    spread = np.max(np.abs(g), axis=-1, keepdims=True) if name == "softmax" else np.abs(g)
    return lipschitz * spread * e_y + 3 * u + np.abs(g) * u


@pytest.mark.parametrize("activation", ["linear", "relu", "sigmoid", "tanh", "softmax"])
def test_dense_backward_matches_tensorflow(prot, activation):
    rng = np.random.default_rng(1)
    u = ulp(prot)
    model = _one_layer(L.Dense(5, activation=activation, dtype="float64"), [(7,)], rng)
    x, g = rng.normal(size=(6, 7)), rng.normal(size=(6, 5))
    out, (dx,), dw = _keras_gradients(model, [x], g)
    private = kl.secure(model, protocol=prot, model_owner=OWNER, client=CLIENT, optimize=False)
    p_out, (p_dx,), p_dw = _private_gradients(prot, private, [x], g)
    kernel = model.layers[-1].kernel.numpy()
    e_z = matmul_tol(prot, x, kernel) + u / 2
    lipschitz, bound = APPROXIMATION[activation]
    e_y = lipschitz * (np.max(e_z, -1, keepdims=True) if activation == "softmax" else e_z) + bound
    e_gz = _activation_derivative_tol(activation, g, out, e_y, u)
    # the exact pre-activation gradient, for the matmul bounds: TF's dx = g_z @ kernel^T
    z = x @ kernel + model.layers[-1].bias.numpy()
    with tf.GradientTape() as tape:
        zt = tf.constant(z)
        tape.watch(zt)
        yt = keras.activations.get(activation)(zt)
    g_z = tape.gradient(yt, zt, output_gradients=tf.constant(g)).numpy()
    tol_kernel = matmul_tol(prot, x.T, g_z) + np.abs(x).T @ e_gz
    tol_bias = e_gz.sum(axis=0)
    tol_dx = matmul_tol(prot, g_z, kernel.T) + e_gz @ np.abs(kernel).T
    assert_close(p_dw["kernel"], dw[0], tol_kernel)
    assert_close(p_dw["bias"], dw[1], tol_bias)
    assert_close(p_dx, dx, tol_dx)


@pytest.mark.parametrize("strides, padding", [(1, "valid"), (2, "same"), ((2, 1), "valid")])
def test_conv2d_backward_matches_tensorflow(prot, strides, padding):
    rng = np.random.default_rng(2)
    u = ulp(prot)
    model = _one_layer(L.Conv2D(4, 3, strides=strides, padding=padding, activation="relu", dtype="float64"), [(7, 6, 2)], rng)
    x = rng.normal(size=(3, 7, 6, 2))
    g = rng.normal(size=(3, *model.output_shape[1:]))
    _, (dx,), dw = _keras_gradients(model, [x], g)
    private = kl.secure(model, protocol=prot, model_owner=OWNER, client=CLIENT, optimize=False)
    _, (p_dx,), p_dw = _private_gradients(prot, private, [x], g)
    kernel = model.layers[-1].kernel.numpy()
    pair = (strides, strides) if isinstance(strides, int) else strides
    pad = padding.upper()

    def filter_grad(a, b):  # sum over positions of input columns a times output gradients b
        return tf.compat.v1.nn.conv2d_backprop_filter(a, kernel.shape, b, [1, *pair, 1], pad).numpy()

    def input_grad(b, w):  # the adjoint of the convolution
        return tf.compat.v1.nn.conv2d_backprop_input(x.shape, w, b, [1, *pair, 1], pad).numpy()

    # g_z = g * mask: the mask is exact, the product adds |g| u/2 + u; then the bilinear bounds of the
    # encoded operands, as oracle.matmul_tol, with the sums of absolute values taken by the same map
    g_abs, e_gz = np.abs(g), np.abs(g) * u / 2 + 1.5 * u
    x_abs, ones_x, ones_g = np.abs(x), np.ones_like(x), np.ones_like(g)
    tol_w = (filter_grad(x_abs, ones_g) * u / 2 + filter_grad(ones_x, g_abs) * u / 2
             + filter_grad(x_abs, e_gz) + filter_grad(ones_x, ones_g) * u * u / 4 + u)
    w_abs, ones_w = np.abs(kernel), np.ones_like(kernel)
    tol_x = (input_grad(g_abs, ones_w) * u / 2 + input_grad(ones_g, w_abs) * u / 2 + input_grad(e_gz, w_abs)
             + input_grad(ones_g, ones_w) * u * u / 4 + u)
    assert_close(p_dw["kernel"], dw[0], tol_w)
    assert_close(p_dw["bias"], dw[1], e_gz.sum(axis=(0, 1, 2)) + u)
    assert_close(p_dx, dx, tol_x)


@pytest.mark.parametrize("layer, shape", [
    (lambda: L.MaxPooling2D(2), (6, 6, 3)),
    (lambda: L.MaxPooling2D(3, strides=2, padding="same"), (7, 5, 2)),
    (lambda: L.AveragePooling2D(2, strides=1), (5, 5, 2)),
    (lambda: L.AveragePooling2D(3, strides=2, padding="same"), (7, 6, 2)),
    (lambda: L.GlobalAveragePooling2D(), (4, 5, 3)),
    (lambda: L.GlobalMaxPooling2D(), (4, 5, 3)),
    (lambda: L.Flatten(), (3, 4, 2)),
    (lambda: L.Reshape((4, 6)), (3, 8)),
    (lambda: L.ZeroPadding2D(((1, 2), (0, 1))), (3, 4, 2)),
    (lambda: L.ReLU(), (10,)),
    (lambda: L.ReLU(max_value=0.5, negative_slope=0.25), (10,)),
    (lambda: L.LeakyReLU(negative_slope=0.2), (10,)),
    (lambda: L.Activation("tanh"), (10,)),
    (lambda: L.Softmax(), (6,)),
    (lambda: L.Rescaling(0.5), (10,)),
])
def test_local_and_comparison_layers_backward_match_tensorflow(prot, layer, shape):
    rng = np.random.default_rng(3)
    u = ulp(prot)
    model = _one_layer(layer(), [shape], rng)
    x = rng.normal(size=(4, *shape))
    x[0].flat[:2] = [1.0, 1.0]  # a tie, for the poolings (the first maximal element wins, as in TF)
    g = rng.normal(size=(4, *model.output_shape[1:]))
    out, (dx,), _ = _keras_gradients(model, [x], g)
    private = kl.secure(model, protocol=prot, model_owner=OWNER, client=CLIENT, optimize=False)
    _, (p_dx,), _ = _private_gradients(prot, private, [x], g)
    # at most 9 windows overlap an input element; approximations: their bound times |g| and a Jacobian term
    tol = 9 * 2.5 * u * (np.abs(g).max() + 1) + 3 * 2.0**-12 * np.abs(g).max() * (shape[-1] if isinstance(model.layers[-1], L.Softmax) else 2)
    assert_close(p_dx, dx, np.full(dx.shape, tol))


@pytest.mark.parametrize("layer", [L.Add, L.Subtract, L.Multiply, L.Average, lambda: L.Concatenate(axis=1)])
def test_merge_layers_backward_match_tensorflow(prot, layer):
    rng = np.random.default_rng(4)
    u = ulp(prot)
    model = _one_layer(layer(), [(3, 4), (3, 4)], rng)
    xs = [rng.normal(size=(2, 3, 4)) for _ in range(2)]
    g = rng.normal(size=(2, *model.output_shape[1:]))
    _, dxs, _ = _keras_gradients(model, xs, g)
    private = kl.secure(model, protocol=prot, model_owner=OWNER, client=CLIENT, optimize=False)
    _, p_dxs, _ = _private_gradients(prot, private, xs, g)
    g_max = np.abs(g).max()
    for p_dx, dx, other in zip(p_dxs, dxs, xs[::-1]):
        # g's encoding, and for Multiply one product with the other input (oracle.mul_tol)
        assert_close(p_dx, dx, np.full(dx.shape, g_max * u / 2 + np.abs(other).max() * u / 2 + 2 * u))


def test_dropout_in_training_drops_with_a_fresh_server_mask_and_routes_the_gradient_through_it(prot):
    rng = np.random.default_rng(5)
    u = ulp(prot)
    model = _one_layer(L.Dropout(0.5), [(2000,)], rng)
    private = kl.secure(model, protocol=prot, model_owner=OWNER, client=CLIENT, optimize=False)
    (step,) = private._steps
    x, g = np.ones((1, 2000)), rng.normal(size=(1, 2000))
    outs = []
    for _ in range(2):
        out, kept = step.layer.forward(prot.share(x, CLIENT), save=True)
        dx = step.layer.backward(prot.share(g, CLIENT), kept)[0].reveal(to=CLIENT).numpy()
        out = out.reveal(to=CLIENT).numpy()
        kept_mask = out > 1.0
        assert np.all(np.abs(out[kept_mask] - 2.0) <= 2 * u) and np.all(np.abs(out[~kept_mask]) <= u)
        assert abs(kept_mask.mean() - 0.5) < 0.05  # 2000 draws: 4.5 standard deviations
        assert_close(dx, np.where(kept_mask, 2 * g, 0.0), np.abs(g) * 2 * u + 2 * u)
        outs.append(kept_mask)
    assert (outs[0] != outs[1]).mean() > 0.3  # a fresh mask per step
    # inference: the identity
    assert_close(private.predict(x, verbose=0), x, np.full(x.shape, u))
