"""Plain TensorFlow, no tfe_lite: do eager ops sent to a killed worker fail, or wait for it forever?

    python tests/runtime/dead_stream.py [--runs 8] [--ops 5]

Each run is a fresh driver process with one worker (a ``tf.distribute.Server`` in a process of its own, on
127.0.0.1): an eager op on the worker, the worker killed (SIGKILL), then ``--ops`` eager ops on it 0.3 s
apart, each error caught, and the last op's value fetched. A run with no outcome within 20 s is a hang.
Runs alternate between TensorFlow's default, one gRPC stream per worker for eager ops, and one call per
op (``TF_ENABLE_EAGER_CLIENT_STREAMING_ENQUEUE=false``), both with ``GRPC_FAIL_FAST=true``. Prints each
run and the count of hangs per setting. Not part of the suite (a hung run takes its 20 s); see the README,
*Faults*, for what it showed and why the driver keeps the stream.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time

WAIT = 20.0


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_run(stream: bool, ops: int) -> None:
    """In this process: connect, kill the worker, send it ``ops`` eager ops, print the outcome."""
    os.environ["GRPC_FAIL_FAST"] = "true"
    os.environ["TF_ENABLE_EAGER_CLIENT_STREAMING_ENQUEUE"] = "true" if stream else "false"
    cluster = {"worker": [f"127.0.0.1:{_port()}"], "driver": [f"127.0.0.1:{_port()}"]}
    serve = ("import tensorflow as tf\n"
             f"server = tf.distribute.Server(tf.train.ClusterSpec({cluster!r}), job_name='worker', task_index=0)\n"
             "print('ready', flush=True)\nserver.join()\n")
    worker = subprocess.Popen([sys.executable, "-c", serve], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert worker.stdout.readline().strip() == "ready"
    import tensorflow as tf

    tf.config.experimental_connect_to_cluster(tf.train.ClusterSpec(cluster), job_name="driver", task_index=0)
    device = "/job:worker/replica:0/task:0/device:CPU:0"
    with tf.device(device):
        assert float(tf.reduce_sum(tf.ones([1000]) * 2)) == 2000.0
    worker.kill()
    worker.wait()
    outcome: list[str] = []

    def send():
        errors, value = 0, None
        for _ in range(ops):
            try:
                with tf.device(device):
                    value = tf.ones([1000]) * 3
            except tf.errors.OpError:
                errors += 1
            time.sleep(0.3)
        try:
            fetched = "no op was sent" if value is None else float(tf.reduce_sum(value))
        except tf.errors.OpError as error:
            fetched = type(error).__name__
        outcome.append(f"{errors} of {ops} ops failed at once; the last one's value: {fetched}")

    threading.Thread(target=send, daemon=True).start()
    start = time.monotonic()
    while not outcome and time.monotonic() - start < WAIT:
        time.sleep(0.05)
    print(f"{'stream' if stream else 'calls'}: " + (f"{outcome[0]} ({time.monotonic() - start:.1f} s)" if outcome
                                                    else f"HANG (no outcome within {WAIT:g} s)"), flush=True)
    os._exit(0)  # the hung thread cannot be joined


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8, help="runs per setting")
    parser.add_argument("--ops", type=int, default=5)
    parser.add_argument("--one", choices=["stream", "calls"], help=argparse.SUPPRESS)  # a run, in its own process
    args = parser.parse_args()
    if args.one:
        one_run(args.one == "stream", args.ops)
        return 0
    hangs = {"stream": 0, "calls": 0}
    for _ in range(args.runs):
        for setting in hangs:
            run = subprocess.run([sys.executable, __file__, "--one", setting, "--ops", str(args.ops)],
                                 capture_output=True, text=True, timeout=WAIT + 60)
            line = next((l for l in run.stdout.splitlines() if l.startswith(setting)), f"{setting}: no result "
                        f"(exit {run.returncode}): {run.stderr.strip().splitlines()[-1:]}")
            print(line, flush=True)
            hangs[setting] += "HANG" in line
    print(", ".join(f"{setting}: {count} hangs in {args.runs} runs" for setting, count in hangs.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
