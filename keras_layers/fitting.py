"""``compile`` and ``fit`` of :class:`PrivateModel`: training on secret shares through Keras's own loop.

``private.compile(optimizer=keras.optimizers.SGD(0.1), loss=..., metrics=["accuracy"])`` makes the private
optimizer (:mod:`.optimizers`: Keras SGD or Adam, their learning rate or schedule) and the training plan
(:mod:`.training`), and refuses, before anything is shared, every layer that cannot train, a loss, metric or
optimizer setting without a private version. ``compile`` without an optimizer serves ``evaluate`` only.

``private.fit(x, y, batch_size=..., epochs=..., validation_data=..., callbacks=...)`` shares the rows once
(:mod:`.data`: ``x`` and ``y`` are the client's; a dict ``{owner: (rows, labels)}`` trains on several data
owners' rows), then runs Keras's ``fit`` over public row indices: Keras's progress bar, ``History``, callbacks
(``EarlyStopping``, ``LearningRateScheduler``...) and shuffling work as usual.

What is revealed, to whom:

* every step, with ``reveal_to`` (default: the model owner): the batch's loss and each metric, one scalar
  each, opened to that player only, whose program shows them (progress bar, History, callbacks);
* with ``reveal_to=None``: nothing during training (no loss is computed; the logs are empty, so callbacks
  that monitor a value cannot be used);
* ``validation_data`` belong to the client: as in ``evaluate``, the outputs on them are revealed to the
  client, who computes the ``val_`` loss and metrics (refused with ``reveal_to=None``);
* always: the public row indices of each batch (to the servers), and the weights only when
  :meth:`reveal_model` is called, to the player it names.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfe_lite.errors import ConfigError, ProtocolError

from . import results
from .data import SharedRows, owners_of
from .training import TrainingPlan

_DEFAULT = object()


class PrivateTraining:
    """The training half of :class:`PrivateModel` (a mixin; see the module docstring)."""

    plan: TrainingPlan | None = None

    def compile(self, optimizer=None, loss=None, metrics=None, *, reveal_to=_DEFAULT, gradient_bound: float = 1.0, **kwargs):
        """Keras ``compile``; with an ``optimizer`` (a Keras ``SGD`` or ``Adam``, or their names) also the
        private training plan. ``reveal_to``: the player who learns each step's loss and metrics (default
        the model owner; None: nothing until the end). ``gradient_bound``: the public bound assumed on
        every gradient element, for the optimizer's range checks."""
        plan, keras_optimizer = None, "sgd"  # evaluation only: Keras wants some optimizer
        if optimizer is not None:
            keras_optimizer = keras.optimizers.get(optimizer) if isinstance(optimizer, str) else optimizer
            target = self.model_owner.name if reveal_to is _DEFAULT else reveal_to
            plan = TrainingPlan(self, optimizer=keras_optimizer, loss=loss, metrics=metrics, reveal_to=target,
                                gradient_bound=gradient_bound)
        super().compile(optimizer=keras_optimizer, loss=loss, metrics=metrics, **kwargs)
        self.plan = plan
        # The running means of the revealed values: Keras's metrics while fit runs (kept out of Keras's tracking,
        # which would list them beside the compiled metrics that evaluate uses).
        object.__setattr__(self, "_trackers", {name: keras.metrics.Mean(name=name) for name in (plan.log_names if plan else [])})

    # --------------------------------------------------------------------------------------- fit
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
            steps_per_epoch=None, validation_steps=None, validation_batch_size=None, validation_freq=1):
        """Keras ``fit`` on secret shares (see the module docstring for the data and what is revealed)."""
        plan = self.plan
        if plan is None:
            raise ProtocolError("Call `compile(optimizer=..., loss=...)` with a Keras SGD or Adam optimizer before `fit`: "
                                "the model was compiled for evaluation only.")
        for name, value in (("class_weight", class_weight), ("sample_weight", sample_weight)):
            if value is not None:
                raise ConfigError(f"Received `{name}`: weighted training has no private version. Received: {name}={value!r}")
        check_batch_size(batch_size)
        if validation_split:
            if isinstance(x, dict) or not 0 < validation_split < 1:
                raise ConfigError("Received `validation_split` with several data owners or outside (0, 1): pass "
                                  f"validation_data instead. Received: validation_split={validation_split!r}")
            cut = int(len(x) * (1 - validation_split))
            x, y, validation_data = x[:cut], y[:cut], (x[cut:], y[cut:])
        if validation_data is not None and plan.reveal_to is None:
            raise ConfigError("Received `validation_data` with reveal_to=None: validation reveals the outputs on the "
                              "validation rows to the client; compile with a `reveal_to` player to allow it.")
        rows = SharedRows(self, owners_of(self, x, y), plan.loss)
        self._batch_size = int(batch_size or 32)
        self._rows = rows
        self._step_function = plan.step_function(self._batch_size, rows)
        if validation_data is not None:
            # Keras builds its compiled loss and metrics from the first training batch, which here holds row
            # indices and no labels; build them from an example of a row and its label instead, so the client's
            # validation metrics (computed by Keras) are the real ones.
            example = (np.zeros((1, *self.private_input_shapes[0]), np.float32),
                       np.zeros((1, *self.private_output_shapes[0]), np.float32) if not plan.loss.sparse else np.zeros((1,), np.int64))
            self._symbolic_build(data_batch=example)
        self._training = True
        try:
            return super().fit(np.arange(rows.size, dtype=np.int64), None, batch_size=batch_size, epochs=epochs,
                               verbose=verbose, callbacks=callbacks, validation_data=validation_data, shuffle=shuffle,
                               initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                               validation_steps=validation_steps, validation_batch_size=validation_batch_size,
                               validation_freq=validation_freq)
        finally:
            self._training = False

    def train_step(self, data):
        index = tf.cast(data[0] if isinstance(data, (tuple, list)) else data, tf.int64)
        n, batch = int(index.shape[0]), self._batch_size
        if n < batch:  # padding rows (row 0 again) with factor 0: they add nothing
            index = tf.concat([index, tf.zeros([batch - n], tf.int64)], axis=0)
        loss_factors, mean_factors = self.plan.row_weights(n, batch)
        with tf.device(None):
            logs = self._step_function(index, tf.constant(loss_factors), tf.constant(mean_factors), *self._rows.flat_variables)
        for name, value in logs.items():
            self._trackers[name].update_state(value, sample_weight=n)
        return {name: tracker.result() for name, tracker in self._trackers.items()}

    @property
    def _last_step_graph(self):
        """The GraphDef of the last fit's traced step (for placement audits; made when asked for)."""
        concrete = self._step_function.get_concrete_function(tf.TensorSpec([self._batch_size], tf.int64),
                                                             *[tf.TensorSpec([self._batch_size], tf.float64)] * 2,
                                                             *self._rows.flat_variables)
        return concrete.graph.as_graph_def()

    def make_train_function(self, force=False):
        # Each batch runs the private step, traced once per compile and batch size (TrainingPlan.step_function);
        # Keras's loop stays eager.
        if self.train_function is None or force:
            self.train_function = eager_steps(self, self.train_step)
        return self.train_function

    @property
    def metrics(self):
        if getattr(self, "_training", False):
            return list(self._trackers.values())
        return super().metrics

    def evaluate(self, *args, **kwargs):
        training, self._training = getattr(self, "_training", False), False
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self._training = training

    # ------------------------------------------------------------------------------- results
    def reveal_model(self, to: str = "model-owner") -> keras.Model:
        """A plain Keras model with the trained weights, opened to and decoded on player ``to``'s device
        (see :mod:`.results`)."""
        return results.reveal_model(self, to)

    def save_shares(self, directory: str) -> list[str]:
        """One checkpoint per server in ``directory`` (no file holds both shares; see :mod:`.results`)."""
        return results.save_shares(self, directory)

    def load_shares(self, directory: str):
        """Restore the shares saved by :meth:`save_shares` or :class:`ShareCheckpoint`; returns the epoch saved."""
        return results.load_shares(self, directory)

    def save(self, *args, **kwargs):
        raise ProtocolError("A private model cannot be saved to one file: it would hold both shares of every weight. "
                            "Use private.save_shares(directory) (one checkpoint per server) or reveal_model(to=...).save(...).")

    def save_weights(self, *args, **kwargs):
        raise ProtocolError("A private model's weights cannot be saved to one file: it would hold both shares of every "
                            "weight. Use private.save_shares(directory) or the ShareCheckpoint callback.")


def eager_steps(model, step):
    """A Keras step function running ``step`` eagerly on each batch (the private computation inside it is
    traced per batch shape), ``steps_per_execution`` batches per call."""

    def function(iterator):
        logs = None
        for _, data in zip(range(model.steps_per_execution), iterator):
            logs = step(data)
        if logs is None:
            raise StopIteration
        return logs

    return function


def check_batch_size(batch_size) -> None:
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1):
        raise ConfigError(f"Received an invalid value for `batch_size`, expected a positive integer or None. Received: batch_size={batch_size!r}")
