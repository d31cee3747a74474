"""DP-SGD noise draws, before and after the ChaCha20 sources: ``python benchmarks/noise.py [--rounds N]``.

Times one step's noise for every parameter of the DP-SGD benchmark's MLP (784-256-256-10, 269,322
parameters; ``--size`` changes the count), drawn through ``NoiseSource.normal`` inside a ``tf.function`` as
DP-SGD does, side by side in one process:

- default source: the former ``tf.random.Generator`` (Philox-4x32-10) source against :class:`ChaCha20Noise`
  (native ``ChaCha20Normal``, float32), with and without ``jit_compile`` (under XLA the new default draws
  with stateless Philox from a ChaCha20-derived seed, see :mod:`tfe_lite.privacy.noise`);
- secure source: the former :class:`SecureNoise` (every byte from ``os.urandom`` through
  ``tf.numpy_function``, Box-Muller in TensorFlow float64 ops) against the new one (a fresh ``os.urandom``
  key per step expanded by ``ChaCha20Normal``, float64, 4 summands);
- the new sources on the pure TensorFlow twin (``TFE_LITE_NATIVE_OPS=0``), what they cost without the
  native library.

The former sources are reimplemented here as they were. Contenders run interleaved, round after round, so
that load changes hit all of them alike; the median over rounds of the mean time per draw is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import tensorflow as tf

from tfe_lite import ops
from tfe_lite.privacy.noise import SECURE_SUMMANDS, ChaCha20Noise, NoiseSource, SecureNoise

MLP_SHAPES = [(784, 256), (256,), (256, 256), (256,), (256, 10), (10,)]  # benchmarks/dp_sgd.py's MLP


class PhiloxNoise(NoiseSource):
    """The former default source: a ``tf.random.Generator`` (Philox), drawn on every replica."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._generator = tf.random.Generator.from_seed(seed)

    def _standard_normal(self, size: tf.Tensor) -> tf.Tensor:
        return self._generator.normal([size], dtype=tf.float32)


def _urandom_uniform(count: np.ndarray) -> np.ndarray:
    count = int(count)
    bits = np.frombuffer(os.urandom(8 * count), dtype=np.uint64)
    return ((bits >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53


class UrandomNoise(NoiseSource):
    """The former secure source: 8 bytes of ``os.urandom`` per uniform, float64 Box-Muller in TF ops."""

    secure = True
    _draw_on_every_replica = False
    _dtype = tf.float64

    def _standard_normal(self, size: tf.Tensor) -> tf.Tensor:
        size = tf.cast(size, tf.int64)
        normals = SECURE_SUMMANDS * size
        pairs = (normals + 1) // 2
        uniform = tf.numpy_function(_urandom_uniform, [2 * pairs], tf.float64, stateful=True)
        uniform = tf.reshape(uniform, [2, pairs])
        radius = tf.sqrt(-2.0 * tf.math.log(uniform[0]))
        angle = (2.0 * np.pi) * uniform[1]
        z = tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], axis=0)[:normals]
        z = tf.reshape(z, [SECURE_SUMMANDS, size])
        return tf.reduce_sum(z, axis=0) / np.sqrt(float(SECURE_SUMMANDS))


def _draw_function(source: NoiseSource, parameters: list, *, jit: bool = False, native: bool = True):
    """A traced draw of noise for `parameters`; `native=False` traces it with the pure TensorFlow ops."""
    draw = tf.function(lambda: source.normal(parameters, 1.0), jit_compile=jit)
    previous = os.environ.get(ops.ENV_VAR)
    os.environ[ops.ENV_VAR] = "1" if native else "0"
    try:
        draw.get_concrete_function()  # the switch is read while tracing
    finally:
        if previous is None:
            del os.environ[ops.ENV_VAR]
        else:
            os.environ[ops.ENV_VAR] = previous
    return draw


def _time(draw, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        noise = draw()
    float(noise[-1][0])  # wait for the last draw
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="draws per contender and round")
    parser.add_argument("--size", type=int, default=None, help="parameters (default: the MLP's 269,322)")
    args = parser.parse_args()
    shapes = MLP_SHAPES if args.size is None else [(args.size,)]
    parameters = [tf.zeros(shape) for shape in shapes]
    size = sum(int(np.prod(shape)) for shape in shapes)
    if not ops.available():
        raise SystemExit(f"The native ops library is not built ({ops.LIBRARY_PATH}): run `make ops`.")

    # (row, "old" contender, "new" contender); None: no counterpart.
    rows = [
        (
            "default source",
            _draw_function(PhiloxNoise(0), parameters),
            _draw_function(ChaCha20Noise(0), parameters),
        ),
        (
            "default source, jit_compile",
            _draw_function(PhiloxNoise(0), parameters, jit=True),
            _draw_function(ChaCha20Noise(0), parameters, jit=True),
        ),
        (
            "secure source",
            _draw_function(UrandomNoise(), parameters),
            _draw_function(SecureNoise(), parameters),
        ),
        ("default source, pure TF twin", None, _draw_function(ChaCha20Noise(0), parameters, native=False)),
        ("secure source, pure TF twin", None, _draw_function(SecureNoise(), parameters, native=False)),
    ]
    contenders = {(row, side): fn for row, *pair in rows for side, fn in zip(("old", "new"), pair) if fn}
    for draw in contenders.values():  # warm up (XLA compiles on the first call)
        _time(draw, 2)
    times = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, draw in contenders.items():
            times[name].append(_time(draw, args.steps))
    medians = {name: statistics.median(values) for name, values in times.items()}

    print(
        f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs. Noise for {size:,} parameters inside a "
        f"tf.function, median of {args.rounds} interleaved rounds x {args.steps} draws:"
    )
    print(f"  {'':30} {'old ms':>8} {'new ms':>8} {'old/new':>8}")
    for row, old, new in rows:
        old_ms = medians[(row, "old")] * 1e3 if old else None
        new_ms = medians[(row, "new")] * 1e3
        ratio = f"{old_ms / new_ms:7.1f}x" if old_ms else ""
        old_text = f"{old_ms:8.2f}" if old_ms else f"{'':8}"
        print(f"  {row:30} {old_text} {new_ms:8.2f} {ratio:>8}")
    print(
        "  old: tf.random.Generator (Philox) / os.urandom bytes + TF float64 Box-Muller; new: ChaCha20Normal "
        "(float32 / float64 x 4 summands with a fresh os.urandom key per draw)."
    )


if __name__ == "__main__":
    main()
