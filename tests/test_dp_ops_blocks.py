"""The native per-record Conv2D kernel gradient's register blocks: units that fill one, two or more SIMD vectors
exactly or with a padded tail, and gradient rows that fill the 8- and 16-row blocks with and without leftovers,
against a float64 numpy oracle (an einsum over the windows, another formulation than tests/test_dp_ops.py's)."""

import numpy as np
import pytest
import tensorflow as tf

from tfe_lite.ops.dp import per_record_conv2d_kernel_grad

# (input shape, units, kernel, strides): rows = kh * kw * in; 16 float32 (8 float64) lanes per vector.
BLOCK_CASES = [
    ((2, 12, 12, 1), 16, (8, 8), (2, 2)),  # 64 rows, one full vector: Opacus's first layer, smaller
    ((2, 9, 9, 3), 32, (3, 3), (1, 1)),  # 27 rows (8-row blocks + 3 left), two full vectors
    ((2, 9, 9, 3), 37, (3, 3), (2, 1)),  # two vectors and a padded third
    ((3, 7, 6, 5), 17, (2, 3), (1, 2)),  # 30 rows, a full vector and a padded one
    ((1, 6, 6, 2), 48, (1, 1), (1, 1)),  # 2 rows (no full block), three vectors
    ((2, 10, 10, 16), 8, (4, 4), (2, 2)),  # 256 rows, 16-row blocks, half a float32 vector
]


def _oracle(x, g, kernel, strides):
    (kh, kw), (sh, sw) = kernel, strides
    out_h, out_w = g.shape[1], g.shape[2]
    out = np.zeros((x.shape[0], kh, kw, x.shape[-1], g.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            window = x[:, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw, :]
            out[:, i, j] = np.einsum("ryxc,ryxu->rcu", window, g)
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", range(len(BLOCK_CASES)))
def test_register_blocks_match_oracle(case, dtype):
    shape, units, kernel, strides = BLOCK_CASES[case]
    rng = np.random.default_rng(100 + case)
    out_h = (shape[1] - kernel[0]) // strides[0] + 1
    out_w = (shape[2] - kernel[1]) // strides[1] + 1
    x = rng.normal(size=shape)
    g = rng.normal(size=(shape[0], out_h, out_w, units))
    got = per_record_conv2d_kernel_grad(tf.constant(x, dtype), tf.constant(g, dtype), kernel, strides=strides)
    assert got.shape == (shape[0], *kernel, shape[-1], units)
    # float32: each output sums out_h * out_w products of N(0, 1) values; rounding grows like sqrt(terms).
    tol = 1e-12 if dtype == "float64" else 2e-6 * np.sqrt(out_h * out_w) * 4
    np.testing.assert_allclose(got.numpy(), _oracle(x, g, kernel, strides), rtol=0, atol=tol)
