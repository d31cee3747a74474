"""A short tour of the Pond API: sharing, arithmetic, layers of a tiny network, tf.function, dealers.

Run: python examples/encrypted_matmul.py [--seed S] [--batch B] [--size N] [--runs R] [--help]
"""

import argparse

from _cli import non_negative_int, positive_int


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--seed", type=non_negative_int, default=42, help="seed of the public test data")
    parser.add_argument("--batch", type=positive_int, default=5, help="rows of the traced prediction's batch")
    parser.add_argument("--size", type=positive_int, default=64,
                        help="side of the square private matmul whose traffic is counted")
    parser.add_argument("--runs", type=positive_int, default=3,
                        help="executions whose triples the offline dealer precomputes")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_arguments(argv)  # before TensorFlow is imported: bad arguments fail at once

    import numpy as np
    import tensorflow as tf

    import tfe_lite
    from tfe_lite.protocols import Pond, PrecomputedDealer

    config = tfe_lite.LocalConfig(["data-owner", "model-owner"])
    prot = Pond(config)  # fixed point: 16 fractional bits, values within ±2^16
    rng = np.random.default_rng(args.seed)

    # 1. Inputs: each owner secret-shares its own data; public values are known to both servers.
    print("== 1. inputs secret-shared by their owners")
    images = rng.uniform(0, 1, size=(4, 8, 8, 1))
    filters = rng.normal(0, 0.3, size=(3, 3, 1, 2))
    dense = rng.normal(0, 0.3, size=(32, 3))
    x = prot.share(images, owner="data-owner")
    k = prot.share(filters, owner="model-owner")
    w = prot.share(dense, owner="model-owner")
    bias = prot.public(np.full(3, 0.1))

    # 2. A private forward pass: conv2d, square activation, average pooling, dense layer.
    print("== 2. a private forward pass: conv2d, square, average pooling, dense")
    h = prot.conv2d(x, k, strides=1, padding="SAME")
    h = h.square()
    h = prot.avg_pool2d(h, pool_size=2)            # (4, 4, 4, 2)
    h = h.reshape([4, -1])[:, :32]                  # slicing and reshaping are local
    logits = h @ w + bias
    private = logits.reveal(to="data-owner").numpy()

    plain = tf.nn.avg_pool2d(tf.square(tf.nn.conv2d(images, filters, 1, "SAME")), 2, 2, "VALID")
    plain = (tf.reshape(plain, [4, -1])[:, :32] @ dense + 0.1).numpy()
    print("private logits:\n", private)
    print("max |private - plaintext| =", np.abs(private - plain).max())

    # 3. The same inside tf.function: traced once, fresh randomness on every call.
    print("== 3. inside tf.function")

    @tf.function
    def predict(batch):
        z = prot.share(batch, owner="data-owner") @ w
        return z.reveal(to="data-owner")

    batch = tf.constant(rng.normal(size=(args.batch, 32)))
    print("traced prediction error:", np.abs(predict(batch).numpy() - batch.numpy() @ dense).max())

    # 4. Communication: bytes between players for one private size x size matmul.
    print(f"== 4. traffic of one private {args.size}x{args.size} matmul")
    n = args.size
    a = prot.share(rng.normal(size=(n, n)), "data-owner")
    b = prot.share(rng.normal(size=(n, n)), "model-owner")
    with prot.count_communication() as log:
        a @ b
    print(log.summary())

    # 5. An offline phase: triples made ahead of time by the crypto producer, consumed online.
    print(f"== 5. an offline dealer: triples for {args.runs} executions made ahead of time")
    dealer = PrecomputedDealer()
    offline = Pond(config, dealer=dealer)
    w2 = offline.share(dense, owner="model-owner")
    made = dealer.precompute_for(
        lambda v: (offline.share(v, "data-owner") @ w2).reveal(to="data-owner"), batch, runs=args.runs
    )
    print("precomputed:", {str(spec): count for spec, count in made.items()})
    online = (offline.share(batch, "data-owner") @ w2).reveal(to="data-owner").numpy()
    print("offline-dealer prediction error:", np.abs(online - batch.numpy() @ dense).max())


if __name__ == "__main__":
    main()
