"""What a trained private model gives back: its weights to the model owner, and per-server checkpoints.

``private.reveal_model(to="model-owner")`` opens each weight to that player only, decodes it on its
device, and returns a plain Keras model (a clone of the converted one, its architecture and names) with the
trained weights.

Checkpoints never hold both shares of a value in one file: :func:`save_shares` writes one TensorFlow
checkpoint per server, ``<directory>/server0`` with server0's shares of every weight and optimizer slot and
``<directory>/server1`` with server1's, each written through its server's device
(``CheckpointOptions(experimental_io_device=...)``: in multi-host mode the file is on that server's
machine). The optimizer's step count is public and stored in both. :func:`load_shares` restores them; a run
resumed with ``fit(..., initial_epoch=k)`` continues where the checkpoint of epoch ``k`` stopped.
:class:`ShareCheckpoint` is the Keras callback that saves after every epoch. Keras's own ``save`` and
``save_weights`` would put both shares in one file, so a private model refuses them.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import tensorflow as tf

from tfe_lite.errors import ConfigError, ProtocolError

from .training import tf_variable

_SERVERS = ("server0", "server1")


def _server_variables(model, index: int) -> dict:
    """Server ``index``'s share variables of the private weights and the optimizer's slots, by name."""
    # keyed by position (layer i, weight name), so a model of the same architecture with other layer names
    # (Keras numbers them per process) restores the checkpoint
    out = {}
    for i, layer in enumerate(model.private_layers):
        for name in layer.private_weight_names:
            out[f"layer{i}_{name}"] = tf_variable(layer._shares[name][index])
    plan = getattr(model, "plan", None)
    if plan is not None:
        position = {id(layer): i for i, layer in enumerate(model.private_layers)}
        for layer, name, variable in plan.variables:
            for slot_name, slot in plan.optimizer._slots.get(id(variable), {}).items():
                out[f"layer{position[id(layer)]}_{name}_{slot_name}"] = (slot.share0, slot.share1)[index]
        out["optimizer_iterations"] = plan.optimizer.iterations
    return out


def save_shares(model, directory: str, *, epoch: int | None = None) -> list[str]:
    """Write ``<directory>/server0`` and ``<directory>/server1`` (one server's shares each); returns the paths."""
    os.makedirs(directory, exist_ok=True)
    prot, paths = model.protocol, []
    for index, server in enumerate((prot.server0, prot.server1)):
        checkpoint = tf.train.Checkpoint(**_server_variables(model, index))
        options = tf.train.CheckpointOptions(experimental_io_device=server.device)
        paths.append(checkpoint.write(os.path.join(directory, _SERVERS[index]), options=options))
    with open(os.path.join(directory, "state.json"), "w") as f:
        json.dump({"epoch": epoch, "servers": list(_SERVERS)}, f)
    return paths


def load_shares(model, directory: str) -> int | None:
    """Restore the shares written by :func:`save_shares` (each server's own file); returns the epoch saved
    (``fit(..., initial_epoch=that)`` resumes), or None."""
    state_file = os.path.join(directory, "state.json")
    if not os.path.exists(state_file):
        raise ConfigError(f"Received an invalid value for `directory`: {directory!r} holds no share checkpoint (no state.json).")
    prot = model.protocol
    for index, server in enumerate((prot.server0, prot.server1)):
        checkpoint = tf.train.Checkpoint(**_server_variables(model, index))
        options = tf.train.CheckpointOptions(experimental_io_device=server.device)
        checkpoint.read(os.path.join(directory, _SERVERS[index]), options=options).assert_existing_objects_matched()
    with open(state_file) as f:
        return json.load(f).get("epoch")


class ShareCheckpoint(keras.callbacks.Callback):
    """Save the private model's shares after every epoch (per server, see :func:`save_shares`), into
    ``directory`` (``{epoch}`` in it is replaced by the epoch number, 1-based, as Keras's ModelCheckpoint)."""

    def __init__(self, directory: str):
        super().__init__()
        if not isinstance(directory, str) or not directory:
            raise ConfigError(f"Received an invalid value for `directory`, expected a path. Received: directory={directory!r}")
        self.directory = directory

    def on_epoch_end(self, epoch, logs=None):
        save_shares(self.model, self.directory.format(epoch=epoch + 1), epoch=epoch + 1)


def reveal_model(model, to: str) -> keras.Model:
    """A plain Keras model with the private model's weights, opened to player ``to`` only."""
    prot = model.protocol
    receiver = prot.config.get_player(to)
    twin = model._keras_twin
    if twin is None:
        raise ProtocolError("This private model was not made by secure(): there is no Keras architecture to reveal into.")
    private = {layer.name: layer for layer in model.private_layers}
    for layer in twin.layers:
        if not layer.weights:
            continue
        source = private.get(layer.name)
        if source is None or len(source.private_weight_names) != len(layer.weights) or getattr(source, "folded", False):
            raise ProtocolError(
                f"Layer {layer.name!r} of the Keras model has no private twin with the same weights (BatchNormalization "
                "folded by secure(optimize=True)?); convert with optimize=False to reveal the model.")
        values = []
        for name in source.private_weight_names:
            value = prot.reveal(source.private_weight(name), to=receiver, dtype=tf.float64)
            values.append(np.asarray(value))
        layer.set_weights([v.astype(w.dtype) for v, w in zip(values, layer.weights)])
    return twin
