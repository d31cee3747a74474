"""Training on shares: the loss and its gradient, the backward pass, the metrics, one private step.

:class:`TrainingPlan` is made by :meth:`PrivateModel.compile` from Keras's ``loss``, ``metrics`` and
``optimizer`` arguments; :meth:`TrainingPlan.step` is one training step on a batch of private rows, traced
once per batch shape inside ``tf.function``:

1. the forward pass of every private layer with ``save=True`` (each keeps what its backward rule needs: the
   inputs of Dense and Conv2D, the 0/1 masks of ReLUs, the argmax one-hots of max pooling);
2. the gradient of the loss with respect to the model's output. A cross-entropy on probabilities is fused
   with the model's final softmax (or sigmoid): the gradient with respect to the logits is ``(y - t) / D``,
   with no private logarithm;
3. the backward rules in reverse order, the gradients of tensors read by several layers added up;
4. the optimizer's update of the weights' share variables (:mod:`.optimizers`);
5. only with ``reveal_to`` set: the batch's loss and metrics, computed on shares and opened to that player
   alone (one scalar each). With ``reveal_to=None`` nothing is computed or opened during training.

Losses (Keras's names and classes): categorical and sparse categorical cross-entropy, binary cross-entropy
(``from_logits`` either way, no label smoothing), mean squared error. The cross-entropy's value is
``max(z) + log(sum(exp(z - max(z)))) - <t, z>``: one logarithm of a value in ``[1, classes]`` per row,
within ``2**-12`` (Keras clips probabilities at ``1e-7``; the two agree unless a true-class probability is
below that). Metrics: ``accuracy`` (categorical or binary, after the loss), ``categorical_accuracy``,
``binary_accuracy`` (threshold 0.5, as Keras), ``mse``.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from tfe_lite.errors import ConfigError, UnsupportedLayerError

from .activation import PrivateSoftmax
from .base import PrivateLayer
from .optimizers import PrivateVariable, from_keras
from .scaling import scale

L = keras.losses

#: Keras loss names and classes and what they are here: (kind, sparse labels).
_LOSSES = {
    "categorical_crossentropy": ("categorical", False), L.CategoricalCrossentropy: ("categorical", False),
    "sparse_categorical_crossentropy": ("categorical", True), L.SparseCategoricalCrossentropy: ("categorical", True),
    "binary_crossentropy": ("binary", False), L.BinaryCrossentropy: ("binary", False),
    "mse": ("regression", False), "mean_squared_error": ("regression", False), L.MeanSquaredError: ("regression", False),
}
_LOSS_FUNCTIONS = {L.categorical_crossentropy: "categorical_crossentropy",
                   L.sparse_categorical_crossentropy: "sparse_categorical_crossentropy",
                   L.binary_crossentropy: "binary_crossentropy", L.mean_squared_error: "mean_squared_error"}
METRICS = ("accuracy", "categorical_accuracy", "sparse_categorical_accuracy", "binary_accuracy", "mse")
_FINAL = {"categorical": "softmax", "binary": "sigmoid"}


@dataclasses.dataclass(frozen=True)
class Loss:
    """A loss with a private version: ``kind`` (categorical, binary, regression), ``sparse`` integer labels,
    ``from_logits``, Keras's ``reduction`` and the log name ``name``."""

    kind: str
    sparse: bool
    from_logits: bool
    reduction: str
    name: str = "loss"


def resolve_loss(loss) -> Loss:
    """The private version of Keras ``loss`` (a name, a Loss instance or a loss function), or an
    UnsupportedLayerError naming what has none."""
    if loss is None:
        raise ConfigError("Received an invalid value for `loss`: training needs a loss (e.g. loss='categorical_crossentropy').")
    if callable(loss) and loss in _LOSS_FUNCTIONS:
        loss = _LOSS_FUNCTIONS[loss]
    if isinstance(loss, str):
        if loss not in _LOSSES:
            raise ConfigError(f"Received an invalid value for `loss`: {loss!r} has no private version (supported: "
                              f"{', '.join(k for k in _LOSSES if isinstance(k, str))}).")
        kind, sparse = _LOSSES[loss]
        return Loss(kind, sparse, False, "sum_over_batch_size")
    kind_sparse = _LOSSES.get(type(loss))
    if kind_sparse is None:
        raise ConfigError(f"Received an invalid value for `loss`: {type(loss).__name__} has no private version (supported: "
                          "CategoricalCrossentropy, SparseCategoricalCrossentropy, BinaryCrossentropy, MeanSquaredError).")
    config = loss.get_config()
    problems = []
    if config.get("label_smoothing"):
        problems.append(f"label_smoothing={config['label_smoothing']!r} (only 0)")
    if config.get("axis", -1) != -1:
        problems.append(f"axis={config['axis']!r} (only -1)")
    if config.get("ignore_class") is not None:
        problems.append(f"ignore_class={config['ignore_class']!r}")
    reduction = config.get("reduction", "sum_over_batch_size")
    if reduction not in ("sum_over_batch_size", "sum"):
        problems.append(f"reduction={reduction!r} (only 'sum_over_batch_size' or 'sum')")
    if problems:
        raise ConfigError(f"Received an invalid value for `loss`: {type(loss).__name__} settings without a private version: "
                          f"{', '.join(problems)}.")
    return Loss(kind_sparse[0], kind_sparse[1], bool(config.get("from_logits", False)), reduction)


