"""Local training of a round's clients, in parallel on the replicas of a ``tf.distribute.MirroredStrategy``.

One client's local training is one traced function (:class:`LocalTraining`): ``epochs`` passes of
minibatch SGD over the client's data, starting from the global weights, with Keras's own forward pass and
compiled loss (``model.stateless_call`` and ``model.stateless_compute_loss``, so regularization losses
count), optionally FedProx's proximal term. It returns the client's update ``w_local - w_global`` and its
mean training loss. It is traced once per fit, with no device inside: it runs where it is called.

How clients map to replicas (:class:`ClientRunner`). The replicas of the strategy are the devices that
hold the clients' data: with :class:`tfe_lite.LocalConfig` every client is a player with its own device,
so a replica is exactly one client and the round's clients all train at once, each on its own device; a
client's data, weights and update never leave it. When a config puts several clients on one device (a
simulation with more clients than devices, see :class:`~tfe_lite.federated.SimulationConfig`), that device's
replica trains its clients one at a time: the round runs in waves, wave ``j`` taking the ``j``-th client
of every device, and a device without a client in that wave idles (zero steps). Each wave is one call of a
``tf.function`` around ``strategy.run``, traced once per fit; every replica's training call is placed on
its replica's device. Results go to per-device slot variables (the update and the loss, on that device),
never out of the traced function, because a ``tf.function``'s outputs are placed on the caller's device.

Clients train with SGD (``keras.optimizers.SGD``: learning rate, momentum, Nesterov), applied by the
update rule Keras documents, inside the traced function: Keras's TensorFlow optimizers all-reduce
gradients across replicas when used in a replica context and keep per-variable state, which independent
clients on replicas cannot share.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfe_lite.devices import eager_serialized
from tfe_lite.errors import ConfigError

from .data import ClientData
from .vectors import pack, unpack
from .workers import same_device

_SGD_UNSUPPORTED = ("weight_decay", "clipnorm", "global_clipnorm", "clipvalue", "loss_scale_factor",
                    "gradient_accumulation_steps")


@dataclasses.dataclass(frozen=True)
class ClientSGD:
    """The clients' optimizer: SGD with optional (Nesterov) momentum, Keras's ``SGD`` update rule.

    Per step, for gradient ``g``: ``v <- momentum * v - lr * g``; ``w <- w + v`` (or, with Nesterov,
    ``w <- w + momentum * v - lr * g``); without momentum ``w <- w - lr * g``. The velocity starts at zero
    for every client in every round.
    """

    learning_rate: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False

    @classmethod
    def from_keras(cls, optimizer: Any) -> "ClientSGD":
        """From a ``keras.optimizers.SGD`` (or ``"sgd"``); any other optimizer or option is refused by name."""
        if isinstance(optimizer, str):
            optimizer = keras.optimizers.get(optimizer)
        if not isinstance(optimizer, keras.optimizers.SGD):
            raise ConfigError(
                "Received an invalid value for `client_optimizer`, expected keras.optimizers.SGD or 'sgd' (local "
                "training applies SGD's rule inside each replica; Keras's TensorFlow optimizers all-reduce across "
                "replicas there). Use `server_optimizer` for Adam and other optimizers. "
                f"Received: client_optimizer={optimizer!r}"
            )
        config = optimizer.get_config()
        problems = [f"{k}={config[k]!r}" for k in _SGD_UNSUPPORTED if config.get(k) is not None]
        if config.get("use_ema"):
            problems.append("use_ema=True")
        if isinstance(optimizer._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            problems.append("a learning-rate schedule")
        if problems:
            raise ConfigError(
                "Received unsupported options of the client SGD optimizer (local training applies plain SGD with "
                f"momentum): {', '.join(problems)}"
            )
        return cls(float(np.float32(config["learning_rate"])), float(config["momentum"]), bool(config["nesterov"]))

    def update(self, weights: list, grads: list, velocity: list) -> tuple[list, list]:
        lr = tf.constant(self.learning_rate, tf.float32)
        if self.momentum == 0:
            return [w - g * lr for w, g in zip(weights, grads)], velocity
        momentum = tf.constant(self.momentum, tf.float32)
        velocity = [v * momentum - g * lr for v, g in zip(velocity, grads)]
        if self.nesterov:
            return [w + (v * momentum - g * lr) for w, v, g in zip(weights, velocity, grads)], velocity
        return [w + v for w, v in zip(weights, velocity)], velocity


class LocalTraining:
    """One client's local training as one traced function, placed where it is called.

    ``training(weights, x, y, epochs, seed)`` takes the global weights as one flat float32 vector
    (:func:`~tfe_lite.federated.vectors.pack` of the trainable variables), runs ``epochs`` passes over
    ``(x, y)`` in batches of ``batch_size`` (the last one smaller), reshuffled each epoch with the stateless
    ``seed`` when ``shuffle``, and returns ``(update, mean loss, examples seen)``; the update is the flat
    ``w_local - weights``. With ``proximal_mu > 0`` each gradient gets FedProx's ``mu * (w - weights)``.
    """

    def __init__(self, model: keras.Model, optimizer: ClientSGD, *, batch_size: int, proximal_mu: float,
                 shuffle: bool, x_spec: tf.TensorSpec, y_spec: tf.TensorSpec):
        self.model = model
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.proximal_mu = float(proximal_mu)
        self.shuffle = shuffle
        self.shapes = [v.shape for v in model.trainable_variables]
        self.size = sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes)
        self.x_spec, self.y_spec = x_spec, y_spec
        signature = [tf.TensorSpec([self.size], tf.float32), x_spec, y_spec, tf.TensorSpec([], tf.int32),
                     tf.TensorSpec([2], tf.int64)]
        # _noinline keeps each client's loop one call op in the wave's graph (no grappler pass over copies).
        self.function = tf.function(self._train, input_signature=signature, experimental_attributes={"_noinline": True})
        self.concrete = self.function.get_concrete_function()

    def _train(self, weights, x, y, epochs, seed):
        model, size = self.model, tf.constant(self.batch_size, tf.int32)
        # Non-trainable variables are random-generator states (FedAvg refuses non-trainable weights): each
        # client's run starts them from its own seed, so dropout masks differ between clients and rounds.
        non_trainable = [tf.cast(seed + i, v.dtype) if tuple(v.shape) == (2,) and tf.as_dtype(v.dtype).is_integer else v.value
                         for i, v in enumerate(model.non_trainable_variables)]
        metrics = [v.value for v in model.metrics_variables]
        n = tf.shape(x, out_type=tf.int32)[0]
        steps = (n + size - 1) // size
        total = steps * epochs
        start = unpack(weights, self.shapes)

        def step(i, w, velocity, state, loss_sum, seen):
            epoch, offset = i // steps, (i % steps) * size
            order = tf.range(n)
            if self.shuffle:
                order = tf.random.experimental.stateless_shuffle(order, seed + tf.stack([0, tf.cast(epoch, tf.int64)]))
            batch = order[offset:tf.minimum(offset + size, n)]
            xb, yb = tf.gather(x, batch), tf.gather(y, batch)
            with tf.GradientTape() as tape:
                tape.watch(w)
                y_pred, state_out = model.stateless_call(w, state, xb, training=True)
                loss, _ = model.stateless_compute_loss(w, state_out, metrics, x=xb, y=yb, y_pred=y_pred, training=True)
            grads = tape.gradient(loss, w)
            grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, w)]
            if self.proximal_mu:
                grads = [g + self.proximal_mu * (v - v0) for g, v, v0 in zip(grads, w, start)]
            w, velocity = self.optimizer.update(w, grads, velocity)
            rows = tf.shape(batch)[0]
            return i + 1, w, velocity, state_out, loss_sum + loss * tf.cast(rows, tf.float32), seen + rows

        velocity = [tf.zeros_like(v) for v in start]
        _, final, _, _, loss_sum, seen = tf.while_loop(
            lambda i, *_: i < total, step, (tf.constant(0), start, velocity, non_trainable, tf.constant(0.0), tf.constant(0)),
        )
        mean_loss = loss_sum / tf.cast(tf.maximum(seen, 1), tf.float32)
        return pack(final) - weights, mean_loss, seen


class ClientRunner:
    """Runs the round's clients: waves over a MirroredStrategy of the client devices, or one at a time.

    Args:
        training: the :class:`LocalTraining` every client runs.
        clients: all clients of the fit; their distinct devices are the strategy's replicas.
        parallel: train a wave's clients at once on the replicas (True) or sequentially (False); both give
            the same updates.
    """

    def __init__(self, training: LocalTraining, clients: Sequence[ClientData], *, parallel: bool = True):
        self.training = training
        self.parallel = parallel
        self.devices: list[str] = []
        self._replica: dict[str, int] = {}
        for c in clients:
            index = next((i for i, d in enumerate(self.devices) if same_device(c.player.device, d)), None)
            if index is None:
                index = len(self.devices)
                self.devices.append(c.player.device)
            self._replica[c.name] = index
        # Per device: the slots the last client trained there writes (its update and loss), and what an idle
        # replica trains on (zero steps), all on that device.
        self._slots, self._idle = [], []
        for device in self.devices:
            with tf.device(device):
                self._slots.append((tf.Variable(tf.zeros([training.size]), trainable=False, name="update_slot"),
                                    tf.Variable(0.0, trainable=False, name="loss_slot")))
                self._idle.append((tf.zeros([training.size]),
                                   tf.zeros([0] + training.x_spec.shape[1:].as_list(), training.x_spec.dtype),
                                   tf.zeros([0] + training.y_spec.shape[1:].as_list(), training.y_spec.dtype)))
        self.strategy = tf.distribute.MirroredStrategy(self.devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
        self._wave = None

    def replica_of(self, client: ClientData) -> int:
        try:
            return self._replica[client.name]
        except KeyError:
            raise ConfigError(f"Client {client.name!r} is not one of this runner's clients.") from None

    def waves(self, clients: Sequence[ClientData]) -> list[list[ClientData]]:
        """Clients grouped so that every wave holds at most one client per replica (in the given order)."""
        queues: dict[int, list[ClientData]] = {}
        for c in clients:
            queues.setdefault(self.replica_of(c), []).append(c)
        depth = max((len(q) for q in queues.values()), default=0)
        return [[q[j] for q in queues.values() if j < len(q)] for j in range(depth)]

    def run(self, wave: Sequence[tuple[ClientData, tf.Tensor, Any]], epochs: int, *, parallel: bool | None = None) -> None:
        """Train ``(client, flat weights on its device, shuffle seed)`` for each client of one wave."""
        epochs = tf.constant(epochs, tf.int32)
        if not (self.parallel if parallel is None else parallel):
            for client, weights, seed in wave:
                self._run_one(client, weights, tf.constant(seed, tf.int64), epochs)
            return
        inputs = list(self._idle)
        seeds = np.zeros([len(self.devices), 2], np.int64)
        for client, weights, seed in wave:
            i = self.replica_of(client)
            inputs[i] = (weights, client.x, client.y)
            seeds[i] = seed
        weights, xs, ys = (list(column) for column in zip(*inputs))
        self._wave_function()(weights, xs, ys, tf.constant(seeds), epochs)

    def result(self, client: ClientData) -> tuple[tf.Tensor, tf.Tensor]:
        """The flat update and mean loss of the client trained last on its device (tensors on that device)."""
        update, loss = self._slots[self.replica_of(client)]
        with tf.device(client.player.device):
            return update.read_value(), loss.read_value()

    # ------------------------------------------------------------------------------------------ helpers
    @eager_serialized
    def _run_one(self, client: ClientData, weights, seed, epochs) -> None:
        update, loss = self._slots[self.replica_of(client)]
        with tf.device(client.player.device):
            delta, mean_loss, _ = self.training.concrete(weights, client.x, client.y, epochs, seed)
            update.assign(delta)
            loss.assign(mean_loss)

    def _wave_function(self):
        if self._wave is not None:
            return self._wave
        training, strategy, slots, devices = self.training, self.strategy, self._slots, self.devices
        replicas = len(devices)

        def replica_step(weights, x, y, seed, epochs):
            device = tf.nest.flatten(tf.distribute.get_replica_context().devices)[0]
            update, loss = slots[next(i for i, d in enumerate(devices) if same_device(d, device))]
            delta, mean_loss, _ = training.concrete(weights, x, y, epochs, seed)
            update.assign(delta)
            loss.assign(mean_loss)

        def wave(weights, xs, ys, seeds, epochs):
            per_replica = [
                strategy.experimental_distribute_values_from_function(lambda ctx, v=values: v[ctx.replica_id_in_sync_group])
                for values in (weights, xs, ys, tf.unstack(seeds))
            ]
            strategy.run(replica_step, args=(*per_replica, epochs))

        signature = [[tf.TensorSpec([training.size], tf.float32)] * replicas, [training.x_spec] * replicas,
                     [training.y_spec] * replicas, tf.TensorSpec([replicas, 2], tf.int64), tf.TensorSpec([], tf.int32)]
        self._wave = tf.function(wave, input_signature=signature, autograph=False)
        return self._wave
