"""RemoteConfig: the players as TensorFlow gRPC servers, each in its own process or on its own host.

Each player runs ``tfe-lite serve --config cluster.json --player NAME`` (:mod:`tfe_lite.runtime.cli`); the
driving program builds the same protocol code as in local mode, with a :class:`RemoteConfig` in place of a
:class:`~tfe_lite.LocalConfig`. A player's device is ``/job:JOB/replica:0/task:0/device:CPU:0`` of its own
server, so every op the protocol places on a player runs in that player's process, and every transfer
between two players is a gRPC call between their servers (the driver is not on the path).

Connecting: the first time a protocol asks for a player (or on :meth:`RemoteConfig.connect`), the driver
waits for every player to accept connections (at most ``timeout`` seconds, then a
:class:`~tfe_lite.errors.PartyUnavailableError` naming the players and addresses it could not reach), then
hands TensorFlow the cluster (``tf.config.experimental_connect_to_cluster``) and checks every player's
device, within the same bound. TensorFlow's gRPC calls are set to fail fast (``GRPC_FAIL_FAST=true`` in
this process), so a player lost later ends a computation with an error rather than a wait; inside
:meth:`RemoteConfig.guard` that error becomes a PartyUnavailableError naming the player. After a fault the
next connect (e.g. the next ``Pond(config)``) hands TensorFlow the cluster again, which reaches restarted
players afresh.

Trust: the driver builds the graph that every player executes, so each player trusts the driver with
everything it holds (TensorFlow's server runs whatever ops it is sent). See the README, "Multi-host".
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Iterator, Mapping

import tensorflow as tf

from tfe_lite import allocator
from tfe_lite.errors import PartyUnavailableError, RuntimeConfigError
from tfe_lite.players import DEFAULT_PLAYERS, Config, Player
from tfe_lite.runtime import bind
from tfe_lite.runtime import cluster as cluster_file
from tfe_lite.runtime.cluster import DRIVER_JOB, Cluster, device_of, job_name, split_address
from tfe_lite.runtime.faults import translate
from tfe_lite.runtime.wait import describe, probe_all, wait_for_players
from tfe_lite.runtime.watchdog import DEFAULT_HANG_TIMEOUT, Watchdog

#: Default seconds to wait for the players when connecting.
DEFAULT_TIMEOUT = 30.0

_connect_lock = threading.Lock()

#: gRPC channel settings of TensorFlow's channels in the driver and in `tfe-lite serve`
#: (``TF_GRPC_DEFAULT_OPTIONS``; a value the user set wins). Each channel gets its own subchannels, and reconnecting backs off at most 1 s: otherwise a
#: channel that met a dead player keeps failing fast (``GRPC_FAIL_FAST``) for up to 2 minutes after the
#: player is back, even through the new channels of a reconnect, which share gRPC's global subchannels.
#: ``grpc.min_reconnect_backoff_ms`` is, despite its name, gRPC's *connect timeout* (its default 20 s): the
#: time a connection attempt gets to finish its HTTP/2 handshake. At 100 ms, as this was, a player slow to
#: answer on a loaded machine failed the driver's connect ("connection attempt timed out before receiving
#: SETTINGS frame", in a CI run of the suite with two workers); 5 s leaves room for a busy player, and a
#: hung one is cut loose by the watchdog meanwhile.
GRPC_OPTIONS = {"grpc.use_local_subchannel_pool": "1", "grpc.initial_reconnect_backoff_ms": "100",
                "grpc.min_reconnect_backoff_ms": "5000", "grpc.max_reconnect_backoff_ms": "1000"}


def set_grpc_options() -> None:
    """Add :data:`GRPC_OPTIONS` to ``TF_GRPC_DEFAULT_OPTIONS`` (before this process makes its first channel)."""
    current = [o for o in os.environ.get("TF_GRPC_DEFAULT_OPTIONS", "").split(",") if o]
    named = {o.split("=", 1)[0] for o in current}
    os.environ["TF_GRPC_DEFAULT_OPTIONS"] = ",".join(current + [f"{k}={v}" for k, v in GRPC_OPTIONS.items() if k not in named])


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside tfe_lite and TensorFlow (the user's call that connected)."""
    inside = (str(Path(__file__).resolve().parents[1]), str(Path(tf.__file__).resolve().parent))
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


