"""A configuration for simulations with more clients than devices.

:class:`tfe_lite.LocalConfig` gives every player its own logical CPU, which is what the security model
assumes (and what the placement audits check). To simulate many clients on a few devices, as one would on
a few GPUs, :class:`SimulationConfig` spreads the client players round-robin over ``replicas`` logical
CPUs: clients on one device are trained one at a time by that device's replica
(:mod:`tfe_lite.federated.clients`). Co-located clients are not separated from each other; the protocol
players (the Pond servers and the crypto producer) and the aggregator still have devices of their own.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from tfe_lite.devices import ensure_logical_cpus
from tfe_lite.errors import ConfigError
from tfe_lite.players import DEFAULT_PLAYERS, Config, Player, _validate_names


class SimulationConfig(Config):
    """The protocol players and ``aggregators`` on their own logical CPUs; ``clients`` shared among
    ``replicas`` further logical CPUs (client ``i`` on replica ``i % replicas``).

    Like :class:`tfe_lite.LocalConfig` it turns soft device placement off and must be created before
    TensorFlow's runtime initializes when the process needs more logical devices than it has.
    """

    def __init__(self, clients: Sequence[str], *, replicas: int = 2, aggregators: Sequence[str] = ()):
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            raise ConfigError(
                f"Received an invalid value for `replicas`, expected a positive integer. Received: replicas={replicas!r}")
        own = [n for n in DEFAULT_PLAYERS] + [n for n in _validate_names(aggregators) if n not in DEFAULT_PLAYERS]
        shared = _validate_names(clients)
        clash = sorted(set(shared) & set(own))
        if clash or not shared:
            raise ConfigError(f"Received an invalid value for `clients`, expected non-empty client names distinct from "
                              f"{own}. Received: clients={list(clients)!r}")
        devices = ensure_logical_cpus(1 + len(own) + replicas)
        tf.config.set_soft_device_placement(False)
        players = [Player(name, devices[1 + i]) for i, name in enumerate(own)]
        players += [Player(name, devices[1 + len(own) + i % replicas]) for i, name in enumerate(shared)]
        super().__init__(players)
        self.replicas = replicas
