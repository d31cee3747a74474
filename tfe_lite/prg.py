"""ChaCha20 as TensorFlow ops: the cryptographically secure generator behind every random ring tensor.

The generator is the ChaCha20 block function of RFC 8439 (20 rounds) used in counter mode, with the
original 64-bit-counter / 64-bit-nonce layout of the 16 state words:

====== ============================= =================================================================
words  content                       from
====== ============================= =================================================================
0-3    "expand 32-byte k"            constants
4-11   256-bit key                   ``seed[i]`` gives words ``4 + 2i`` (low 32 bits), ``5 + 2i`` (high)
12-13  64-bit block counter          low word first; ``expand_seed`` counts from block 0
14-15  64-bit stream id              low word first: ``stream`` of :func:`expand_seed`
====== ============================= =================================================================

The 32-byte key is thus the little-endian serialization of the four int64 ``seed`` words. Each 64-byte
block yields 8 int64 outputs; output ``i`` is keystream bytes ``8i .. 8i+7`` read as a little-endian
int64, so outputs are uniform over Z/2^64 (every bit pattern of ``int64``). With block counter < 2^32 and
``stream = n1 + 2^32 n2`` this is exactly RFC 8439's keystream for counter word 12, nonce ``(0, n1, n2)``
(word 13 is its first nonce word, here the high half of the counter).

What it guarantees, per 256-bit key (under ChaCha20's standard security assumption):

- :func:`expand_seed`: 2^64 independent streams; each gives up to 2^63 blocks (2^69 bytes, 2^66 int64)
  that are indistinguishable from uniform for anyone without the key.
- :func:`derive_seed`: 2^64 fresh 256-bit seeds, ``derive_seed(key, c)`` = the first 32 bytes of block
  2^63 of stream ``c``. Blocks >= 2^63 are reserved for derivation, so a derived seed never equals
  keystream that :func:`expand_seed` hands out under the same key (domain separation), and one key may
  serve both. :func:`derive_seeds` derives several from one counter value: seed ``j`` is bytes
  ``32j .. 32j+31`` of the keystream of stream ``c`` from block 2^63 on (seed 0 is ``derive_seed(key, c)``).

Both functions are pure functions of their inputs (deterministic, stateless ops): fresh randomness comes
from fresh inputs, e.g. a counter ``tf.Variable`` incremented by the graph (:mod:`tfe_lite.random`).
The work runs in the native ``ChaCha20Keystream`` op when built (:mod:`tfe_lite.ops`, AVX-512, ~GB/s) or
in an equivalent vectorized pure TensorFlow implementation (bit-identical, slower); both have CPU kernels
for every dtype they use, so they run on any logical CPU device the caller places them on. Inside a
function that XLA compiles (``jit_compile=True``) the pure TensorFlow implementation serves, since the
native ops have no XLA kernels.

:func:`expand_normal`, also a pure function, turns the keystream of a stream into standard normals (the
DP-SGD noise of :mod:`tfe_lite.privacy.noise`) by the Box-Muller transform. Block ``b`` of the stream gives
the normals ``kb .. kb + k - 1`` (``k = 16`` for float32, ``8`` for float64; ``h = k / 2``):

* float32: the block's sixteen little-endian 32-bit words ``w_0 .. w_15`` (keystream bytes ``4i .. 4i+3``)
  give uniforms ``U(w) = ((w >> 8) + 1) / 2^24`` in (0, 1] (each word's top 24 bits);
* float64: its eight 64-bit words ``x_0 .. x_7`` (the int64 outputs ``8b .. 8b+7`` of :func:`expand_seed`)
  give ``U(x) = ((x >> 11) + 1) / 2^53`` (each word's top 53 bits);
* for ``j < h``, with ``U_j`` the uniform of word ``j``: ``r = sqrt(max(-2 ln U_j, 0))`` and
  ``t = 2 pi U_{h+j}`` (2 pi rounded to the dtype); normal ``kb + j`` is ``r cos t`` and normal
  ``kb + h + j`` is ``r sin t``.

With ``summands = s`` output ``i`` is ``(normal si + ... + normal si + s - 1) / sqrt(s)``, again a standard
normal; the normals no output needs (the end of the last block) are dropped. ``U`` is never 0, so every
output is finite; ``|normal|`` is at most ``sqrt(2 ln 2^24) = 5.77`` (float32) or ``8.57`` (float64), a
truncation of the tails at probabilities ``~8e-9`` and ``~1e-17``. The native ``ChaCha20Normal`` op
computes the same values as the pure TensorFlow twin up to floating-point rounding (libmvec's or the C
library's log/sin/cos against TensorFlow's): within a few units in the last place relative to
``max(r, 1)``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfe_lite import ops
from tfe_lite.errors import ConfigError, ShapeError

SEED_WORDS = 4  # int64 words in a 256-bit key or seed
BLOCK_INT64S = 8  # int64 outputs per 64-byte ChaCha20 block
#: Block counter of :func:`derive_seed` (2^63, as int64); :func:`expand_seed` uses blocks below it.
DERIVE_BLOCK = -(2**63)

_SIGMA = np.array([0x61707865, 0x3320646E, 0x79622D32, 0x6B206574], dtype=np.uint32)  # "expand 32-byte k"
_UINT64_MAX = 2**64 - 1


def backend() -> str:
    """``"native"`` when the ChaCha20 C++ op serves, ``"tensorflow"`` for the pure TensorFlow path."""
    return ops.backend()


def expand_seed(seed: tf.Tensor, shape, *, stream: int | tf.Tensor = 0, first_block: int = 0) -> tf.Tensor:
    """A uniform int64 tensor of ``shape``: the ChaCha20 keystream of ``seed`` on stream ``stream``.

    Args:
      seed: int64[4], the 256-bit key (see the module docstring for the layout).
      shape: the output shape: python ints, a ``tf.TensorShape`` (fully defined), or a 1-D int32/int64
        tensor for a shape known only at run time.
      stream: the 64-bit stream id, a python int in [0, 2^64) or an int64 scalar tensor (its bits read as
        unsigned). Different streams of one seed are independent.
      first_block: the keystream starts at this block (a python int in [0, 2^62)): several disjoint parts
        of one stream, each an op of its own (no copy out of a split).

    Returns:
      int64 tensor of ``shape``, uniform over Z/2^64: outputs ``8b .. 8b+7`` come from block
      ``first_block + b``.
    """
    seed = _key_tensor(seed, "seed")
    stream = _uint64_scalar(stream, "stream")
    first_block = _python_int(first_block, "first_block", 0, 2**62 - 1, "[0, 2^62)")
    return _keystream(seed, _shape_tensor(shape), stream, first_block)


def expand_normal(
    seed: tf.Tensor,
    size,
    *,
    stream: int | tf.Tensor = 0,
    dtype: tf.DType = tf.float32,
    summands: int = 1,
) -> tf.Tensor:
    """``size`` standard normals from the ChaCha20 keystream of ``seed`` on stream ``stream`` (Box-Muller).

    Args:
      seed: int64[4], the 256-bit key.
      size: the number of normals: a python int >= 0 or an int32/int64 scalar tensor.
      stream: the 64-bit stream id, as for :func:`expand_seed`. Different streams of one seed give
        independent normals.
      dtype: ``tf.float32`` (24-bit uniforms, 16 normals per 64-byte block) or ``tf.float64`` (53 bits, 8 per
        block).
      summands: each output is the sum of this many normals divided by ``sqrt(summands)``.

    Returns:
      A ``[size]`` tensor of ``dtype``; the exact mapping of keystream bits to outputs is in the module
      docstring. A shorter draw is a prefix of a longer one on the same seed and stream.
    """
    seed = _key_tensor(seed, "seed")
    stream = _uint64_scalar(stream, "stream")
    dtype = tf.as_dtype(dtype)
    if dtype not in (tf.float32, tf.float64):
        raise ConfigError(
            "Received an invalid value for `dtype`, expected tf.float32 or tf.float64. "
            f"Received: dtype={dtype.name}"
        )
    if isinstance(summands, bool) or not isinstance(summands, (int, np.integer)) or summands < 1:
        raise ConfigError(
            "Received an invalid value for `summands`, expected an integer >= 1. "
            f"Received: summands={summands!r}"
        )
    return _normal(seed, _size_tensor(size), stream, 0, dtype, int(summands))


def derive_seed(key: tf.Tensor, counter: tf.Tensor) -> tf.Tensor:
    """A fresh 256-bit seed (int64[4]): the first 32 bytes of ChaCha20 block 2^63 of stream ``counter``.

    Args:
      key: int64[4], the 256-bit key.
      counter: int64 scalar, usually a tensor computed at run time (such as the result of a counter
        variable's ``assign_add``), so each graph execution derives new seeds. Its bits are read as an
        unsigned 64-bit stream id.
    """
    key = _key_tensor(key, "key")
    counter = _uint64_scalar(counter, "counter")
    return _keystream(key, tf.constant([SEED_WORDS], tf.int64), counter, DERIVE_BLOCK)


def derive_seeds(key: tf.Tensor, counter: tf.Tensor, count: int) -> tf.Tensor:
    """``count`` fresh 256-bit seeds (int64[count, 4]) from one counter value, in one keystream op: seed
    ``j`` is words ``4j .. 4j+3`` of stream ``counter`` from block 2^63 on (two seeds per block), so seed 0
    is :func:`derive_seed`'s. Distinct counter values give disjoint blocks, hence independent seeds."""
    count = _python_int(count, "count", 1, 2**20, "[1, 2**20]")
    key = _key_tensor(key, "key")
    counter = _uint64_scalar(counter, "counter")
    words = _keystream(key, tf.constant([SEED_WORDS * count], tf.int64), counter, DERIVE_BLOCK)
    return tf.reshape(words, [count, SEED_WORDS])


def _keystream(key: tf.Tensor, shape: tf.Tensor, stream: tf.Tensor, first_block: int) -> tf.Tensor:
    """ChaCha20 keystream as int64 of ``shape`` from block ``first_block`` (int64 bits, unsigned) on."""
    first_block = tf.constant(first_block, tf.int64)
    library = ops.library()
    if library is not None:
        return library.cha_cha20_keystream(key, stream, first_block, shape)
    output = _keystream_tf_function(key, shape, stream, first_block)
    static_shape = tf.get_static_value(shape)
    return output if static_shape is None else tf.ensure_shape(output, static_shape)


def _normal(
    key: tf.Tensor, size: tf.Tensor, stream: tf.Tensor, first_block: int, dtype: tf.DType, summands: int
) -> tf.Tensor:
    """``size`` normals of ``dtype`` from block ``first_block`` (int64 bits, unsigned) on (expand_normal)."""
    first_block = tf.constant(first_block, tf.int64)
    library = ops.library()
    if library is not None:
        return library.cha_cha20_normal(key, stream, first_block, size, dtype=dtype, summands=summands)
    return _normal_tf(key, size, stream, first_block, dtype, summands)


# --- validation -------------------------------------------------------------------------------------------


def _key_tensor(value, name: str) -> tf.Tensor:
    tensor = tf.convert_to_tensor(value)
    if tensor.dtype != tf.int64:
        raise ConfigError(
            f"Received an invalid value for `{name}`, expected an int64[4] key (256 bits). "
            f"Received: {name} with dtype {tensor.dtype.name}"
        )
    if not tensor.shape.is_compatible_with([SEED_WORDS]):
        raise ShapeError(
            f"Received an invalid value for `{name}`, expected an int64[4] key (256 bits). "
            f"Received: {name} with shape {tensor.shape}"
        )
    return tensor


def _python_int(value, name: str, low: int, high: int, shown: str) -> int:
    """``value`` as an int, refused (naming ``name`` and the range ``shown``) unless a Python or numpy integer in
    ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ConfigError(f"Received an invalid value for `{name}`, expected an integer in {shown}. Received: {name}={value!r}")
    return int(value)


def _uint64_scalar(value, name: str) -> tf.Tensor:
    """A 64-bit unsigned id as an int64 scalar tensor holding the same bits."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = int(value)
        if not 0 <= value <= _UINT64_MAX:
            raise ConfigError(
                f"Received an invalid value for `{name}`, expected an integer in [0, 2^64). "
                f"Received: {name}={value}"
            )
        return tf.constant(value - 2**64 if value >= 2**63 else value, tf.int64)
    if isinstance(value, (tf.Tensor, tf.Variable)):
        if value.dtype != tf.int64 or not value.shape.is_compatible_with([]):
            raise ConfigError(
                f"Received an invalid value for `{name}`, expected an int64 scalar tensor. "
                f"Received: {name} with dtype {value.dtype.name} and shape {value.shape}"
            )
        return tf.convert_to_tensor(value)
    raise ConfigError(
        f"Received an invalid value for `{name}`, expected an integer in [0, 2^64) or an int64 scalar "
        f"tensor. Received: {name}={value!r}"
    )


def _size_tensor(size) -> tf.Tensor:
    """A count of outputs as an int64 scalar tensor (a constant when it is a python int)."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        if size < 0:
            raise ShapeError(
                f"Received an invalid value for `size`, expected an integer >= 0. Received: size={size}"
            )
        return tf.constant(int(size), tf.int64)
    if isinstance(size, (tf.Tensor, tf.Variable)):
        if size.dtype not in (tf.int32, tf.int64) or not size.shape.is_compatible_with([]):
            raise ShapeError(
                "Received an invalid value for `size`, expected an int32 or int64 scalar tensor. "
                f"Received: size with dtype {size.dtype.name} and shape {size.shape}"
            )
        return tf.cast(size, tf.int64)
    raise ShapeError(
        f"Received an invalid value for `size`, expected an integer >= 0 or an integer scalar tensor. "
        f"Received: size={size!r}"
    )


def _shape_tensor(shape) -> tf.Tensor:
    """The output shape as a 1-D int64 tensor (a constant when the shape is static)."""
    if isinstance(shape, (tf.Tensor, tf.Variable)):
        if shape.dtype not in (tf.int32, tf.int64) or not shape.shape.is_compatible_with([None]):
            raise ShapeError(
                "Received an invalid value for `shape`, expected a 1-D int32 or int64 tensor. "
                f"Received: shape with dtype {shape.dtype.name} and shape {shape.shape}"
            )
        return tf.cast(shape, tf.int64)
    try:
        dims = tf.TensorShape(shape)
    except (TypeError, ValueError) as error:
        raise ShapeError(f"Received an invalid value for `shape`. Received: shape={shape!r}") from error
    if not dims.is_fully_defined():
        raise ShapeError(
            "Received an invalid value for `shape`, expected a fully defined shape (or a 1-D tensor for a "
            f"shape known at run time). Received: shape={shape!r}"
        )
    if any(d < 0 for d in dims.as_list()):
        raise ShapeError(f"Received an invalid value for `shape`, expected dims >= 0. Received: shape={shape!r}")
    return tf.constant(dims.as_list(), tf.int64, shape=[dims.rank])


# --- the pure TensorFlow ChaCha20 ---------------------------------------------------------------------------


def _words(value: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Low and high uint32 halves of int64 values."""
    bits = tf.bitcast(value, tf.uint64)
    low = tf.cast(tf.bitwise.bitwise_and(bits, tf.constant(0xFFFFFFFF, tf.uint64)), tf.uint32)
    high = tf.cast(tf.bitwise.right_shift(bits, tf.constant(32, tf.uint64)), tf.uint32)
    return low, high


def _rotl(x: tf.Tensor, n: int) -> tf.Tensor:
    left = tf.bitwise.left_shift(x, tf.constant(n, tf.uint32))
    return tf.bitwise.bitwise_or(left, tf.bitwise.right_shift(x, tf.constant(32 - n, tf.uint32)))


def _quarter_round(a, b, c, d):
    """The ChaCha quarter round on rows of [4, blocks] uint32 tensors: all four columns at once."""
    a = a + b
    d = _rotl(tf.bitwise.bitwise_xor(d, a), 16)
    c = c + d
    b = _rotl(tf.bitwise.bitwise_xor(b, c), 12)
    a = a + b
    d = _rotl(tf.bitwise.bitwise_xor(d, a), 8)
    c = c + d
    b = _rotl(tf.bitwise.bitwise_xor(b, c), 7)
    return a, b, c, d


def _keystream_tf(key: tf.Tensor, shape: tf.Tensor, stream: tf.Tensor, first_block: tf.Tensor) -> tf.Tensor:
    """Pure TensorFlow twin of the native op: the state is four [4, blocks] uint32 tensors (rows a-d)."""
    count = tf.reduce_prod(shape)
    blocks = (count + BLOCK_INT64S - 1) // BLOCK_INT64S
    counters = tf.bitcast(first_block, tf.uint64) + tf.bitcast(tf.range(blocks, dtype=tf.int64), tf.uint64)
    counter_low, counter_high = _words(tf.bitcast(counters, tf.int64))
    stream_low, stream_high = _words(stream)
    key_low, key_high = _words(tf.reshape(key, [SEED_WORDS]))
    key_words = tf.reshape(tf.stack([key_low, key_high], axis=1), [8, 1])  # words 4..11, interleaved

    init_a = tf.constant(_SIGMA.reshape(4, 1))
    init_b, init_c = key_words[:4], key_words[4:]
    zeros = tf.zeros_like(counter_low)
    init_d = tf.stack([counter_low, counter_high, zeros + stream_low, zeros + stream_high])
    a, b, c, d = init_a, init_b, init_c, init_d
    for _ in range(10):
        a, b, c, d = _quarter_round(a, b, c, d)  # columns
        # Diagonals: rotate rows b, c, d up by 1, 2, 3 so that diagonals become columns, and back.
        a, b, c, d = _quarter_round(a, tf.roll(b, -1, 0), tf.roll(c, -2, 0), tf.roll(d, -3, 0))
        b, c, d = tf.roll(b, 1, 0), tf.roll(c, 2, 0), tf.roll(d, 3, 0)
    words = tf.unstack(tf.concat([a + init_a, b + init_b, c + init_c, d + init_d], axis=0))  # 16 x [blocks]

    # int64 j of a block = words 2j (low) and 2j + 1 (high): little-endian bytes 8j .. 8j+7.
    shift = tf.constant(32, tf.uint64)
    values = [
        tf.bitwise.bitwise_or(tf.cast(low, tf.uint64), tf.bitwise.left_shift(tf.cast(high, tf.uint64), shift))
        for low, high in zip(words[0::2], words[1::2])
    ]
    flat = tf.reshape(tf.bitcast(tf.stack(values, axis=1), tf.int64), [-1])  # block-major
    return tf.reshape(flat[:count], shape)


# One trace per process for every call site: building the ~500 ops of 20 rounds costs ~0.3 s per trace. A
# nested function's ops run on the device of its caller (the caller's tf.device scope), like inline ops.
_keystream_tf_function = tf.function(
    _keystream_tf,
    input_signature=[
        tf.TensorSpec([SEED_WORDS], tf.int64), tf.TensorSpec([None], tf.int64), tf.TensorSpec([], tf.int64),
        tf.TensorSpec([], tf.int64),
    ],
    autograph=False,
)


# --- the pure TensorFlow Box-Muller -------------------------------------------------------------------------


def _box_muller_tf(keystream: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """The normals of whole blocks of int64 ``keystream`` (8 per block), as the module docstring maps them.

    ``tf.bitcast`` splits an int64 into uint32 halves in memory order: the low (little-endian first) word
    first, as the native op reads them (it refuses to build for a big-endian machine).
    """
    if dtype == tf.float32:
        words = tf.reshape(tf.bitcast(keystream, tf.uint32), [-1, 2, 8])  # [block, radius/angle half, j]
        uniform = (tf.cast(tf.bitwise.right_shift(words, tf.constant(8, tf.uint32)), dtype) + 1.0) * 2.0**-24
    else:
        words = tf.reshape(tf.bitcast(keystream, tf.uint64), [-1, 2, 4])
        uniform = (tf.cast(tf.bitwise.right_shift(words, tf.constant(11, tf.uint64)), dtype) + 1.0) * 2.0**-53
    radius = tf.sqrt(tf.maximum(-2.0 * tf.math.log(uniform[:, 0]), 0.0))
    angle = tf.constant(2.0 * np.pi, dtype) * uniform[:, 1]
    return tf.reshape(tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], axis=1), [-1])


def _normal_tf(
    key: tf.Tensor, size: tf.Tensor, stream: tf.Tensor, first_block: tf.Tensor, dtype: tf.DType, summands: int
) -> tf.Tensor:
    """Pure TensorFlow twin of the native ``ChaCha20Normal``: the keystream, then Box-Muller in TF ops."""
    per_block = 16 if dtype == tf.float32 else 8
    normals = size * summands
    blocks = (normals + per_block - 1) // per_block
    keystream = _keystream_tf_function(key, tf.reshape(blocks * BLOCK_INT64S, [1]), stream, first_block)
    z = _box_muller_tf(keystream, dtype)[:normals]
    if summands > 1:
        scale = tf.constant(1.0 / np.sqrt(summands), dtype)  # as the native op: one rounded factor
        z = tf.reduce_sum(tf.reshape(z, [size, summands]), axis=1) * scale
    static_size = tf.get_static_value(size)
    return z if static_size is None else tf.ensure_shape(z, [static_size])
