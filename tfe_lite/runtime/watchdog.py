"""Hung players: a player that still holds its port but no longer answers (stopped with SIGSTOP, frozen,
swapped out) ends a computation within a bounded time instead of blocking it forever.

TensorFlow's eager and function calls to other tasks carry no deadline, and a stopped process's kernel
still accepts and acknowledges TCP traffic, so neither fail-fast gRPC nor TCP notices it. While a
driver is connected (:meth:`RemoteConfig.connect <tfe_lite.runtime.RemoteConfig.connect>`), a watchdog
thread asks every served player for its status (``GetStatus`` on a gRPC channel of its own, answered by the
player's gRPC threads even while it computes) every :data:`INTERVAL` seconds. When a player has not
answered for ``hang_timeout`` seconds, the watchdog shuts down this process's TCP connections to that
player's address (found in ``/proc/self/fd`` and ``/proc/net/tcp``; shutting a socket down needs no
privilege), and does so again every round while the player stays silent. TensorFlow's pending and new calls
on those connections then fail with ``UNAVAILABLE``, which :meth:`~tfe_lite.runtime.RemoteConfig.guard` turns into a :class:`~tfe_lite.errors.PartyUnavailableError` naming the player.

The alternative inside TensorFlow, HTTP/2 keepalive pings (``TF_GRPC_DEFAULT_OPTIONS``), is not used:
TensorFlow's gRPC server takes no ping-policy arguments, so pings frequent enough to bound the wait make
the players answer ``GOAWAY too_many_pings`` and throttle them (a stopped player then went unnoticed).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from pathlib import Path
from typing import Mapping

from tfe_lite.runtime import procnet
from tfe_lite.runtime.cluster import split_address
from tfe_lite.runtime.wait import NO_ANSWER, probe_all

#: Seconds between two status probes of the players while a computation runs.
INTERVAL = 1.0
#: Default seconds a player may stay silent before it is taken as hung.
DEFAULT_HANG_TIMEOUT = 15.0


def _endpoints(address: str) -> set[tuple[str, int]]:
    """The (IP, port) pairs ``host:port`` resolves to."""
    host, port = split_address(address)
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError:
        return set()
    return {(str(ipaddress.ip_address(info[4][0].split("%")[0])), port) for info in infos}


def _socket_inodes(endpoints: set[tuple[str, int]]) -> set[str]:
    """Inodes of this host's TCP sockets whose remote end is one of ``endpoints``."""
    return {sock.inode for sock in procnet.tcp_sockets() if sock.remote in endpoints}


def sever(address: str) -> int:
    """Shut down this process's TCP connections to ``address``; the number of connections cut.

    Linux only (``/proc``); elsewhere nothing is found and 0 is returned.
    """
    inodes = _socket_inodes(_endpoints(address))
    cut = 0
    fd_dir = Path("/proc/self/fd")
    if not inodes or not fd_dir.is_dir():
        return 0
    for entry in fd_dir.iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if not (target.startswith("socket:[") and target[8:-1] in inodes):
            continue
        try:
            with socket.socket(fileno=os.dup(int(entry.name))) as sock:  # a duplicate: the original stays open
                sock.shutdown(socket.SHUT_RDWR)
            cut += 1
        except OSError:
            pass
    return cut


class Watchdog:
    """Probes ``addresses`` every :data:`INTERVAL` s once started; cuts this process's connections to a
    player silent for ``hang_timeout`` s, and again every round while it stays silent.

    ``hung`` holds ``{player: seconds silent}`` for the players cut since the last :meth:`reset`.
    """

    def __init__(self, addresses: Mapping[str, str], hang_timeout: float):
        self.addresses = dict(addresses)
        self.hang_timeout = hang_timeout
        self.hung: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def reset(self) -> None:
        self.hung = {}

    def start(self) -> "Watchdog":
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tfe-lite-watchdog", daemon=True)
                self._thread.start()
        return self

    def _run(self) -> None:
        silent_since: dict[str, float] = {}
        probe_timeout = min(2.0, self.hang_timeout / 3)
        while True:
            started = time.monotonic()
            _, silent = probe_all(self.addresses, probe_timeout)
            now = time.monotonic()
            for name in self.addresses:
                # A refused connection (a dead player) already fails TensorFlow's calls fast: only silence counts.
                if not silent.get(name, "").startswith(NO_ANSWER):
                    silent_since.pop(name, None)
                    continue
                since = silent_since.setdefault(name, started)
                if now - since >= self.hang_timeout:
                    self.hung[name] = now - since
                    sever(self.addresses[name])
            time.sleep(max(0.0, INTERVAL - (time.monotonic() - started)))
