"""A private matmul run from a driver, with every player in its own process (or on its own host).

Run locally (all players logical devices of this process):

    python examples/multi_host.py

Run on a cluster: write cluster.json (README, "Multi-host"), start each player, in any order,

    tfe-lite serve --config cluster.json --player server0
    tfe-lite serve --config cluster.json --player server1
    tfe-lite serve --config cluster.json --player crypto-producer
    tfe-lite serve --config cluster.json --player bob

then drive (here as alice, the cluster file's "driver"; `tfe-lite run` makes alice's own server listen
on her address only, as `tfe-lite serve` does for the others):

    tfe-lite run examples/multi_host.py --config cluster.json

alice secret-shares her data, bob his weights; the servers multiply the shares with a triple from the
crypto producer and reveal the product to alice only. The protocol code is the same in both modes; with
the same --seed the result is the same bit for bit (compare the printed digest), and it equals the
plaintext product within the fixed-point error.
"""

import argparse
import hashlib
import time

from _cli import positive_float, positive_int


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", metavar="CLUSTER.json", help="cluster file (default: local mode, one process)")
    parser.add_argument("--timeout", type=positive_float, default=30.0, help="seconds to wait for the players")
    parser.add_argument("--size", type=positive_int, default=64, help="the matrices are SIZE x SIZE")
    parser.add_argument("--seed", type=int, default=None,
                        help="fix the players' keys (repeatable runs, not secret; default: fresh keys)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    import numpy as np

    import tfe_lite
    from tfe_lite.protocols import Pond

    if args.config:
        config = tfe_lite.RemoteConfig.load(args.config, timeout=args.timeout)
        mode = f"multi-host, {args.config}, driver runs as {config.driver or 'a job of its own'}"
    else:
        config = tfe_lite.LocalConfig(["alice", "bob"])
        mode = "local, one process"
    print(f"== {mode}")
    rng = np.random.default_rng(0)
    x, w = rng.uniform(-1, 1, size=(args.size, args.size)), rng.uniform(-1, 1, size=(args.size, args.size))
    start = time.perf_counter()
    with config.guard():  # a lost player: an error naming it, within the timeout
        prot = Pond(config, seed=args.seed)
        for player in config.players:
            print(f"  {player.name:16s} {player.device}")
        product = prot.share(x, owner="alice") @ prot.share(w, owner="bob")
        result = product.reveal(to="alice").numpy()
    print(f"private {args.size}x{args.size} matmul in {time.perf_counter() - start:.2f} s (connecting included)")
    print(f"max |private - plaintext| = {np.abs(result - x @ w).max():.2e}")
    print(f"result digest (sha256): {hashlib.sha256(result.tobytes()).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
