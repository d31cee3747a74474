"""Federated learning: time per round plain / secure aggregation / DP for 2 and 100 clients, bytes per client
against the theory, and the two-schools accuracy against a centralized model.

Usage: python benchmarks/federated.py [--rounds 7] [--replicas 0] [--accuracy-rounds 10] [--parts two,many,accuracy]

Part 1, two clients: MNIST (4,000 training images) split between two schools, a small CNN (56,714
parameters), one local epoch of batch 32 per round. Part 2, 100 clients with two label shards each (non-IID,
40 images each), 10 sampled per round (Poisson-sampled with DP), a smaller CNN, two local epochs of batch 10.
Each variant is a FedAvg of its own; rounds run interleaved, variant after variant, so load changes on the
machine hit all of them alike, after one warm-up round each (tracing); the median round is reported with its
ratio to the plain round. A round is timed from its start to the model update (no validation). The warm-up
round has every client take part, so that each client's traced functions exist before timing starts. Timed
rounds do not read the protocol's traffic counters (``fit(count_traffic=False)``), except "secure counted";
the bytes come from one counted round of each variant.

"central" trains the union of each plain round's clients' data on one device with the same epochs and batch
size: "central fn" with the very training function the clients run, "central fit" with Keras ``model.fit``.
Bytes per client per round are the measured transfers of a timed round (each sampled client's download
and upload) beside the theory: model download ``4 P`` bytes (float32), upload ``4 (P + 1)`` plain (the
weighted update and loss) or ``32 + 8 (P + 1)`` with secure aggregation (a seed for server0, the masked
int64 vector for server1); DP adds the clip (4 bytes) to the download. The reveal, once per round, costs
``8 (P + 1)`` from server1 to the aggregator (server0).

Part 3 (unless ``--skip-accuracy``): the two schools' FedAvg test accuracy after ``--accuracy-rounds`` rounds
against a centralized model trained for as many epochs on the union (SGD 0.05, batch 32), plain and secure,
for three seeds (initial weights and data order), and the difference of the means.

Targets: secure round <= 1.3x plain (2 and 100 clients); 100 clients, 10 per round: a plain round <= 2x the
central training of those clients' data; two schools within 1 accuracy point of centralized.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from _cli import non_negative_int, positive_int  # noqa: E402

DP_CLIP, DP_NOISE = 0.5, 0.3


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rounds", type=positive_int, default=7, help="timed rounds per variant")
    parser.add_argument("--replicas", type=non_negative_int, default=0,
                        help="devices shared by the 100 clients (0: each client its own, a LocalConfig)")
    parser.add_argument("--accuracy-rounds", type=positive_int, default=10)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--parts", default="two,many,accuracy", help="comma-separated parts to run: two, many, accuracy")
    args = parser.parse_args(argv)
    unknown = set(args.parts.split(",")) - {"two", "many", "accuracy"}
    if unknown:
        parser.error(f"argument --parts: expected parts among two, many, accuracy, received {sorted(unknown)}")
    return args


def two_school_cnn():
    import keras

    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10),
    ])


def small_cnn():
    import keras

    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, strides=2, activation="relu"), keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
        keras.layers.Flatten(), keras.layers.Dense(10),
    ])


class RoundTimer:
    """Wall time of each round, from on_epoch_begin to on_epoch_end (the update applied)."""

    def __init__(self):
        import keras

        timer = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                timer.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                timer.times.append(time.perf_counter() - timer.start)

        self.times: list[float] = []
        self.callback = Callback()


def make_fedavg(config, model_fn, variant: str, learning_rate: float, metrics=None, seed=None):
    """A FedAvg of ``variant`` (plain, secure, dp, secure+dp); ``seed`` fixes its sampling and shuffling."""
    import keras

    from tfe_lite.federated import ClientDP, FedAvg

    def fresh():
        keras.utils.set_random_seed(seed or 0)
        return model_fn()

    dp = ClientDP(DP_CLIP, DP_NOISE, delta=1e-3) if "dp" in variant else None
    return FedAvg(fresh, config=config, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=metrics,
                  client_optimizer=keras.optimizers.SGD(learning_rate), secure_aggregation="secure" in variant, dp=dp,
                  seed=seed)


def bytes_per_client(fedavg, aggregator="server0"):
    """Mean download and upload of the last round's sampled clients."""
    links = fedavg.round_traffic[-1]
    clients = {dst for (src, dst) in links if src == aggregator and dst not in ("server1", "crypto-producer")}
    down = [sum(n for (s, d), n in links.items() if d == c) for c in clients]
    up = [sum(n for (s, d), n in links.items() if s == c) for c in clients]
    return statistics.mean(down), statistics.mean(up), links.get(("server1", aggregator), 0)


