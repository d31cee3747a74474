"""Plaintext oracles and fixed-point error bounds for the protocol tests.

Bounds, with ulp ``u = 2**-f``: encoding rounds to within ``u/2``; a local truncation adds at most ``u``
(SecureML truncation yields floor(X/2^f) or floor(X/2^f)+1). For a product of encoded ``x~ = x + dx`` and
``y~ = y + dy``: ``x~ y~ - x y = x dy + y dx + dx dy``, so per output element of a sum of K products:
``sum_k (|x_k| + |y_k|) u/2 + K u^2/4 + u``.
"""

import numpy as np


def ulp(prot) -> float:
    return 2.0 ** -prot.fixedpoint.frac_bits


def encode_tol(prot) -> float:
    return ulp(prot) / 2


def mul_tol(prot, x, y):
    u = ulp(prot)
    return (np.abs(x) * u / 2 + np.abs(y) * u / 2 + u * u / 4) + u


def matmul_tol(prot, x, y):
    u = ulp(prot)
    k = x.shape[-1]
    return np.abs(x) @ np.ones_like(y) * u / 2 + np.ones_like(x) @ np.abs(y) * u / 2 + k * u * u / 4 + u


def conv_tol(prot, conv, x, w):
    """Same bound through a (bilinear) conv: sums of |x| and |w| over each window."""
    u = ulp(prot)
    k = w.shape[0] * w.shape[1] * w.shape[2]
    return (conv(np.abs(x), np.ones_like(w)) + conv(np.ones_like(x), np.abs(w))) * u / 2 + k * u * u / 4 + u


def assert_close(actual, expected, tol):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = np.abs(actual - expected)
    bad = err > tol
    assert not bad.any(), f"max error {err.max()} over tolerance (first offending index {np.argwhere(bad)[0]})"


def comparison_server_bytes(prot, n: int, magnitude_bits=None, product: bool = False, self_product: bool = False) -> int:
    """Bytes server1 sends server0 in one comparison of ``n`` elements, by the protocol ``prot`` runs."""
    from tfe_lite.protocols.pond import assisted, comparison

    if comparison.protocol_for(prot, n) == "assisted":
        return assisted.server_bytes(n, magnitude_bits, product, self_product)["server0->server1"] - 32
    return comparison.server_bytes(n, magnitude_bits, product, self_product)
