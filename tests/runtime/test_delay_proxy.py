"""benchmarks/delay_proxy.py (the added-latency runs of benchmarks/multihost.py): bytes arrive intact and in
order, each way delayed by half the round trip."""

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import free_ports

PROXY = Path(__file__).resolve().parents[2] / "benchmarks" / "delay_proxy.py"


def test_the_relay_keeps_the_bytes_and_adds_the_round_trip():
    echo = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = echo.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    (listen,) = free_ports(1)
    relay = subprocess.Popen([sys.executable, str(PROXY), "--rtt-ms", "200", f"{listen}:{echo.getsockname()[1]}"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert relay.stdout.readline().strip() == "relaying"
        with socket.create_connection(("127.0.0.1", listen), timeout=10) as client:
            payload = bytes(range(256)) * 4096  # 1 MiB, many chunks
            start = time.monotonic()
            client.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += client.recv(1 << 20)
            elapsed = time.monotonic() - start
            assert got == payload
            assert elapsed >= 0.2  # 100 ms to the echo server, 100 ms back
    finally:
        relay.kill()
        relay.wait(10)
        echo.close()