def theory(params: int, variant: str) -> tuple[int, int]:
    down = 4 * params + (4 if "dp" in variant else 0)
    up = 32 + 8 * (params + 1) if "secure" in variant else 4 * (params + 1)
    return down, up


def time_variants(title, config, data, model_fn, variants, fit_kwargs, rounds, learning_rate, central=None):
    """Warm-up: one round with every client (each client's training and secure submission are traced and
    instantiated on its device once), then ``rounds`` timed rounds per variant, interleaved."""
    import numpy as np

    print(f"== {title}")
    feds = {v: make_fedavg(config, model_fn, v, learning_rate) for v in variants}
    timers = {v: RoundTimer() for v in variants}
    traffic = {}
    for v, fed in feds.items():
        fed.fit(data, rounds=1, verbose=0, **dict(fit_kwargs, clients_per_round=None))
        fed.fit(data, rounds=1, verbose=0, **fit_kwargs)  # a counted round of the timed kind: the bytes
        traffic[v] = bytes_per_client(fed)
    central_times = {"central fn": [], "central fit": []}
    for _ in range(rounds):
        for v, fed in feds.items():
            fed.fit(data, rounds=1, verbose=0, callbacks=[timers[v].callback], count_traffic="counted" in v, **fit_kwargs)
            if v == "plain" and central is not None:
                for name, seconds in central(fed.round_clients[-1]).items():
                    central_times[name].append(seconds)
    params = feds["plain"].model.count_params()
    base = statistics.median(timers["plain"].times)
    plain_times = timers["plain"].times
    print(f"  {'variant':<16}{'round (median)':>14}{'x plain':>9}{'down B/client':>15}{'theory':>10}{'up B/client':>13}{'theory':>10}")
    for v in variants:
        median = statistics.median(timers[v].times)
        ratio = statistics.median(t / p for t, p in zip(timers[v].times, plain_times))  # same repetition: same load
        down, up, reveal = traffic[v]
        t_down, t_up = theory(params, v)
        print(f"  {v:<16}{median * 1e3:>11.1f} ms{ratio:>8.2f}x{down:>15,.0f}{t_down:>10,}{up:>13,.0f}{t_up:>10,}")
        if "secure" in v and "counted" not in v:
            print(f"  {'':<14}reveal to the aggregator: {reveal:,} bytes per round (theory {8 * (params + 1):,})")
    for name, times in central_times.items():
        if times:
            median = statistics.median(times)
            ratio = statistics.median(p / t for p, t in zip(plain_times, times))
            print(f"  {name:<14}{median * 1e3:>13.1f} ms   plain round / {name} = {ratio:.2f}x")
    print(f"  ({params:,} parameters; {rounds} timed rounds per variant; round times in ms: "
          + ", ".join(f"{v} {np.round(np.array(timers[v].times) * 1e3).astype(int).tolist()}" for v in variants) + ")")