def resolve_metrics(metrics, loss: Loss) -> list[str]:
    """Keras ``metrics`` as private metric names (``accuracy`` resolved by the loss, as Keras does)."""
    names = []
    for metric in keras.tree.flatten(metrics or []):
        name = metric if isinstance(metric, str) else getattr(metric, "__name__", None) or getattr(metric, "name", None)
        if name in ("acc", "accuracy"):
            resolved = "binary_accuracy" if loss.kind == "binary" else "categorical_accuracy"
            names.append(("accuracy", resolved))
        elif name in ("categorical_accuracy", "sparse_categorical_accuracy") and loss.kind == "categorical":
            names.append((name, "categorical_accuracy"))
        elif name == "binary_accuracy" and loss.kind == "binary":
            names.append((name, "binary_accuracy"))
        elif name in ("mse", "mean_squared_error"):
            names.append((name, "mse"))
        else:
            raise ConfigError(f"Received an invalid value for `metrics`: {metric!r} has no private version for a "
                              f"{loss.kind} loss (supported: {', '.join(METRICS)}).")
    return names


def training_problems(steps) -> list[str]:
    """Every private layer of ``steps`` that cannot train on shares, each named with the reason."""
    problems = []
    for layer in {id(s.layer): s.layer for s in steps}.values():
        if layer.training_problem:
            problems.append(f"layer {layer.name!r} ({type(layer).__name__}): {layer.training_problem}")
        elif type(layer).backward is PrivateLayer.backward:
            problems.append(f"layer {layer.name!r} ({type(layer).__name__}): has no backward rule")
    return problems


