"""Federated averaging: :class:`FedAvg` (McMahan et al. 2017), FedAdam, FedProx, DP-FedAvg.

One round of ``FedAvg.fit``:

1. Sampling: ``clients_per_round`` of the clients uniformly without replacement (every client when
   None); with DP, each client independently with probability ``clients_per_round / N`` (Poisson).
2. The aggregator sends the global weights to each sampled client's device.
3. Local training on the clients' devices, in parallel on the replicas of a ``tf.distribute`` strategy
   (:mod:`tfe_lite.federated.clients`): ``local_epochs`` epochs of minibatch SGD from the global weights.
4. Each client builds, on its device, the vector it submits: its update weighted by ``w_k = n_k / m``
   (``n_k`` its examples, ``m`` the mean over the round's sampled clients, so the weights add up to the
   number of clients ``K`` and every entry keeps the fixed-point resolution) and its weighted mean loss;
   with DP, its DPQuery record (update clipped to ``C``, weight 1) instead of the weighted update.
5. Aggregation (:mod:`tfe_lite.federated.aggregation`): plain (the aggregator sees each vector) or secure
   (Pond; only the sum is revealed, to the aggregator). Clients that dropped out before sending are left out
   and the weights renormalized over the senders: the update is ``sum n_k u_k / sum n_k`` over the
   senders. Secure aggregation rounds each entry to ``2**-frac_bits``: ``S`` senders err by at most
   ``S * 2**-(frac_bits + 1)`` in the sum, which is divided by their weights' total (``S`` when no one
   dropped out), so the averaged update is within ``2**-(frac_bits + 1)`` of the plain one. With DP the
   aggregator adds the noise once (:mod:`tfe_lite.federated.dp`).
6. The server optimizer (a Keras optimizer, compiled into :attr:`FedAvg.model`) applies the pseudo-gradient
   ``-update`` to the global model: ``SGD(1.0)`` is FedAvg, ``Adam`` is FedAdam (Reddi et al. 2021).

Example counts ``n_k`` are public metadata of the round (the aggregator needs them to weight), as in
plain FedAvg; the updates and losses are what secure aggregation keeps private.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping

import keras
import tensorflow as tf

from tfe_lite.errors import ConfigError, PartyUnavailableError, ShapeError
from tfe_lite.players import CRYPTO_PRODUCER, SERVER0, SERVER1, Config

from .aggregation import PlainAggregator, SecureAggregator, Traffic
from .clients import ClientRunner, ClientSGD, LocalTraining
from .data import ClientData, resolve_client_data
from .dp import ClientDP, ClientDPMechanism
from .progress import RoundProgbar, RoundRandomness
from .vectors import pack, unpack

DROPOUTS = ("before_sending", "after_sending")
# Errors by which a client (or its link) fails; anything else is a bug and propagates.
_CLIENT_FAILURES = (PartyUnavailableError, tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError)


def _invalid(name: str, expected: str, value: Any) -> str:
    return f"Received an invalid value for `{name}`, expected {expected}. Received: {name}={value!r}"


def _positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


class FedAvg:
    """Federated training of one Keras model on clients that keep their data.

    Args:
        model_fn: returns the Keras model (built, or buildable from the clients' examples); called once.
        config: the players; clients are players of it, each holding its data on its device.
        loss, metrics: as for ``model.compile`` (default: the model's compiled ones).
        client_optimizer: ``keras.optimizers.SGD`` (learning rate, momentum, Nesterov) or ``"sgd"``.
        server_optimizer: any Keras optimizer (default ``SGD(learning_rate=1.0)``: plain FedAvg).
        secure_aggregation: ``True`` for Pond secure aggregation (or a :class:`tfe_lite.protocols.Pond`).
        dp: a :class:`~tfe_lite.federated.ClientDP` for client-level DP, or None.
        proximal_mu: FedProx's proximal coefficient (0: FedAvg).
        aggregator: the player the (sum of the) updates go to; it adds the DP noise.
        fixedpoint: fixed-point config of secure aggregation (default: Pond's, 16 fractional bits,
            ``|x| < 2**12``); a round of ``K`` clients needs every update entry below ``2**int_bits / (2 K)``.
        parallel_clients: train a round's clients on tf.distribute replicas (False: one after another).
        seed: fixes sampling, shuffling and the protocol's keys (tests only).
    """

    def __init__(self, model_fn: Callable[[], keras.Model], *, config: Config, loss: Any = None, metrics: Any = None,
                 client_optimizer: Any = "sgd", server_optimizer: Any = None, secure_aggregation: Any = False,
                 dp: ClientDP | None = None, proximal_mu: float = 0.0, aggregator: str = SERVER0,
                 fixedpoint: Any = "default", parallel_clients: bool = True, seed: int | None = None):
        from tfe_lite.protocols import Pond

        problems = []
        if not isinstance(config, Config):
            raise ConfigError(_invalid("config", "a tfe_lite Config", config))
        if not callable(model_fn):
            problems.append(_invalid("model_fn", "a function returning a Keras model", model_fn))
        if dp is not None and not isinstance(dp, ClientDP):
            problems.append(_invalid("dp", "None or a tfe_lite.federated.ClientDP", dp))
        if not (isinstance(secure_aggregation, bool) or isinstance(secure_aggregation, Pond)):
            problems.append(_invalid("secure_aggregation", "a bool or a Pond protocol", secure_aggregation))
        if not (isinstance(proximal_mu, numbers.Real) and not isinstance(proximal_mu, bool) and math.isfinite(proximal_mu)
                and proximal_mu >= 0):
            problems.append(_invalid("proximal_mu", "a non-negative float", proximal_mu))
        if not isinstance(parallel_clients, bool):
            problems.append(_invalid("parallel_clients", "a bool", parallel_clients))
        if aggregator not in config.player_names:
            problems.append(_invalid("aggregator", f"a player of the config {list(config.player_names)}", aggregator))
        try:
            self.client_optimizer = ClientSGD.from_keras(client_optimizer)
        except ConfigError as error:
            problems.append(str(error))
        if problems:
            raise ConfigError("\n".join(problems))
        self.config, self.dp, self.proximal_mu, self.seed = config, dp, float(proximal_mu), seed
        self.aggregator = config.get_player(aggregator)
        self.parallel_clients = parallel_clients
        self.protocol = secure_aggregation if isinstance(secure_aggregation, Pond) else (
            Pond(config, fixedpoint=fixedpoint, seed=seed) if secure_aggregation else None)
        if self.protocol is not None and self.protocol.config is not config:
            raise ConfigError("The Pond protocol given as `secure_aggregation` must use the FedAvg's `config`.")
        self.model = model_fn()
        if not isinstance(self.model, keras.Model):
            raise ConfigError(_invalid("model_fn", "a function returning a keras.Model", self.model))
        loss = loss if loss is not None else getattr(self.model, "loss", None)
        if loss is None:
            raise ConfigError("No loss: pass `loss=` to FedAvg or compile the model returned by `model_fn`.")
        if metrics is None and self.model.compiled:
            metrics = (self.model.get_compile_config() or {}).get("metrics")
        server_optimizer = keras.optimizers.SGD(learning_rate=1.0) if server_optimizer is None else server_optimizer
        self.model.compile(optimizer=server_optimizer, loss=loss, metrics=metrics)
        self._cache: dict = {}
        #: Per round run: bytes per link ``(src, dst)`` (empty without ``count_traffic``), and the names of the
        #: clients whose updates were summed.
        self.round_traffic: list[dict[tuple[str, str], int]] = []
        self.round_clients: list[list[str]] = []
        self.dp_mechanism: ClientDPMechanism | None = None

    @property
    def secure(self) -> bool:
        return self.protocol is not None

    # -------------------------------------------------------------------------------------------- fit
    def fit(self, client_data: Mapping[str, Any], rounds: int = 1, local_epochs: int = 1, batch_size: int = 32,
            clients_per_round: int | None = None, validation_data: Any = None, *, shuffle: bool = True,
            callbacks: list | None = None, verbose: Any = "auto", dropouts: Any = None,
            min_clients: int | None = None, count_traffic: bool = True) -> keras.callbacks.History:
        """Run ``rounds`` rounds; returns Keras's ``History`` with per-round ``loss`` (the clients' mean
        training loss), ``clients`` (updates aggregated), ``val_*`` with ``validation_data``, and
        ``epsilon`` and ``clip`` with DP.

        ``dropouts`` simulates failures: ``{round: {client: "before_sending" | "after_sending"}}`` or a
        function ``(round, client) -> None | "before_sending" | "after_sending"``. ``min_clients`` is the
        fewest senders whose sum is used (default 2 with secure aggregation, else 1); a round with fewer
        leaves the model unchanged. ``count_traffic`` records the bytes of every link per round in
        :attr:`round_traffic` (reading the protocol's counters costs a little time every round).
        """
        problems = [_invalid(n, "a positive integer", v) for n, v in
                    (("rounds", rounds), ("local_epochs", local_epochs), ("batch_size", batch_size)) if not _positive_int(v)]
        if verbose not in ("auto", 0, 1, 2):
            problems.append(_invalid("verbose", "'auto', 0, 1 or 2", verbose))
        for name, value in (("shuffle", shuffle), ("count_traffic", count_traffic)):
            if not isinstance(value, bool):
                problems.append(_invalid(name, "a bool", value))
        if dropouts is not None and not (callable(dropouts) or isinstance(dropouts, Mapping)):
            problems.append(_invalid("dropouts", "None, a mapping {round: {client: when}} or a function", dropouts))
        if problems:
            raise ConfigError("\n".join(problems))
        reserved = tuple(dict.fromkeys((SERVER0, SERVER1, CRYPTO_PRODUCER, self.aggregator.name)))
        clients = resolve_client_data(client_data, self.config, reserved=reserved)
        n = len(clients)
        if clients_per_round is not None and not (_positive_int(clients_per_round) and clients_per_round <= n):
            raise ConfigError(_invalid("clients_per_round", f"None or an integer in [1, {n}] (the number of clients)",
                                       clients_per_round))
        if min_clients is None:
            min_clients = 2 if self.secure else 1
        if not _positive_int(min_clients):
            raise ConfigError(_invalid("min_clients", "a positive integer", min_clients))
        self._check_dropouts(dropouts, rounds, {c.name for c in clients})
        self._check_model(clients[0])
        runner = self._runner(clients, batch_size, shuffle)
        expected = float(clients_per_round or n)
        previous = self.dp_mechanism
        if self.dp is not None and (previous is None or (previous.num_clients, previous.expected_clients) != (n, expected)):
            # The accountant carries over from earlier fits: epsilon covers every round this model trained.
            self.dp_mechanism = ClientDPMechanism(self.dp, num_clients=n, expected_clients=expected, aggregator=self.aggregator,
                                                  template=[tf.TensorSpec([runner.training.size], tf.float32)],
                                                  previous=previous)
        key = ("aggregator", min_clients)  # kept across fits: secure submissions are traced once per client
        if key not in self._cache:
            self._cache[key] = (SecureAggregator(self.protocol, self.aggregator.name, min_clients=min_clients) if self.secure
                                else PlainAggregator(self.aggregator, min_clients=min_clients))
        aggregator = self._cache[key]
        validation = self._validation(validation_data)
        randomness = RoundRandomness(self.seed)
        progbar = RoundProgbar()
        callback_list = keras.callbacks.CallbackList([progbar] + list(callbacks or []), add_history=True, model=self.model,
                                                     verbose=1 if verbose == "auto" else verbose, epochs=rounds, steps=None)
        self.model.stop_training = False
        callback_list.on_train_begin()
        for r in range(rounds):
            if self.dp is not None:
                chosen = randomness.poisson(n, self.dp_mechanism.sampling_probability)
            else:
                chosen = randomness.choice(n, clients_per_round) if clients_per_round else range(n)
            selected = [clients[i] for i in chosen]
            progbar.target = max(len(selected), 1)
            callback_list.on_epoch_begin(r)
            logs = self._round(r, selected, runner, aggregator, randomness, local_epochs, dropouts, callback_list,
                               count_traffic)
            if validation is not None:
                results = self.model.evaluate(*validation, verbose=0, return_dict=True)
                logs.update({f"val_{k}": v for k, v in results.items()})
            callback_list.on_epoch_end(r, logs)
            if self.model.stop_training:
                break
        callback_list.on_train_end()
        return self.model.history

    def _round(self, r, selected, runner, aggregator, randomness, epochs, dropouts, callback_list, count_traffic) -> dict:
        traffic = Traffic()
        aggregator.traffic = traffic if count_traffic else None
        aggregator.begin()
        plan = {c.name: self._dropout(dropouts, r, c.name) for c in selected}
        total_examples = sum(c.num_examples for c in selected)
        weights = {c.name: len(selected) * c.num_examples / total_examples for c in selected}
        limit = self.protocol.fixedpoint.bound / (2 * max(len(selected), 1)) if self.secure else math.inf
        mechanism = self.dp_mechanism
        dp_round = (mechanism.sample_params(), mechanism.clip) if mechanism is not None else None
        self._check_range(aggregator, selected, weights, limit, dp_round)
        global_weights = pack(self.model.trainable_variables)
        present = [c for c in selected if plan[c.name] != "before_sending"]
        seeds = dict(zip([c.name for c in present], randomness.shuffle_seeds(len(present))))
        done = 0
        for wave in runner.waves(present):
            survivors = self._train_wave(runner, wave, global_weights, seeds, epochs, traffic)
            for client in survivors:
                update, loss = runner.result(client)
                vector, bounds = self._client_vector(client, update, loss, weights[client.name], limit, dp_round, traffic)
                aggregator.submit(client.player, vector, bounds)
            done += len(wave)
            callback_list.on_train_batch_end(done - 1)
        total = aggregator.result()
        sent = sum(weights[name] for name in aggregator.senders)
        logs = {"loss": math.nan, "clients": 0 if total is None else len(aggregator.senders)}
        if total is None:
            if mechanism is not None:
                mechanism.skip_round()
        else:
            parts = unpack(total, self._shapes(runner, mechanism))
            logs["loss"] = float(parts[-1][0]) / sent
            if mechanism is not None:
                update = mechanism.noised_update(parts[:-1])[0]
            else:
                update = parts[0] / sent
            update = unpack(tf.cast(update, tf.float32), runner.training.shapes)
            grads = [-u for u in update]
            self.model.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        if mechanism is not None:
            logs["epsilon"] = mechanism.epsilon()
            logs["clip"] = mechanism.clip
        self.round_traffic.append(dict(traffic.links) if count_traffic else {})
        self.round_clients.append([] if total is None else list(aggregator.senders))
        return logs

    # --------------------------------------------------------------------------------- client side
    def _train_wave(self, runner, wave, global_weights, seeds, epochs, traffic) -> list[ClientData]:
        """Send the model to the wave's clients and train them; clients that fail are left out."""
        jobs = []
        for client in wave:
            with tf.device(client.player.device):
                received = tf.identity(global_weights)
            traffic.add(self.aggregator.name, client.name, 4 * global_weights.shape.num_elements())
            jobs.append((client, received, seeds[client.name]))
        try:
            runner.run(jobs, epochs)
            return list(wave)
        except _CLIENT_FAILURES:
            survivors = []
            for job in jobs:  # find who failed: one client at a time
                try:
                    runner.run([job], epochs, parallel=False)
                    survivors.append(job[0])
                except _CLIENT_FAILURES:
                    pass
            return survivors

    def _client_vector(self, client, update, loss, weight, limit, dp_round, traffic):
        """The vector ``client`` submits and the public bounds of its entries, built on its device from its
        update (flat) and mean loss (tensors on that device). ``limit`` bounds an unweighted entry (secure
        only); ``dp_round`` is the round's DPQuery params and clip, or None without DP."""
        size = update.shape.num_elements()
        with tf.device(client.player.device):
            weighted_loss = tf.reshape(loss * weight, [1])
            if self.dp_mechanism is None:
                vector = tf.concat([update * weight, weighted_loss], 0)
                return vector, [("update", size, weight * limit), ("loss", 1, weight * limit)]
            local_params = tf.nest.map_structure(tf.identity, dp_round[0])
            nbytes = sum(t.dtype.size * t.shape.num_elements() for t in tf.nest.flatten(local_params))
            traffic.add(self.aggregator.name, client.name, nbytes)
            record = self.dp_mechanism.preprocess(local_params, [update])
            vector = pack(record + [weighted_loss])
        clip = dp_round[1] * (1 + 1e-4)  # float rounding of the clipped norm
        bounds = [("update", size, clip)]
        if self.dp_mechanism.adaptive:
            bounds.append(("unclipped", 1, 0.5))
        return vector, bounds + [("loss", 1, weight * limit)]

    def _check_range(self, aggregator, selected, weights, limit, dp_round) -> None:
        if not self.secure:
            return
        totals = {"update": sum(weights.values()) * limit, "loss": sum(weights.values()) * limit}
        if self.dp_mechanism is not None:
            totals["update"] = len(selected) * dp_round[1] * (1 + 1e-4)
            if self.dp_mechanism.adaptive:
                totals["unclipped"] = len(selected) * 0.5
        aggregator.check_range(totals)

    # ------------------------------------------------------------------------------------- set-up
    def _shapes(self, runner, mechanism):
        shapes = mechanism.record_shapes if mechanism is not None else [tf.TensorShape([runner.training.size])]
        return list(shapes) + [tf.TensorShape([1])]

    def _runner(self, clients: list[ClientData], batch_size: int, shuffle: bool) -> ClientRunner:
        first = clients[0]
        x_spec = tf.TensorSpec([None] + first.x.shape[1:].as_list(), first.x.dtype)
        y_spec = tf.TensorSpec([None] + first.y.shape[1:].as_list(), first.y.dtype)
        key = (batch_size, shuffle, x_spec, y_spec)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] == "aggregator"}  # one training function at a time
            self._cache[key] = LocalTraining(self.model, self.client_optimizer, batch_size=batch_size,
                                             proximal_mu=self.proximal_mu, shuffle=shuffle, x_spec=x_spec, y_spec=y_spec)
        devices = tuple(c.player.device for c in clients)
        runner_key = ("runner", key, devices)
        if runner_key not in self._cache:
            self._cache[runner_key] = ClientRunner(self._cache[key], clients, parallel=self.parallel_clients)
        return self._cache[runner_key]

    def _check_model(self, client: ClientData) -> None:
        """Build the model and its compiled loss from zeros shaped like the clients' examples (on the host:
        no client data moves), so a mismatch is an error before the first round."""
        x0 = tf.zeros([1] + client.x.shape[1:].as_list(), client.x.dtype)
        y0 = tf.zeros([1] + client.y.shape[1:].as_list(), client.y.dtype)
        try:
            y_pred = self.model(x0, training=False)
            self.model.compute_loss(x=x0, y=y0, y_pred=y_pred)
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as error:
            raise ShapeError(
                f"The clients' examples (x of shape {client.x.shape[1:]} {client.x.dtype.name}, y of shape "
                f"{client.y.shape[1:]} {client.y.dtype.name}) do not fit the model: {error}"
            ) from None
        not_float32 = [f"{v.path} ({v.dtype})" for v in self.model.trainable_variables if v.dtype != "float32"]
        if not_float32:
            raise ConfigError(f"FedAvg trains float32 weights; the model has {not_float32}. Use the float32 dtype policy.")
        fixed = [w.path for w in self.model.non_trainable_weights]
        if fixed:
            raise ConfigError(
                f"FedAvg averages trainable weights only; the model has non-trainable weights {fixed} (e.g. "
                "BatchNormalization statistics). Use LayerNormalization or GroupNormalization instead."
            )

    def _validation(self, validation_data: Any):
        if validation_data is None:
            return None
        if isinstance(validation_data, tf.data.Dataset):
            return (validation_data,)
        if isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
            return tuple(validation_data)
        raise ConfigError(_invalid("validation_data", "None, (x, y) or a tf.data.Dataset", type(validation_data).__name__))

    @staticmethod
    def _dropout(dropouts: Any, round_index: int, name: str) -> str | None:
        if dropouts is None:
            return None
        when = dropouts(round_index, name) if callable(dropouts) else dropouts.get(round_index, {}).get(name)
        if when is not None and when not in DROPOUTS:
            raise ConfigError(_invalid("dropouts", f"None or one of {DROPOUTS} for each client", when))
        return when

    @staticmethod
    def _check_dropouts(dropouts: Any, rounds: int, names: set[str]) -> None:
        if not isinstance(dropouts, Mapping):
            return
        problems = []
        for r, plan in dropouts.items():
            if not isinstance(plan, Mapping):
                problems.append(_invalid(f"dropouts[{r!r}]", "a mapping {client: when}", plan))
                continue
            unknown = sorted(set(plan) - names)
            if unknown:
                problems.append(f"`dropouts[{r!r}]` names unknown clients {unknown}; the clients are {sorted(names)}.")
            bad = {k: v for k, v in plan.items() if v not in DROPOUTS}
            if bad:
                problems.append(_invalid(f"dropouts[{r!r}]", f"values in {DROPOUTS}", bad))
        if problems:
            raise ConfigError("\n".join(problems))

    # ----------------------------------------------------------------------------------------- DP
    @property
    def epsilon(self) -> float | None:
        """Client-level epsilon of the rounds run (at ``dp.delta``), or None without DP."""
        return None if self.dp_mechanism is None else self.dp_mechanism.epsilon()

    def privacy_statement(self) -> str:
        """The client-level DP guarantee of the rounds run so far, in words."""
        if self.dp_mechanism is None:
            raise ConfigError("This FedAvg has no client-level DP (dp=None) or has not been fit yet.")
        return self.dp_mechanism.statement(secure=self.secure, aggregator=self.aggregator.name)
