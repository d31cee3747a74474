"""Training data on the servers: each data owner's rows and labels, secret-shared once from its own device.

``fit(x, y)`` trains on rows of the ``client``; ``fit({"alice": (xa, ya), "bob": (xb, yb)})`` on rows of several
data owners. Each owner's rows are checked (shape, finite, fixed-point range) and its labels validated for
the loss (one-hot rows, values in [0, 1]...) with plaintext checks on the owner's side, then secret-shared
from the owner's device; integer class labels of a sparse loss are one-hot encoded by their owner first.
The servers keep the shares of all rows, owner after owner, as one int64 variable each
(:class:`SharedRows`). Keras then batches *row indices*: they are public, drawn (shuffled) by the driving
program, and both servers gather the same rows of their shares, so batches mix owners without any owner's
rows leaving its device unmasked. The servers learn which owner a row came from and the batch composition,
nothing about the values.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfe_lite.errors import ConfigError, PlayerError, ShapeError
from tfe_lite.players import CRYPTO_PRODUCER, SERVER0, SERVER1

from .losses import validate_labels


def owners_of(model, x, y) -> dict[str, tuple]:
    """``{owner: (rows, labels)}`` from ``fit``'s ``x`` and ``y``: arrays of the client, or a dict by owner."""
    if isinstance(x, dict):
        if y is not None:
            raise ConfigError("Received `y` together with a dict of data owners in `x`: give each owner's labels in "
                              "its entry, x={'alice': (xa, ya), ...}, and y=None.")
        if not x:
            raise ConfigError("Received an empty dict of data owners in `x`.")
        owners = {}
        known = list(model.protocol.config.player_names)
        for name, entry in x.items():
            if not isinstance(name, str) or name not in known:
                raise PlayerError(f"Received an unknown data owner in `x`: {name!r}. The protocol's configuration knows {known}.")
            if name in (SERVER0, SERVER1, CRYPTO_PRODUCER):
                raise PlayerError(f"Received a protocol player as a data owner in `x`: {name!r}; the servers and the producer "
                                  "must never hold plaintext data.")
            if not isinstance(entry, (tuple, list)) or len(entry) != 2:
                raise ConfigError(f"Received an invalid entry for data owner {name!r} in `x`, expected (rows, labels). "
                                  f"Received: {type(entry).__name__}")
            owners[name] = tuple(entry)
        return owners
    if isinstance(x, (tf.data.Dataset,)) or callable(getattr(x, "__next__", None)):
        raise ConfigError("Received a data set or generator for `x`: private training takes arrays, which are "
                          "secret-shared once from their owner's device (pass numpy arrays).")
    if x is None or y is None:
        raise ConfigError(f"Received an invalid value for `{'x' if x is None else 'y'}`: training needs the client's rows "
                          "and labels (or x={'owner': (rows, labels), ...}).")
    return {model.client.name: (x, y)}


def prepare_labels(labels, loss, output_shape, name: str) -> np.ndarray:
    """The owner's plaintext check of ``labels`` for ``loss`` (one-hot encoding sparse class labels)."""
    values = np.asarray(labels)
    if loss.sparse:
        classes = int(output_shape[-1])
        flat = values[:, 0] if values.ndim == 2 and values.shape[1] == 1 else values
        if flat.ndim != 1 or values.dtype.kind not in "iuf" or (values.dtype.kind == "f" and not np.all(np.mod(flat, 1) == 0)):
            raise ShapeError(f"Received invalid labels `{name}` for a sparse loss, expected integer class indices of shape (n,). "
                             f"Received: shape {values.shape}, dtype {values.dtype}")
        bad = (flat < 0) | (flat >= classes)
        if bad.any():
            index = int(np.argmax(bad))
            raise ShapeError(f"Received an invalid class label in `{name}`: {name}[{index}] = {flat[index].item()!r}, expected 0 to {classes - 1}.")
        values = np.eye(classes)[flat.astype(np.int64)]
    values = validate_labels(values, loss.kind, name=name)
    if values.ndim == 1 and len(output_shape) == 1:
        values = values[:, None]
    if tuple(values.shape[1:]) != tuple(output_shape):
        raise ShapeError(f"Received an invalid shape for `{name}`, expected (n, {', '.join(map(str, output_shape))}) like the "
                         f"model's output. Received: {name}.shape={values.shape}")
    return values


class SharedRows:
    """The shares of every owner's rows and labels, one variable per server and tensor (see the module
    docstring). ``gather(index)`` gives the private rows and labels of a batch of public row indices."""

    def __init__(self, model, owners: dict[str, tuple], loss):
        from .model import _check_array  # the checks predict uses

        prot = model.protocol
        self.protocol = prot
        shape, output_shape = model.private_input_shapes[0], model.private_output_shapes[0]
        if len(model.private_input_shapes) != 1:
            raise ConfigError("Private training supports models with one input.")
        rows, labels, self.counts = [], [], {}
        for name, (x, y) in owners.items():
            where = f"x[{name!r}]" if len(owners) > 1 or name != model.client.name else "x"
            _check_array(x, where, shape, prot.fixedpoint.bound)
            x = np.asarray(x, np.float64)
            y = prepare_labels(y, loss, output_shape, "y" if where == "x" else f"labels of {name!r}")
            if len(y) != len(x):
                raise ShapeError(f"Received {len(x)} rows but {len(y)} labels for data owner {name!r}.")
            rows.append(prot.share(x, owner=name))
            labels.append(prot.share(y, owner=name))
            self.counts[name] = len(x)
        self.size = sum(self.counts.values())
        self.variables = []
        for parts in (rows, labels):
            pair = []
            for i, server in enumerate((prot.server0, prot.server1)):
                with tf.device(server.device):
                    value = tf.concat([p.shares[i] for p in parts], axis=0)
                    # Any number of rows: a step traced on one fit's rows serves the next fit's (see `gather`).
                    pair.append(tf.Variable(value, trainable=False, shape=tf.TensorShape([None, *value.shape[1:]]),
                                            name=f"training_{'rows' if parts is rows else 'labels'}_share{i}"))
            self.variables.append(pair)

    @property
    def flat_variables(self) -> list[tf.Variable]:
        """The rows' shares (server0's, server1's), then the labels': the arguments of :meth:`gather`."""
        return [v for pair in self.variables for v in pair]

    def gather(self, index, variables=None):
        """Private rows and labels at the public ``index`` (int64 ``[batch]``), from ``variables`` (default:
        :attr:`flat_variables`; inside a traced step, the function's arguments, so that the trace reads
        whichever fit's rows it is called with)."""
        prot, out = self.protocol, []
        variables = self.flat_variables if variables is None else list(variables)
        for pair in (variables[:2], variables[2:]):
            shares = []
            for server, variable in zip((prot.server0, prot.server1), pair):
                with tf.device(server.device):
                    shares.append(tf.gather(variable, tf.identity(index)))
            out.append(prot.from_shares(*shares, fixedpoint=prot.fixedpoint))
        return out
