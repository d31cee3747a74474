"""Players and the runtime configurations that map them to TensorFlow devices.

A player is a name and a TensorFlow device. The Pond protocol needs three: two compute servers
(``server0``, ``server1``) holding additive shares and the ``crypto-producer`` dealing correlated
randomness; data owners and result receivers (``alice``, ``model-owner``...) are players too.

:class:`LocalConfig` gives every player its own logical CPU device of this process. A multi-host
configuration maps the same names to ``/job:NAME/...`` devices of TensorFlow gRPC servers; protocol code
only ever asks a config for a player's device, so it runs unchanged on either.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import re
from typing import Iterable, Sequence

from tfe_lite import allocator
from tfe_lite.errors import ConfigError, PlayerError

SERVER0 = "server0"
SERVER1 = "server1"
CRYPTO_PRODUCER = "crypto-producer"
DEFAULT_PLAYERS = (SERVER0, SERVER1, CRYPTO_PRODUCER)

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class Player:
    """A party of the computation: its name and the TensorFlow device its tensors live on."""

    name: str
    device: str

    def __str__(self) -> str:
        return self.name


class Config(abc.ABC):
    """What every runtime configuration offers: named players, each on a device of its own."""

    #: Whether players run in other processes or hosts (then their keys must be made there; see
    #: :mod:`tfe_lite.random`).
    remote: bool = False

    def __init__(self, players: Sequence[Player]):
        self._players = {p.name: p for p in players}

    @property
    def players(self) -> tuple[Player, ...]:
        return tuple(self._players.values())

    @property
    def player_names(self) -> tuple[str, ...]:
        return tuple(self._players)

    def get_player(self, player: "str | Player") -> Player:
        """The :class:`Player` named ``player``; a clear error for a name the config does not know."""
        name = player.name if isinstance(player, Player) else player
        if isinstance(player, Player) and self._players.get(name) != player:
            raise PlayerError(f"Player {player!r} does not belong to this configuration ({self!r}).")
        if not isinstance(name, str) or name not in self._players:
            raise PlayerError(
                f"Received an unknown player: {player!r}. This configuration knows {list(self._players)}."
            )
        return self._players[name]

    def guard(self) -> "contextlib.AbstractContextManager[Config]":
        """Context manager around a computation. A multi-host config turns a lost player into a
        :class:`~tfe_lite.errors.PartyUnavailableError` naming it; in one process there is nothing to lose."""
        return contextlib.nullcontext(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self._players)})"


def _validate_names(names: Iterable[str]) -> list[str]:
    if isinstance(names, (str, bytes)):
        raise ConfigError(
            "Received an invalid value for `player_names`, expected a list of names (a bare string would be "
            f"read as its letters). Received: player_names={names!r}; did you mean [{names!r}]?"
        )
    result: list[str] = []
    for name in names:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                "Received an invalid player name, expected a string of letters, digits, '_', '.', '-' "
                f"starting with a letter. Received: {name!r}"
            )
        if name in result:
            raise ConfigError(f"Received a duplicate player name: {name!r}")
        result.append(name)
    return result


class LocalConfig(Config):
    """All players in this process, each on its own logical CPU device.

    ``LocalConfig(["alice", "model-owner"])`` has the players ``server0``, ``server1``,
    ``crypto-producer`` (always present, added when not named) and ``alice``, ``model-owner``. Player *i*
    gets ``/device:CPU:{i+1}``; ``/device:CPU:0`` stays the host's, where the driving program runs.

    Creating one turns soft device placement off for the process, so an op that is placed on a player's
    device runs there or fails, and placement can be audited, and lets malloc keep freed memory for the next
    tensor (:mod:`tfe_lite.allocator`). Logical devices can only be created before
    TensorFlow's runtime initializes: create the config (or call
    :func:`tfe_lite.devices.ensure_logical_cpus`) before running TensorFlow ops.
    """

    def __init__(self, player_names: Sequence[str] | None = None):
        import tensorflow as tf  # here, not at the top: the cluster file and `tfe-lite serve` use this module's
        from tfe_lite.devices import ensure_logical_cpus  # names before TensorFlow may be imported

        extra = _validate_names(player_names or ())
        names = list(DEFAULT_PLAYERS) + [n for n in extra if n not in DEFAULT_PLAYERS]
        allocator.keep_freed_memory()  # first: a bad TFE_LITE_MALLOC is refused before anything is configured
        devices = ensure_logical_cpus(len(names) + 1)
        tf.config.set_soft_device_placement(False)
        super().__init__([Player(name, devices[i + 1]) for i, name in enumerate(names)])
