"""Optimizers on secret shares: SGD (with momentum, Nesterov) and Adam, following Keras 3's update rules.

Weights and the optimizers' slots (velocity; Adam's moments) are :class:`PrivateVariable` s: two int64
variables, one on each server, so no player ever holds a plaintext weight or moment. The learning rate and
the step count are public: a ``keras.optimizers.schedules.LearningRateSchedule`` is evaluated in plaintext
on the driving program's device at the public step count, and the products ``lr * g`` go through
:func:`.scaling.scale`, accurate to ``2**-f`` relative (a plain ``prot.mul`` would encode ``1e-3`` 0.7% too
large).

Ranges (checked when the optimizer is made, and for schedules at every step): gradients are assumed to lie in
``[-gradient_bound, gradient_bound]`` (a public assumption of the caller); a learning rate whose product with
``gradient_bound`` leaves the fixed-point range (``±2**int_bits``, ±4096 by default), or whose largest
update is below the resolution ``2**-f`` (every update would round to 0), is refused with a ConfigError, as
are momenta and Adam moments that would outgrow the range.

Updates (``g`` the gradient, ``lr`` the learning rate at step ``t = iterations + 1``):

* SGD: ``w -= lr g``; with momentum ``v = momentum v - lr g``, ``w += v`` (Nesterov: ``w += momentum v - lr g``).
  Error per step: that of one public scaling and one public product, ``<= (|lr g| + |momentum v|) u + 4 u``.
* Adam: the moments are kept unnormalized, ``m' = beta_1 m' + g`` and ``v' = beta_2 v' + g**2`` (``m' = m /
  (1 - beta_1)``, ``v' = v / (1 - beta_2)`` of Keras's ``m``, ``v``), so that early steps keep their precision;
  then ``m_hat = m' (1 - beta_1) / (1 - beta_1**t)``, ``v_hat = v' (1 - beta_2) / (1 - beta_2**t)`` and
  ``w -= lr m_hat rsqrt(v_hat + delta)``. Keras computes ``lr m_hat / (sqrt(v_hat) + epsilon')`` with
  ``epsilon' = epsilon / sqrt(1 - beta_2**t)``; ``delta = max(epsilon**2, 2**-int_bits)`` (``rsqrt`` holds from
  ``2**-int_bits``), so the two agree within a relative ``delta / (2 v_hat) + 2**-12`` (rsqrt's bound) plus
  the scalings' ``u`` terms. The moments need ``gradient_bound / (1 - beta_1)`` and ``gradient_bound**2 /
  (1 - beta_2)`` below ``2**int_bits``.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from tfe_lite.errors import ConfigError, ProtocolError, ShapeError, TfeLiteError
from tfe_lite.protocols import Pond, PrivateTensor

from .scaling import scale

Schedule = keras.optimizers.schedules.LearningRateSchedule


class UnsupportedOptimizerError(TfeLiteError, ValueError):
    """A Keras optimizer (or an optimizer setting) with no private version."""


class PrivateVariable:
    """A private value kept as two int64 variables, ``share0`` on server0's device and ``share1`` on server1's.

    ``PrivateVariable(prot, shape)`` holds 0 (the trivial sharing of the public 0, for slots);
    ``PrivateVariable(prot, value=x)`` the shares of private tensor ``x``; :meth:`wrap` uses existing share
    variables (a private layer's)."""

    def __init__(self, protocol: Pond, shape: Sequence[int] | None = None, *, value: PrivateTensor | None = None,
                 name: str = "private_variable"):
        if not isinstance(protocol, Pond):
            raise ConfigError(f"Received an invalid value for `protocol`, expected a Pond protocol. Received: protocol={protocol!r}")
        if value is not None and (not isinstance(value, PrivateTensor) or value.protocol is not protocol):
            raise ProtocolError(f"Received an invalid value for `value`, expected a private tensor of this protocol. Received: value={value!r}")
        if value is None and shape is None:
            raise ShapeError("A PrivateVariable needs a `shape` (zeros) or a `value`.")
        self.protocol, self.name = protocol, name
        shares = value.shares if value is not None else (tf.zeros(shape, tf.int64),) * 2
        variables = []
        for index, (server, share) in enumerate(zip((protocol.server0, protocol.server1), shares)):
            with tf.device(server.device):
                variables.append(tf.Variable(tf.zeros(share.shape, tf.int64) if value is None else share,
                                             trainable=False, name=f"{name}_share{index}"))
        self.share0, self.share1 = variables

    @classmethod
    def wrap(cls, protocol: Pond, share0, share1, name: str = "private_variable") -> "PrivateVariable":
        """A view of existing share variables (``share0`` on server0, ``share1`` on server1)."""
        self = cls.__new__(cls)
        self.protocol, self.name, self.share0, self.share1 = protocol, name, share0, share1
        return self

    @property
    def shape(self) -> tf.TensorShape:
        return tf.TensorShape(self.share0.shape)

    def read(self) -> PrivateTensor:
        prot = self.protocol
        return prot.from_shares(self.share0.value(), self.share1.value(), fixedpoint=prot.fixedpoint)

    def assign(self, value: PrivateTensor) -> None:
        if not isinstance(value, PrivateTensor) or tuple(value.shape) != tuple(self.shape):
            raise ShapeError(f"Cannot assign {value!r} to {self.name!r} of shape {tuple(self.shape)}.")
        for server, variable, share in zip((self.protocol.server0, self.protocol.server1), (self.share0, self.share1), value.shares):
            with tf.device(server.device):
                variable.assign(share)

    def __repr__(self) -> str:
        return f"PrivateVariable({self.name!r}, shape={tuple(self.shape)})"


def _positive(value, name: str, *, upper: float | None = None, closed: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    ok = math.isfinite(number) and (number >= 0 if closed else number > 0) and (upper is None or number < upper)
    if isinstance(value, bool) or not ok:
        expected = ("a non-negative" if closed else "a positive") + " number" + (f" below {upper:g}" if upper is not None else "")
        raise ConfigError(f"Received an invalid value for `{name}`, expected {expected}. Received: {name}={value!r}")
    return number


class PrivateOptimizer:
    """Base of the private optimizers: the public learning rate and step count, the range checks, ``apply``.

    Args:
        protocol: the Pond protocol of the weights.
        learning_rate: a positive number or a Keras ``LearningRateSchedule`` (evaluated in plaintext).
        gradient_bound: the public bound on ``|g|`` the range checks assume.
    """

    def __init__(self, protocol: Pond, learning_rate=0.01, *, gradient_bound: float = 1.0):
        if not isinstance(protocol, Pond):
            raise ConfigError(f"Received an invalid value for `protocol`, expected a Pond protocol. Received: protocol={protocol!r}")
        self.protocol = protocol
        self.gradient_bound = _positive(gradient_bound, "gradient_bound", upper=protocol.fixedpoint.bound)
        if not isinstance(learning_rate, Schedule):
            learning_rate = _positive(learning_rate, "learning_rate")
        self.learning_rate = learning_rate
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")  # public
        self._slots: dict[int, dict[str, PrivateVariable]] = {}
        self.check_learning_rate(self._rate(0))

    def _rate(self, step):
        if isinstance(self.learning_rate, Schedule):
            return self.learning_rate(step)
        source = getattr(self, "_source", None)
        if source is not None:  # the Keras optimizer's variable, read at run time (callbacks may set it)
            return tf.convert_to_tensor(source.learning_rate)
        return self.learning_rate

    def follow(self, keras_optimizer) -> None:
        """Read a constant learning rate from ``keras_optimizer`` at every step, so Keras callbacks that set
        ``model.optimizer.learning_rate`` (``LearningRateScheduler``, ``ReduceLROnPlateau``) steer this one."""
        if not isinstance(self.learning_rate, Schedule):
            self._source = keras_optimizer

    def check_learning_rate(self, rate) -> None:
        """Refuse a learning rate (a number) whose update range leaves the fixed-point range."""
        fp, g = self.protocol.fixedpoint, self.gradient_bound
        rate = float(rate)
        if not math.isfinite(rate) or rate <= 0:
            raise ConfigError(f"Received an invalid value for `learning_rate`, expected a positive number. Received: learning_rate={rate!r}")
        if rate * g >= fp.bound:
            raise ConfigError(
                f"Received an invalid value for `learning_rate`: learning_rate * gradient_bound = {rate:g} * {g:g} = {rate * g:g} "
                f"overflows the fixed-point range ±{fp.bound:g} (2**int_bits). Lower the learning rate or the gradient bound. "
                f"Received: learning_rate={rate!r}")
        if rate * g < fp.resolution:
            raise ConfigError(
                f"Received an invalid value for `learning_rate`: the largest update learning_rate * gradient_bound = {rate * g:g} "
                f"is below the fixed-point resolution {fp.resolution:g} (2**-frac_bits): every update would round to 0. "
                f"Received: learning_rate={rate!r}")

    def _traced_rate(self, step):
        """The learning rate of ``step``: checked now when eager, by a host assertion when traced."""
        rate = self._rate(step)
        if not isinstance(rate, (tf.Tensor, tf.Variable)):
            return rate
        if tf.executing_eagerly():
            self.check_learning_rate(rate.numpy())
            return rate
        fp, g = self.protocol.fixedpoint, self.gradient_bound
        rate = tf.cast(rate, tf.float64)
        check = tf.debugging.Assert(tf.logical_and(rate * g < fp.bound, rate * g >= fp.resolution),
                                    ["The scheduled learning_rate leaves the fixed-point range at this step:", rate])
        with tf.control_dependencies([check]):
            return tf.identity(rate)

    # ------------------------------------------------------------------------------------------ steps
    def build(self, variables: Sequence[PrivateVariable]) -> None:
        """Create the slots of ``variables`` (outside any trace: they are variables)."""
        for variable in variables:
            if id(variable) not in self._slots:
                self._slots[id(variable)] = {name: PrivateVariable(self.protocol, variable.shape, name=f"{variable.name}_{name}")
                                             for name in self.slot_names}

    def apply(self, gradients: Sequence[PrivateTensor], variables: Sequence[PrivateVariable]) -> None:
        """One update of each variable by its gradient (both lists in the same order), then ``iterations += 1``."""
        gradients, variables = list(gradients), list(variables)
        if len(gradients) != len(variables):
            raise ShapeError(f"Received {len(gradients)} gradients for {len(variables)} variables.")
        for i, (g, v) in enumerate(zip(gradients, variables)):
            if not isinstance(v, PrivateVariable) or v.protocol is not self.protocol:
                raise ProtocolError(f"Received an invalid value for `variables[{i}]`, expected a PrivateVariable of this protocol. Received: {v!r}")
            if not isinstance(g, PrivateTensor) or g.protocol is not self.protocol:
                raise ProtocolError(f"Received an invalid value for `gradients[{i}]`, expected a private tensor of this protocol. Received: {g!r}")
            if tuple(g.shape) != tuple(v.shape):
                raise ShapeError(f"Received an invalid shape for `gradients[{i}]`, expected {tuple(v.shape)} (the shape of {v.name!r}). Received: {tuple(g.shape)}")
        missing = [v for v in variables if id(v) not in self._slots]
        if missing and not tf.executing_eagerly():
            raise ProtocolError(f"Call `optimizer.build(variables)` before tracing the step: slots of {missing} are missing.")
        self.build(missing)
        step = self.iterations + 1
        rate = self._traced_rate(step - 1)
        for g, v in zip(gradients, variables):
            self._update(g, v, self._slots[id(v)], rate, step)
        self.iterations.assign_add(1)

    slot_names: tuple[str, ...] = ()

    def _update(self, g, variable, slots, rate, step) -> None:
        raise NotImplementedError


class PrivateSGD(PrivateOptimizer):
    """``keras.optimizers.SGD`` on shares: plain, with ``momentum`` in [0, 1), or Nesterov."""

    def __init__(self, protocol: Pond, learning_rate=0.01, momentum: float = 0.0, nesterov: bool = False, *,
                 gradient_bound: float = 1.0):
        self.momentum = _positive(momentum, "momentum", upper=1.0, closed=True)
        if not isinstance(nesterov, bool):
            raise ConfigError(f"Received an invalid value for `nesterov`, expected True or False. Received: nesterov={nesterov!r}")
        self.nesterov = nesterov
        self.slot_names = ("velocity",) if self.momentum else ()
        super().__init__(protocol, learning_rate, gradient_bound=gradient_bound)

    def check_learning_rate(self, rate) -> None:
        super().check_learning_rate(rate)
        top = float(rate) * self.gradient_bound / (1.0 - self.momentum)  # the velocity's bound
        if top >= self.protocol.fixedpoint.bound:
            raise ConfigError(f"Received an invalid value for `learning_rate`: the velocity can reach learning_rate * gradient_bound / "
                              f"(1 - momentum) = {top:g}, outside the fixed-point range ±{self.protocol.fixedpoint.bound:g}. "
                              f"Received: learning_rate={float(rate)!r}, momentum={self.momentum!r}")

    def _update(self, g, variable, slots, rate, step) -> None:
        prot = self.protocol
        step_ = scale(prot, g, rate)  # lr * g
        w = variable.read()
        if not self.momentum:
            variable.assign(prot.sub(w, step_))
            return
        velocity = slots["velocity"]
        v = prot.sub(prot.mul(velocity.read(), self.momentum), step_)
        velocity.assign(v)
        update = prot.sub(prot.mul(v, self.momentum), step_) if self.nesterov else v
        variable.assign(prot.add(w, update))


class PrivateAdam(PrivateOptimizer):
    """``keras.optimizers.Adam`` on shares (not AMSGrad), through ``prot.rsqrt`` (see the module docstring
    for the unnormalized moments, ``delta`` and the agreement with Keras)."""

    slot_names = ("momentum", "velocity")

    def __init__(self, protocol: Pond, learning_rate=0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, *, gradient_bound: float = 1.0):
        self.beta_1 = _positive(beta_1, "beta_1", upper=1.0, closed=True)
        self.beta_2 = _positive(beta_2, "beta_2", upper=1.0, closed=True)
        self.epsilon = _positive(epsilon, "epsilon")
        super().__init__(protocol, learning_rate, gradient_bound=gradient_bound)
        fp, g = protocol.fixedpoint, self.gradient_bound
        for name, top in (("beta_1", g / (1 - self.beta_1)), ("beta_2", g**2 / (1 - self.beta_2))):
            if top >= fp.bound:
                raise ConfigError(
                    f"Received an invalid value for `{name}`: Adam's unnormalized moment can reach {top:g} with gradient_bound="
                    f"{g:g}, outside the fixed-point range ±{fp.bound:g}. Lower `{name}` or `gradient_bound`. "
                    f"Received: {name}={getattr(self, name)!r}")
        self.delta = max(self.epsilon**2, 2.0**-fp.int_bits)

    def _update(self, g, variable, slots, rate, step) -> None:
        prot = self.protocol
        t = tf.cast(step, tf.float64)
        m = prot.add(prot.mul(slots["momentum"].read(), self.beta_1), g) if self.beta_1 else g
        v = prot.square(g)
        if self.beta_2:
            v = prot.add(prot.mul(slots["velocity"].read(), self.beta_2), v)
        slots["momentum"].assign(m)
        slots["velocity"].assign(v)
        m_hat = scale(prot, m, (1.0 - self.beta_1) / (1.0 - tf.pow(tf.constant(self.beta_1, tf.float64), t)))
        v_hat = scale(prot, v, (1.0 - self.beta_2) / (1.0 - tf.pow(tf.constant(self.beta_2, tf.float64), t)))
        direction = prot.mul(m_hat, prot.rsqrt(prot.add(v_hat, self.delta)))
        variable.assign(prot.sub(variable.read(), scale(prot, direction, rate)))


_SETTINGS_WITHOUT_PRIVATE_VERSION = ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm")


def from_keras(optimizer, protocol: Pond, *, gradient_bound: float = 1.0) -> PrivateOptimizer:
    """The private version of a Keras ``SGD`` or ``Adam`` (its learning rate or schedule and its settings);
    other optimizers and settings without a private version (weight decay, clipping, EMA, AMSGrad, gradient
    accumulation) are refused by name, all at once."""
    problems = []
    if type(optimizer) not in (keras.optimizers.SGD, keras.optimizers.Adam):
        raise UnsupportedOptimizerError(
            f"Received an invalid value for `optimizer`: {type(optimizer).__name__} has no private version "
            f"(supported: keras.optimizers.SGD, keras.optimizers.Adam). Received: optimizer={optimizer!r}")
    for name in _SETTINGS_WITHOUT_PRIVATE_VERSION:
        if getattr(optimizer, name, None):
            problems.append(f"{name}={getattr(optimizer, name)!r}")
    if getattr(optimizer, "use_ema", False):
        problems.append("use_ema=True")
    if getattr(optimizer, "gradient_accumulation_steps", None):
        problems.append(f"gradient_accumulation_steps={optimizer.gradient_accumulation_steps!r}")
    if getattr(optimizer, "amsgrad", False):
        problems.append("amsgrad=True")
    if problems:
        raise UnsupportedOptimizerError(f"{type(optimizer).__name__} settings without a private version: {', '.join(problems)}.")
    rate = optimizer._learning_rate  # the schedule itself, or the constant's variable
    if not isinstance(rate, Schedule):
        rate = float(np.asarray(rate))
    if isinstance(optimizer, keras.optimizers.SGD):
        return PrivateSGD(protocol, rate, float(optimizer.momentum), bool(optimizer.nesterov), gradient_bound=gradient_bound)
    return PrivateAdam(protocol, rate, float(optimizer.beta_1), float(optimizer.beta_2), float(optimizer.epsilon),
                       gradient_bound=gradient_bound)
