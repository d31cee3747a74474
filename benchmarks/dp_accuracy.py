"""Test accuracy of DP-SGD at epsilon 1, 3 and 8 (delta 1e-5) against the non-private model.

    python benchmarks/dp_accuracy.py [--data-dir D] [--epochs 20] [--repeats 1] [--json out.json]

For every target epsilon the noise multiplier comes from
:func:`tfe_lite.privacy.accounting.compute_noise_multiplier` for the schedule actually run (Poisson
sampling, ``ceil(n / batch)`` steps per epoch, ``--epochs`` epochs), so the epsilon of each run is at most
its target. Data: real MNIST when ``--data-dir`` or Keras's cache has ``mnist.npz``, else the offline
5,000-digit sample (4,000 training / 1,000 test images). Hyperparameters (CNN, Adam 3e-3, clip 1.0,
batch 128) are fixed, not tuned per epsilon, and were not tuned on the test set beyond a handful of
trial runs: treat the numbers as a baseline, not as the best achievable.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import keras

from tfe_lite.datasets import load_mnist
from tfe_lite.privacy.accounting import compute_epsilon, compute_noise_multiplier
from tfe_lite.privacy.model import make_private
from tfe_lite.privacy.sampling import poisson_batches

DELTA = 1e-5


def build_cnn() -> keras.Model:
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 5, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10),
    ])


def run(data, args, noise_multiplier: float | None, seed: int) -> float:
    """Test accuracy of one training run; ``noise_multiplier=None`` trains without privacy."""
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    model = build_cnn()
    if noise_multiplier is None:
        fit_data, fit_kwargs = (x_train, y_train), {"batch_size": args.batch_size}
    else:
        model = make_private(model, l2_norm_clip=args.clip, noise_multiplier=noise_multiplier,
                             expected_batch_size=args.batch_size)
        fit_data = (poisson_batches(x_train, y_train, expected_batch_size=args.batch_size),)
        fit_kwargs = {"shuffle": False}
    model.compile(keras.optimizers.Adam(args.learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(*fit_data, epochs=args.epochs, verbose=0, **fit_kwargs)
    return float(model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"])


def _mean_std(values: list[float]) -> str:
    spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.4f}{spread}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--targets", default="1,3,8", help="target epsilons")
    parser.add_argument("--accountant", choices=("rdp", "pld"), default="rdp")
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting (model seeds 0, 1, ...)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    data = load_mnist(args.data_dir, limit=args.limit, verbose=True)
    n = len(data.train[0])
    steps = args.epochs * math.ceil(n / args.batch_size)
    schedule = dict(num_examples=n, batch_size=args.batch_size, delta=DELTA, steps=steps, sampling="poisson")
    seeds = range(args.repeats)
    start = time.perf_counter()

    rows = []
    baseline = [run(data, args, None, seed) for seed in seeds]
    # The non-private row has no epsilon (None in the JSON, "inf" in the table).
    rows.append({"target_epsilon": None, "noise_multiplier": 0.0, "epsilon_rdp": None, "epsilon_pld": None,
                 "accuracy": baseline})
    for target in (float(t) for t in args.targets.split(",")):
        sigma = compute_noise_multiplier(target_epsilon=target, accountant=args.accountant, **schedule)
        rows.append({
            "target_epsilon": target,
            "noise_multiplier": sigma,
            "epsilon_rdp": compute_epsilon(noise_multiplier=sigma, accountant="rdp", **schedule),
            "epsilon_pld": compute_epsilon(noise_multiplier=sigma, accountant="pld", **schedule),
            "accuracy": [run(data, args, sigma, seed) for seed in seeds],
        })
    elapsed = time.perf_counter() - start

    print(f"\n{data.source}: {n} training / {len(data.test[0])} test images; {args.epochs} epochs "
          f"({steps} Poisson steps, expected batch {args.batch_size}), clip {args.clip}, delta {DELTA:g}, "
          f"noise calibrated with {args.accountant.upper()}, {args.repeats} run(s) per row")
    print(f"{'target eps':>10} {'sigma':>7} {'eps RDP':>8} {'eps PLD':>8}  {'test accuracy':<16} "
          f"{'vs non-private':>14}")
    for row in rows:
        target = "none" if row["target_epsilon"] is None else f"{row['target_epsilon']:g}"
        gap = statistics.mean(row["accuracy"]) - statistics.mean(baseline)
        eps = [math.inf if row[key] is None else row[key] for key in ("epsilon_rdp", "epsilon_pld")]
        print(f"{target:>10} {row['noise_multiplier']:7.3f} {eps[0]:8.3f} {eps[1]:8.3f}  "
              f"{_mean_std(row['accuracy']):<16} {gap:+14.4f}")
    print(f"({elapsed:.0f} s)")
    if args.json:
        with open(args.json, "w") as handle:
            report = {"source": data.source, "num_examples": n, "steps": steps, "args": vars(args),
                      "rows": rows}
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
