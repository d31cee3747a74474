"""Private matmul on Pond against plaintext float32 and against the protocol's own floor.

Run: python benchmarks/matmul.py [--sizes 512 1024] [--repeats 15]

All three players run in this process (one logical CPU device each). Timings are medians of interleaved
repetitions, so every configuration sees the same machine load; the printed ratios are the result.

* private (offline dealer): triples precomputed; the online phase does 4 ring matmuls
  (server0: ``e @ b0`` and ``(a0 + e) @ d``; server1: ``e @ b1`` and ``a1 @ d``), see
  ``tfe_lite.protocols.pond.beaver``. Its floor is those 4 int64 ring matmuls.
* private (online dealer): the producer also makes the triple, 1 more ring matmul (floor 5), plus ChaCha20
  expansion of the seeded shares.
* share @ reveal, eager and traced: the README's first example (share both operands, private matmul with
  the online dealer, reveal), run eagerly and inside ``tf.function``. Eagerly each operation runs as a
  cached trace of itself once its signature repeats (``tfe_lite.protocols.pond.eager``); "eager, op by
  op" is the same with that cache off (every TensorFlow op dispatched eagerly, as before it).
* bytes: measured transfers of one private matmul against the Pond cost with seeded triples,
  ``8 (2 n^2 + 2 n^2 + n^2) + 2 * 32`` for n x n operands.
"""

import argparse
import functools
import statistics
import time

import numpy as np
import tensorflow as tf

import tfe_lite
from tfe_lite import ops, prg, ring
from tfe_lite.protocols import Pond, PrecomputedDealer
from tfe_lite.protocols.pond import TripleSpec
from tfe_lite.protocols.pond.eager import EagerFunctions


def timed(fn, *args) -> float:
    start = time.perf_counter()
    out = fn(*args)
    for t in tf.nest.flatten(out):
        t.numpy()
    return time.perf_counter() - start


def bench(n: int, repeats: int, config) -> dict:
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=(n, n)), rng.normal(size=(n, n))
    s0, s1 = config.get_player("server0"), config.get_player("server1")
    cases = {}

    offline_dealer = PrecomputedDealer()
    offline = Pond(config, dealer=offline_dealer)
    online = Pond(config)
    for name, prot in (("private, offline dealer", offline), ("private, online dealer", online)):
        a, b = prot.share(x, "alice"), prot.share(y, "bob")

        def private(a0, a1, b0, b1, prot=prot):
            return (prot.from_shares(a0, a1, fixedpoint=prot.fixedpoint) @ prot.from_shares(b0, b1, fixedpoint=prot.fixedpoint)).shares

        cases[name] = (tf.function(private), (*a.shares, *b.shares))
        if prot is offline:
            offline_dealer.precompute(TripleSpec("matmul", (n, n), (n, n)), repeats + 2)
        with prot.count_communication() as log:
            result = prot.from_shares(*cases[name][0](*cases[name][1]), fixedpoint=prot.fixedpoint)
        err = np.abs(result.reveal(to="alice").numpy() - x @ y).max()
        cases[name] += (err, log.total_bytes("online"))

    # The README's first use: share, matmul and reveal, eagerly and the same traced (online dealer).
    def share_matmul_reveal(a, b, prot=online):
        return (prot.share(a, "alice") @ prot.share(b, "bob")).reveal(to="alice")

    op_by_op = Pond(config)
    op_by_op._eager_functions = EagerFunctions(max_functions=0)
    cases["share @ reveal, eager"] = (share_matmul_reveal, (x, y))
    cases["share @ reveal, eager op by op"] = (functools.partial(share_matmul_reveal, prot=op_by_op), (x, y))
    cases["share @ reveal, traced"] = (tf.function(share_matmul_reveal), (tf.constant(x), tf.constant(y)))

    with tf.device(s0.device):
        r = [tf.constant(rng.integers(-2**63, 2**63 - 1, size=(n, n), dtype=np.int64)) for _ in range(4)]

    # Distinct operand pairs: identical matmuls would be merged by Grappler's common-subexpression pass.
    pairs = [(0, 1), (2, 3), (1, 0), (3, 2), (0, 3)]

    def floor(count):
        @tf.function
        def run(*mats):
            outs = []
            for i, (p, q) in enumerate(pairs[:count]):
                with tf.device((s0 if i % 2 == 0 else s1).device):
                    outs.append(ring.matmul(mats[p], mats[q]))
            return outs
        return run

    cases["floor: 4 ring matmuls"] = (floor(4), tuple(r))
    cases["floor: 5 ring matmuls"] = (floor(5), tuple(r))
    with tf.device(s0.device):
        f32 = (tf.constant(x, tf.float32), tf.constant(y, tf.float32))
    cases["plaintext float32 matmul"] = (tf.function(tf.matmul), f32)

    times = {name: [] for name in cases}
    for name, (fn, args, *_) in cases.items():  # warm up (tracing; eagerly, until the ops' traces are cached)
        for _ in range(20 if "eager" in name else 1):
            timed(fn, *args)
    for _ in range(repeats):
        for name, (fn, args, *_) in cases.items():
            times[name].append(timed(fn, *args))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    extras = {name: case[2:] for name, case in cases.items() if len(case) > 2}
    return medians, extras


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    config = tfe_lite.LocalConfig(["alice", "bob"])
    print(f"ring matmul backend: {ops.backend()}, PRG backend: {prg.backend()}")
    for n in args.sizes:
        medians, extras = bench(n, args.repeats, config)
        print(f"\n{n}x{n} @ {n}x{n}: median of {args.repeats} interleaved runs")
        for name, t in medians.items():
            print(f"  {name:32s} {t * 1e3:9.2f} ms")
        off, on = medians["private, offline dealer"], medians["private, online dealer"]
        print(f"  offline-dealer private / floor (4 ring matmuls): {off / medians['floor: 4 ring matmuls']:.2f}x")
        print(f"  online-dealer private / floor (5 ring matmuls):  {on / medians['floor: 5 ring matmuls']:.2f}x")
        print(f"  offline-dealer private / plaintext float32:      {off / medians['plaintext float32 matmul']:.1f}x")
        eager = medians["share @ reveal, eager"] / medians["share @ reveal, traced"]
        print(f"  share @ reveal eager / traced:                   {eager:.2f}x (target <= 1.15x)")
        op_by_op = medians["share @ reveal, eager op by op"] / medians["share @ reveal, traced"]
        print(f"  share @ reveal eager op by op / traced:          {op_by_op:.2f}x (without cached traces)")
        theory = 8 * 5 * n * n + 2 * 32
        for name, (err, nbytes) in extras.items():
            extra = "" if "offline" not in name else " (triple traffic moved offline)"
            print(f"  {name}: max |error| {err:.2e}; bytes {nbytes:,}{extra}")
        online_bytes = extras["private, online dealer"][1]
        print(f"  bytes per private matmul / Pond theory ({theory:,}): {online_bytes / theory:.3f}x")


if __name__ == "__main__":
    main()
