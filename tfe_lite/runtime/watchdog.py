"""Hung players: a player that still holds its port but no longer answers (stopped with SIGSTOP, frozen,
swapped out) ends a computation within a bounded time instead of blocking it forever.

TensorFlow's eager and function calls to other tasks carry no deadline, and a stopped process's kernel
still accepts and acknowledges TCP traffic, so neither fail-fast gRPC nor TCP notices it. While a
driver is connected (:meth:`RemoteConfig.connect <tfe_lite.runtime.RemoteConfig.connect>`), a watchdog
thread asks every served player for its status (``GetStatus`` on a gRPC channel of its own, answered by the
player's gRPC threads even while it computes) every :data:`INTERVAL` seconds. When a player has not
answered for ``hang_timeout`` seconds, the watchdog shuts down this process's TCP connections to *every*
served player (found in ``/proc/self/fd`` and ``/proc/net/tcp``; shutting a socket down needs no
privilege), and does so again every round while the player stays silent. TensorFlow's pending and new calls
on those connections then fail with ``UNAVAILABLE``, which :meth:`~tfe_lite.runtime.RemoteConfig.guard`
turns into a :class:`~tfe_lite.errors.PartyUnavailableError` naming the silent player; the next computation
reconnects.

Why every player, not only the silent one: the call the driver is waiting on is often to a player that is
fine but itself waits, without a deadline, for a tensor from the stopped one (the players exchange shares
directly). Cutting only the connections to the stopped player then leaves that call blocked: the fault
test failed so in CI, and ``tests/runtime/stress_hang.py`` (``SIGSTOP`` at a random moment of a running
loop) hung in 1 of its first 7 rounds. Cut from every player, 34 of 34 rounds (10 each for both servers and
the producer, 4 for alice; hang timeout 4 s) ended in 6.7-8.5 s with the stopped player named, and the
computation after ``SIGCONT`` succeeded each time. Once a computation has failed the watchdog is disarmed
until the next connect, so a probe sent before the player resumed cannot cut the reconnection.

The alternative inside TensorFlow, HTTP/2 keepalive pings (``TF_GRPC_DEFAULT_OPTIONS``), is not used:
TensorFlow's gRPC server takes no ping-policy arguments, so pings frequent enough to bound the wait make
the players answer ``GOAWAY too_many_pings`` and throttle them (a stopped player then went unnoticed).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterator, Mapping

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
    """Probes ``addresses`` every :data:`INTERVAL` s once started; while armed, cuts this process's
    connections to all of them once one is silent for ``hang_timeout`` s, and again every round while it
    stays silent.

    :meth:`arm` (on each connect) starts afresh; :meth:`disarm` (once the computation has failed) stops the
    cuts, so that a probe sent before the player resumed cannot cut the connections of the next connect.
    ``hung`` holds ``{player: seconds silent}`` for the players found hung since the last :meth:`arm`.
    """

    def __init__(self, addresses: Mapping[str, str], hang_timeout: float):
        self.addresses = dict(addresses)
        self.hang_timeout = hang_timeout
        self.hung: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._state = threading.RLock()  # held by a cut, by arm/disarm and by paused() (which may disarm)
        self._armed = False
        self._generation = 0  # rounds begun before the last arm() are discarded

    def arm(self) -> "Watchdog":
        """Watch from now on (a new connection): forget earlier silences and hung players; start the thread."""
        with self._state:
            self.hung = {}
            self._generation += 1
            self._armed = True
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tfe-lite-watchdog", daemon=True)
                self._thread.start()
        return self

    def disarm(self) -> None:
        """No more cuts until the next :meth:`arm`; ``hung`` is kept for the error that ended the computation."""
        with self._state:
            self._armed = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No cut while the block runs (a failure being examined: its probes of the players are not cut)."""
        with self._state:
            yield

    def _run(self) -> None:
        silent_since: dict[str, float] = {}
        seen_generation = self._generation
        probe_timeout = min(2.0, self.hang_timeout / 3)
        while True:
            started, generation = time.monotonic(), self._generation
            try:
                _, silent = probe_all(self.addresses, probe_timeout)
            except RuntimeError as error:  # the interpreter is exiting: concurrent.futures takes no more work
                if "shutdown" in str(error):  # (this daemon thread may wake while atexit handlers still run)
                    return
                raise
            now = time.monotonic()
            with self._state:
                if generation != self._generation or seen_generation != generation:
                    silent_since.clear()  # armed anew since: silences seen before do not count
                    seen_generation = self._generation
                    continue
                if not self._armed:
                    silent_since.clear()
                else:
                    self._round(silent, silent_since, started, now)
            time.sleep(max(0.0, INTERVAL - (time.monotonic() - started)))

    def _round(self, silent: Mapping[str, str], silent_since: dict[str, float], started: float, now: float) -> None:
        hung_now = []  # silent for hang_timeout at this round
        for name in self.addresses:
            # A refused connection (a dead player) already fails TensorFlow's calls fast: only silence counts.
            if not silent.get(name, "").startswith(NO_ANSWER):
                silent_since.pop(name, None)
                continue
            since = silent_since.setdefault(name, started)
            if now - since >= self.hang_timeout:
                self.hung[name] = now - since
                hung_now.append(name)
        if hung_now:  # the computation cannot go on: cut it loose from every player, not only this one
            for address in self.addresses.values():
                sever(address)
