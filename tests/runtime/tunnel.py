"""The README's wire-security recipe on one machine: a private CA, a certificate per host, one stunnel
with a TLS end per player (certificate required) and a loopback end per player (peer name checked).

On one machine the tunnel ends and the servers share 127.0.0.1, so each server listens on a port of its
own (``tfe-lite serve --listen-port``) behind its TLS end; on separate hosts the README's layout needs no
--listen-port. Needs Debian's stunnel4 and openssl (``apt-get install stunnel4``; .ci/run does).
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

from conftest import READY_TIMEOUT, SERVE, Process, Processes, free_ports


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(tmp: Path, names) -> None:
    """A private CA, a key and certificate per name (subjectAltName DNS:name) signed by it, and a rogue CA's
    certificate for "intruder"."""
    for ca in ("ca", "rogue-ca"):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                "-subj", f"/CN=tfe-lite {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", cwd=tmp)
    for name, ca in [(n, "ca") for n in names] + [("intruder", "rogue-ca")]:
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=tmp)
        (tmp / f"{name}.ext").write_text(f"subjectAltName=DNS:{name}\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=tmp)


def start(tmp: Path, served, driver: str) -> tuple[Processes, Process, dict]:
    """Players ``served`` behind stunnel, the driver player ``driver`` at a plain loopback address.

    Returns the process registry (close it), the stunnel process and the ports by role."""
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    assert stunnel, "the tunnel recipe needs stunnel: apt-get install stunnel4"
    make_certificates(tmp, tuple(served) + ("driver-host",))
    ports = free_ports(3 * len(served) + 1)
    addr, listen, tls = (dict(zip(served, ports[i::3])) for i in range(3))
    lines = ["foreground = yes", "pid =", f"output = {tmp / 'stunnel.log'}", "debug = 5"]
    for name in served:
        lines += [  # this player's host: TLS in, a certificate of the cluster's CA required
            f"[{name}-in]", f"accept = 127.0.0.1:{tls[name]}", f"connect = 127.0.0.1:{listen[name]}",
            f"cert = {name}.pem", f"key = {name}.key", "CAfile = ca.pem", "verifyChain = yes", "requireCert = yes",
            # every other host: the cluster file's address of this player, forwarded over TLS, its name checked
            f"[{name}-out]", "client = yes", f"accept = 127.0.0.1:{addr[name]}", f"connect = 127.0.0.1:{tls[name]}",
            "cert = driver-host.pem", "key = driver-host.key", "CAfile = ca.pem", "verifyChain = yes",
            f"checkHost = {name}",
        ]
    (tmp / "stunnel.conf").write_text("\n".join(lines) + "\n")
    players = {**{n: f"127.0.0.1:{addr[n]}" for n in served}, driver: f"127.0.0.1:{ports[-1]}"}
    cluster = tmp / "cluster.json"
    cluster.write_text(json.dumps({"players": players, "driver": driver}))
    processes = Processes(cluster)
    tunnel = Process([stunnel, str(tmp / "stunnel.conf")], cwd=tmp)
    processes.started.append(tunnel)
    try:
        for name in served:
            # the producer runs with small thread pools of its own (as players sharing a machine would)
            threads = ["--inter-op-threads", "2", "--intra-op-threads", "1"] if name == "crypto-producer" else []
            processes.players[name] = Process([*SERVE, "--config", str(cluster), "--player", name,
                                               "--listen-port", str(listen[name]), *threads])
            processes.started.append(processes.players[name])
        processes.ready = {}
        for name in served:
            processes.ready[name] = processes.players[name].expect(f"tfe-lite serve: player {name!r} ready", READY_TIMEOUT)
    except BaseException:
        processes.close()
        raise
    return processes, tunnel, {"addr": addr, "listen": listen, "tls": tls}


def connections_to(ports) -> list[str]:
    """``ss`` lines of the established TCP connections whose peer is one of ``ports`` (with their process)."""
    out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if any(line.split()[3].endswith(f":{p}") for p in ports)]


def tls_answers(tmp: Path, port: int, server_name: str, cert: str | None = None) -> bool:
    """Whether a TLS client (checking the server's certificate and name; presenting ``cert`` if given) gets
    an answer through a tunnel's TLS end. A certificate-required alert shows as an error or a closed
    connection: False. A server certificate that does not match ``server_name`` raises."""
    context = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
    if cert:
        context.load_cert_chain(str(tmp / f"{cert}.pem"), str(tmp / f"{cert}.key"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as conn:
            # With TLS 1.3 the server checks the client's certificate after the client's handshake ends, so a
            # refusal can arrive while the preface is sent as well as while the answer is awaited.
            try:
                conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # gRPC's HTTP/2 preface
                return conn.recv(1) != b""
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError, socket.timeout):
                return False
