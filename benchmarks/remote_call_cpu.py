"""The CPU time one remote TensorFlow call costs each process it reaches: plain TensorFlow, no tfe_lite.

Run: python benchmarks/remote_call_cpu.py [--players 4] [--calls 300]

Starts ``--players`` TensorFlow gRPC servers (``tf.distribute.Server``, one process each, free 127.0.0.1
ports) and, from this process (the driver), calls a traced function with one scalar op on each of the first
k of them (k = 1 .. players), whose results the driver adds. For each k it prints the wall time per call and
the CPU time per call of the driver and of each server process (``/proc``): what TensorFlow's distributed
runtime spends on a call before any work of a protocol, the fixed part of ``benchmarks/multihost.py``'s
breakdown. On a machine whose cores every process shares, the wall time follows their sum.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from _cli import positive_int  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def serve(job: str, spec: str) -> None:
    import tensorflow as tf

    server = tf.distribute.Server(tf.train.ClusterSpec(json.loads(spec)), job_name=job, task_index=0,
                                  protocol="grpc", start=True)
    print("ready", flush=True)
    server.join()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--players", type=positive_int, default=4, help="server processes")
    parser.add_argument("--calls", type=positive_int, default=300, help="timed calls per case")
    args = parser.parse_args(argv)
    jobs = [f"p{i}" for i in range(args.players)]
    spec = {job: [free_address()] for job in jobs + ["driver"]}
    processes = {job: subprocess.Popen([sys.executable, __file__, "--serve", job, json.dumps(spec)],
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for job in jobs}
    try:
        for job, process in processes.items():
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"server {job} did not start (exit {process.poll()})")
        import tensorflow as tf

        tf.config.experimental_connect_to_cluster(tf.train.ClusterSpec(spec), job_name="driver", task_index=0)
        x = tf.constant(0, tf.int64)
        print(f"one scalar op on each of k server processes, summed by the driver; {args.calls} calls, "
              f"{os.cpu_count()} CPUs")
        for k in range(1, args.players + 1):
            reached = jobs[:k]

            @tf.function
            def call(v, reached=reached):
                outs = []
                for job in reached:
                    with tf.device(f"/job:{job}/replica:0/task:0/device:CPU:0"):
                        outs.append(v + 1)
                with tf.device("/job:driver/replica:0/task:0/device:CPU:0"):
                    return tf.add_n(outs)

            for _ in range(3):
                call(x).numpy()
            before = {job: cpu_seconds(p.pid) for job, p in processes.items()}
            own, start = time.process_time(), time.perf_counter()
            for _ in range(args.calls):
                call(x).numpy()
            wall = (time.perf_counter() - start) / args.calls
            used = {"driver": time.process_time() - own}
            used.update({job: cpu_seconds(p.pid) - before[job] for job, p in processes.items() if job in reached})
            parts = ", ".join(f"{name} {spent / args.calls * 1e3:.2f}" for name, spent in used.items())
            total = sum(used.values()) / args.calls * 1e3
            print(f"  k={k}: {wall * 1e3:.2f} ms per call; CPU ms per call: {parts} (all {total:.2f})")
    finally:
        for process in processes.values():
            process.kill()
        for process in processes.values():
            process.wait(timeout=30)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], sys.argv[3])
    else:
        main()
