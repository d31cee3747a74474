"""Players and the driver listen on their own address only: the bind() wrapper, `tfe-lite serve`, `tfe-lite run`."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import Process, free_ports, write_cluster

from tfe_lite.errors import ConfigError
from tfe_lite.runtime import bind, cli


def other_local_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (None when it has none)."""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        address = line.split()[3].split("/")[0]
        if not address.startswith("127."):
            return address
    return None


def refused(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((address, port)) == errno.ECONNREFUSED


def in_preloaded_python(code: str, spec: str) -> dict:
    """Run ``code`` (it prints one JSON line) in a Python preloading the wrapper, TFE_LITE_BIND_ONLY=spec."""
    env = bind.preload_environment()
    env[bind.ENV] = spec
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_wrapper_rewrites_only_the_wildcard_at_its_port():
    port, other = free_ports(2)
    seen = in_preloaded_python(f"""
        import errno, json, socket
        out = {{}}
        for family, host, key in ((socket.AF_INET, "0.0.0.0", "v4 wildcard"), (socket.AF_INET6, "::", "v6 wildcard")):
            s = socket.socket(family); s.bind((host, {port})); out[key] = s.getsockname()[0]; s.close()
        s = socket.socket(); s.bind(("0.0.0.0", {other})); out["another port"] = s.getsockname()[0]; s.close()
        s = socket.socket(); s.bind(("127.0.0.1", {port})); out["a named address"] = s.getsockname()[0]; s.close()
        print(json.dumps(out))
    """, f"127.0.0.1 {port}")
    assert seen == {"v4 wildcard": "127.0.0.1", "v6 wildcard": "::ffff:127.0.0.1", "another port": "0.0.0.0",
                    "a named address": "127.0.0.1"}


def test_the_wrapper_refuses_what_it_cannot_honour_instead_of_the_wildcard():
    port = free_ports(1)[0]
    seen = in_preloaded_python(f"""
        import json, socket
        s = socket.socket(socket.AF_INET)
        try:
            s.bind(("0.0.0.0", {port})); print(json.dumps({{"bound": s.getsockname()[0]}}))
        except OSError as error:
            print(json.dumps({{"errno": error.errno}}))
    """, f"::1 {port}")  # an IPv6 address cannot name an IPv4 socket's end
    assert seen == {"errno": errno.EADDRNOTAVAIL}
    # A malformed variable changes nothing (the caller's check of the listening sockets then refuses).
    seen = in_preloaded_python(f"""
        import json, socket
        s = socket.socket(); s.bind(("0.0.0.0", {port})); print(json.dumps({{"bound": s.getsockname()[0]}}))
    """, f"not-an-address {port}")
    assert seen == {"bound": "0.0.0.0"}


def test_listening_addresses_reads_proc_net():
    with socket.socket() as named, socket.socket(socket.AF_INET6) as wildcard:
        named.bind(("127.0.0.1", 0))
        named.listen()
        wildcard.bind(("::", 0))
        wildcard.listen()
        assert bind.listening_addresses(named.getsockname()[1]) == ["127.0.0.1"]
        assert bind.every_interface(bind.listening_addresses(named.getsockname()[1])) == []
        found = bind.listening_addresses(wildcard.getsockname()[1])
        assert found == ["::"] and bind.every_interface(found) == ["::"]


def test_serve_in_a_process_without_the_wrapper_is_refused(tmp_path, capsys):
    path = write_cluster(tmp_path / "cluster.json", ("server0", "server1", "crypto-producer", "alice"), driver="alice")
    assert not bind.preloaded()
    status = cli.main(["serve", "--config", str(path), "--player", "server0"])
    err = capsys.readouterr().err
    assert status == 2
    assert f"{path}: players['server0']: cannot listen on 127.0.0.1 only: this process was started without _bind_only.so" in err
    assert "Pass --all-interfaces to listen on every interface instead" in err


def test_a_missing_or_stale_wrapper_is_named(tmp_path, monkeypatch):
    from tfe_lite.ops.build import source_sha256

    assert bind.source_digest() == source_sha256((bind.SOURCE,))  # what make ops compiles in
    assert bind.library_problem() is None
    monkeypatch.setattr(bind, "LIBRARY", tmp_path / "_bind_only.so")
    assert bind.library_problem() == "_bind_only.so is not built (run `make ops`)"
    monkeypatch.undo()
    other = tmp_path / "bind_only.c"
    other.write_text(bind.SOURCE.read_text() + "\n/* changed */\n")
    monkeypatch.setattr(bind, "SOURCE", other)
    assert bind.library_problem() == f"{bind.LIBRARY} was built from another version of bind_only.c; rebuild it with `make ops`"
    path = write_cluster(tmp_path / "cluster.json", ("server0", "server1", "crypto-producer", "alice"), driver="alice")
    with pytest.raises(ConfigError, match="cannot listen on 127.0.0.1 only: .* built from another version of bind_only.c"):
        cli.serve(str(path), "server0")


DRIVER = """
import json, sys, warnings
import tfe_lite
from tfe_lite.runtime import bind
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    config = tfe_lite.RemoteConfig.load(sys.argv[1], timeout=60).connect()
port = int(config.addresses["alice"].rsplit(":", 1)[1])
print("RESULT " + json.dumps({"preloaded": bind.preloaded(), "listening": bind.listening_addresses(port),
                              "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]}), flush=True)
"""


def test_players_and_a_driver_run_by_tfe_lite_run_listen_on_their_address_only(tmp_path):
    cluster = write_cluster(tmp_path / "cluster.json", ("server0", "server1", "crypto-producer", "alice"), driver="alice")
    ports = {name: int(a.rsplit(":", 1)[1]) for name, a in json.loads(cluster.read_text())["players"].items()}
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    serve = [sys.executable, "-m", "tfe_lite.runtime.cli", "serve", "--config", str(cluster), "--player"]
    started = []
    try:
        cpu = min(os.sched_getaffinity(0))
        started.append(Process([*serve, "server0"]))
        started.append(Process([*serve, "server1", "--cpus", str(cpu)]))  # pinned: every thread, TensorFlow's included
        started.append(Process([*serve, "crypto-producer", "--all-interfaces"]))
        lines = [p.expect("tfe-lite serve: player", 60) for p in started]
        assert f"gRPC listens on 127.0.0.1 only at port {ports['server0']}" in lines[0]
        assert f"; CPUs {cpu}; pid " in lines[1] and "CPUs" not in lines[0]
        tasks = list(Path(f"/proc/{started[1].popen.pid}/task").iterdir())
        assert len(tasks) > 4  # TensorFlow's and gRPC's threads exist by now
        for task in tasks:
            allowed = next(l for l in (task / "status").read_text().splitlines() if l.startswith("Cpus_allowed_list"))
            assert allowed.split()[1] == str(cpu), (task, allowed)
        assert f"gRPC listens on all interfaces at port {ports['crypto-producer']}" in lines[2]
        assert bind.listening_addresses(ports["server0"]) == ["127.0.0.1"]
        assert bind.listening_addresses(ports["server1"]) == ["127.0.0.1"]
        assert bind.every_interface(bind.listening_addresses(ports["crypto-producer"])) != []
        elsewhere = other_local_address()
        if elsewhere is not None:  # this machine's other address reaches the wildcard listener, not the others
            assert refused(elsewhere, ports["server0"]) and refused(elsewhere, ports["server1"])
            assert not refused(elsewhere, ports["crypto-producer"])

        guarded = Process([sys.executable, "-m", "tfe_lite.runtime.cli", "run", str(script), str(cluster)])
        started.append(guarded)
        report = guarded.result(120)
        assert report == {"preloaded": True, "listening": ["127.0.0.1"], "warnings": []}
        guarded.popen.wait(30)

        plain = Process([sys.executable, str(script), str(cluster)])
        started.append(plain)
        report = plain.result(120)
        assert report["preloaded"] is False and bind.every_interface(report["listening"])
        assert any(f"this driver's gRPC server listens on every interface at port {ports['alice']}" in w
                   and "tfe-lite run SCRIPT.py" in w for w in report["warnings"])
    finally:
        for process in started:
            process.kill()


def test_a_bad_cpu_list_is_refused_before_serving(tmp_path, capsys):
    cluster = write_cluster(tmp_path / "cluster.json", ("server0", "server1", "crypto-producer"))
    for value, why in (("1-0", "expected CPU numbers such as `0` or `0,2-3`"), ("x", "expected CPU numbers"),
                       (str(max(os.sched_getaffinity(0)) + 1), "is not one this process may run on")):
        assert cli.main(["serve", "--config", str(cluster), "--player", "server0", "--cpus", value]) == 2
        err = capsys.readouterr().err
        assert "Received an invalid value for `--cpus`" in err and why in err and f"Received: {value!r}" in err


def test_tfe_lite_run_names_a_missing_script(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "nowhere.py")]) == 2
    assert f"expected a Python file. Received: '{tmp_path / 'nowhere.py'}'" in capsys.readouterr().err
