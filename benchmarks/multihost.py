"""Private matmul and LeNet inference with every player a `tfe-lite serve` process on 127.0.0.1, against
local mode, in one run.

Run: python benchmarks/multihost.py [--size 512] [--batches 1 64] [--repeats 10] [--rtt-ms 20] [--offline]
     [--player-threads N] [--pin] [--comparison auto|dealt|assisted] [--malloc tuned|system]

The script starts server0, server1, the crypto producer and the model owner as `tfe-lite serve` processes
(free 127.0.0.1 ports, stopped at the end whatever happens) and drives them as alice. The same process
also holds a :class:`tfe_lite.LocalConfig` (its own logical CPU devices, configured before the cluster
connects), so the two modes run the same traced computations in interleaved repetitions under the same
machine load; the printed ratios are the result (target: multi-host <= 1.5x local):

* a private SIZE x SIZE matmul (online dealer: the producer makes each triple; the product revealed to alice);
* LeNet private inference (the model of benchmarks/inference.py, converted by ``secure()``; the model owner
  shares the weights once, alice is the client: her batch is shared from her device and the logits are
  revealed to her), ``forward_function`` traced once per batch size. Issue 12's second target for it:
  at most 0.1x CrypTen 0.4.1 with two parties and a dealer in three processes (200 ms at batch 1, 760 ms
  at batch 64).

What stands in the way is printed from probes in the same run: the fixed cost of a call that reaches every
served player, one more message on the critical path (the slope between chains of 10 and 40 messages), a
further message within one round, and the byte rate of one 8 MiB message; with LeNet's rounds (from its
multi-host graph), messages and bytes (the protocol's count) they add up to a predicted time beside the
measured one. CPU time per run, summed over every process (``/proc``: the driver, each served player, the
relay), beside local mode's: on a machine whose cores all the players share, a run takes at least that
sum divided by the cores.

Bytes: TCP bytes between the cluster's processes, as the kernel counts them on each socket (``ss -ti``
``bytes_received``: payload, gRPC/HTTP2 framing included), beside the protocol's own count of what one
private matmul sends (``Pond.count_communication``, run-time counters) and the Pond formula.

Measured for each multi-host case, outside the timed runs.

``--comparison``: Pond's comparison protocol for LeNet (``auto``, the default, as Pond's; ``dealt``: 7 rounds
each; ``assisted``: 3 rounds each, the producer online), in both modes.

``--malloc system``: every process leaves glibc's malloc as it is (``TFE_LITE_MALLOC=system``) instead of
keeping freed memory for the next tensor (:mod:`tfe_lite.allocator`), to measure what that setting gains.

``--offline``: LeNet's triples come from a precomputed dealer (made before the timed runs, in both modes),
so the timed runs are the online phase: the producer takes no part. ``--player-threads N``: each served
player's TensorFlow thread pools (``tfe-lite serve --inter-op-threads N --intra-op-threads N``), for four
players sharing this machine's cores. ``--pin``: server0 and server1 each on a CPU of its own
(``tfe-lite serve --cpus``: the first and the second this process may run on), the producer and the driver
on any; local mode is not pinned.

Latency: ``--rtt-ms R`` puts each served player behind a relay that delays every byte by R/2 ms each way
(benchmarks/delay_proxy.py; ``tc netem`` is unavailable: this kernel lacks ``CONFIG_NET_SCH_NETEM``), so a
message to or from a served player costs R ms more; traffic to alice's own server (in the driver) is not
delayed. The ratios then show the cost of rounds (no target applies); the relay copies bytes in Python, so
no bytes are reported.
"""

import argparse
import gc
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import lenet, measured_rounds  # noqa: E402  (the LeNet of benchmarks/inference.py)

