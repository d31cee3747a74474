"""``PrivateModel``: a ``keras.Model`` whose forward pass runs on secret shares.

Roles: the *client* owns the inputs and receives the outputs; the *model owner* shared the weights once, at
conversion (:func:`tfe_lite.keras_layers.secure`); ``server0`` and ``server1`` hold the shares and compute,
the ``crypto-producer`` deals correlated randomness. Per batch of ``predict``:

1. the batch is secret-shared from the client's device (the plaintext never leaves it);
2. the private layers run on the servers, inside ``tf.function``, traced once per batch shape (the protocol
   needs static shapes, so Keras's relaxed-shape trace is not used). A last, smaller batch is padded with
   zero rows on the client's device to the batch size, so one trace serves the whole call; the padding rows'
   outputs are dropped on the client's device;
3. the outputs are revealed to the client only, decoded on its device, and returned as numpy by Keras.

``evaluate`` computes the loss and the metrics on the client's device from the revealed outputs and the
client's labels: only the client learns them. Keras's loop, progress bar and callbacks run as usual.
``compile`` with an optimizer and ``fit`` train on shares (:mod:`.fitting`); ``reveal_model`` and the
per-server checkpoints are in :mod:`.results`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
# Keras builds compiled metrics by calling the model on placeholders in a scratch graph (``_symbolic_build``);
# there is no public way to tell that call apart, and running the protocol there would trace it for nothing.
from keras.src.backend.common.symbolic_scope import in_symbolic_scope

from tfe_lite.errors import ConfigError, EncodingError, ShapeError
from tfe_lite.protocols import Pond

from .base import PrivateLayer
from .fitting import PrivateTraining, check_batch_size, eager_steps


@dataclasses.dataclass(frozen=True)
class Step:
    """One call of a private layer: it reads the values of ``inputs`` (a list when ``as_list``) and writes
    the value of ``output`` (keys of the model's tensors)."""

    layer: PrivateLayer
    inputs: tuple[int, ...]
    as_list: bool
    output: int


class PrivateModel(PrivateTraining, keras.Model):
    """A Keras model computing with secret shares (made by :func:`~tfe_lite.keras_layers.secure`).

    ``predict(x, batch_size=32)``, ``evaluate(x, y)`` and, after ``compile(optimizer=..., loss=...)``,
    ``fit(x, y)`` work as in Keras (``x`` the client's data; ``fit`` also takes ``{owner: (rows, labels)}``);
    calling the model on a batch returns the revealed outputs as a tensor on the client's device.

    Args:
        protocol: the Pond protocol that holds the weights' shares.
        client: the player who owns the inputs and receives the outputs.
        model_owner: the player who shared the weights.
        steps: the private layer calls, in an order where each input is computed before it is read.
        inputs: keys of the model's inputs; ``input_shapes`` their shapes without the batch axis.
        outputs: keys of the model's outputs; ``output_shapes`` their shapes without the batch axis.
        nested_inputs, nested_outputs: whether inputs / outputs are lists (else single tensors).
    """

    def __init__(self, *, protocol: Pond, client: str, model_owner: str, steps: Sequence[Step],
                 inputs: Sequence[int], outputs: Sequence[int], input_shapes: Sequence[tuple], output_shapes: Sequence[tuple],
                 nested_inputs: bool = False, nested_outputs: bool = False, **kwargs):
        super().__init__(**kwargs)
        self._protocol = protocol
        self.client = protocol.config.get_player(client)
        self.model_owner = protocol.config.get_player(model_owner)
        self._steps = tuple(steps)
        self.private_layers = list({id(s.layer): s.layer for s in self._steps}.values())
        self._input_keys, self._output_keys = tuple(inputs), tuple(outputs)
        self.private_input_shapes = [tuple(s) for s in input_shapes]
        self.private_output_shapes = [tuple(s) for s in output_shapes]
        self._nested_inputs, self._nested_outputs = nested_inputs, nested_outputs
        # One trace per batch shape (never relaxed to an unknown batch size: shares need static shapes).
        self.forward_function = tf.function(self._private_forward, autograph=False)
        self._pad_to: int | None = None  # the batch size of the running predict/evaluate
        object.__setattr__(self, "_keras_twin", None)  # set by secure(): the architecture reveal_model fills
        self.built = True

    @property
    def protocol(self) -> Pond:
        return self._protocol

    # ----------------------------------------------------------------------------------- forward pass
    def call(self, inputs, training=False):
        flat = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if len(flat) != len(self._input_keys):
            raise ShapeError(f"Received {len(flat)} inputs; the model takes {len(self._input_keys)}.")
        if in_symbolic_scope():  # Keras only asks for the output shapes here: nothing is shared
            batch = tf.shape(flat[0])[:1]
            outs = [tf.zeros(tf.concat([batch, shape], 0), self.compute_dtype) for shape in self.private_output_shapes]
        else:
            # Every protocol op places itself; the forward must not inherit a caller's device (test_step runs
            # under the client's), which would otherwise receive any op that forgot its placement.
            with tf.device(None):
                outs = self._padded_forward(flat)
        return list(outs) if self._nested_outputs else outs[0]

    def _padded_forward(self, flat):
        n, pad = flat[0].shape[0], self._pad_to
        if n is None or pad is None or n >= pad:
            return self.forward_function(*flat)
        with tf.device(self.client.device):  # the client pads its own batch and drops the padding's outputs
            flat = [tf.concat([x, tf.zeros([pad - n] + x.shape[1:].as_list(), x.dtype)], axis=0) for x in flat]
        outs = self.forward_function(*flat)
        with tf.device(self.client.device):
            return [out[:n] for out in outs]

    def _private_forward(self, *inputs):
        prot, client = self._protocol, self.client.name
        values = {}
        for i, (key, x, shape) in enumerate(zip(self._input_keys, inputs, self.private_input_shapes)):
            static = tf.TensorShape(x.shape)
            if static.rank is None or static[0] is None or tuple(static[1:]) != shape:
                name = f"x[{i}]" if self._nested_inputs else "x"
                raise ShapeError(f"Received an invalid shape for `{name}`, expected (batch, {', '.join(map(str, shape))}) "
                                 f"with a known batch size. Received: {name}.shape={tuple(static)}")
            values[key] = prot.share(x, owner=client)  # masked on the client's device
        for step in self._steps:
            args = [values[k] for k in step.inputs]
            values[step.output] = step.layer(args if step.as_list else args[0])
        dtype = tf.as_dtype(self.compute_dtype)
        return [values[key].reveal(to=client, dtype=dtype) for key in self._output_keys]

    # ---------------------------------------------------------------------------- Keras entry points
    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """Keras ``predict`` on the client's data ``x``: numpy outputs, revealed to the client only."""
        self._check_x(x)
        check_batch_size(batch_size)
        with self._padding(x, batch_size):
            return super().predict(x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks)

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None,
                 callbacks=None, return_dict=False, **kwargs):
        """Keras ``evaluate``: the loss and metrics are computed by the client from the revealed outputs."""
        self._check_x(x)
        check_batch_size(batch_size)
        with self._padding(x, batch_size):
            return super().evaluate(x, y, batch_size=batch_size, verbose=verbose, sample_weight=sample_weight, steps=steps,
                                    callbacks=callbacks, return_dict=return_dict, **kwargs)

    @contextlib.contextmanager
    def _padding(self, x, batch_size):
        """Pad smaller batches to ``batch_size`` (Keras's default 32) while an array input is processed."""
        if _is_stream(x):
            yield
            return
        self._pad_to = batch_size or 32
        try:
            yield
        finally:
            self._pad_to = None

    def test_step(self, data):
        # Loss and metrics on the client's device: the revealed outputs and the labels are the client's.
        with tf.device(self.client.device):
            return super().test_step(data)

    def make_predict_function(self, force=False):
        # Keras traces its step once with relaxed shapes; here each batch runs the private forward traced for
        # its own shape (self.forward_function), so the step itself runs eagerly.
        if self.predict_function is not None and not force:
            return self.predict_function

        def predict_function(batches):
            outputs = [self.predict_step(batch) for batch in batches]
            if len(outputs) == 1:
                return outputs[0]
            return tf.nest.map_structure(lambda *parts: tf.concat(parts, axis=0), *outputs)

        self.predict_function = predict_function
        return predict_function

    def make_test_function(self, force=False):
        if self.test_function is None or force:
            self.test_function = eager_steps(self, self.test_step)
        return self.test_function

    # --------------------------------------------------------------------------------- input checks
    def _check_x(self, x) -> None:
        """Shape, dtype and range of array inputs, checked on the client's side before anything runs (data
        sets and generators are checked per batch, in the graph)."""
        if x is None:
            raise ConfigError("Received an invalid value for `x`, expected the client's input data. Received: x=None")
        if _is_stream(x):
            return
        several = isinstance(x, (list, tuple)) and all(np.ndim(v) == len(self.private_input_shapes[0]) + 1 for v in x)
        flat = list(x) if (self._nested_inputs or several) and isinstance(x, (list, tuple)) else [x]
        if len(flat) != len(self._input_keys):
            raise ShapeError(f"Received {len(flat)} inputs in `x`; the model takes {len(self._input_keys)}.")
        for i, (value, shape) in enumerate(zip(flat, self.private_input_shapes)):
            _check_array(value, f"x[{i}]" if self._nested_inputs else "x", shape, self._protocol.fixedpoint.bound)


