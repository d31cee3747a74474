"""Argument and shape checks of the Pond operations: each raises a named error before any op is built."""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

from tfe_lite.errors import ConfigError, EncodingError, ShapeError


def pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return tuple(value)
    raise ConfigError(f"Received an invalid value for `{name}`, expected a positive int or a pair of them. Received: {name}={value!r}")


def padding(value: str) -> str:
    if not isinstance(value, str) or value.upper() not in ("SAME", "VALID"):
        raise ConfigError(f"Received an invalid value for `padding`, expected 'SAME' or 'VALID'. Received: padding={value!r}")
    return value.upper()


def integer_scalar(value, fixedpoint, name: str) -> int:
    """An exact integer factor: it must be encodable itself (``|value| < 2**int_bits``)."""
    if abs(value) >= fixedpoint.bound:
        raise EncodingError(
            f"Received an integer scalar `{name}`={value} outside the fixed-point range (-{fixedpoint.bound:g}, "
            f"{fixedpoint.bound:g}) = ±2**int_bits: the product would wrap. Scale it or choose a config with more int_bits."
        )
    return int(value)


def is_integer_scalar(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def broadcast(op: str, x, y) -> None:
    try:
        tf.broadcast_static_shape(x.shape, y.shape)
    except ValueError:
        raise ShapeError(f"Cannot {op} operands of shapes {x.shape} and {y.shape}: they do not broadcast.") from None


def known_rank(x, name: str, op: str) -> int:
    if x.rank is None:
        raise ShapeError(f"Cannot {op}: `{name}` has unknown rank; the protocol needs operands of known shape.")
    return x.rank


def matmul(x, y) -> None:
    rx, ry = known_rank(x, "x", "matmul"), known_rank(y, "y", "matmul")
    if rx < 2 or rx != ry or x.shape[-1] != y.shape[-2] or x.shape[:-2] != y.shape[:-2]:
        raise ShapeError(
            f"Cannot matmul operands of shapes {x.shape} and {y.shape}: matmul needs two tensors of the same "
            "rank >= 2, equal leading (batch) dimensions and x.shape[-1] == y.shape[-2]."
        )


def reshape(shape: tf.TensorShape, target) -> list[int]:
    try:
        target = [int(d) for d in target]
    except (TypeError, ValueError):
        raise ShapeError(f"Received an invalid value for `shape`, expected a list of ints. Received: shape={target!r}") from None
    size = shape.num_elements()
    known = int(np.prod([d for d in target if d != -1]))
    unknown = target.count(-1)
    ok = unknown <= 1 and all(d >= -1 for d in target) and (
        (unknown == 0 and known == size) or (unknown == 1 and known > 0 and size % known == 0) or (unknown == 1 and size == 0))
    if not ok:
        raise ShapeError(f"Cannot reshape a tensor of shape {shape} ({size} elements) to {target}.")
    return target


def transpose(shape: tf.TensorShape, perm) -> list[int] | None:
    if perm is None:
        return None
    rank = shape.rank
    try:
        perm = [int(p) for p in perm]
    except (TypeError, ValueError):
        raise ShapeError(f"Received an invalid value for `perm`, expected a permutation of range({rank}). Received: perm={perm!r}") from None
    if sorted(perm) != list(range(rank)):
        raise ShapeError(f"Cannot transpose a tensor of shape {shape} with perm={perm}: expected a permutation of range({rank}).")
    return perm


def axis(shape: tf.TensorShape, value, op: str):
    """``value`` (None, an int or ints) checked against the rank of ``shape``."""
    if value is None:
        return None
    axes = [value] if isinstance(value, (int, np.integer)) else list(value)
    rank = shape.rank
    for a in axes:
        if not isinstance(a, (int, np.integer)) or isinstance(a, bool) or not -rank <= a < rank:
            raise ShapeError(f"Cannot {op} a tensor of shape {shape} over axis={value!r}: expected axes in [-{rank}, {rank}).")
    return value


def slice_shape(shape: tf.TensorShape, index) -> None:
    """Check ``tensor[index]`` on a tensor of ``shape`` by TensorFlow's own static shape inference."""
    def probe():
        return tf.zeros(shape, tf.int8)[index]

    try:
        tf.function(probe, autograph=False).get_concrete_function()
    except (ValueError, TypeError, IndexError, tf.errors.InvalidArgumentError) as error:
        reason = str(error).splitlines()[0]
        raise ShapeError(f"Cannot index a tensor of shape {shape} with {index!r}: {reason}") from None


def conv2d(x, filters, padding_: str) -> None:
    if x.rank != 4 or filters.rank != 4 or x.shape[3] != filters.shape[2]:
        raise ShapeError(
            f"conv2d expects x of shape [N, H, W, C] and filters of shape [kh, kw, C, C_out]. "
            f"Received: x.shape={x.shape}, filters.shape={filters.shape}"
        )
    if padding_ == "VALID" and (x.shape[1] < filters.shape[0] or x.shape[2] < filters.shape[1]):
        raise ShapeError(f"conv2d with VALID padding needs the input at least as large as the filter. Received: x.shape={x.shape}, filters.shape={filters.shape}")


def pool2d(op: str, x, pool_size, padding_: str) -> None:
    if x.rank != 4:
        raise ShapeError(f"{op} expects x of shape [N, H, W, C]. Received: x.shape={x.shape}")
    if padding_ == "VALID" and (x.shape[1] < pool_size[0] or x.shape[2] < pool_size[1]):
        raise ShapeError(f"{op} with VALID padding needs the input at least as large as the window. Received: x.shape={x.shape}, pool_size={pool_size}")


def window_counts(size: int, window: int, stride: int, padding_: str) -> np.ndarray:
    """How many in-bounds elements each output window of one axis covers (TensorFlow's padding rule)."""
    if padding_ == "VALID":
        out = (size - window) // stride + 1
        return np.full(out, window, np.float64)
    out = -(-size // stride)
    pad_before = max((out - 1) * stride + window - size, 0) // 2
    starts = np.arange(out) * stride - pad_before
    return (np.minimum(starts + window, size) - np.maximum(starts, 0)).astype(np.float64)
