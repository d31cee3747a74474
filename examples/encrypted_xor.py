"""Learning XOR on secret shares with an encrypted reservoir (the PySyft tutorial on Pond's ops).

A fixed random reservoir ``relu(x @ R)``, ``R ~ randn(2, units)``, feeds a linear model of ``units`` weights,
zero-initialized, trained by gradient descent on the four XOR rows with the squared error. The data owner
secret-shares its rows (or, with ``--protocol-relu``, its raw inputs: the servers then compute the reservoir's
ReLU with the protocol's comparison) and the targets; the model owner shares the zero weights, which stay
shares on the servers. Each step reveals nothing; the loss is revealed to the model owner at the printed
steps, and the final predictions to the data owner.

Run: python examples/encrypted_xor.py [--steps 250] [--learning-rate 1e-3] [--protocol-relu] [--help]
"""

import argparse
import time

from _cli import non_negative_int, positive_float, positive_int


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=positive_int, default=250, help="gradient descent steps")
    parser.add_argument("--learning-rate", type=positive_float, default=1e-3, help="public learning rate")
    parser.add_argument("--units", type=positive_int, default=256, help="size of the random reservoir")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the (public) reservoir")
    parser.add_argument("--print-every", type=positive_int, default=50, help="reveal and print the loss every N steps")
    parser.add_argument("--reduction", choices=["sum", "mean"], default="sum",
                        help="the squared error summed over the four rows (as in the tutorial) or their mean")
    parser.add_argument("--protocol-relu", action="store_true",
                        help="share the raw inputs and compute the reservoir's relu with the protocol's comparison")
    args = parser.parse_args(argv)
    if args.learning_rate >= 1.0:
        parser.error(f"argument --learning-rate: expected a number below 1 (the updates leave the fixed-point range), "
                     f"received {args.learning_rate!r}")
    return args


def main(argv=None) -> None:
    args = parse_arguments(argv)  # before TensorFlow is imported: bad arguments fail at once

    import numpy as np
    import tensorflow as tf

    import tfe_lite
    from tfe_lite.protocols import Pond

    config = tfe_lite.LocalConfig(["data-owner", "model-owner"])
    prot = Pond(config)
    data_owner = config.get_player("data-owner")
    reservoir = np.random.default_rng(args.seed).standard_normal((2, args.units))  # fixed and public
    rows = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    targets = np.array([[0.0], [1.0], [1.0], [0.0]])
    mode = "the protocol's relu on shared inputs" if args.protocol_relu else "a fixed reservoir computed by the data owner"
    print(f"== XOR: {args.units} reservoir units ({mode}), {args.steps} steps, learning rate {args.learning_rate:g}")

    print("== 1. the data owner shares its rows and targets, the model owner its zero weights")
    # 1. The data owner shares its rows (or its reservoir features) and targets from its own device.
    with tf.device(data_owner.device):
        x = tf.constant(rows)
        y = tf.constant(targets)
        if not args.protocol_relu:
            x = tf.nn.relu(x @ reservoir)
    x, y = prot.share(x, owner="data-owner"), prot.share(y, owner="data-owner")
    features = prot.relu(x @ reservoir) if args.protocol_relu else x  # (4, units), private either way
    features_t = prot.transpose(features)

    # 2. The model owner shares the zero weights; the servers keep them as share variables.
    w = prot.share(np.zeros((args.units, 1)), owner="model-owner")
    shares = []
    for server, share in zip((prot.server0, prot.server1), w.shares):
        with tf.device(server.device):
            shares.append(tf.Variable(share, trainable=False))

    # d/dw sum (h w - y)^2 = 2 h^T (h w - y); the mean divides by the 4 rows.
    factor = 2.0 * args.learning_rate / (1 if args.reduction == "sum" else 4)

    def step(reveal: bool):
        weights = prot.from_shares(shares[0].value(), shares[1].value(), fixedpoint=prot.fixedpoint)
        error = features @ weights - y
        new = weights - (features_t @ error) * factor
        for variable, share in zip(shares, new.shares):
            variable.assign(share)
        if not reveal:
            return tf.constant(0.0, tf.float64)
        loss = prot.reduce_sum(prot.square(error))
        return (loss if args.reduction == "sum" else loss * 0.25).reveal(to="model-owner")

    # The plaintext twin: the same descent in float64, for the side-by-side losses.
    plain_h, plain_w, plain_losses = np.maximum(rows @ reservoir, 0.0), np.zeros((args.units, 1)), []
    for t in range(args.steps):
        plain_error = plain_h @ plain_w - targets
        plain_losses.append(float((plain_error**2).sum() / (1 if args.reduction == "sum" else 4)))
        plain_w = plain_w - plain_h.T @ plain_error * factor

    traced = {reveal: tf.function(lambda reveal=reveal: step(reveal), autograph=False) for reveal in (False, True)}
    print("== 2. training on shares (the loss before each printed step is revealed to the model owner)")
    start = time.perf_counter()
    losses = []
    for t in range(args.steps):
        reveal = t % args.print_every == 0
        loss = traced[reveal]()
        if reveal:
            losses.append(float(loss))
            print(f"step {t:4d}  loss {losses[-1]:.6f}  (plaintext {plain_losses[t]:.6f})  "
                  f"{time.perf_counter() - start:.1f} s")
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.1f} s")

    # 3. The predictions are revealed to the data owner only.
    weights = prot.from_shares(shares[0].value(), shares[1].value(), fixedpoint=prot.fixedpoint)
    predictions = (features @ weights).reveal(to="data-owner").numpy().ravel()
    print("== 3. predictions revealed to the data owner")
    print("raw predictions:", " ".join(f"{p:.4f}" for p in predictions))
    print("predictions:", [int(round(p)) for p in predictions])
    print("plaintext twin predictions:", " ".join(f"{p:.4f}" for p in (plain_h @ plain_w).ravel()))


if __name__ == "__main__":
    main()
