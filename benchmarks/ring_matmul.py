"""Native ring ops against TensorFlow: ``python benchmarks/ring_matmul.py [--repeats N]``.

Side by side in one process, with interleaved repetitions (so load changes hit every contender alike) and
the median of N:

- matmul at 512 and 1024: the native ``RingMatMul`` (int64 mod 2^64; as chosen by ``kernel="auto"``, and
  each kernel this machine can run), ``tf.matmul`` on int64 (the same result), and ``tf.matmul`` on float32
  (not a ring product; the speed of TensorFlow's tuned GEMM);
- ChaCha20 keystream for a 512 x 512 int64 tensor (2 MiB): the native op vs the pure TensorFlow path.

Needs the native library (``make ops``). Eager CPU ops run synchronously, so a call's wall time is its run
time; results are checked equal before timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import tensorflow as tf

from tfe_lite import ops, prg


def interleaved_medians(contenders: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call of each contender, timed round-robin after one warm-up call each."""
    for fn in contenders.values():
        fn()
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_matmul(n: int, repeats: int, rng: np.random.Generator) -> None:
    info = np.iinfo(np.int64)
    a = tf.constant(rng.integers(info.min, info.max, size=(n, n), dtype=np.int64, endpoint=True))
    b = tf.constant(rng.integers(info.min, info.max, size=(n, n), dtype=np.int64, endpoint=True))
    a32, b32 = tf.cast(a, tf.float32) * 1e-18, tf.cast(b, tf.float32) * 1e-18
    native = ops.library().ring_mat_mul
    if not np.array_equal(native(a, b).numpy(), tf.matmul(a, b).numpy()):
        raise AssertionError(f"native ring matmul differs from tf.matmul at n={n}")
    contenders = {"native int64": lambda: native(a, b)}  # kernel="auto"
    for kernel in ops.native_kernels():
        contenders[f"  kernel={kernel}"] = lambda kernel=kernel: native(a, b, kernel=kernel)
    contenders["tf.matmul int64"] = lambda: tf.matmul(a, b)
    contenders["tf.matmul float32"] = lambda: tf.matmul(a32, b32)
    t = interleaved_medians(contenders, repeats)
    print(f"matmul {n}x{n}x{n} (median of {repeats}):")
    for name, seconds in t.items():
        print(f"  {name:20s} {seconds * 1e3:9.2f} ms  {n**3 / seconds / 1e9:7.2f} G mul-add/s")
    print(
        f"  native speed-up over tf.matmul int64: {t['tf.matmul int64'] / t['native int64']:.2f}x; "
        f"native / tf.matmul float32 time: {t['native int64'] / t['tf.matmul float32']:.2f}x"
    )


def bench_chacha(repeats: int) -> None:
    shape = (512, 512)
    nbytes = 8 * shape[0] * shape[1]
    seed = tf.constant([1, 2, 3, 4], tf.int64)
    library = ops.library()
    stream, first_block = tf.constant(0, tf.int64), tf.constant(0, tf.int64)
    dims = tf.constant(shape, tf.int64)
    def pure():  # the path prg takes without the native ops (a traced function)
        return prg._keystream_tf_function(seed, dims, stream, first_block)

    native = library.cha_cha20_keystream(seed, stream, first_block, dims)
    if not np.array_equal(native.numpy(), pure().numpy()):
        raise AssertionError("native ChaCha20 differs from the pure TensorFlow path")
    t = interleaved_medians(
        {"native": lambda: library.cha_cha20_keystream(seed, stream, first_block, dims), "pure TF": pure},
        max(3, repeats // 3),
    )
    print(f"ChaCha20 keystream, {shape[0]}x{shape[1]} int64 = {nbytes / 2**20:.0f} MiB:")
    for name, seconds in t.items():
        print(f"  {name:20s} {seconds * 1e3:9.2f} ms  {nbytes / seconds / 1e9:7.3f} GB/s")
    print(f"  native speed-up over pure TF: {t['pure TF'] / t['native']:.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per contender (median)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    args = parser.parse_args()
    if os.environ.get(ops.ENV_VAR) == "0" or not ops.available():
        raise SystemExit("The native ops are not available: run `make ops` (and unset TFE_LITE_NATIVE_OPS=0).")
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, intra-op threads: "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'}")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        bench_matmul(n, args.repeats, rng)
    bench_chacha(args.repeats)


if __name__ == "__main__":
    main()
