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