def _is_stream(x) -> bool:
    """A data set or generator (Keras batches it itself), not arrays."""
    return isinstance(x, (tf.data.Dataset, keras.utils.PyDataset)) or callable(getattr(x, "__next__", None))


def _check_array(value, name: str, shape: tuple, bound: float) -> None:
    if isinstance(value, (tf.Tensor, tf.Variable)):
        value = value.numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"Received an invalid value for `{name}`, expected an array of real numbers. Received: {type(value).__name__} ({error})") from None
    kind = array.dtype.kind
    if kind not in "fiu":
        raise ConfigError(f"Received an invalid dtype for `{name}`, expected real numbers (float or int). Received: {name}.dtype={array.dtype}")
    if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != shape:
        raise ShapeError(f"Received an invalid shape for `{name}`, expected (n, {', '.join(map(str, shape))}). Received: {name}.shape={array.shape}")
    if array.shape[0] == 0:
        raise ShapeError(f"Received an empty `{name}` (shape {array.shape}): there is nothing to predict.")
    if kind != "f":
        array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise EncodingError(f"Received an invalid value for `{name}`: {name}[{', '.join(map(str, index))}] = {float(array[index])!r} "
                            f"({int(bad.sum())} NaN or infinite values in all); the inputs must be finite.")
    outside = np.abs(array) >= bound
    if outside.any():
        index = tuple(int(i) for i in np.argwhere(outside)[0])
        raise EncodingError(
            f"Received an invalid value for `{name}`: {name}[{', '.join(map(str, index))}] = {float(array[index])!r} is outside the "
            f"fixed-point range (-{bound:g}, {bound:g}) ({int(outside.sum())} values in all). Scale the inputs, or use a "
            "protocol with more int_bits."
        )
