"""Per-record Conv2D kernel gradients (native op and pure-TF twin) against Conv2DBackpropFilter per record."""

import numpy as np
import pytest
import tensorflow as tf

from tfe_lite.errors import ShapeError
from tfe_lite.ops.dp import per_record_conv2d_kernel_grad

CASES = [
    # (input shape, units, kernel, strides, dilations, padding)
    ((3, 9, 8, 4), 5, (3, 3), (1, 1), (1, 1), "valid"),
    ((3, 9, 8, 4), 5, (3, 3), (1, 1), (1, 1), "same"),
    ((2, 9, 8, 3), 4, (2, 3), (2, 1), (1, 1), "same"),
    ((2, 11, 10, 2), 3, (3, 2), (3, 2), (1, 1), "valid"),
    ((2, 9, 9, 3), 2, (3, 3), (1, 1), (2, 2), "valid"),
    ((2, 9, 9, 3), 2, (3, 3), (1, 1), (2, 1), "same"),
    ((1, 5, 5, 1), 1, (1, 1), (1, 1), (1, 1), "valid"),
    ((2, 40, 40, 3), 4, (3, 3), (1, 1), (1, 1), "same"),  # 1,600 positions: several im2col blocks
]


def _out_size(size, kernel, stride, dilation, padding):
    span = (kernel - 1) * dilation + 1
    return -(-size // stride) if padding == "same" else max((size - span) // stride + 1, 0)


def _reference(x, g, kernel, strides, dilations, padding):
    """The definition, position by position, in float64 numpy (SAME pads like TensorFlow: extra at the end)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    out_h, out_w = g.shape[1], g.shape[2]
    if padding == "same":
        pad_h = max((out_h - 1) * sh + (kh - 1) * dh + 1 - x.shape[1], 0)
        pad_w = max((out_w - 1) * sw + (kw - 1) * dw + 1 - x.shape[2], 0)
        x = np.pad(x, [(0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)])
    out = np.zeros((x.shape[0], kh, kw, x.shape[-1], g.shape[-1]))
    for y in range(out_h):
        for z in range(out_w):
            for i in range(kh):
                for j in range(kw):
                    pixel = x[:, y * sh + i * dh, z * sw + j * dw, :]
                    out[:, i, j] += pixel[:, :, None] * g[:, y, z, None, :]
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_conv2d_backprop_filter_per_record(backend, case, dtype):
    shape, units, kernel, strides, dilations, padding = CASES[case]
    rng = np.random.default_rng(case)
    out_h = _out_size(shape[1], kernel[0], strides[0], dilations[0], padding)
    out_w = _out_size(shape[2], kernel[1], strides[1], dilations[1], padding)
    x = rng.normal(size=shape)
    g = rng.normal(size=(shape[0], out_h, out_w, units))
    got = per_record_conv2d_kernel_grad(
        tf.constant(x, dtype), tf.constant(g, dtype), kernel, strides=strides, dilations=dilations, padding=padding
    )
    assert got.dtype == dtype and got.shape == (shape[0], *kernel, shape[-1], units)
    expected = _reference(x, g, kernel, strides, dilations, padding)
    # float32: each output sums out_h * out_w products of N(0,1) values; rounding error grows like sqrt(terms).
    tol = 1e-12 if dtype == "float64" else 2e-6 * np.sqrt(out_h * out_w) * 4
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=tol)


def test_native_and_twin_agree(both_backends):
    rng = np.random.default_rng(7)
    x = tf.constant(rng.normal(size=(4, 12, 12, 3)), tf.float32)
    g = tf.constant(rng.normal(size=(4, 6, 6, 5)), tf.float32)
    native, twin = both_backends(lambda: per_record_conv2d_kernel_grad(x, g, 3, strides=2, padding="same"))
    np.testing.assert_allclose(native, twin, rtol=1e-5, atol=1e-5)


def test_zero_records_and_empty_output(backend):
    empty = per_record_conv2d_kernel_grad(tf.zeros([0, 6, 6, 2]), tf.zeros([0, 4, 4, 3]), 3)
    assert empty.shape == (0, 3, 3, 2, 3)
    # A kernel wider than the unpadded input: no output positions, so every gradient is zero.
    none = per_record_conv2d_kernel_grad(tf.ones([2, 2, 2, 1]), tf.zeros([2, 0, 0, 3]), 3)
    assert none.shape == (2, 3, 3, 1, 3) and not np.any(none.numpy())


def test_inside_tf_function_with_unknown_batch(backend):
    fn = tf.function(
        lambda x, g: per_record_conv2d_kernel_grad(x, g, 3),
        input_signature=[tf.TensorSpec([None, 6, 6, 2]), tf.TensorSpec([None, 4, 4, 3])],
    )
    rng = np.random.default_rng(3)
    x, g = rng.normal(size=(3, 6, 6, 2)), rng.normal(size=(3, 4, 4, 3))
    np.testing.assert_allclose(
        fn(tf.constant(x, tf.float32), tf.constant(g, tf.float32)).numpy(),
        _reference(x, g, (3, 3), (1, 1), (1, 1), "valid"),
        atol=1e-4,
    )


def test_bad_arguments_are_named():
    x, g = tf.zeros([1, 5, 5, 1]), tf.zeros([1, 3, 3, 1])
    with pytest.raises(ShapeError, match="kernel_size"):
        per_record_conv2d_kernel_grad(x, g, (3, 0))
    with pytest.raises(ShapeError, match="strides"):
        per_record_conv2d_kernel_grad(x, g, 3, strides=(1, 2, 3))
    with pytest.raises(ShapeError, match="padding"):
        per_record_conv2d_kernel_grad(x, g, 3, padding="causal")
    with pytest.raises(ShapeError, match="rank-4"):
        per_record_conv2d_kernel_grad(tf.zeros([5, 5, 1]), g, 3)


def test_native_op_checks_the_gradient_shape(switch_backend):
    switch_backend("native")
    with pytest.raises(tf.errors.InvalidArgumentError, match="does not match the VALID output"):
        per_record_conv2d_kernel_grad(tf.zeros([1, 5, 5, 1]), tf.zeros([1, 4, 4, 1]), 3)