SERVED = ("server0", "server1", "crypto-producer", "model-owner")
READY_TIMEOUT = 90.0
CRYPTEN_3PROCESS_MS = {1: 2010.0, 64: 7564.0}  # CrypTen 0.4.1, two parties and a dealer in three processes
CRYPTEN_TARGET = 0.1
HOPS = 40  # messages in the round-trip probe
SHORT_HOPS = 10  # the short chain: the per-message cost is the slope between the two chains
WIDTH = 400  # messages in the one-round probe (LeNet's forward sends about 400 tensors between players)
TRAFFIC_RUNS = 3  # runs of each case whose bytes are counted (outside the timed runs)
BULK = 2**20  # int64 elements (8 MiB) in the throughput probe


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=positive_int, default=512, help="the matrices are SIZE x SIZE")
    parser.add_argument("--batches", type=positive_int, nargs="*", default=[1, 64],
                        help="LeNet batch sizes (none: the matmul only)")
    parser.add_argument("--repeats", type=positive_int, default=10, help="timed repetitions per mode")
    parser.add_argument("--rtt-ms", type=float, default=None,
                        help="add this round-trip time to every served player (a delaying relay)")
    parser.add_argument("--offline", action="store_true",
                        help="LeNet with a precomputed dealer (triples made before the timed runs): the online phase")
    parser.add_argument("--comparison", choices=("auto", "dealt", "assisted"), default="auto",
                        help="Pond's comparison protocol for LeNet (default: auto, as Pond's default)")
    parser.add_argument("--player-threads", type=positive_int, default=None, metavar="N",
                        help="each served player's inter-op and intra-op thread pools (default: TensorFlow's, one per core)")
    parser.add_argument("--pin", action="store_true",
                        help="server0 and server1 each on a CPU of its own (tfe-lite serve --cpus)")
    parser.add_argument("--malloc", choices=("tuned", "system"), default="tuned",
                        help="TFE_LITE_MALLOC in every process (tfe_lite.allocator; default: tuned, as tfe_lite's)")
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


def pinned_cpus() -> dict[str, str]:
    """``--pin``: server0 and server1 on the first and second CPU this process may run on."""
    cpus = sorted(os.sched_getaffinity(0))
    return {name: str(cpus[i % len(cpus)]) for i, name in enumerate(("server0", "server1"))}


