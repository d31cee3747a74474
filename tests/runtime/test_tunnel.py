"""The README's wire-security recipe, run: every player's gRPC traffic through stunnel (TLS, certificates
checked both ways), the cluster file pointing at the tunnel ends.

On one machine the tunnel ends and the servers share 127.0.0.1, so each server listens on a port of its
own (``tfe-lite serve --listen-port``) behind its TLS end; on separate hosts the README's layout needs no
--listen-port. Needs Debian's stunnel4 and openssl (``apt-get install stunnel4``).
"""

import json
import shutil
import socket
import ssl
import subprocess

import numpy as np
import pytest

import scenarios
from conftest import READY_TIMEOUT, SERVE, Process, Processes, free_ports

pytestmark = pytest.mark.slow

SERVED = ("server0", "server1", "crypto-producer", "alice")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(tmp, names):
    """A private CA, a key and certificate per name (subjectAltName DNS:name) signed by it, and a rogue CA's."""
    for ca in ("ca", "rogue-ca"):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                "-subj", f"/CN=tfe-lite {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", cwd=tmp)
    for name, ca in [(n, "ca") for n in names] + [("intruder", "rogue-ca")]:
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=tmp)
        (tmp / f"{name}.ext").write_text(f"subjectAltName=DNS:{name}\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=tmp)


@pytest.fixture
def tunnelled(tmp_path):
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    assert stunnel, "the tunnel recipe needs stunnel: apt-get install stunnel4"
    make_certificates(tmp_path, SERVED + ("driver-host",))
    ports = free_ports(3 * len(SERVED) + 1)
    addr, listen, tls = (dict(zip(SERVED, ports[i::3])) for i in range(3))
    sections = ["foreground = yes", "pid =", f"output = {tmp_path / 'stunnel.log'}", "debug = 5"]
    for name in SERVED:
        sections += [  # this player's host: TLS in, certificate of a cluster member required
            f"[{name}-in]", f"accept = 127.0.0.1:{tls[name]}", f"connect = 127.0.0.1:{listen[name]}",
            f"cert = {name}.pem", f"key = {name}.key", "CAfile = ca.pem", "verifyChain = yes", "requireCert = yes",
            # every other host: the cluster file's address of this player, forwarded over TLS, its name checked
            f"[{name}-out]", "client = yes", f"accept = 127.0.0.1:{addr[name]}", f"connect = 127.0.0.1:{tls[name]}",
            "cert = driver-host.pem", "key = driver-host.key", "CAfile = ca.pem", "verifyChain = yes",
            f"checkHost = {name}",
        ]
    (tmp_path / "stunnel.conf").write_text("\n".join(sections) + "\n")
    cluster = tmp_path / "cluster.json"
    players = {**{n: f"127.0.0.1:{addr[n]}" for n in SERVED}, "bob": f"127.0.0.1:{ports[-1]}"}
    cluster.write_text(json.dumps({"players": players, "driver": "bob"}))
    processes = Processes(cluster)
    tunnel = Process([stunnel, str(tmp_path / "stunnel.conf")], cwd=tmp_path)
    processes.started.append(tunnel)
    try:
        for name in SERVED:
            processes.players[name] = Process([*SERVE, "--config", str(cluster), "--player", name,
                                               "--listen-port", str(listen[name])])
            processes.started.append(processes.players[name])
        for name in SERVED:
            processes.players[name].expect(f"tfe-lite serve: player {name!r} ready", READY_TIMEOUT)
        yield processes, tunnel, tmp_path, {"addr": addr, "listen": listen, "tls": tls}
    finally:
        processes.close()


def tls_handshake(tmp, port, server_name, cert=None):
    """Open a TLS connection to a tunnel's TLS end, check the server's name, and read: the server's
    certificate-required alert shows as an SSLError or a closed connection."""
    context = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
    if cert:
        context.load_cert_chain(str(tmp / f"{cert}.pem"), str(tmp / f"{cert}.key"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as conn:
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            try:
                return conn.recv(1) != b""
            except (ssl.SSLError, ConnectionResetError, socket.timeout):
                return False


def test_the_cluster_runs_through_authenticated_tls_tunnels(tunnelled):
    processes, tunnel, tmp, ports = tunnelled
    driver = processes.driver("faults", timeout=30)
    value = np.asarray(driver.result()["value"])
    v = scenarios.inputs()
    assert np.abs(value - v["x"] @ v["w"]).max() < 1e-3

    # Every connection that reaches a player's gRPC port comes from stunnel: no player or driver talks to
    # another one around the tunnel.
    out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True, check=True).stdout
    to_servers = [line for line in out.splitlines()
                  if any(line.split()[3].endswith(f":{p}") for p in ports["listen"].values())]
    assert to_servers, out
    assert all(f"pid={tunnel.popen.pid}," in line for line in to_servers), to_servers
    log = (tmp / "stunnel.log").read_text()
    assert "Certificate accepted" in log or "certificate accepted" in log.lower()

    # The TLS ends authenticate: the right certificate gets through; none, or one of another CA, does not.
    port = ports["tls"]["server1"]
    assert tls_handshake(tmp, port, "server1", cert="driver-host") is True
    assert tls_handshake(tmp, port, "server1") is False
    assert tls_handshake(tmp, port, "server1", cert="intruder") is False
    with pytest.raises(ssl.SSLCertVerificationError):  # and the client checks the server's name
        tls_handshake(tmp, port, "server0", cert="driver-host")
