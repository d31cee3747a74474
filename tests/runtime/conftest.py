"""Players as `tfe-lite serve` processes on free 127.0.0.1 ports, and drivers as processes of their own.

Every process is started through a :class:`Processes` registry that kills what is still running when its
fixture ends, whatever the test did; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SERVE = [sys.executable, "-m", "tfe_lite.runtime.cli", "serve"]
READY_TIMEOUT = 60.0  # several TensorFlow imports at once on 2 cores
DRIVER_TIMEOUT = 150.0


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_cluster(path: Path, players, driver: str | None = None) -> Path:
    ports = free_ports(len(players) + 1)
    data = {"players": {name: f"127.0.0.1:{port}" for name, port in zip(players, ports)}}
    if driver:
        data["driver"] = driver
    else:
        data["driver_address"] = f"127.0.0.1:{ports[-1]}"
    path.write_text(json.dumps(data, indent=2))
    return path


class Process:
    """A child process whose stdout lines are read by a thread, so waits on them are bounded."""

    def __init__(self, args, **kwargs):
        self.args = args
        self.popen = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE,
                                      text=True, bufsize=1, **kwargs)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read, args=(self.popen.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._drain, daemon=True).start()

    @staticmethod
    def _read(stream, out):
        for line in stream:
            out.put(line.rstrip("\n"))
        out.put(None)

    def _drain(self):
        for line in self.popen.stderr:
            self.stderr.append(line)

    def expect(self, prefix: str, timeout: float) -> str:
        """The next stdout line starting with ``prefix``; fails the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {prefix!r} line from {self.args} within {timeout} s; stdout {self.seen[-5:]}, "
                            f"stderr tail {''.join(self.stderr[-15:])}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.popen.wait(5)
                pytest.fail(f"{self.args} exited ({self.popen.returncode}) before a {prefix!r} line; stdout {self.seen[-5:]}, "
                            f"stderr tail {''.join(self.stderr[-25:])}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def result(self, timeout: float = DRIVER_TIMEOUT) -> dict:
        return json.loads(self.expect("RESULT ", timeout)[len("RESULT "):])

    def send(self, line: str) -> None:
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)


class Processes:
    """Starts players and drivers; ``close`` kills every one still running."""

    def __init__(self, cluster: Path):
        self.cluster = cluster
        self.started: list[Process] = []
        self.players: dict[str, Process] = {}

    def serve(self, *players: str, wait: bool = True, env=None) -> None:
        started = {}
        for name in players:
            started[name] = Process([*SERVE, "--config", str(self.cluster), "--player", name], env=env)
            self.started.append(started[name])
        self.players.update(started)
        if wait:
            for name, process in started.items():
                process.expect(f"tfe-lite serve: player {name!r} ready", READY_TIMEOUT)

    def driver(self, mode: str, timeout: float = 20.0, hang_timeout: float = 15.0) -> Process:
        process = Process([sys.executable, str(HERE / "driver.py"), mode, str(self.cluster), str(timeout), str(hang_timeout)])
        self.started.append(process)
        return process

    def close(self) -> None:
        for process in self.started:
            try:
                process.kill()
            except Exception:  # noqa: BLE001 - keep killing the others
                pass


@pytest.fixture
def processes(tmp_path):
    """A registry for one test, over a cluster file of the scenario's players (driver: bob)."""
    from scenarios import PLAYERS

    registry = Processes(write_cluster(tmp_path / "cluster.json", PLAYERS, driver="bob"))
    try:
        yield registry
    finally:
        registry.close()


def terminate(process: Process, sig=signal.SIGTERM, timeout: float = 20.0) -> int:
    """Send ``sig`` and return the exit status (bounded)."""
    os.kill(process.popen.pid, sig)
    return process.popen.wait(timeout)


EXAMPLE = HERE.parents[1] / "examples" / "multi_host.py"


@pytest.fixture(scope="session")
def cluster_run(tmp_path_factory):
    """One run against four `tfe-lite serve` players behind the README's stunnel recipe, the driver as bob:
    the driver's report (driver.py run), the example on the cluster and in local mode, what the tunnel
    saw, and how the players stopped. Every process is stopped at the end."""
    import ssl

    import tunnel

    tmp = tmp_path_factory.mktemp("cluster")
    processes, stunnel, ports = tunnel.start(tmp, ("server0", "server1", "crypto-producer", "alice"), driver="bob")
    try:
        report = processes.driver("run").result()
        report["connections"] = tunnel.connections_to(ports["listen"].values())
        report["ready"] = processes.ready
        report["stunnel_pid"] = stunnel.popen.pid
        example = [sys.executable, str(EXAMPLE), "--seed", "5", "--size", "32"]
        runs = {mode: subprocess.Popen(example + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       cwd=EXAMPLE.parent)
                for mode, extra in (("remote", ["--config", str(processes.cluster), "--timeout", "20"]), ("local", []))}
        report["example"] = {}
        for mode, run in runs.items():
            out, err = run.communicate(timeout=120)
            report["example"][mode] = out if run.returncode == 0 else f"exit {run.returncode}: {err[-3000:]}"
        port = ports["tls"]["server1"]
        report["tls"] = {who: tunnel.tls_answers(tmp, port, "server1", cert)
                         for who, cert in (("member", "driver-host"), ("no certificate", None), ("other CA", "intruder"))}
        try:
            tunnel.tls_answers(tmp, port, "server0", cert="driver-host")
            report["tls"]["wrong name"] = "accepted"
        except ssl.SSLCertVerificationError as error:
            report["tls"]["wrong name"] = error.verify_message
        report["stunnel_log"] = (tmp / "stunnel.log").read_text()
        report["stopped"] = {}
        for name, sig in (("server0", signal.SIGTERM), ("alice", signal.SIGINT)):
            status = terminate(processes.players[name], sig)
            line = next((l for l in processes.players[name].seen + list(_drain(processes.players[name])) if "stopping" in l), "")
            report["stopped"][name] = [status, line]
        yield report
    finally:
        processes.close()


def _drain(process: Process):
    while True:
        try:
            line = process.lines.get(timeout=5)
        except queue.Empty:
            return
        if line is None:
            return
        yield line