def tf_variable(variable) -> tf.Variable:
    """The TensorFlow variable behind a Keras variable (a tf.Variable as is)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _final_activation(layer) -> str:
    if hasattr(layer, "activation"):
        return layer.activation
    return "softmax" if isinstance(layer, PrivateSoftmax) else "linear"


class TrainingPlan:
    """The loss, metrics, optimizer and variables of :meth:`PrivateModel.compile`, and the private step."""

    def __init__(self, model, *, optimizer, loss, metrics, reveal_to, gradient_bound: float):
        self.model = model
        prot = model.protocol
        self.loss = resolve_loss(loss)
        self.metric_names = resolve_metrics(metrics, self.loss)
        problems = training_problems(model._steps)
        if len(model._output_keys) != 1:
            problems.append(f"the model has {len(model._output_keys)} outputs: training supports one")
        last = model._steps[-1] if model._steps else None
        if last is None or last.output != model._output_keys[0]:
            problems.append("the model's output is not computed by its last layer")
        self.fused = False
        if not problems and self.loss.kind in _FINAL:
            final = _final_activation(last.layer)
            if self.loss.from_logits:
                if final != "linear":
                    problems.append(f"loss with from_logits=True, but the model ends in a {final!r} activation (layer "
                                    f"{last.layer.name!r}): the logits must be the output")
            elif final == _FINAL[self.loss.kind]:
                self.fused = True
            else:
                problems.append(f"{self.loss.kind} cross-entropy on probabilities needs the model to end in a "
                                f"{_FINAL[self.loss.kind]} (layer {last.layer.name!r} ends in {final!r}); or use from_logits=True")
        if problems:
            error = UnsupportedLayerError(f"Model {model.name!r} cannot train on shares: {len(problems)} problem(s):\n"
                                          + "\n".join(f"  - {p}" for p in problems))
            error.problems = problems
            raise error
        self.reveal_to = None if reveal_to is None else prot.config.get_player(reveal_to)
        self.optimizer = from_keras(optimizer, prot, gradient_bound=gradient_bound)
        self.optimizer.follow(optimizer)  # model.optimizer is the Keras one: callbacks may change its rate
        # (layer, weight name, variable) of every trainable weight; a layer called twice has one set
        self.variables = []
        for layer in model.private_layers:
            if not getattr(layer, "private_trainable", True):
                continue
            for name in layer.private_weight_names:
                share0, share1 = (tf_variable(v) for v in layer._shares[name])
                self.variables.append((layer, name, PrivateVariable.wrap(prot, share0, share1, name=f"{layer.name}/{name}")))
        self.optimizer.build([v for _, _, v in self.variables])
        self.log_names = ["loss"] + [name for name, _ in self.metric_names] if self.reveal_to is not None else []

    # ------------------------------------------------------------------------------------------ step
    def step_function(self, batch: int, rows):
        """The traced private step for batches of ``batch`` rows, ``(index, loss_factors, mean_factors,
        *rows.flat_variables) -> logs``: one per plan (a compile) and batch size. The shared rows are arguments
        (variables of any row count), so a later ``fit`` on other rows reuses the trace: tracing and the first
        run of a step take tens of seconds even for a small network. A last, smaller batch is padded."""
        cache = self.__dict__.setdefault("_step_functions", {})
        if batch not in cache:
            k = self.shift(batch)
            cache[batch] = tf.function(lambda index, loss_factors, mean_factors, *variables: self.step(
                *rows.gather(index, variables), loss_factors, mean_factors, k), autograph=False)
        return cache[batch]

    @staticmethod
    def shift(batch: int) -> int:
        """``k`` with ``2**k >= batch``: the power of two of :meth:`row_weights`' factors."""
        return max(int(np.ceil(np.log2(batch))), 0)

    def row_weights(self, n: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """The public per-row factors of a batch of ``n`` real rows padded to ``batch`` rows, for the loss
        and for the metrics. A mean over the rows is ``2**-k * sum(row * factor)`` (``k`` from :meth:`shift`)
        with ``factor = 2**k / n`` on real rows and 0 on padding (``2**k / n`` is at least 1, so it is encoded
        within a relative ``2**-16``); a sum loss has factors ``2**k`` (metrics are means either way).
        Padding the last, smaller batch of an epoch keeps one trace (:meth:`step_function`)."""
        k = self.shift(batch)
        means = np.zeros(batch, np.float64)
        means[:n] = 2.0**k / n
        if self.loss.reduction == "sum":
            sums = np.zeros(batch, np.float64)
            sums[:n] = 2.0**k
            return sums, means
        return means, means

    def step(self, x, labels, loss_factors, mean_factors, k: int):
        """One training step on private rows ``x`` (the model's input) and private ``labels``, rows weighted
        by the public factors of :meth:`row_weights`: the revealed loss and metrics (decoded on
        ``reveal_to``'s device), or an empty dict."""
        model, prot = self.model, self.model.protocol
        values = {model._input_keys[0]: x}
        kept = []
        for step in model._steps:
            args = [values[k_] for k_ in step.inputs]
            out, keep = step.layer.forward(args if step.as_list else args[0], save=True)
            values[step.output] = out
            kept.append(keep)
        output = values[model._output_keys[0]]
        mean = _RowMean(prot, loss_factors, mean_factors, k)
        grad, parts = self._output_gradient(output, labels, kept[-1], mean)
        grads = {model._output_keys[0]: grad}
        weight_grads: dict[tuple[int, str], object] = {}
        first_keys = set(model._input_keys)
        for index in range(len(model._steps) - 1, -1, -1):
            step = model._steps[index]
            g = grads.pop(step.output, None)
            if g is None:  # nothing downstream of this layer reaches the loss
                continue
            needs_input = any(k_ not in first_keys for k_ in step.inputs)
            dx, dw = step.layer.backward(g, kept[index], preactivation=self.fused and index == len(model._steps) - 1,
                                         input_gradient=needs_input)
            for name, value in dw.items():
                key = (id(step.layer), name)
                weight_grads[key] = value if key not in weight_grads else weight_grads[key] + value
            if needs_input:
                for k_, d in zip(step.inputs, dx if step.as_list else [dx]):
                    if k_ not in first_keys:
                        grads[k_] = d if k_ not in grads else grads[k_] + d
        pairs = [(weight_grads[(id(layer), name)], v) for layer, name, v in self.variables if (id(layer), name) in weight_grads]
        self.optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])
        if self.reveal_to is None:
            return {}
        logs = {"loss": self._loss_value(output, labels, parts, mean)}
        for name, kind in self.metric_names:
            logs[name] = self._metric(kind, output, labels, mean)
        return {name: prot.reveal(value, to=self.reveal_to, dtype=tf.float32) for name, value in logs.items()}

    def _output_gradient(self, output, labels, last_kept, mean):
        """``d loss / d output`` (or ``d loss / d logits`` when fused) and what the loss value needs."""
        prot, loss = self.model.protocol, self.loss
        per_class = 1.0 if loss.kind == "categorical" else 1.0 / int(output.shape[-1])  # Keras's mean over the last axis
        if loss.kind == "regression":
            return mean.rows(prot.sub(output, labels), 2.0 * per_class), {}
        if self.fused:
            parts = last_kept
        elif loss.kind == "categorical":
            y, m, total = prot.softmax_parts(output, axis=-1)
            parts = {"y": y, "z": output, "max": m, "total": total}
        else:
            parts = {"y": prot.sigmoid(output), "z": output}
        return mean.rows(prot.sub(parts["y"], labels), per_class), parts

    def _loss_value(self, output, labels, parts, mean):
        prot, loss = self.model.protocol, self.loss
        per_class = 1.0 / int(output.shape[-1])
        if loss.kind == "regression":
            return mean.total(prot.reduce_sum(prot.square(prot.sub(output, labels)), axis=-1), per_class)
        z = parts["z"]
        if loss.kind == "categorical":  # max + log(sum exp(z - max)) - <t, z>, per row
            lse = prot.add(prot.reshape(parts["max"], [-1]), prot.log(prot.reshape(parts["total"], [-1])))
            return mean.total(prot.sub(lse, prot.reduce_sum(prot.mul(labels, z), axis=-1)))
        # binary: relu(z) - t z - log(sigmoid(|z|)), and sigmoid(|z|) = max(y, 1 - y) is in [0.5, 1]
        y = parts["y"]
        r, mask = prot.relu(z, return_mask=True)
        q = prot.add(prot.sub(1.0, y), prot.mul(mask, prot.sub(prot.mul(y, 2), 1.0)))
        per_element = prot.sub(prot.sub(r, prot.mul(labels, z)), prot.log(q))
        return mean.total(prot.reduce_sum(per_element, axis=-1), per_class)

    def _metric(self, kind, output, labels, mean):
        prot = self.model.protocol
        per_class = 1.0 / int(output.shape[-1])
        if kind == "categorical_accuracy":
            return mean.total(prot.reduce_sum(prot.mul(prot.argmax(output, axis=-1), labels), axis=-1), plain=True)
        if kind == "binary_accuracy":
            predicted = prot.greater(output, 0.5)
            # [predicted == t] = 1 - t - p + 2 p t
            right = prot.add(prot.sub(prot.sub(1.0, labels), predicted), prot.mul(prot.mul(predicted, labels), 2))
            return mean.total(prot.reduce_sum(right, axis=-1), per_class, plain=True)
        return mean.total(prot.reduce_sum(prot.square(prot.sub(output, labels)), axis=-1), per_class, plain=True)


class _RowMean:
    """Weighted sums over the rows of a batch with public factors (see :meth:`TrainingPlan.row_weights`)."""

    def __init__(self, prot, loss_factors, mean_factors, k: int):
        self.prot, self.loss_factors, self.mean_factors, self.k = prot, loss_factors, mean_factors, k

    def _scale(self, x, c):
        return x if c == 1.0 else scale(self.prot, x, c)

    def rows(self, per_row, c: float = 1.0):
        """Each row of ``per_row`` ``[B, ...]`` times its loss factor, times ``c * 2**-k``: the per-row
        terms of the loss's gradient."""
        shape = [-1] + [1] * (per_row.rank - 1)
        return self._scale(self.prot.mul(per_row, tf.reshape(self.loss_factors, shape)), c * 2.0**-self.k)

    def total(self, per_row, c: float = 1.0, *, plain: bool = False):
        """``c`` times the loss's reduction of ``per_row`` ``[B]`` (``plain``: the mean, for a metric)."""
        factors = self.mean_factors if plain else self.loss_factors
        return self._scale(self.prot.reduce_sum(self.prot.mul(per_row, factors)), c * 2.0**-self.k)
