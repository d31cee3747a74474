"""``tfe-lite serve --config cluster.json --player NAME``: run one player's TensorFlow gRPC server.

The server is TensorFlow's own (``tf.distribute.Server``, protocol ``grpc``) for the player's job in the
cluster file. Before it starts, the command checks the file and the player (errors name the file and the
entry, exit status 2), that the player's host is an address of this machine and its port free, and loads
tfe_lite's native op library when it is built, so the driver can place native kernels (``RingMatMul``,
``ChaCha20Keystream``...) on this player. It then prints ``tfe-lite serve: player 'NAME' ready at ADDRESS``
on standard output and serves until SIGINT or SIGTERM, on which it exits with status 0.

The server listens on the address's host only. TensorFlow's gRPC server offers no choice of interface (it
binds the wildcard address at its port), so the command runs TensorFlow in a process that preloads the
``bind()`` wrapper of :mod:`tfe_lite.runtime.bind` (it re-executes itself with ``LD_PRELOAD`` before
TensorFlow starts), and reads the listening sockets back once the server is up: a server found listening
on every interface exits with an error instead of serving. ``--all-interfaces`` keeps TensorFlow's wildcard
(needed where the wrapper cannot work: not Linux, or the library not built); keep that port closed to the
network. Either way the wire is unencrypted: reach players through an authenticated tunnel (README,
"Multi-host"); ``--listen-port`` lets a tunnel end on this host take the address's port while the server
listens on another.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Sequence

from tfe_lite import allocator
from tfe_lite.errors import ConfigError, RuntimeConfigError
from tfe_lite.runtime import bind
from tfe_lite.runtime import cluster as cluster_file
from tfe_lite.runtime.cluster import job_name, split_address

PROG = "tfe-lite"


def log(message: str) -> None:
    print(f"{PROG} serve: {message}", flush=True)


def _check_port(where: str, host: str, port: int) -> None:
    """The host must be this machine's and the port free on it and on the wildcard address TF binds."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ConfigError(f"{where}: cannot resolve the host {host!r}: {error.strerror}.") from None
    problems = []
    for family, _, _, _, sockaddr in infos:
        for target, label in ((sockaddr, f"{host} ({sockaddr[0]})"), (("", port), "all interfaces")):
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(target)
                except OSError as error:
                    if error.errno == errno.EADDRNOTAVAIL:
                        problems.append(f"{label} is not an address of this machine")
                    elif error.errno == errno.EADDRINUSE:
                        problems.append(f"port {port} is already in use on {label}")
                    else:
                        problems.append(f"cannot bind {label} port {port}: {error.strerror}")
                    break
        else:
            return  # one resolved address works on this machine
    raise ConfigError(f"{where}: cannot serve there: {'; '.join(dict.fromkeys(problems))}.")


def _load_native_ops() -> str:
    from tfe_lite import ops

    library = ops._load()  # raises RuntimeConfigError for a library that exists but does not load
    return f"native ops loaded from {ops.LIBRARY_PATH}" if library is not None else (
        "native ops not built (`make ops`): the pure TensorFlow kernels serve")


def _thread_count(name: str, value) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"Received an invalid value for `--{name}`, expected a positive number of threads. Received: {value!r}")
    return value


