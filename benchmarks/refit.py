"""The cost of a private ``fit`` that traces its step against a later ``fit`` that reuses the trace.

Run: python benchmarks/refit.py [--rows 400] [--batch 50]

A small network (64 inputs, Dense 16 ReLU, Dense 10 softmax) on scikit-learn's digits, made private with
``secure()`` and compiled once (SGD with momentum). The first ``fit`` (one epoch on a quarter of the rows)
traces the private step and runs it for the first time, which is when TensorFlow optimizes the step's
graph; the later fits (one and two epochs on every row) reuse that trace, since the shared rows are the
step's arguments. Printed: each fit's wall time, its steps, and the later fits' time per step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from _cli import positive_int  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=positive_int, default=400, help="rows of the later fits")
    parser.add_argument("--batch", type=positive_int, default=50, help="batch size of every fit")
    args = parser.parse_args(argv)

    from tfe_lite.devices import ensure_logical_cpus

    ensure_logical_cpus(8)
    import keras
    import numpy as np
    from sklearn.datasets import load_digits

    import tfe_lite
    import tfe_lite.keras_layers as kl
    from tfe_lite.protocols import Pond

    data = load_digits()
    if args.rows > len(data.target):
        parser.error(f"--rows {args.rows}: the digits have {len(data.target)} rows")
    x, y = (data.data[:args.rows] / 16.0).astype(np.float32), data.target[:args.rows]
    prot = Pond(tfe_lite.LocalConfig(["client", "model-owner"]))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    private = kl.secure(model, protocol=prot, model_owner="model-owner", client="client")
    private.compile(optimizer=keras.optimizers.SGD(0.2, momentum=0.5), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])
    first_rows = max(args.rows // 4, 1)
    print(f"private fit of a 64-16-10 network, batch {args.batch}, compiled once")
    for label, rows, epochs in (("first fit (traces the step)", first_rows, 1), ("second fit", args.rows, 1),
                                ("third fit", args.rows, 2)):
        steps = -(-rows // args.batch) * epochs
        start = time.perf_counter()
        history = private.fit(x[:rows], y[:rows], batch_size=args.batch, epochs=epochs, shuffle=False, verbose=0)
        seconds = time.perf_counter() - start
        per_step = "" if label.startswith("first") else f", {seconds / steps * 1e3:.1f} ms per step"
        print(f"  {label}: {rows} rows, {epochs} epoch(s), {steps} steps: {seconds:.2f} s{per_step}; "
              f"last loss {history.history['loss'][-1]:.4f}")
    print(f"  traces of the step: {private._step_function.experimental_get_tracing_count()}")


if __name__ == "__main__":
    main()
