"""A driving program for the runtime tests, run as its own process against `tfe-lite serve` players.

    python driver.py run CLUSTER.json      the scenarios, placement (traced and executed), native kernels
    python driver.py faults CLUSTER.json [TIMEOUT [HANG_TIMEOUT]]   compute; on each "go" line of stdin compute again, on "loop"
                                           compute until a player is lost

Each result is one line ``RESULT {json}`` on stdout. A driver that outlives its budget (120 s, or
``TFE_DRIVER_BUDGET`` seconds) exits (faulthandler), so a hang shows as a traceback, never as a stuck test.
"""

from __future__ import annotations

import faulthandler
import glob
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

faulthandler.dump_traceback_later(float(os.environ.get("TFE_DRIVER_BUDGET", "120")), exit=True)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios  # noqa: E402

import tfe_lite  # noqa: E402
from tfe_lite.protocols import Pond  # noqa: E402
from tfe_lite.protocols.pond import comparison  # noqa: E402


def emit(**result) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def executed_ops(config: tfe_lite.RemoteConfig, work, duration_ms: int = 1500) -> dict[str, dict[str, str]]:
    """Player -> {op name: op type} of the TensorFlow ops its own process executed while ``work`` looped,
    from a trace of each player's profiler service (every TensorFlow gRPC server has one)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    stop = threading.Event()

    def loop():
        while not stop.is_set():
            work()

    runner = threading.Thread(target=loop)
    runner.start()
    logdirs = {name: tempfile.mkdtemp(prefix=f"trace-{name}-") for name in config.served}
    tracers = [
        threading.Thread(target=tf.profiler.experimental.client.trace, args=(f"grpc://{address}", logdirs[name], duration_ms))
        for name, address in config.served.items()
    ]
    try:
        for t in tracers:
            t.start()
        for t in tracers:
            t.join(30)
    finally:
        stop.set()
        runner.join(30)
    executed = {}
    for name, logdir in logdirs.items():
        ops = {}
        for path in glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True):
            space = xplane_pb2.XSpace()
            space.ParseFromString(Path(path).read_bytes())
            for plane in space.planes:
                for line in plane.lines:
                    for event in line.events:
                        label = plane.event_metadata[event.metadata_id].name
                        op, sep, kind = label.rpartition(":")
                        if sep and op and kind[:1].isupper() and "::" not in label and " " not in label:
                            ops[op] = kind
        executed[name] = ops
    return executed


def run(config: tfe_lite.RemoteConfig) -> None:
    prot = Pond(config, seed=scenarios.SEED)
    with config.guard():
        results = scenarios.run(prot)
        x = prot.share(np.ones((2, 2)), owner="alice")
        devices = {"share0": x.share0.device, "share1": x.share1.device,
                   "reveal_bob": x.reveal(to="bob").device, "reveal_alice": x.reveal(to="alice").device}
        placed = scenarios.traced_placement(Pond(config, seed=scenarios.SEED), config)
        prot2 = Pond(config, seed=scenarios.SEED)
        w = prot2.share(scenarios.inputs()["w"], owner="bob")
        predict = scenarios.predict_fn(prot2, w)
        batch = tf.constant(scenarios.inputs()["batch"])
        predict(batch)
        x = scenarios.inputs()["x"]

        def work():  # the traced computation, and fresh keys made by a new unseeded protocol
            predict(batch).numpy()
            Pond(config).share(x, owner="alice")

        executed = executed_ops(config, work)
        fresh = [Pond(config).share(x, owner="alice").share0.numpy().tolist() for _ in range(2)]
        keras = keras_run(config)
        _, dealt_outputs = scenarios.keras_predict(Pond(config, seed=scenarios.SEED, comparison="dealt"))
    emit(results={k: v.tolist() for k, v in results.items()}, devices=devices,
         players={p.name: p.device for p in config.players}, soft_placement=tf.config.get_soft_device_placement(),
         placed=placed, executed=executed, fresh=fresh, keras=keras, keras_dealt=dealt_outputs.tolist(),
         grpc_fail_fast=os.environ.get("GRPC_FAIL_FAST"),
         auto={n: comparison.protocol_for(prot, n) for n in (1, comparison.ASSISTED_MAX_ELEMENTS,
                                                               comparison.ASSISTED_MAX_ELEMENTS + 1)})


def keras_run(config: tfe_lite.RemoteConfig) -> dict:
    """A private Keras model's predict (secure(), Keras's loop): its outputs, its forward graph's placement,
    and what each player's process executed while the forward ran."""
    private, outputs = scenarios.keras_predict(Pond(config, seed=scenarios.SEED))
    batch = tf.constant(scenarios.keras_inputs()[:scenarios.PREDICT_BATCH])
    forward = lambda: private.forward_function(batch)[0].numpy()  # noqa: E731
    forward()  # traced before the players' profilers listen (tracing takes longer than their window)
    executed = executed_ops(config, forward)
    return {"outputs": outputs.tolist(), "dtype": str(outputs.dtype),
            "placed": scenarios.graph_placement(scenarios.forward_graph(private), config), "executed": executed}


def faults(config: tfe_lite.RemoteConfig) -> None:
    """Compute; then once per line of stdin compute again ("go") or until a player is lost ("loop", at
    most 60 s), each time with a new protocol instance, reporting the outcome; "stale" reads a variable made
    before connecting."""
    v = scenarios.inputs()

    def compute():
        with config.guard():
            prot = Pond(config, seed=scenarios.SEED)
            return (prot.share(v["x"], owner="alice") @ prot.share(v["w"], owner="alice")).reveal(to="alice").numpy()

    made_before_connecting = tf.Variable(1.0)  # on /job:localhost, which connecting replaces
    command = "go"
    while command in ("go", "loop", "stale"):
        runs, start = 0, time.monotonic()
        try:
            if command == "stale":
                with config.guard():
                    made_before_connecting.numpy()
            value = compute()
            if command == "loop":
                emit(looping=True)
                while time.monotonic() - start < 60:
                    value, runs = compute(), runs + 1
            emit(ok=True, value=value.tolist(), seconds=time.monotonic() - start, runs=runs)
        except tfe_lite.errors.TfeLiteError as error:
            emit(ok=False, error=type(error).__name__, message=str(error), seconds=time.monotonic() - start, runs=runs)
        command = sys.stdin.readline().strip()


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 20.0
    hang_timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 15.0
    {"run": run, "faults": faults}[mode](tfe_lite.RemoteConfig.load(path, timeout=timeout, hang_timeout=hang_timeout))
    sys.stdout.flush()