def cpu_list(value: str) -> list[int]:
    """``"0,2-3"`` (the notation of ``taskset -c``) as ``[0, 2, 3]``; each CPU must be one this process may
    run on."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    expected = "expected CPU numbers such as `0` or `0,2-3`"
    if allowed is None:
        raise ConfigError(f"Received an invalid value for `--cpus`: pinning a player to CPUs needs Linux. Received: {value!r}")
    cpus: set[int] = set()
    try:
        for part in str(value).split(","):
            first, _, last = part.strip().partition("-")
            low, high = int(first), int(last or first)
            if low < 0 or high < low:
                raise ValueError
            cpus.update(range(low, high + 1))
    except ValueError:
        raise ConfigError(f"Received an invalid value for `--cpus`, {expected}. Received: {value!r}") from None
    outside = sorted(cpus - set(allowed))
    if outside:
        raise ConfigError(f"Received an invalid value for `--cpus`: CPU {', '.join(map(str, outside))} is not one this "
                          f"process may run on ({', '.join(map(str, allowed))}). Received: {value!r}")
    return sorted(cpus)


def serve(config: str, player: str, *, listen_port: int | None = None, stop: threading.Event | None = None,
          inter_op_threads: int | None = None, intra_op_threads: int | None = None, all_interfaces: bool = False,
          cpus: str | None = None) -> int:
    """Run ``player``'s server from the cluster file ``config`` until SIGINT/SIGTERM (or ``stop`` is set).

    ``inter_op_threads`` / ``intra_op_threads``: the sizes of this player's TensorFlow thread pools (ops run
    side by side / threads inside one op); TensorFlow's default, one per core, suits a player alone on its
    machine. Players sharing a machine's cores compute faster with fewer each (benchmarks/multihost.py
    gives each of four players on two cores one intra-op thread). ``cpus`` (``"0"``, ``"0,2-3"``) pins the
    player's threads to those CPUs, set before TensorFlow starts, so its thread pools are sized to them; on a
    machine shared by players, each server on a core of its own computes faster than all on every core.

    The server listens on the address's host only, which needs this process to preload the ``bind()``
    wrapper (``tfe-lite serve`` arranges it; a call in a process without it is refused, naming why);
    ``all_interfaces=True`` listens on every interface instead."""
    inter = _thread_count("inter-op-threads", inter_op_threads)
    intra = _thread_count("intra-op-threads", intra_op_threads)
    pinned = None if cpus is None else cpu_list(cpus)
    found = cluster_file.load(config)
    cluster_file.check_player(found, player)
    where = found.where(f"players[{player!r}]")
    if found.driver == player:
        raise ConfigError(f"{where}: {player!r} is the \"driver\" of this cluster: its server runs in the driving program, not in `tfe-lite serve`.")
    address = found.players[player]
    host, port = split_address(address)
    if listen_port is not None and not (isinstance(listen_port, int) and 1 <= listen_port <= 65535):
        raise ConfigError(f"Received an invalid value for `--listen-port`, expected a port in 1-65535. Received: {listen_port!r}")
    listen = listen_port or port
    _check_port(where, host, listen)
    if not all_interfaces:
        if not bind.preloaded():
            why = bind.library_problem() or f"this process was started without {bind.LIBRARY.name} in LD_PRELOAD (`tfe-lite serve` preloads it)"
            raise ConfigError(f"{where}: cannot listen on {host} only: {why}. Pass --all-interfaces to listen on every "
                              "interface instead (and keep the port closed to the network).")
        bind.bind_only(bind.numeric_address(host, listen), listen)
    if pinned is not None:  # before TensorFlow's threads exist: they inherit it, and its pools are sized to it
        os.sched_setaffinity(0, pinned)
    native = _load_native_ops()
    memory = allocator.keep_freed_memory()

    import tensorflow as tf

    from tfe_lite.runtime.config import set_grpc_options

    set_grpc_options()  # this player's channels to the others: quick to reach a restarted player again
    job = job_name(player)
    server_def = tf.train.ServerDef(
        cluster=tf.train.ClusterSpec({job: [address]}).as_cluster_def(), job_name=job, task_index=0,
        protocol="grpc", port=listen if listen != port else 0,
        default_session_config=tf.compat.v1.ConfigProto(
            inter_op_parallelism_threads=inter, intra_op_parallelism_threads=intra),
    )
    stop = stop or threading.Event()
    received: list[str] = []

    def on_signal(signum, frame):
        received.append(signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)
    server = tf.distribute.Server(server_def, start=True)
    found = None if all_interfaces else bind.exposure(listen)
    if found is not None:
        print(f"{PROG} serve: error: {where}: the gRPC server was to listen on {host} port {listen} only, but {found}: "
              "refusing to serve (pass --all-interfaces to accept every interface).", file=sys.stderr, flush=True)
        os._exit(2)  # TensorFlow's gRPC server cannot be stopped in process
    on = "all interfaces" if all_interfaces else " and ".join(dict.fromkeys(bind.listening_addresses(listen))) + " only"
    threads = ", ".join([f"{n} {k}-op threads" for n, k in ((inter, "inter"), (intra, "intra")) if n]
                        + ([f"CPUs {','.join(map(str, pinned))}"] if pinned is not None else []))
    log(f"player {player!r} ready at {address} (TensorFlow job {job!r}, target {server.target}; gRPC listens on "
        f"{on} at port {listen}; {native}; {memory}; {threads + '; ' if threads else ''}pid {os.getpid()})")
    while not stop.wait(0.5):
        pass
    log(f"player {player!r} stopping ({received[0] if received else 'stop requested'})")
    return 0


def run(script: str, arguments: Sequence[str]) -> int:
    """``tfe-lite run SCRIPT.py ARGS...``: replace this process by ``python SCRIPT.py ARGS...`` preloading the
    ``bind()`` wrapper, so the driver's own gRPC server (``RemoteConfig.connect``) listens on its address
    only. Returns 2 (nothing run) when the wrapper cannot be preloaded here, naming why."""
    problem = bind.library_problem()
    if problem is not None:
        print(f"{PROG} run: error: cannot preload the bind() wrapper: {problem}. Run `python {script}` directly "
              "to listen on every interface instead.", file=sys.stderr, flush=True)
        return 2
    if not Path(script).is_file():
        print(f"{PROG} run: error: Received an invalid value for `SCRIPT`, expected a Python file. Received: {script!r}",
              file=sys.stderr, flush=True)
        return 2
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, script, *arguments], bind.preload_environment())


def console() -> int:
    """The ``tfe-lite`` console script (and ``python -m tfe_lite.runtime.cli``): :func:`main`, with ``serve``
    re-executed to preload the ``bind()`` wrapper unless ``--all-interfaces`` is given."""
    argv = sys.argv[1:]
    if argv[:1] == ["serve"] and "--all-interfaces" not in argv and "-h" not in argv and "--help" not in argv:
        bind.reexecute_preloaded(["-m", "tfe_lite.runtime.cli", *argv])
    return main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="tfe_lite's command line.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve", help="run one player's TensorFlow gRPC server", description=__doc__.split("\n\n")[1],
    )
    serve_parser.add_argument("--config", required=True, metavar="CLUSTER.json", help="the cluster file")
    serve_parser.add_argument("--player", required=True, help="the player this process runs")
    serve_parser.add_argument("--listen-port", type=int, default=None, metavar="PORT",
                              help="listen on this port instead of the address's own (a tunnel end takes that one)")
    for kind, what in (("inter", "ops run side by side"), ("intra", "threads inside one op")):
        serve_parser.add_argument(f"--{kind}-op-threads", type=int, default=None, metavar="N",
                                  help=f"this player's TensorFlow {kind}-op thread pool ({what}; default: one per "
                                       "core); fewer suit players that share a machine")
    serve_parser.add_argument("--cpus", default=None, metavar="LIST",
                              help="run this player on these CPUs only (as `taskset -c`: 0 or 0,2-3); players that "
                                   "share a machine compute faster with a core each")
    serve_parser.add_argument("--all-interfaces", action="store_true",
                              help="listen on every interface at the port (TensorFlow's own choice) instead of "
                                   "the address's host only")
    run_parser = commands.add_parser(
        "run", help="run a driver script with its own gRPC server on its address only",
        description="Run `python SCRIPT ARGS...` preloading the bind() wrapper, so the driver's own gRPC server "
                    "(started by RemoteConfig.connect) listens on the cluster file's address for it only.",
    )
    run_parser.add_argument("script", metavar="SCRIPT.py", help="the driver program")
    run_parser.add_argument("arguments", nargs=argparse.REMAINDER, metavar="ARGS", help="its arguments")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args.script, args.arguments)
    try:
        status = serve(args.config, args.player, listen_port=args.listen_port,
                       inter_op_threads=args.inter_op_threads, intra_op_threads=args.intra_op_threads,
                       all_interfaces=args.all_interfaces, cpus=args.cpus)
    except (ConfigError, RuntimeConfigError) as error:
        print(f"{PROG} serve: error: {error}", file=sys.stderr, flush=True)
        return 2
    sys.stdout.flush()
    # TensorFlow's gRPC server cannot be shut down in process (its Stop is unimplemented): leave at once.
    os._exit(status)


if __name__ == "__main__":
    sys.exit(console())
