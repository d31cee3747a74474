"""A player's gRPC server listening on its own address only.

TensorFlow's gRPC server binds the wildcard address at its port (every interface of the machine) and has
no option to name one. ``tfe-lite serve`` therefore starts TensorFlow in a process that preloads
``tfe_lite/ops/_bind_only.so`` (built by ``make ops`` from ``bind_only.c``): a ``bind()`` wrapper that
turns exactly the wildcard request at the player's port into one for the address the cluster file gives
(``TFE_LITE_BIND_ONLY="ADDRESS PORT"``). After the server starts, the listening sockets at that port are
read back from ``/proc/net/tcp`` and ``/proc/net/tcp6``: a player listening on every interface refuses
to serve instead of running exposed. The driver (``RemoteConfig.connect``) does the same for its own
server when its process preloads the library (``tfe-lite run``).

Linux with glibc only (``LD_PRELOAD``, ``/proc/net``); elsewhere, or without the built library, listening
on every interface takes an explicit ``--all-interfaces``.
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import os
import socket
import sys
from pathlib import Path
from typing import Sequence

from tfe_lite.errors import ConfigError
from tfe_lite.runtime import procnet

LIBRARY = Path(__file__).resolve().parents[1] / "ops" / "_bind_only.so"
SOURCE = LIBRARY.with_name("bind_only.c")
#: ``"ADDRESS PORT"``: the wildcard bind the wrapper rewrites, read by the library at each ``bind()``.
ENV = "TFE_LITE_BIND_ONLY"
#: The pid of a process re-executed by :func:`reexecute_preloaded` (the same after ``execve``), so that it
#: is tried once only; its children may try on their own.
REEXECUTED = "TFE_LITE_PRELOAD_REEXECUTED"


def library_problem() -> str | None:
    """Why this process cannot preload the wrapper (``None``: it can)."""
    if not sys.platform.startswith("linux"):
        return f"binding one address needs Linux (LD_PRELOAD and /proc/net); this is {sys.platform}"
    if not LIBRARY.exists():
        return f"{LIBRARY.name} is not built (run `make ops`)"
    try:
        built = ctypes.CDLL(str(LIBRARY)).tfe_lite_bind_only_source_sha256
    except (OSError, AttributeError) as error:
        return f"{LIBRARY} does not load ({error}); rebuild it with `make ops`"
    built.restype = ctypes.c_char_p
    if built().decode() != source_digest():
        return f"{LIBRARY} was built from another version of {SOURCE.name}; rebuild it with `make ops`"
    return None


def source_digest() -> str:
    """The SHA-256 (hex) of ``bind_only.c``, as ``make ops`` compiles it in (``tfe_lite.ops.build.source_sha256``
    of that one file; computed here because importing the ``tfe_lite.ops`` package imports TensorFlow, which
    ``tfe-lite serve`` must not do before it re-executes)."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()


def preloaded() -> bool:
    """Whether the wrapper is loaded in this process ahead of the C library (named in ``LD_PRELOAD`` and mapped)."""
    if str(LIBRARY) not in os.environ.get("LD_PRELOAD", "").replace(":", " ").split():
        return False
    try:
        return str(LIBRARY) in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def preload_environment(environment: dict[str, str] | None = None) -> dict[str, str]:
    """``environment`` (default: this process's) with the wrapper first in ``LD_PRELOAD``."""
    env = dict(os.environ if environment is None else environment)
    others = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if p != str(LIBRARY)]
    env["LD_PRELOAD"] = " ".join([str(LIBRARY), *others])
    return env


def reexecute_preloaded(arguments: Sequence[str]) -> None:
    """Replace this process (same pid, standard streams) by ``python ARGUMENTS...`` preloading the wrapper,
    before TensorFlow starts a server. A no-op when the wrapper is loaded already, when a re-execution
    already ran, or when it cannot be preloaded here: ``tfe-lite serve`` then names the problem and
    ``RemoteConfig.connect`` warns that the driver listens on every interface."""
    if preloaded() or os.environ.get(REEXECUTED) == str(os.getpid()) or library_problem() is not None:
        return
    env = preload_environment()
    env[REEXECUTED] = str(os.getpid())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *arguments], env)


def numeric_address(host: str, port: int) -> str:
    """The address ``host`` resolves to first (as a client connecting to it tries it first)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ConfigError(f"cannot resolve the host {host!r}: {error.strerror}.") from None
    return infos[0][4][0]


def bind_only(address: str, port: int) -> None:
    """Make the wrapper (preloaded) turn this process's next wildcard bind at ``port`` into one of ``address``."""
    os.environ[ENV] = f"{address} {port}"


def listening_addresses(port: int) -> list[str]:
    """The local addresses with a TCP socket listening at ``port`` on this machine (``0.0.0.0`` and ``::``
    for every interface; an IPv4-mapped address as IPv4), from ``/proc/net/tcp`` and ``/proc/net/tcp6``."""
    return [s.local[0] for s in procnet.tcp_sockets() if s.state == procnet.LISTEN and s.local[1] == port]


def exposure(port: int) -> str | None:
    """What is wrong with the listening sockets at ``port`` for a server meant to be on one address only:
    ``"it listens on ..."`` when one is on every interface, ``"no socket listens there"``; ``None`` when fine."""
    listening = listening_addresses(port)
    if not listening:
        return "no socket listens there"
    return f"it listens on {', '.join(listening)}" if every_interface(listening) else None


def every_interface(addresses: list[str]) -> list[str]:
    """Those of ``addresses`` that are the wildcard (every interface)."""
    return [a for a in addresses if ipaddress.ip_address(a).is_unspecified]
