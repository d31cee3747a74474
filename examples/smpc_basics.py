"""Secure multi-party computation basics: additive secret sharing, then the same on Pond's players.

Run: python examples/smpc_basics.py [--part {1,2,all}] [--seed S] [--help]

Part 1 uses plain Python integers modulo 2^64 (as in PySyft's classic tutorial): a secret is split into
three random shares that add up to it; any two shares alone are uniformly random and say nothing.
Part 2 does the same with tensors on tfe_lite's Pond protocol, where every player is a TensorFlow device.
"""

import argparse
import secrets

from _cli import non_negative_int

Q = 2**64  # the ring Z/2^64


def share(secret: int, n: int = 3) -> list[int]:
    """``n`` additive shares of ``secret`` mod Q, the first n-1 drawn from the OS CSPRNG."""
    shares = [secrets.randbelow(Q) for _ in range(n - 1)]
    return shares + [(secret - sum(shares)) % Q]


def reconstruct(shares: list[int]) -> int:
    value = sum(shares) % Q
    return value - Q if value >= Q // 2 else value  # signed reading


def part1_plain_python() -> None:
    print("== Part 1: additive secret sharing with Python integers mod 2^64")
    a, b = share(2), share(5)
    print(f"shares of 2: {a}")
    print(f"shares of 5: {b}")
    total = [x + y for x, y in zip(a, b)]  # each party adds its own two shares, locally
    print(f"2 + 5 reconstructed from the summed shares: {reconstruct(total)}")
    assert reconstruct(total) == 7

    # Two of the three shares are uniformly random: for ANY candidate secret there is a third share that
    # completes them, so they rule nothing out.
    seen = a[:2]
    for candidate in (2, 5, -1000):
        third = (candidate - sum(seen)) % Q
        assert reconstruct(seen + [third]) == candidate
    print(f"shares {seen} are consistent with the secrets 2, 5 and -1000 alike: two shares reveal nothing")

    tripled = [(3 * s) % Q for s in a]  # multiplication by a public number is local too
    print(f"2 * 3 (public) reconstructed: {reconstruct(tripled)}")
    assert reconstruct(tripled) == 6


def part2_pond(seed: int) -> None:
    import numpy as np

    import tfe_lite
    from tfe_lite.protocols import Pond

    print("\n== Part 2: the same with tensors on Pond (server0, server1, crypto-producer as TF devices)")
    config = tfe_lite.LocalConfig(["alice", "bob"])
    for player in config.players:
        print(f"  {player.name:16s} -> {player.device}")
    prot = Pond(config)

    x = prot.share(2.0, owner="alice")  # alice's plaintext never leaves alice's device
    y = prot.share(5.0, owner="bob")
    s0, s1 = x.shares
    print(f"alice's 2.0 as two int64 shares: server0 holds {s0.numpy()}, server1 holds {s1.numpy()}")
    print(f"2 + 5 = {(x + y).reveal(to='alice').numpy()}")
    print(f"2 * 3.5 (public) = {(x * 3.5).reveal(to='alice').numpy()}")
    print(f"2 * 5 (both private, Beaver triple from the crypto producer) = {(x * y).reveal(to='bob').numpy()}")

    rng = np.random.default_rng(seed)
    features = rng.normal(size=(2, 3))
    weights = rng.normal(size=(3, 1))
    a = prot.share(features, owner="alice")
    w = prot.share(weights, owner="bob")
    with prot.count_communication() as log:
        scores = a @ w + 0.5
    result = scores.reveal(to="alice").numpy()
    print(f"private matmul + bias:\n{result}\nplaintext:\n{features @ weights + 0.5}")
    print(f"traffic of the private matmul:\n{log.summary()}")
    assert np.allclose(result, features @ weights + 0.5, atol=1e-3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("1", "2", "all"), default="all", help="which part to run")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of part 2's public test data")
    args = parser.parse_args(argv)  # before TensorFlow is imported: bad arguments fail at once
    if args.part in ("1", "all"):
        part1_plain_python()
    if args.part in ("2", "all"):
        part2_pond(args.seed)


if __name__ == "__main__":
    main()