def start_players(cluster: Path, processes: dict, listen: dict[str, int] | None = None, threads: int | None = None,
                  cpus: dict[str, str] | None = None) -> None:
    """Start the served players into ``processes`` (so the caller stops them whatever happens); wait until
    ready. ``threads``: each player's inter-op and intra-op thread pool size (None: TensorFlow's default);
    ``cpus``: player -> the CPUs it is pinned to (the others run anywhere)."""
    started = {}
    for name in SERVED:
        extra = ["--listen-port", str(listen[name])] if listen else []
        if threads:
            extra += ["--inter-op-threads", str(threads), "--intra-op-threads", str(threads)]
        if cpus and name in cpus:
            extra += ["--cpus", cpus[name]]
        processes[name] = started[name] = subprocess.Popen(
            [sys.executable, "-m", "tfe_lite.runtime.cli", "serve", "--config", str(cluster), "--player", name, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
    deadline = time.monotonic() + READY_TIMEOUT
    for name, process in started.items():
        line = ""
        while "ready" not in line:
            # readline blocks, but a serve process prints its ready line or exits (EOF) before the deadline
            line = process.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"tfe-lite serve for {name} did not become ready (exit {process.poll()})")
        print(line.strip().split(" (")[0], flush=True)


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


def lenet_cases(prot, model, batches, offline_runs: int = 0):
    """LeNet private inference at each batch size: ``(name, function, arguments)`` cases on ``prot``; with
    ``offline_runs``, ``prot``'s precomputed dealer makes the triples of that many runs of each first."""
    import numpy as np

    from tfe_lite.keras_layers import secure

    private = secure(model, protocol=prot, model_owner="model-owner", client="alice")
    rng = np.random.default_rng(64)
    cases = []
    for b in batches:
        x = rng.uniform(0, 1, (b, 28, 28, 1)).astype(np.float32)
        if offline_runs:
            prot.dealer.precompute_for(private.forward_function, x, runs=offline_runs)
        cases.append((f"LeNet private inference, batch {b}" + (" (offline dealer)" if offline_runs else ""),
                      private.forward_function, (x,)))
    return cases


def message_chain(config, hops=HOPS):
    """A traced chain of ``hops`` dependent one-element messages between server0 and server1: the cost of a
    round (one message on the critical path), without the protocol's computation."""
    import tensorflow as tf

    ends = [config.get_player(name).device for name in ("server0", "server1")]

    @tf.function
    def chain(x):
        for i in range(hops):
            with tf.device(ends[i % 2]):
                x = x + 1
        with tf.device(config.get_player("alice").device):
            return tf.identity(x)

    return chain


def touch_players(config, players=SERVED):
    """One op on each of ``players``, summed on alice, with no message between them: the fixed cost of a
    call that reaches them."""
    import tensorflow as tf

    @tf.function
    def touch(x):
        outs = []
        for name in players:
            with tf.device(config.get_player(name).device):
                outs.append(x + 1)
        with tf.device(config.get_player("alice").device):
            return tf.add_n(outs)

    return touch


def message_fan(config, width=WIDTH):
    """A traced round of ``width`` independent one-element messages from server0 to server1: the cost of
    many messages in one round."""
    import tensorflow as tf

    @tf.function
    def fan(x):
        with tf.device(config.get_player("server0").device):
            sent = [x + i for i in range(width)]
        with tf.device(config.get_player("server1").device):
            total = tf.add_n([tf.identity(t) for t in sent])
        with tf.device(config.get_player("alice").device):
            return tf.identity(total)

    return fan


def bulk_transfer(config, size=BULK):
    """One message of ``size`` int64 (made on server0) to server1: the cost of bytes on a link."""
    import tensorflow as tf

    @tf.function
    def bulk(x):
        with tf.device(config.get_player("server0").device):
            big = tf.fill([size], x + 1)
        with tf.device(config.get_player("server1").device):
            total = tf.reduce_sum(tf.identity(big))
        with tf.device(config.get_player("alice").device):
            return tf.identity(total)

    return bulk


def main(argv=None):
    args = parse_args(argv)
    os.environ["TFE_LITE_MALLOC"] = args.malloc  # this process (both modes) and the served players it starts
    workdir = Path(tempfile.mkdtemp(prefix="tfe-multihost-"))
    ports = free_ports(2 * len(SERVED) + 1)
    players = {name: f"127.0.0.1:{port}" for name, port in zip(SERVED + ("alice",), ports)}
    cluster = workdir / "cluster.json"
    cluster.write_text(json.dumps({"players": players, "driver": "alice"}, indent=2))
    processes, listen = {}, None
    if args.rtt_ms is not None:  # each served player listens behind its delaying relay at its cluster address
        listen = dict(zip(SERVED, ports[len(SERVED) + 1:]))
        relay = subprocess.Popen([sys.executable, str(Path(__file__).with_name("delay_proxy.py")), "--rtt-ms", str(args.rtt_ms),
                                  *(f"{players[n].rsplit(':', 1)[1]}:{listen[n]}" for n in SERVED)],
                                 stdout=subprocess.PIPE, text=True)
        processes["relay"] = relay
        if relay.stdout.readline().strip() != "relaying":
            raise RuntimeError(f"the delaying relay did not start (exit {relay.poll()})")
    try:
        start_players(cluster, processes, listen, args.player_threads, pinned_cpus() if args.pin else None)
        run(args, cluster, set(ports), {name: process.pid for name, process in processes.items()})
    finally:
        # The traced functions are freed while their players still serve: TensorFlow removes each from every
        # player it was registered on (freed at exit, after the players stopped, each would log an error).
        gc.collect()
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def traffic(config, fn, fn_args, prot, ports, runs=TRAFFIC_RUNS):
    """``(bytes on the wire, the protocol's count of bytes, its count of messages, the log)`` per run of
    ``fn``, averaged over ``runs`` (the log holds all of them)."""
    import tensorflow as tf

    before = wire_bytes(ports)
    with config.guard(), prot.count_communication() as log:
        for _ in range(runs):
            [t.numpy() for t in tf.nest.flatten(fn(*fn_args))]
    return (wire_bytes(ports) - before) / runs, log.total_bytes() / runs, log.messages // runs, log


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far (Linux: /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_run(config, fn, fn_args, pids: dict[str, int], seconds=1.0) -> dict[str, float]:
    """CPU seconds per run of ``fn`` in this process (the driver; in local mode every player) and in each
    of ``pids`` (the served players and the relay), averaged over at least 3 runs and ``seconds`` (the
    kernel counts CPU time in clock ticks, 10 ms)."""
    import tensorflow as tf

    before, own, start, runs = {name: cpu_seconds(pid) for name, pid in pids.items()}, time.process_time(), time.perf_counter(), 0
    with config.guard():
        while runs < 3 or time.perf_counter() - start < seconds:
            [t.numpy() for t in tf.nest.flatten(fn(*fn_args))]
            runs += 1
    used = {"driver": time.process_time() - own}
    used.update({name: cpu_seconds(pid) - before[name] for name, pid in pids.items()})
    return {name: spent / runs for name, spent in used.items()}


def run(args, cluster: Path, ports: set[int], pids: dict[str, int]):
    import keras
    import numpy as np
    import tensorflow as tf

    import tfe_lite
    from tfe_lite.allocator import keep_freed_memory
    from tfe_lite.devices import ensure_logical_cpus
    from tfe_lite.protocols import Pond, PrecomputedDealer

    ensure_logical_cpus(8)  # local mode's devices, before the runtime starts
    remote = tfe_lite.RemoteConfig.load(cluster, timeout=READY_TIMEOUT).connect()
    local = tfe_lite.LocalConfig(["alice", "model-owner"])
    keras.utils.set_random_seed(1)
    model = lenet()  # after connecting: TensorFlow's cluster connect invalidates variables made before it
    n = args.size
    rng = np.random.default_rng(n)
    x, y = rng.uniform(-1, 1, size=(n, n)), rng.uniform(-1, 1, size=(n, n))
    cases, rounds = {}, {}
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
            lenet_prot, runs = Pond(config, comparison=args.comparison), 0
            if args.offline:  # the triples of the warm-up, timed and traffic runs, made now
                lenet_prot, runs = Pond(config, dealer=PrecomputedDealer(), comparison=args.comparison), args.repeats + 2 + 3
            for name, fn, fn_args in lenet_cases(lenet_prot, model, args.batches, runs):
                for _ in range(2):
                    out = fn(*fn_args)[0].numpy()
                error = np.abs(out - model(fn_args[0]).numpy()).max()
                cases[f"{mode}: {name}"] = (config, fn, fn_args, lenet_prot, error)
                if mode == "multi-host":  # comparison="auto" runs another protocol there than in local mode
                    graph = fn.get_concrete_function(tf.TensorSpec(fn_args[0].shape, tf.float32)).graph
                    rounds[name] = measured_rounds(graph, config)
            start = tf.constant(0, tf.int64)
            for probe, label in ((message_chain(config), f"{HOPS} messages server0 <-> server1"),
                                 (message_chain(config, SHORT_HOPS), f"{SHORT_HOPS} messages server0 <-> server1"),
                                 (touch_players(config), "one op on each served player, no messages between them"),
                                 (touch_players(config, ("server0",)), "one op on server0 alone, no message"),
                                 (message_fan(config), f"{WIDTH} messages server0 -> server1, one round"),
                                 (bulk_transfer(config), f"one message of {8 * BULK // 2**20} MiB server0 -> server1")):
                for _ in range(2):
                    probe(start).numpy()
                cases[f"{mode}: {label}"] = (config, probe, (start,), prot, None)

    # Each multi-host case's bytes and messages (on the wire and by the protocol's count), outside the timed runs.
    traffics = {name: traffic(config, fn, fn_args, prot, ports) for name, (config, fn, fn_args, prot, error) in cases.items()
                if name.startswith("multi-host: ") and error is not None}
    # Each private case's CPU time in every process, outside the timed runs: two CPUs run two processes' work at once.
    cpus = {name: cpu_per_run(config, fn, fn_args, pids if name.startswith("multi-host: ") else {})
            for name, (config, fn, fn_args, _, error) in cases.items() if error is not None}
    times = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved: both modes see the same load
        for name, (config, fn, fn_args, _, _) in cases.items():
            with config.guard():
                start = time.perf_counter()
                [t.numpy() for t in tf.nest.flatten(fn(*fn_args))]
                times[name].append(time.perf_counter() - start)

    latency = f", multi-host with {args.rtt_ms:g} ms RTT added (delaying relay)" if args.rtt_ms is not None else ""
    dealer = "LeNet with a precomputed dealer (online phase), the matmul with the online dealer" if args.offline else "online dealer"
    dealer += f", comparison={args.comparison!r}"
    threads = f", {args.player_threads} inter-op and intra-op threads per served player" if args.player_threads else ""
    if args.pin:
        threads += ", multi-host " + " and ".join(f"{name} on CPU {cpu}" for name, cpu in pinned_cpus().items())
    print(f"\nmedian of {args.repeats} interleaved runs, {dealer} (tfe_lite.ops backend: {tfe_lite.ops.backend()}, "
          f"{os.cpu_count()} CPUs; {keep_freed_memory()}){threads}{latency}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, (_, _, _, _, error) in cases.items():
        extra = f"   max |private - plaintext| {error:.1e}" if error is not None else ""
        print(f"  {name:66s} {medians[name] * 1e3:9.1f} ms{extra}")
    print()
    for name in [k[len("local: "):] for k in cases if k.startswith("local: ")]:
        ratio = medians[f"multi-host: {name}"] / medians[f"local: {name}"]
        met = "met" if ratio <= 1.5 else "MISSED"
        target = "" if "message" in name or latency else f"  (target <= 1.5x: {met})"
        print(f"  {name:58s} multi-host / local: {ratio:.2f}x{target}")
    hop = f"{HOPS} messages server0 <-> server1"
    per_message = (medians[f"multi-host: {hop}"] - medians[f"local: {hop}"]) / HOPS * 1e3
    print(f"  a message between two player processes costs {per_message:.2f} ms more than between two devices of one process")
    fan = f"{WIDTH} messages server0 -> server1, one round"
    per_parallel = (medians[f"multi-host: {fan}"] - medians[f"local: {fan}"]) / WIDTH * 1e3
    print(f"  {WIDTH} messages in one round: {per_parallel:.3f} ms more per message")
    for name, count in rounds.items():
        extra = (medians[f"multi-host: {name}"] - medians[f"local: {name}"]) * 1e3
        print(f"  {name}: {count} rounds (traced graph) x {per_message:.2f} ms = {count * per_message:.1f} ms; "
              f"measured multi-host - local = {extra:.1f} ms")
    # The floor: what a call costs in waiting alone (fixed cost + rounds x the cost of one more message on the
    # critical path, the slope between the two chains), beside the 1.5x budget of local mode.
    slope = (medians[f"multi-host: {hop}"] - medians[f"multi-host: {SHORT_HOPS} messages server0 <-> server1"]) / (HOPS - SHORT_HOPS) * 1e3
    fixed = medians["multi-host: one op on each served player, no messages between them"] * 1e3
    alone = medians["multi-host: one op on server0 alone, no message"] * 1e3
    print(f"  multi-host: one more message on the critical path costs {slope:.2f} ms (slope from {SHORT_HOPS} to {HOPS} hops); "
          f"a call reaching every served player costs {fixed:.1f} ms with no message between them "
          f"({alone:.1f} ms reaching server0 alone)")
    for name, count in rounds.items():
        floor, budget = fixed + count * slope, 1.5 * medians[f"local: {name}"] * 1e3
        print(f"  {name}: communication floor {fixed:.1f} + {count} x {slope:.2f} = {floor:.1f} ms; "
              f"1.5x local = {budget:.1f} ms ({'below' if floor < budget else 'AT OR ABOVE'} the budget, "
              f"{budget - floor:.1f} ms left for computation)")
    # What each cost adds up to: the floor, every further message (the one-round probe's cost per message),
    # the bytes (at the bulk probe's rate) and local mode's own time, beside the measured multi-host time.
    bulk = f"one message of {8 * BULK // 2**20} MiB server0 -> server1"
    bulk_extra = medians[f"multi-host: {bulk}"] - medians[f"local: {bulk}"]
    if bulk_extra > 0:
        seconds_per_byte = bulk_extra / (8 * BULK)
        print(f"  a link carries {1e-9 / seconds_per_byte:.2f} GB/s more slowly than local mode's copy "
              f"({8 * BULK // 2**20} MiB in one message: {bulk_extra * 1e3:.1f} ms more)")
    else:  # noise larger than the cost (few repeats on a busy machine): no rate to state, none charged below
        seconds_per_byte = 0.0
        print(f"  a link: no measurable cost over local mode's copy in this run ({8 * BULK // 2**20} MiB in one "
              f"message: {bulk_extra * 1e3:.1f} ms more; noise, raise --repeats)")
    for name, count in rounds.items():
        _, nbytes, messages, _ = traffics[f"multi-host: {name}"]
        parts = {"fixed": fixed, f"{count} rounds": count * slope, f"{messages - count} more messages": (messages - count) * per_parallel,
                 f"{nbytes / 1e6:.2f} MB": nbytes * seconds_per_byte * 1e3, "local mode": medians[f"local: {name}"] * 1e3}
        total = sum(parts.values())
        print(f"  {name}: " + " + ".join(f"{v:.1f} ({k})" for k, v in parts.items())
              + f" = {total:.1f} ms; measured {medians[f'multi-host: {name}'] * 1e3:.1f} ms")
    for batch in args.batches:
        ms = medians[f"multi-host: LeNet private inference, batch {batch}" + (" (offline dealer)" if args.offline else "")] * 1e3
        if batch in CRYPTEN_3PROCESS_MS and not latency:
            target = CRYPTEN_TARGET * CRYPTEN_3PROCESS_MS[batch]
            print(f"  LeNet batch {batch:<3d} multi-host {ms:.1f} ms vs CrypTen 0.4.1 in three processes "
                  f"({CRYPTEN_3PROCESS_MS[batch]:,.0f} ms): {ms / CRYPTEN_3PROCESS_MS[batch]:.3f}x "
                  f"(target <= {CRYPTEN_TARGET}x = {target:.0f} ms: {'met' if ms <= target else 'MISSED'})")

    print(f"\nCPU time per run, every process (outside the timed runs; {os.cpu_count()} CPUs run at most "
          f"{os.cpu_count()} seconds of it per second)")
    for name in [k[len("local: "):] for k in cpus if k.startswith("local: ")]:
        local_cpu, remote_cpu = cpus[f"local: {name}"], cpus[f"multi-host: {name}"]
        parts = ", ".join(f"{player} {seconds * 1e3:.1f}" for player, seconds in remote_cpu.items() if seconds >= 5e-4)
        print(f"  {name:40s} local {sum(local_cpu.values()) * 1e3:7.1f} ms, multi-host {sum(remote_cpu.values()) * 1e3:7.1f} ms "
              f"({parts}): {sum(remote_cpu.values()) / sum(local_cpu.values()):.2f}x")

    if latency:
        return
    print("\nbytes per run, multi-host: on the wire (kernel TCP counters, gRPC framing included) vs the protocol's count")
    for name, (on_wire, counted, _, log) in traffics.items():
        extra = ""
        if "matmul" in name:
            formula = 8 * 7 * n * n + 2 * 32
            extra = f"; Pond formula 8*(2n^2 + 2n^2 + n^2 + 2n^2 reveal) + 2*32 = {formula:,}"
            matmul_log = log
        else:  # on separate hosts the busiest link bounds the transfer time
            (src, dst), busiest = max(log.by_link().items(), key=lambda kv: kv[1])
            share = busiest / log.total_bytes()  # the log holds several runs
            extra = f"; busiest link {src} -> {dst} {share * counted:,.0f} ({share:.0%})"
        print(f"  {name[len('multi-host: '):]:40s} wire {on_wire:14,.0f}  count {counted:14,.0f}  "
              f"wire / count = {on_wire / counted:.3f}{extra}")
    print(f"\nthe private {n}x{n} matmul by link, the protocol's count over {TRAFFIC_RUNS} runs: " + matmul_log.summary())


if __name__ == "__main__":
    from tfe_lite.runtime import bind

    # The driver's own gRPC server on 127.0.0.1 only (as `tfe-lite run` does); the players it starts inherit
    # the preload. Without the built wrapper this runs on and RemoteConfig.connect warns.
    if not {"-h", "--help"} & set(sys.argv[1:]):
        bind.reexecute_preloaded(sys.orig_argv[1:])
    main()