def central_trainer(fed, data_by_name, batch_size: int, epochs: int):
    """Times training the union of the given clients' data on one device: the clients' function and Keras fit."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tfe_lite.federated.vectors import pack

    training = next(v for v in fed._cache.values() if hasattr(v, "concrete"))
    model = small_cnn()
    model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    warm = {"fn": False, "fit": False}

    def run(names):
        x = np.concatenate([data_by_name[n][0] for n in names])
        y = np.concatenate([data_by_name[n][1] for n in names])
        with tf.device("/device:CPU:0"):
            xs, ys = tf.constant(x), tf.constant(y)
            weights = pack(fed.model.trainable_variables)
            seed = tf.constant([1, 2], tf.int64)
            if not warm["fn"]:
                training.concrete(weights, xs, ys, tf.constant(epochs), seed)
                warm["fn"] = True
            start = time.perf_counter()
            out = training.concrete(weights, xs, ys, tf.constant(epochs), seed)
            _ = [t.numpy() for t in out[0][:1]]
            fn_time = time.perf_counter() - start
        if not warm["fit"]:
            model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
            warm["fit"] = True
        start = time.perf_counter()
        model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)
        return {"central fn": fn_time, "central fit": time.perf_counter() - start}

    return run


def accuracy(config, data, args):
    """Test accuracy of the centralized model and of FedAvg (plain, secure), for three seeds.

    A seed fixes the initial weights (the same for all three) and the data order (Keras's shuffling; FedAvg's
    client shuffling and, for secure aggregation, the protocol's keys): runs differ by a point or more
    between seeds, so the target is judged on the means.
    """
    import statistics

    import keras

    from tfe_lite.federated import VirtualWorker, federate

    (x_train, y_train), (x_test, y_test) = data
    rounds = args.accuracy_rounds
    print(f"== Accuracy: two schools, FedAvg {rounds} rounds of 1 local epoch vs {rounds} centralized epochs (SGD 0.05, batch 32)")
    schools = [VirtualWorker(n, config) for n in ("school-a", "school-b")]
    results = {"centralized": [], "FedAvg plain": [], "FedAvg secure": []}
    for seed in (0, 1, 2):
        keras.utils.set_random_seed(seed)
        central = two_school_cnn()
        central.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        central.fit(x_train, y_train, batch_size=32, epochs=rounds, verbose=0)
        results["centralized"].append(central.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"])
        for variant in ("plain", "secure"):
            fed = make_fedavg(config, two_school_cnn, variant, 0.05, metrics=["accuracy"], seed=seed)
            client_data = federate((x_train, y_train), schools, shuffle=True, seed=seed)
            history = fed.fit(client_data, rounds=rounds, batch_size=32, validation_data=(x_test, y_test), verbose=0)
            results[f"FedAvg {variant}"].append(history.history["val_accuracy"][-1])
            for w in schools:
                w.clear_objects()
    central_mean = statistics.mean(results["centralized"])
    for name, accs in results.items():
        mean = statistics.mean(accs)
        diff = "" if name == "centralized" else f"   mean - centralized mean = {100 * (mean - central_mean):+.2f} points"
        print(f"  {name:<16} seeds 0, 1, 2: {', '.join(f'{a:.4f}' for a in accs)}   mean {mean:.4f}{diff}")


def main(args):
    import tfe_lite
    from tfe_lite.federated import SimulationConfig

    names = [f"client{i:03d}" for i in range(100)]
    many = tfe_lite.LocalConfig(names) if args.replicas == 0 else SimulationConfig(names, replicas=args.replicas)
    two = tfe_lite.LocalConfig(["school-a", "school-b"])

    import numpy as np

    from tfe_lite.datasets import load_mnist
    from tfe_lite.federated import label_shards

    data = load_mnist(limit=4000, seed=0, verbose=True)
    (x_train, y_train), _ = data
    halves = np.array_split(np.random.default_rng(0).permutation(len(y_train)), 2)
    schools = {n: (x_train[h], y_train[h]) for n, h in zip(("school-a", "school-b"), halves)}
    parts = set(args.parts.split(","))
    variants = ("plain", "secure", "dp", "secure+dp", "secure counted")
    if "two" in parts:
        time_variants("Two schools, 2,000 images each, 1 local epoch, batch 32", two, schools, two_school_cnn, variants,
                      dict(local_epochs=1, batch_size=32), args.rounds, 0.05)

    shards = label_shards(y_train, 100, shards_per_client=2, seed=0)
    clients = {n: (x_train[s], y_train[s]) for n, s in zip(names, shards)}
    devices = "own device each" if args.replicas == 0 else f"{args.replicas} shared devices"
    title = f"100 clients (non-IID, 40 images each, {devices}), 10 per round, 2 local epochs, batch 10"
    if "many" in parts:
        probe = make_fedavg(many, small_cnn, "plain", 0.05)
        probe.fit({n: clients[n] for n in names[:2]}, rounds=1, local_epochs=2, batch_size=10, verbose=0)
        central = central_trainer(probe, clients, batch_size=10, epochs=2)
        time_variants(title, many, clients, small_cnn, ("plain", "secure", "dp", "secure counted"),
                      dict(local_epochs=2, batch_size=10, clients_per_round=10), args.rounds, 0.05, central=central)
    if "accuracy" in parts and not args.skip_accuracy:
        accuracy(two, data, args)


if __name__ == "__main__":
    main(parse_arguments())
