"""The cluster file: which player listens where, validated with errors that name the file and the entry.

A cluster file is JSON::

    {
      "players": {
        "server0": "127.0.0.1:4440",
        "server1": "127.0.0.1:4441",
        "crypto-producer": "127.0.0.1:4442",
        "alice": "127.0.0.1:4443"
      },
      "driver": "alice"
    }

``players`` maps every player name to the ``host:port`` of its TensorFlow gRPC server (``[::1]:4440`` for
an IPv6 host); ``server0``, ``server1`` and ``crypto-producer`` must be there. The optional ``driver`` names
the player that the driving program runs as: its server is started by the driver itself, in the driver's
process, so what is revealed to it never leaves that process. Without ``driver`` the driving program is a
player of its own (TensorFlow job ``driver``) at the optional ``driver_address`` (default: ``127.0.0.1``
and a free port). Every address appears once.

Player names follow :class:`tfe_lite.LocalConfig` (letters, digits, ``_ . -``). TensorFlow job names allow
only letters, digits and ``_``, so a player's job is its name with ``-`` and ``.`` turned into ``_``
(``crypto-producer`` runs as ``/job:crypto_producer``); two names that map to one job are refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

from tfe_lite.errors import ConfigError, PlayerError
from tfe_lite.players import _NAME, DEFAULT_PLAYERS

#: The TensorFlow job of the driving program when it does not run as one of the players.
DRIVER_JOB = "driver"
KEYS = ("players", "driver", "driver_address")

_ADDRESS = re.compile(r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)):(?P<port>[0-9]{1,5})$")


def job_name(player: str) -> str:
    """The TensorFlow job that runs ``player``: its name with every character but ``[A-Za-z0-9_]`` -> ``_``."""
    return re.sub(r"[^A-Za-z0-9_]", "_", player)


def device_of(player: str) -> str:
    """The TensorFlow device of ``player`` in a cluster: the first CPU of its job's only task."""
    return f"/job:{job_name(player)}/replica:0/task:0/device:CPU:0"


def split_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of a valid ``host:port`` (``[v6]:port``) address; raises ``ValueError`` otherwise."""
    match = _ADDRESS.match(address) if isinstance(address, str) else None
    port = int(match["port"]) if match else 0
    if not match or not 1 <= port <= 65535:
        raise ValueError(address)
    return match["ipv6"] or match["host"], port


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A validated cluster description (see the module docstring)."""

    players: Mapping[str, str]
    driver: str | None = None
    driver_address: str | None = None
    source: str = "RemoteConfig"

    def where(self, entry: str = "") -> str:
        """``source`` and ``entry`` for an error message: ``cluster.json: players["server1"]``."""
        return f"{self.source}: {entry}" if entry else self.source


def _check_address(value: Any, entry: str, problems: list[str]) -> str | None:
    try:
        split_address(value)
        return value
    except ValueError:
        problems.append(
            f'{entry}: expected an address "host:port" with a port in 1-65535 (e.g. "127.0.0.1:4440"). '
            f"Received: {value!r}"
        )
        return None


def validate(players: Any, driver: Any = None, driver_address: Any = None, *, source: str = "RemoteConfig") -> Cluster:
    """A :class:`Cluster` from raw entries; every problem is collected, then raised as one ConfigError.

    Each problem names ``source`` (the file, or ``RemoteConfig``) and the entry, e.g.
    ``cluster.json: players["server1"]: expected an address "host:port" ... Received: '127.0.0.1'``.
    """
    problems: list[str] = []
    if not isinstance(players, Mapping) or not players:
        raise ConfigError(
            f'{source}: "players": expected a non-empty mapping of player names to "host:port" addresses. '
            f"Received: {players!r}"
        )
    seen_jobs: dict[str, str] = {}
    by_address: dict[str, str] = {}
    valid: dict[str, str] = {}
    for name, address in players.items():
        entry = f"players[{name!r}]"
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(
                f"{entry}: invalid player name, expected letters, digits, '_', '.', '-' starting with a letter."
            )
            continue
        job = job_name(name)
        if job in seen_jobs:
            problems.append(f"{entry}: player {name!r} would run as TensorFlow job {job!r}, like {seen_jobs[job]!r}.")
        seen_jobs[job] = name
        address = _check_address(address, entry, problems)
        if address is None:
            continue
        if address in by_address:
            problems.append(f"{entry}: duplicate address {address!r}, already the address of players[{by_address[address]!r}].")
        by_address[address] = name
        valid[name] = address
    for name in DEFAULT_PLAYERS:
        if name not in players:
            problems.append(f"players: the protocol player {name!r} is missing (every cluster has {list(DEFAULT_PLAYERS)}).")
    if driver is not None:
        if not isinstance(driver, str) or driver not in players:
            problems.append(f'"driver": expected the name of one of the players {list(players)}. Received: {driver!r}')
        if driver_address is not None:
            problems.append(
                '"driver_address": not allowed with "driver" (the driver then listens at that player\'s address). '
                f"Received: driver_address={driver_address!r}"
            )
    elif driver_address is not None:
        driver_address = _check_address(driver_address, '"driver_address"', problems)
        if driver_address in by_address:
            problems.append(f'"driver_address": duplicate address {driver_address!r}, already the address of players[{by_address[driver_address]!r}].')
    if DRIVER_JOB in seen_jobs and driver != seen_jobs[DRIVER_JOB]:
        problems.append(f"players[{seen_jobs[DRIVER_JOB]!r}]: the job {DRIVER_JOB!r} is the driver's; name the player otherwise or make it the \"driver\".")
    if problems:
        raise ConfigError(f"Invalid cluster in {source}:\n  " + "\n  ".join(f"{source}: {p}" for p in problems))
    return Cluster(dict(valid), driver, driver_address, source)


def load(path: str | Path) -> Cluster:
    """Read and validate a cluster file; errors name the file and the entry (or the JSON line and column)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"Cannot read the cluster file {str(path)!r}: {error.strerror or error}.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"The cluster file {str(path)!r} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}."
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: expected a JSON object with a "players" entry. Received: {type(data).__name__}')
    unknown = sorted(set(data) - set(KEYS))
    if unknown or "players" not in data:
        what = f"unknown entries {unknown}" if unknown else 'no "players" entry'
        raise ConfigError(f"{path}: {what}; a cluster file has the entries {list(KEYS)} (only \"players\" required).")
    return validate(data["players"], data.get("driver"), data.get("driver_address"), source=str(path))


def check_timeout(timeout: Any, name: str = "timeout") -> float:
    """A positive, finite number of seconds."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise ConfigError(f"Received an invalid value for `{name}`, expected a positive number of seconds. Received: {name}={timeout!r}")
    return float(timeout)


def check_player(cluster: Cluster, player: Any) -> str:
    """``player`` when the cluster has it; a PlayerError naming the file and the players otherwise."""
    if not isinstance(player, str) or player not in cluster.players:
        raise PlayerError(f"{cluster.where()}: no player {player!r} in \"players\"; the cluster has {list(cluster.players)}.")
    return player
