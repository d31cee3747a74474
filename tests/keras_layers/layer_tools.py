"""Helpers of the private-layer tests: private twins of Keras layers, eager runs, error bounds.

Bounds, with ulp ``u = 2**-f`` (see tests/protocols/oracle.py): an input is encoded within ``u/2``; a product
of encoded values adds ``|x| u/2 + |y| u/2 + u^2/4`` per term and ``u`` for the truncation; relu and max are
exact on the encodings (1-Lipschitz: they pass input errors on unchanged); sigmoid, tanh and softmax add the
bounds their docstrings state (2**-13, 2**-12, 2**-12) to the input error times their Lipschitz constant
(1/4, 1 and 1/2 in the max norm).
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "protocols"))
from oracle import assert_close, conv_tol, matmul_tol, ulp  # noqa: E402,F401

from tfe_lite.keras_layers import private_layer  # noqa: E402

CLIENT, OWNER = "client", "model-owner"
APPROXIMATION = {"linear": (1.0, 0.0), "relu": (1.0, 0.0), "sigmoid": (0.25, 2.0**-13), "tanh": (1.0, 2.0**-12),
                 "softmax": (0.5, 2.0**-12)}


def twin(prot, keras_layer, input_shape):
    """The private version of a built Keras layer, its weights shared by the model owner."""
    return private_layer(keras_layer, input_shape, protocol=prot, model_owner=OWNER)


def run(prot, layer, *inputs):
    """Eagerly: share each input from the client, apply ``layer``, reveal to the client (float64 numpy)."""
    shared = [prot.share(x, CLIENT) for x in inputs]
    out = layer(shared if len(inputs) > 1 else shared[0])
    return out.reveal(to=CLIENT).numpy()


def encoded(prot, x):
    """The real value of x's fixed-point encoding (what the protocol computes on)."""
    scale = 2.0 ** prot.fixedpoint.frac_bits
    return np.round(np.asarray(x, np.float64) * scale) / scale


def activation_tol(name, tol, value=None):
    """Error after the activation ``name`` of a pre-activation with error ``tol``."""
    lipschitz, bound = APPROXIMATION[name]
    if name == "softmax":
        return lipschitz * np.max(tol, axis=-1, keepdims=True) + bound
    return lipschitz * tol + bound


def dense_tol(prot, x, kernel, activation="linear", bias=True):
    """Dense: the matmul bound of the encoded operands, the bias encoding, then the activation."""
    x2 = x.reshape(-1, x.shape[-1])
    tol = matmul_tol(prot, x2, kernel).reshape(x.shape[:-1] + (kernel.shape[-1],))
    return activation_tol(activation, tol + (ulp(prot) / 2 if bias else 0.0))


def keras_float64(layer_cls, *args, **kwargs):
    """A Keras layer computing in float64, so the twin's own rounding stays far below the bounds."""
    return layer_cls(*args, dtype="float64", **kwargs)


def float64_models():
    """Context manager: Keras layers and models made inside compute in float64 (the twin's own rounding,
    ~1e-16 relative, is then far below the fixed-point bounds)."""
    import contextlib

    import keras

    @contextlib.contextmanager
    def scope():
        # Keras caches its global dtype policy on first use: set and restore it with floatx.
        previous, policy = keras.config.floatx(), keras.config.dtype_policy()
        keras.config.set_floatx("float64")
        keras.config.set_dtype_policy("float64")
        try:
            yield
        finally:
            keras.config.set_floatx(previous)
            keras.config.set_dtype_policy(policy)

    return scope()


def _affine_tol(prot, op, x, e, kernel):
    """Elementwise bound after ``x W + b`` (Dense) or ``conv(x, W) + b`` of an input with errors ``e``:
    ``e (|W| + u/2) + |x| 1 u/2 + u`` (truncation) ``+ u/2`` (the bias's encoding)."""
    import tensorflow as tf

    u = ulp(prot)
    w = np.abs(kernel)
    if kernel.ndim == 2:
        flat_x, flat_e = np.abs(x).reshape(-1, x.shape[-1]), e.reshape(-1, x.shape[-1])
        out = flat_e @ (w + u / 2) + flat_x @ np.ones_like(w) * u / 2
        return out.reshape(x.shape[:-1] + (w.shape[-1],)) + 1.5 * u

    def conv(a, b):
        return tf.nn.conv2d(a, b, op.strides, op.padding.upper()).numpy()

    return conv(e, w + u / 2) + conv(np.abs(x), np.ones_like(w)) * u / 2 + 1.5 * u


