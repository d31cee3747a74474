"""Private matmul with every player a `tfe-lite serve` process on 127.0.0.1, against local mode, in one run.

Run: python benchmarks/multihost.py [--size 512] [--repeats 10]

The script starts server0, server1 and the crypto producer as `tfe-lite serve` processes (free 127.0.0.1
ports, stopped at the end whatever happens) and drives them as alice. The same process also holds a
:class:`tfe_lite.LocalConfig` (its own logical CPU devices, configured before the cluster connects), so
the two modes run the same traced private matmul (online dealer: the producer makes each triple; the
product revealed to alice) in interleaved repetitions under the same machine load; the printed ratio is the result (target: multi-host
<= 1.5x local).

Bytes: TCP bytes between the cluster's processes, as the kernel counts them on each socket (``ss -ti``
``bytes_received``: payload, gRPC/HTTP2 framing included), beside the protocol's own count of what one
private matmul sends (``Pond.count_communication``, run-time counters) and the Pond formula.

LeNet private inference (batch 1 and 64) is not measured: tfe_lite has no private LeNet yet
(keras_layers). :func:`lenet_cases` is the hook: return its (name, function, arguments) cases and they are
timed and reported beside the matmul in both modes.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from _cli import positive_int  # noqa: E402

SERVED = ("server0", "server1", "crypto-producer")
READY_TIMEOUT = 90.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=positive_int, default=512, help="the matrices are SIZE x SIZE")
    parser.add_argument("--repeats", type=positive_int, default=10, help="timed repetitions per mode")
    return parser.parse_args(argv)


def free_ports(count):
    import socket

    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_players(cluster: Path):
    processes = {}
    for name in SERVED:
        processes[name] = subprocess.Popen(
            [sys.executable, "-m", "tfe_lite.runtime.cli", "serve", "--config", str(cluster), "--player", name],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
    deadline = time.monotonic() + READY_TIMEOUT
    for name, process in processes.items():
        line = ""
        while "ready" not in line:
            # readline blocks, but a serve process prints its ready line or exits (EOF) before the deadline
            line = process.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"tfe-lite serve for {name} did not become ready (exit {process.poll()})")
        print(line.strip().split(" (")[0], flush=True)
    return processes


def wire_bytes(ports: set[int]) -> int:
    """TCP payload bytes received so far on established sockets with an end at one of ``ports``."""
    out = subprocess.run(["ss", "-tinH", "state", "established"], capture_output=True, text=True, check=True).stdout
    total, current = 0, False
    for line in out.splitlines():
        if not line.startswith(("\t", " ")):
            ends = re.findall(r":(\d+)\s", line + " ")
            current = any(int(p) in ports for p in ends)
        elif current:
            match = re.search(r"bytes_received:(\d+)", line)
            total += int(match[1]) if match else 0
    return total


def lenet_cases(prot):
    """Hook for LeNet private inference at batch 1 and 64 (none yet: no private LeNet in keras_layers)."""
    return []


def main(argv=None):
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="tfe-multihost-"))
    ports = free_ports(len(SERVED) + 1)
    players = {name: f"127.0.0.1:{port}" for name, port in zip(SERVED + ("alice",), ports)}
    cluster = workdir / "cluster.json"
    cluster.write_text(json.dumps({"players": players, "driver": "alice"}, indent=2))
    processes = start_players(cluster)
    try:
        run(args, cluster, set(ports))
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def run(args, cluster: Path, ports: set[int]):
    import numpy as np
    import tensorflow as tf

    import tfe_lite
    from tfe_lite.devices import ensure_logical_cpus
    from tfe_lite.protocols import Pond

    ensure_logical_cpus(8)  # local mode's devices, before the runtime starts
    remote = tfe_lite.RemoteConfig.load(cluster, timeout=READY_TIMEOUT).connect()
    local = tfe_lite.LocalConfig(["alice"])
    n = args.size
    rng = np.random.default_rng(n)
    x, y = rng.uniform(-1, 1, size=(n, n)), rng.uniform(-1, 1, size=(n, n))
    cases = {}
    for mode, config in (("local", local), ("multi-host", remote)):
        with config.guard():
            prot = Pond(config)
            a, b = prot.share(x, "alice"), prot.share(y, "alice")

            # Revealed to alice, the driver: fetching it waits for the whole computation and moves no
            # share to the driver (fetching the result's shares would hand the driver both).
            @tf.function
            def private(a0, a1, b0, b1, prot=prot):
                fp = prot.fixedpoint
                return (prot.from_shares(a0, a1, fixedpoint=fp) @ prot.from_shares(b0, b1, fixedpoint=fp)).reveal(to="alice")

            arguments = (*a.shares, *b.shares)
            for _ in range(2):  # trace, warm up
                private(*arguments).numpy()
            error = np.abs(private(*arguments).numpy() - x @ y).max()
            cases[f"{mode}: private {n}x{n} matmul"] = (config, private, arguments, prot, error)
            for name, fn, fn_args in lenet_cases(prot):
                cases[f"{mode}: {name}"] = (config, fn, fn_args, prot, None)

    times = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved: both modes see the same load
        for name, (config, fn, fn_args, _, _) in cases.items():
            with config.guard():
                start = time.perf_counter()
                [t.numpy() for t in tf.nest.flatten(fn(*fn_args))]
                times[name].append(time.perf_counter() - start)

    config, fn, fn_args, prot, _ = cases[f"multi-host: private {n}x{n} matmul"]
    runs = 3
    before = wire_bytes(ports)
    with config.guard(), prot.count_communication() as log:
        for _ in range(runs):
            fn(*fn_args).numpy()
    on_wire = (wire_bytes(ports) - before) / runs
    counted = log.total_bytes() / runs
    formula = 8 * 7 * n * n + 2 * 32

    print(f"\nprivate {n}x{n} matmul, online dealer, median of {args.repeats} interleaved runs "
          f"(tfe_lite.ops backend: {tfe_lite.ops.backend()}, {os.cpu_count()} CPUs)")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, (_, _, _, _, error) in cases.items():
        extra = f"   max error {error:.1e}" if error is not None else ""
        print(f"  {name:40s} {medians[name] * 1e3:9.1f} ms{extra}")
    ratio = medians[f"multi-host: private {n}x{n} matmul"] / medians[f"local: private {n}x{n} matmul"]
    print(f"  multi-host / local: {ratio:.2f}x  (target <= 1.5x: {'met' if ratio <= 1.5 else 'MISSED'})")
    print(f"\nbytes per private matmul: on the wire (TCP, gRPC framing included) {on_wire:,.0f}; "
          f"protocol count {counted:,.0f}; Pond formula 8*(2n^2 + 2n^2 + n^2 + 2n^2 reveal) + 2*32 = {formula:,}; "
          f"wire / count = {on_wire / counted:.3f}")
    print(log.summary())
    print("\nLeNet private inference (batch 1, 64): not measured, no private LeNet yet (hook: lenet_cases).")


if __name__ == "__main__":
    main()