class RemoteConfig(Config):
    """Players on TensorFlow gRPC servers: ``RemoteConfig({"server0": "10.0.0.1:4440", ...})``.

    Args:
        players: player name -> ``"host:port"`` of its server; must include ``server0``, ``server1`` and
            ``crypto-producer`` (the cluster file format is in :mod:`tfe_lite.runtime.cluster`).
        driver: the player the driving program runs as (its server then runs in the driver's process), or
            None for a driver that is no player (TensorFlow job ``driver``).
        driver_address: where the driver's own server listens when ``driver`` is None
            (default ``127.0.0.1`` and a free port).
        timeout: seconds to wait for the players when connecting.
        hang_timeout: seconds a connected player may leave its status probes unanswered (a stopped or
            frozen process) before the driver cuts its connections to it, so that the computation waiting
            on it fails (:mod:`tfe_lite.runtime.watchdog`).
        source: what the entries came from, for error messages (:meth:`load` passes the file).
    """

    #: Players run in other processes: keys are made there (:mod:`tfe_lite.random` refuses a driver-side one).
    remote = True

    def __init__(self, players: Mapping[str, str], *, driver: str | None = None, driver_address: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, hang_timeout: float = DEFAULT_HANG_TIMEOUT, source: str = "RemoteConfig"):
        self.cluster: Cluster = cluster_file.validate(players, driver, driver_address, source=source)
        self.timeout = cluster_file.check_timeout(timeout)
        self.hang_timeout = cluster_file.check_timeout(hang_timeout, "hang_timeout")
        names = list(DEFAULT_PLAYERS) + [n for n in self.cluster.players if n not in DEFAULT_PLAYERS]
        super().__init__([Player(name, device_of(name)) for name in names])
        self._connected = False
        self._incarnations: dict[str, tuple[int, ...]] = {}
        self._watchdog = Watchdog(self.served, self.hang_timeout)

    @classmethod
    def load(cls, path: str | Path, *, timeout: float = DEFAULT_TIMEOUT,
             hang_timeout: float = DEFAULT_HANG_TIMEOUT) -> "RemoteConfig":
        """A RemoteConfig from a JSON cluster file; errors name the file and the entry."""
        found = cluster_file.load(path)
        return cls(found.players, driver=found.driver, driver_address=found.driver_address, timeout=timeout,
                   hang_timeout=hang_timeout, source=found.source)

    # ------------------------------------------------------------------------------------ the cluster
    @property
    def addresses(self) -> dict[str, str]:
        """Player name -> the address of its server."""
        return {name: self.cluster.players[name] for name in self.player_names}

    @property
    def driver(self) -> str | None:
        """The player the driving program runs as, or None."""
        return self.cluster.driver

    @property
    def served(self) -> dict[str, str]:
        """The players that run ``tfe-lite serve`` (all but the driver's): name -> address."""
        return {name: address for name, address in self.addresses.items() if name != self.driver}

    def cluster_spec(self, driver_address: str | None = None) -> tf.train.ClusterSpec:
        """The TensorFlow cluster: one job per player (and ``driver`` when the driver is no player)."""
        jobs = {job_name(name): [address] for name, address in self.addresses.items()}
        if self.driver is None:
            jobs[DRIVER_JOB] = [driver_address or self.cluster.driver_address or f"127.0.0.1:{_free_port('127.0.0.1')}"]
        return tf.train.ClusterSpec(jobs)

    @property
    def connected(self) -> bool:
        return self._connected

    @tf.autograph.experimental.do_not_convert
    def connect(self) -> "RemoteConfig":
        """Wait for the players and connect this process to the cluster (once; again after a fault).

        Raises PartyUnavailableError naming every player that did not answer within ``timeout`` seconds.
        """
        if self._connected:
            return self
        with _connect_lock:
            if self._connected:
                return self
            allocator.keep_freed_memory()  # first: a bad TFE_LITE_MALLOC is refused before the wait
            start = time.monotonic()
            incarnations = wait_for_players(self.served, self.timeout, source=self.cluster.source)
            # Fail fast: without it a gRPC call to a lost player waits for the player to come back.
            os.environ["GRPC_FAIL_FAST"] = "true"
            set_grpc_options()
            tf.config.set_soft_device_placement(False)
            spec = self.cluster_spec()
            job = job_name(self.driver) if self.driver else DRIVER_JOB
            own_host, own_port = split_address(spec.as_dict()[job][0])
            guarded = bind.preloaded()  # this process's own server on its address only (`tfe-lite run`)
            if guarded:
                bind.bind_only(bind.numeric_address(own_host, own_port), own_port)
            outcome: list = []

            def handshake():
                try:
                    tf.config.experimental_connect_to_cluster(spec, job_name=job, task_index=0, protocol="grpc")
                    outcome.append({d.name for d in tf.config.list_logical_devices("CPU")})
                except Exception as error:  # reported in the caller's thread
                    outcome.append(error)

            worker = threading.Thread(target=handshake, name="tfe-lite-connect", daemon=True)
            worker.start()
            worker.join(max(self.timeout - (time.monotonic() - start), 1.0))
            if not outcome:
                silent = probe_all(self.served, 1.0)[1]
                raise PartyUnavailableError(
                    f"TensorFlow's handshake with the players of {self.cluster.source} did not finish within "
                    f"{self.timeout:g} s ({describe(self.served, silent) or 'every port accepts connections: is each a `tfe-lite serve` of this cluster?'}). "
                    "This process cannot use the cluster any more: start a new driver once every player runs."
                )
            if isinstance(outcome[0], Exception):
                fault = translate(outcome[0], self.served, source=self.cluster.source, incarnations=incarnations)
                if fault is not None:
                    raise fault from outcome[0]
                raise RuntimeConfigError(f"Connecting to the cluster of {self.cluster.source} failed: {outcome[0]}") from outcome[0]
            missing = [p for p in self._players.values() if p.device not in outcome[0]]
            if missing:
                raise PartyUnavailableError(
                    f"Connected to {self.cluster.source}, but TensorFlow lists no device for "
                    + ", ".join(f"{p.name!r} ({p.device}, at {self.addresses[p.name]})" for p in missing)
                    + ". Is each address the `tfe-lite serve` of that player?"
                )
            self._check_own_listener(guarded, own_host, own_port)
            self._incarnations = incarnations
            self._watchdog.arm()
            self._connected = True
            return self

    def _check_own_listener(self, guarded: bool, host: str, port: int) -> None:
        """The driver's own gRPC server (TensorFlow starts one in this process to join the cluster): on its
        address only when this process preloads the ``bind()`` wrapper, else on every interface, said once."""
        found = bind.exposure(port) if guarded else None
        if found is not None:
            raise RuntimeConfigError(f"{self.cluster.source}: this driver's gRPC server was to listen on {host} port {port} "
                                     f"only, but {found}. Stop this process; do not use it with the cluster.")
        if not guarded and bind.every_interface(bind.listening_addresses(port)):
            warnings.warn(f"{self.cluster.source}: this driver's gRPC server listens on every interface at port {port} "
                          f"(TensorFlow's choice). Run the driver as `tfe-lite run SCRIPT.py ...` to listen on {host} "
                          "only, or keep the port closed to the network.", RuntimeWarning, stacklevel=_caller_level())

    # -------------------------------------------------------------------- Config: devices on demand
    @property
    def players(self) -> tuple[Player, ...]:
        self.connect()
        return super().players

    def get_player(self, player) -> Player:
        """The player (connecting to the cluster on first use)."""
        found = super().get_player(player)
        self.connect()
        return found

    @contextlib.contextmanager
    def guard(self) -> Iterator["RemoteConfig"]:
        """Run a computation: a lost player becomes a PartyUnavailableError naming it, within a bounded time.

        After such an error the config reconnects on next use, reaching restarted players afresh.
        """
        try:
            yield self
        except Exception as error:
            with self._watchdog.paused():  # the probes that name the lost player are not cut meanwhile
                fault = translate(error, self.served, source=self.cluster.source, incarnations=self._incarnations,
                                  hung=self._watchdog.hung)
                if fault is not None:
                    self._watchdog.disarm()  # the computation is over; the next connect arms it again
            if fault is None:
                if isinstance(error, tf.errors.InvalidArgumentError) and "/job:localhost/" in str(error.message):
                    raise RuntimeConfigError(
                        f"A TensorFlow value made before this process connected to the cluster of {self.cluster.source} "
                        "was used (it lives on /job:localhost, which the cluster connect replaced). Connect first "
                        "(`config.connect()`, or make the protocol), then build Keras models and variables."
                    ) from error
                raise
            self._connected = False
            raise fault from error

    def __repr__(self) -> str:
        return f"RemoteConfig({self.addresses}, driver={self.driver!r}, source={self.cluster.source!r})"
