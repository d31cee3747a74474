"""Multi-host runtime: every player a TensorFlow gRPC server of its own (``tfe-lite serve``).

:class:`RemoteConfig` is a :class:`~tfe_lite.players.Config` like :class:`~tfe_lite.LocalConfig`: protocol
code asks it for each player's device and runs unchanged. Modules: :mod:`.cluster` (the cluster file),
:mod:`.config` (RemoteConfig, connecting), :mod:`.wait` (waiting for players), :mod:`.faults` (lost
players as :class:`~tfe_lite.errors.PartyUnavailableError`), :mod:`.watchdog` (hung players: cut off
after ``hang_timeout`` seconds of silence), :mod:`.cli` (``tfe-lite serve``).
"""

from tfe_lite.runtime.cluster import Cluster, device_of, job_name
from tfe_lite.runtime.config import RemoteConfig
from tfe_lite.runtime.wait import wait_for_players

__all__ = ["Cluster", "RemoteConfig", "device_of", "job_name", "wait_for_players"]
