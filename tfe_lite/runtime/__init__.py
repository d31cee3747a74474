"""Multi-host runtime: every player a TensorFlow gRPC server of its own (``tfe-lite serve``).

:class:`RemoteConfig` is a :class:`~tfe_lite.players.Config` like :class:`~tfe_lite.LocalConfig`: protocol
code asks it for each player's device and runs unchanged. Modules: :mod:`.cluster` (the cluster file),
:mod:`.config` (RemoteConfig, connecting), :mod:`.wait` (waiting for players), :mod:`.faults` (lost
players as :class:`~tfe_lite.errors.PartyUnavailableError`), :mod:`.watchdog` (hung players: cut off
after ``hang_timeout`` seconds of silence), :mod:`.cli` (``tfe-lite serve``). The names below load on first
use, so ``tfe-lite serve`` re-executes itself before TensorFlow is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "Cluster": "tfe_lite.runtime.cluster", "device_of": "tfe_lite.runtime.cluster", "job_name": "tfe_lite.runtime.cluster",
    "RemoteConfig": "tfe_lite.runtime.config", "wait_for_players": "tfe_lite.runtime.wait",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from tfe_lite.runtime.cluster import Cluster, device_of, job_name
    from tfe_lite.runtime.config import RemoteConfig
    from tfe_lite.runtime.wait import wait_for_players
