"""Virtual workers: players of a configuration that hold named objects on their own device.

PySyft's model in TensorFlow. A :class:`VirtualWorker` is a player of a :class:`tfe_lite.Config` (so a
TensorFlow device: a logical CPU of this process with :class:`tfe_lite.LocalConfig`, a gRPC job with a
multi-host config). ``worker.send(x)`` places ``x`` on that device and returns a
:class:`~tfe_lite.federated.pointers.Pointer`, the caller's handle on it; the value itself stays on the
worker until ``ptr.get()`` brings it back.
"""

from __future__ import annotations

import itertools
import types
from typing import Any, Mapping

import tensorflow as tf

from tfe_lite.devices import eager_serialized
from tfe_lite.errors import ConfigError
from tfe_lite.players import Config, Player

from .errors import LocationError, ObjectNotFoundError


def same_device(a: str, b: str) -> bool:
    """Whether two device names denote one device (``/device:CPU:3`` and ``/job:localhost/.../CPU:3``).

    Fields that only one of the names sets (job, replica, task) are not compared.
    """
    x, y = tf.DeviceSpec.from_string(a), tf.DeviceSpec.from_string(b)
    for field in ("job", "replica", "task", "device_type", "device_index"):
        u, v = getattr(x, field), getattr(y, field)
        if u is not None and v is not None and str(u).upper() != str(v).upper():
            return False
    return True


def owner_of(config: Config, device: str) -> Player | None:
    """The player of ``config`` whose device is ``device`` (the first, if players share one), else None."""
    if not device:
        return None
    for player in config.players:
        if same_device(player.device, device):
            return player
    return None


class VirtualWorker:
    """A player of ``config`` that stores objects on its device and runs operations on them there.

    Args:
        name: a player of ``config`` (for example a data owner of a ``LocalConfig(["alice", "bob"])``).
        config: the configuration that gives the player its device.

    Attributes:
        objects: a read-only view ``{id: tf.Tensor}`` of what the worker holds.
    """

    def __init__(self, name: str, config: Config):
        if not isinstance(config, Config):
            raise ConfigError(f"Received an invalid value for `config`, expected a tfe_lite Config. Received: config={config!r}")
        self.player = config.get_player(name)
        self.config = config
        self._objects: dict[int, tf.Tensor] = {}
        self._ids = itertools.count(1)

    @property
    def name(self) -> str:
        return self.player.name

    @property
    def device(self) -> str:
        return self.player.device

    @property
    def objects(self) -> Mapping[int, tf.Tensor]:
        return types.MappingProxyType(self._objects)

    def __repr__(self) -> str:
        return f"VirtualWorker({self.name!r}, device={self.device!r}, objects={len(self._objects)})"

    def send(self, value: Any):
        """Place ``value`` (array-like or tensor) on this worker and return a pointer to it.

        A tensor held by another player of the configuration is refused: move it with ``Pointer.move``.
        """
        from .pointers import Pointer

        if isinstance(value, Pointer):
            raise LocationError(
                f"Received a pointer to an object on {value.location.name!r}; use ptr.move({self.name!r}) to "
                "send an object from one worker to another."
            )
        return self._store(self.place(value, "value"))

    @eager_serialized
    def place(self, value: Any, argument: str) -> tf.Tensor:
        """``value`` as a tensor on this worker's device (the caller's data, or this worker's own)."""
        if isinstance(value, (tf.Tensor, tf.Variable)) and tf.executing_eagerly():
            holder = owner_of(self.config, value.device)
            if holder is not None and holder.name != self.name and not same_device(holder.device, self.device):
                raise LocationError(
                    f"`{argument}` is held by {holder.name!r} ({value.device}), not by {self.name!r}; an "
                    "operation cannot mix values of two locations. Move it first."
                )
        with tf.device(self.device):
            return tf.identity(tf.convert_to_tensor(value))

    def clear_objects(self) -> "VirtualWorker":
        """Delete every object held by this worker; pointers to them stop working."""
        self._objects.clear()
        return self

    # ------------------------------------------------------------------------------ used by pointers
    def _store(self, tensor: tf.Tensor):
        from .pointers import Pointer

        object_id = next(self._ids)
        self._objects[object_id] = tensor
        return Pointer(self, object_id, tensor.shape, tensor.dtype)

    def _lookup(self, object_id: int, why_missing: str | None) -> tf.Tensor:
        try:
            return self._objects[object_id]
        except KeyError:
            reason = why_missing or "it was deleted (clear_objects)"
            raise ObjectNotFoundError(f"Object {object_id} is no longer on {self.name!r}: {reason}.") from None

    def _pop(self, object_id: int, why_missing: str | None) -> tf.Tensor:
        tensor = self._lookup(object_id, why_missing)
        del self._objects[object_id]
        return tensor
