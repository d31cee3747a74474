"""What every private layer shares: its protocol, its weights as share variables, the forward hook.

A private layer is a ``keras.layers.Layer`` whose inputs and outputs are Pond tensors. It calls protocol ops
only (``prot.conv2d``, ``prot.relu``, ``x @ w``...), never ring arithmetic or triples. Its weights belong to
the model owner: :meth:`PrivateLayer.share_weights` secret-shares them once from the owner's device, and each
weight is kept as two int64 Keras variables, ``<name>_share0`` on server0's device and ``<name>_share1`` on
server1's, so ``layer.weights`` (and a checkpoint of them) holds shares only, never a plaintext weight.

Each layer has its backward rule beside its forward (:meth:`PrivateLayer.backward`, used by ``fit``):
:meth:`PrivateLayer.forward` with ``save=True`` returns, besides its outputs, what that rule needs (the input
of a Dense layer, the 0/1 mask of a ReLU, the argmax one-hots of a max pooling), so the backward pass never
repeats a comparison. Inference asks for nothing to be kept.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfe_lite.errors import ConfigError, ProtocolError, ShapeError
from tfe_lite.protocols import Pond, PrivateTensor


class PrivateLayer(keras.layers.Layer):
    """Base class of the private layers: a Keras layer computing on Pond tensors.

    Args:
        protocol: the :class:`~tfe_lite.protocols.Pond` instance the layer computes with (a runtime resource,
            not part of ``get_config``; a layer made by ``from_config`` gets it by ``layer.bind(prot)``).
        **kwargs: Keras layer arguments (``name``...).
    """

    def __init__(self, *, protocol: Pond | None = None, **kwargs):
        super().__init__(**kwargs)
        # Inputs are Pond tensors: Keras must neither convert them nor refuse them as positional arguments.
        self._allow_non_tensor_positional_args = True
        self._convert_input_args = False
        self._protocol = None
        self._shares: dict[str, tuple[keras.Variable, keras.Variable]] = {}
        if protocol is not None:
            self.bind(protocol)

    # ----------------------------------------------------------------------------------- the protocol
    @property
    def protocol(self) -> Pond:
        if self._protocol is None:
            raise ProtocolError(
                f"Layer {self.name!r} has no protocol: create it with `protocol=prot` or call `layer.bind(prot)` "
                "before building or calling it."
            )
        return self._protocol

    def bind(self, value: Pond) -> None:
        """Compute with protocol ``value`` (once: a layer holding shares cannot change protocol)."""
        if not isinstance(value, Pond):
            raise ConfigError(f"Received an invalid value for `protocol`, expected a tfe_lite Pond protocol. Received: protocol={value!r}")
        if self._shares and value is not self._protocol:
            raise ProtocolError(f"Layer {self.name!r} already holds shares of another protocol instance; it cannot change protocol.")
        self._protocol = value

    # -------------------------------------------------------------------------------- share variables
    def add_private_weight(self, name: str, shape: Sequence[int]) -> None:
        """Two int64 variables for the shares of weight ``name``, one on each server's device (zero until
        :meth:`share_weights`)."""
        prot = self.protocol
        pair = []
        for index, server in enumerate((prot.server0, prot.server1)):
            with tf.device(server.device):
                pair.append(self.add_weight(shape=tuple(shape), initializer="zeros", dtype="int64",
                                            trainable=False, name=f"{name}_share{index}"))
        self._shares[name] = (pair[0], pair[1])

    @property
    def private_weight_names(self) -> tuple[str, ...]:
        """Names of the private weights, in the order :meth:`share_weights` takes them."""
        return tuple(self._shares)

    def private_weight(self, name: str) -> PrivateTensor:
        """Weight ``name`` as a private tensor, read from the servers' share variables."""
        share0, share1 = self._shares[name]
        prot = self.protocol
        return prot.from_shares(share0.value, share1.value, fixedpoint=prot.fixedpoint)

    def share_weights(self, weights: Sequence[np.ndarray], *, owner: str) -> None:
        """Secret-share plaintext ``weights`` (in :attr:`private_weight_names` order) from player ``owner``'s
        device into the servers' share variables. Validates every weight before sharing any."""
        if not self.built:
            raise ProtocolError(f"Layer {self.name!r} is not built: build it before sharing its weights.")
        names = self.private_weight_names
        if len(weights) != len(names):
            raise ShapeError(f"Layer {self.name!r} takes {len(names)} weights {list(names)}. Received: {len(weights)} weights")
        values = []
        for name, value in zip(names, weights):
            if not isinstance(value, (tf.Tensor, tf.Variable)):
                value = np.asarray(value, np.float64)
            expected = tuple(self._shares[name][0].shape)
            if tuple(value.shape) != expected:
                raise ShapeError(f"Received an invalid shape for weight `{name}` of layer {self.name!r}, expected {expected}. Received: {tuple(value.shape)}")
            values.append(value)
        prot = self.protocol
        for name, value in zip(names, values):
            shared = prot.share(value, owner=owner)
            share0, share1 = self._shares[name]
            share0.assign(shared.share0)
            share1.assign(shared.share1)

    # --------------------------------------------------------------------------- from the Keras twin
    @classmethod
    def unsupported(cls, layer) -> list[str]:
        """The settings of Keras ``layer`` that have no private version, each a phrase for the error."""
        return []

    @classmethod
    def from_keras(cls, layer, protocol: Pond) -> "PrivateLayer":
        """The private version of Keras ``layer`` (unbuilt): its settings and its name."""
        return cls(**cls.keras_arguments(layer), protocol=protocol, name=layer.name)

    @staticmethod
    def keras_arguments(layer) -> dict:
        """This class's constructor arguments, read from its Keras twin ``layer``."""
        return {}

    # ---------------------------------------------------------------------------------- computation
    def call(self, inputs):
        outputs, _ = self.forward(inputs, save=False)
        return outputs

    def forward(self, inputs, *, save: bool = False) -> tuple[Any, dict | None]:
        """The private forward pass: ``(outputs, saved)``. With ``save`` (training), ``saved`` holds what this
        layer's backward rule needs (a dict of Pond tensors and static shapes); without, None."""
        raise NotImplementedError

    #: Why this layer cannot train on shares (None: it has a backward rule).
    training_problem: str | None = None

    def backward(self, grad, kept, *, preactivation=False, input_gradient=True):
        """The backward rule: ``(d loss / d inputs, {weight name: d loss / d weight})`` from ``grad = d loss /
        d outputs`` and what :meth:`forward` kept with ``save=True`` (a list of input gradients for a layer of
        several inputs). ``preactivation``: ``grad`` is already taken before the layer's final activation (a
        cross-entropy loss fused with its softmax or sigmoid)."""
        raise NotImplementedError(f"Layer {self.name!r} ({type(self).__name__}) has no backward rule.")

    def _check_rank(self, x, rank: int | tuple[int, ...], what: str) -> None:
        ranks = (rank,) if isinstance(rank, int) else rank
        if not isinstance(x, PrivateTensor):
            raise ProtocolError(f"Layer {self.name!r} expects a private (Pond) tensor. Received: {x!r}")
        if x.rank not in ranks:
            raise ShapeError(f"Layer {self.name!r} expects {what}. Received: input of shape {x.shape}")


def integer(value, name: str) -> int:
    """``value`` if it is an int (not a bool), else a ConfigError naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"Received an invalid value for `{name}`, expected an integer. Received: {name}={value!r}")
    return value


def saved(save: bool, **tensors) -> dict | None:
    """What a forward pass keeps for its backward rule: ``tensors`` when ``save``, else None."""
    return dict(tensors) if save else None


def register(cls):
    """Registers a private layer with Keras serialization (``keras.saving.deserialize_keras_object``)."""
    return keras.saving.register_keras_serializable(package="tfe_lite")(cls)
