"""Federated learning, installed as ``tfe_lite.federated``: virtual workers and pointers, FedAvg on
``tf.distribute`` replicas, secure aggregation with Pond, client-level DP with tensorflow-privacy.

Re-exports only; importing configures nothing.
"""

from .data import federate, label_shards
from .dp import ClientDP
from .errors import LocationError, ObjectNotFoundError, PlacementError
from .fedavg import FedAvg
from .pointers import Pointer
from .simulation import SimulationConfig
from .workers import VirtualWorker

__all__ = [
    "ClientDP", "FedAvg", "LocationError", "ObjectNotFoundError", "PlacementError", "Pointer", "SimulationConfig",
    "VirtualWorker", "federate", "label_shards",
]
