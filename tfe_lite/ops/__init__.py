"""Native TensorFlow ops for the ring Z/2^64, with pure-TensorFlow twins that give identical results.

The C++ library ``_ring_ops.so`` (source ``ring_ops.cc``, built by ``make ops`` /
``python -m tfe_lite.ops.build`` for the installed TensorFlow and this CPU) provides:

- ``RingMatMul``: ``a @ b`` mod 2^64 on int64 on the op's CPU worker threads, with two kernels: ``"amx"``
  (Intel AMX tile products of the operands' byte planes, where the CPU and Linux allow AMX) and
  ``"vector"`` (AVX-512 IFMA, or portable C++ in a build for a CPU without it); ``"auto"`` picks AMX for
  products of at least 16 x 16 outputs;
- ``ChaCha20Keystream``: the ChaCha20 keystream behind :mod:`tfe_lite.prg`;
- ``ChaCha20Normal``: standard normals from that keystream by Box-Muller (:func:`tfe_lite.prg.expand_normal`,
  the DP-SGD noise of :mod:`tfe_lite.privacy.noise`), equal to its pure TensorFlow twin up to rounding.

The library is loaded on first use, never when tfe_lite is imported. When it is not built the pure
TensorFlow paths serve (same results, slower); a library that exists but does not load (built for another
TensorFlow, or from older source) raises :class:`~tfe_lite.errors.RuntimeConfigError` instead, so a broken
build is never ignored. Setting the environment variable ``TFE_LITE_NATIVE_OPS=0`` forces the pure
TensorFlow paths (``1`` or unset: native when built); it is read each time an op is built (traced), not
while a graph runs.

The native ops have no XLA kernels, so inside a function that XLA compiles (``tf.function(jit_compile=True)``,
Keras' ``jit_compile=True``) :func:`library` returns None and the pure TensorFlow paths serve, which XLA can
compile (:func:`in_xla_context` tells which case a trace is in).
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from types import ModuleType

import tensorflow as tf

from tensorflow.python.ops import control_flow_util  # XLA contexts: no public API tells them

from tfe_lite.errors import ConfigError, ProtocolError, RuntimeConfigError, ShapeError

LIBRARY_PATH = Path(__file__).resolve().parent / "_ring_ops.so"
SOURCE_PATH = LIBRARY_PATH.with_name("ring_ops.cc")
ENV_VAR = "TFE_LITE_NATIVE_OPS"

_lock = threading.Lock()
_library: ModuleType | None = None


def _native_enabled() -> bool:
    value = os.environ.get(ENV_VAR, "")
    if value not in ("", "0", "1"):
        raise ConfigError(
            f"Received an invalid value for the environment variable `{ENV_VAR}`, expected '0' (pure "
            f"TensorFlow ops) or '1' (native ops when built). Received: {ENV_VAR}={value!r}"
        )
    return value != "0"


def _check_source(path: Path) -> None:
    """Refuse a library compiled from other source than the ``*.cc`` files next to it."""
    from tfe_lite.ops.build import SOURCES, source_sha256

    if not all(source.exists() for source in SOURCES):  # an installation without the source
        return

    built = ctypes.CDLL(str(path)).tfe_lite_ring_ops_source_sha256
    built.restype = ctypes.c_char_p
    if built().decode() != source_sha256():
        raise RuntimeConfigError(
            f"The native ops library {path} was built from older C++ source. Run `make ops` "
            "(python -m tfe_lite.ops.build) to rebuild it, or set TFE_LITE_NATIVE_OPS=0 to use the pure "
            "TensorFlow ops."
        )


def _load() -> ModuleType | None:
    """The loaded op library, or None when it is not built; raises when it exists but does not load."""
    global _library
    with _lock:
        if _library is None and LIBRARY_PATH.exists():
            try:
                library = tf.load_op_library(str(LIBRARY_PATH))
            except (tf.errors.NotFoundError, tf.errors.OpError, OSError) as error:
                raise RuntimeConfigError(
                    f"The native ops library {LIBRARY_PATH} exists but cannot be loaded by TensorFlow "
                    f"{tf.__version__} (built for another TensorFlow or machine?): {error}. Run `make ops` "
                    "(python -m tfe_lite.ops.build) to rebuild it, or set TFE_LITE_NATIVE_OPS=0 to use the "
                    "pure TensorFlow ops."
                ) from error
            _check_source(LIBRARY_PATH)
            _library = library
        return _library


def in_xla_context() -> bool:
    """Whether ops built now go into a function that XLA compiles (``jit_compile=True``, at any depth)."""
    if tf.executing_eagerly():
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def library() -> ModuleType | None:
    """The native op library when it is built and enabled and the op being built is not XLA-compiled (see
    the module docstring), else None."""
    if not _native_enabled():
        return None
    library = _load()
    return None if library is None or in_xla_context() else library


def available() -> bool:
    """Whether the native ops are built and enabled."""
    return library() is not None


def backend() -> str:
    """``"native"`` when the native ops serve, ``"tensorflow"`` when the pure TensorFlow paths do."""
    return "native" if available() else "tensorflow"


def native_kernels() -> tuple[str, ...]:
    """The ``RingMatMul`` kernels this process can run (empty when the native ops are not available)."""
    if library() is None:
        return ()
    amx = ctypes.CDLL(str(LIBRARY_PATH)).tfe_lite_ring_ops_amx_available()
    return ("amx", "vector") if amx else ("vector",)


def _ring_operand(value, name: str) -> tf.Tensor:
    tensor = tf.convert_to_tensor(value)
    if tensor.dtype != tf.int64:
        raise ProtocolError(
            f"Received an invalid value for `{name}`, expected an int64 ring tensor. "
            f"Received: {name} with dtype {tensor.dtype.name}"
        )
    if tensor.shape.rank is not None and tensor.shape.rank < 2:
        raise ShapeError(
            f"Received an invalid value for `{name}`, expected a matrix (rank 2, or more with leading batch "
            f"dimensions). Received: {name} with shape {tensor.shape}"
        )
    return tensor


def matmul(a, b) -> tf.Tensor:
    """``a @ b`` modulo 2^64 for int64 ``a`` [M, K] and ``b`` [K, N]; equal to ``tf.matmul`` on int64.

    Uses the native ``RingMatMul`` when available. Rank > 2 (batched) operands use it too when both have
    the same statically known batch dimensions, otherwise ``tf.matmul`` (which broadcasts them).
    """
    a = _ring_operand(a, "a")
    b = _ring_operand(b, "b")
    known = a.shape.rank is not None and b.shape.rank is not None
    if known and not a.shape[-1:].is_compatible_with(b.shape[-2:-1]):
        raise ShapeError(
            "Received incompatible operands for `matmul`, expected a.shape[-1] == b.shape[-2]. "
            f"Received: a with shape {a.shape}, b with shape {b.shape}"
        )
    lib = library()
    if lib is None or not known:
        return tf.matmul(a, b)
    if a.shape.rank > 2 or b.shape.rank > 2:
        batch_a, batch_b = a.shape[:-2], b.shape[:-2]
        if not (batch_a.is_fully_defined() and batch_a == batch_b):
            return tf.matmul(a, b)
    return lib.ring_mat_mul(a, b)


def system_random_key() -> tf.Tensor | None:
    """A fresh 256-bit key (int64[4]) from the OS CSPRNG, made by the native ``SystemRandomKey`` op on the
    current device (so on a remote player's own host), or None when the native library is not available."""
    lib = library()
    return None if lib is None else lib.system_random_key()