def model_tol(prot, model, inputs):
    """Elementwise bounds on the errors of the private model's outputs, propagated through the Keras graph
    from the actual float64 activations; returns ``(bounds, float64 outputs)``.

    Dense / Conv2D: :func:`_affine_tol`; a BatchNormalization ``x s + t`` applied as an affine:
    ``e (|s| + u/2) + |x| u/2 + 1.5 u``, or folded into the affine layer before it: the bound of that layer
    with the kernel ``W s`` (the larger of the two is kept, so either conversion is covered); relu, max
    pooling (the largest error of the window), reshaping, padding and dropout pass the errors on; an average
    adds ``|sum| u/2 + u`` for the encoded ``1/count``; Add sums errors, Multiply ``e_a |b| + e_b |a| + e_a e_b
    + u``; the activations as in :func:`activation_tol`.
    """
    import keras
    import tensorflow as tf

    u = ulp(prot)
    functional = model._functional if isinstance(model, keras.Sequential) else model
    flat_inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    values = {id(t): np.asarray(x, np.float64) for t, x in zip(functional.inputs, flat_inputs)}
    errors = {id(t): np.full(np.shape(x), u / 2) for t, x in zip(functional.inputs, flat_inputs)}
    affine_inputs = {}  # output of a Dense/Conv2D without activation -> (layer, its input, its input's errors)
    for depth in sorted(functional._nodes_by_depth, reverse=True):
        for node in functional._nodes_by_depth[depth]:
            if node.is_input:
                continue
            op, ins = node.operation, node.input_tensors
            xs = [values[id(t)] for t in ins]
            es = [errors[id(t)] for t in ins]
            listed = isinstance(op, (keras.layers.Concatenate, keras.layers.Add, keras.layers.Subtract,
                                     keras.layers.Multiply, keras.layers.Average))
            if isinstance(op, keras.layers.Layer):
                out = np.asarray(op(xs if listed else xs[0]), np.float64)
            else:
                out = np.asarray(op(*xs), np.float64)
            e, x = es[0], xs[0]
            kind = type(op).__name__
            if isinstance(op, (keras.layers.Dense, keras.layers.Conv2D)):
                pre = _affine_tol(prot, op, x, e, np.asarray(op.kernel, np.float64))
                e = activation_tol(op.activation.__name__, pre)
                if op.activation.__name__ == "linear":
                    affine_inputs[id(node.outputs[0])] = (op, x, es[0])
            elif isinstance(op, keras.layers.BatchNormalization):
                s = np.asarray(op.gamma) / np.sqrt(np.asarray(op.moving_variance) + op.epsilon)
                shape = [1] * x.ndim
                shape[op.axis] = s.size
                e = e * (np.abs(s).reshape(shape) + u / 2) + np.abs(x) * u / 2 + 1.5 * u
                if id(ins[0]) in affine_inputs:
                    layer, x_in, e_in = affine_inputs[id(ins[0])]
                    e = np.maximum(e, _affine_tol(prot, layer, x_in, e_in, np.asarray(layer.kernel, np.float64) * s))
            elif isinstance(op, (keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D)):
                count = np.prod(op.pool_size) if hasattr(op, "pool_size") else np.prod(x.shape[1:3])
                e = np.asarray(op(e), np.float64) + np.asarray(op(np.abs(x)), np.float64) * count * u / 2 + u
            elif isinstance(op, (keras.layers.Activation, keras.layers.Softmax)):
                name = "softmax" if isinstance(op, keras.layers.Softmax) else op.activation.__name__
                e = activation_tol(name, e)
            elif kind in ("Add", "Subtract"):
                e = sum(es)
            elif kind == "Multiply":
                (a, b), (ea, eb) = (np.abs(v) for v in xs), es
                e = ea * b + eb * a + ea * eb + u
            elif isinstance(op, keras.layers.Concatenate):
                e = np.asarray(op(es), np.float64)
            else:  # relu, max pooling, reshaping, padding, dropout: errors pass through the same map
                e = np.asarray(op(e), np.float64)
            values[id(node.outputs[0])] = out
            errors[id(node.outputs[0])] = np.broadcast_to(e, out.shape)
    return [errors[id(t)] for t in functional.outputs], [values[id(t)] for t in functional.outputs]
