"""DP-SGD for any Keras 3 model and any Keras optimizer: :func:`make_private` and :class:`DPModel`.

One training step (``DPModel.train_step``), for a batch split into records (examples, or microbatches):

1. Per-record gradients of the per-example loss (the compiled loss without its batch reduction), by the
   vectorized or the ghost clipper (:mod:`tfe_lite.privacy.clipping`).
2. Each record is clipped to the query's L2 clip ``C`` (for adaptive clipping, the current quantile estimate)
   and the clipped records are summed.
3. tensorflow-privacy's DPQuery adds Gaussian noise with std ``noise_multiplier * C`` to the sum, once per
   global batch (:mod:`tfe_lite.privacy.noise`), and updates its state (the adaptive clip).
4. The noised sum is divided by the number of records in the global batch (or by ``expected_batch_size``),
   the gradient of weight regularizers (data-independent) is added, and the compiled optimizer applies it.

The model accounts for itself: it counts every step ``train_step`` takes and records the batch sampling of
every ``fit`` (:mod:`tfe_lite.privacy.ledger`), so ``privacy_spent(delta)`` is the epsilon of what ran.

The parts: the settings (:mod:`~tfe_lite.privacy.config`), each example's loss
(:mod:`~tfe_lite.privacy.losses`), the clippers (:mod:`~tfe_lite.privacy.clipping`), the query and its noise
under ``tf.distribute`` (:mod:`~tfe_lite.privacy.mechanism`), and the model's own ledger
(:mod:`~tfe_lite.privacy.tracking`).

Under ``tf.distribute`` each replica clips its own examples (a batch given whole to every replica, as
``train_on_batch`` does, is split between them first: :mod:`tfe_lite.privacy.replicas`), and the update
equals single-device DP-SGD on the global batch in distribution. Tested with MirroredStrategy (2 to 4
replicas, uneven and empty per-replica batches; ``fit``, ``train_on_batch`` and custom loops) and with a
two-process MultiWorkerMirroredStrategy driving ``train_step`` through ``strategy.run`` (Keras 3.15's
``fit`` itself fails under MultiWorkerMirroredStrategy for any model).

``evaluate``, ``predict``, callbacks, the progress bar and ``save``/``keras.models.load_model`` are Keras'
own; the wrapped model's layers and weights are shared, not copied.
"""

from __future__ import annotations

import inspect
from typing import Any

import dp_accounting
import keras
import tensorflow as tf

from tfe_lite.errors import ConfigError, UnsupportedLayerError
from tfe_lite.privacy.clipping import GhostClipper, check_layers, ghost_blockers, make_clipper, vectorization_failure
from tfe_lite.privacy.config import AdaptiveClipping, DPConfig, _invalid
from tfe_lite.privacy.ledger import PrivacyLedger, Sampling
from tfe_lite.privacy.losses import per_example_loss, update_output_loss_metrics
from tfe_lite.privacy.mechanism import Mechanism
from tfe_lite.privacy.replicas import first_replica_batch, local_batch
from tfe_lite.privacy.sampling import check_microbatches, fit_sampling
from tfe_lite.privacy.tracking import PrivacyTracker

__all__ = ["AdaptiveClipping", "DPConfig", "DPModel", "make_private"]


def _first_tensor(structure: Any) -> tf.Tensor:
    return next(t for t in tf.nest.flatten(structure) if t is not None)


@keras.saving.register_keras_serializable(package="tfe_lite")
class DPModel(keras.Model):
    """A Keras model that trains ``model`` with DP-SGD. Prefer :func:`make_private` to build one.

    The wrapped model's layers and weights are shared: training the DPModel trains ``model``.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        l2_norm_clip: float,
        noise_multiplier: float,
        num_microbatches: int | None = None,
        clipping: str = "auto",
        adaptive_clipping: AdaptiveClipping | dict | bool | None = None,
        secure_noise: bool = False,
        seed: int | None = None,
        expected_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        config = DPConfig.from_arguments(
            l2_norm_clip=l2_norm_clip,
            noise_multiplier=noise_multiplier,
            num_microbatches=num_microbatches,
            clipping=clipping,
            adaptive_clipping=adaptive_clipping,
            secure_noise=secure_noise,
            seed=seed,
            expected_batch_size=expected_batch_size,
        )
        if not isinstance(model, keras.Model):
            raise ConfigError(_invalid("model", "a keras.Model", model))
        if not model.built:
            raise ConfigError(
                f"Received an unbuilt model {model.name!r}: give it an Input (or call it once on data) "
                "before making it private, so that its weights exist."
            )
        check_layers(model)
        if config.clipping == "ghost":
            blockers = ghost_blockers(model)
            if blockers:
                raise UnsupportedLayerError(
                    "Received clipping='ghost', but ghost clipping does not support:\n  - "
                    + "\n  - ".join(blockers)
                    + "\nUse clipping='vectorized' (or 'auto', which falls back to it)."
                )

        super().__init__(**kwargs)
        self.inner = model
        self._dp_config = config
        self._mechanism = Mechanism(config, self.add_weight)
        self._query = self._mechanism.query
        self._privacy_tracker = PrivacyTracker(config, lambda: self.l2_norm_clip)
        if config.secure_noise:
            self.supports_jit = False  # os.urandom is read through tf.numpy_function
        self._clipper = None
        self.built = True

    @property
    def dp_config(self) -> DPConfig:
        """The DP-SGD settings."""
        return self._dp_config

    @property
    def l2_norm_clip(self) -> float:
        """The clip applied now (it moves with adaptive clipping)."""
        return float(self._mechanism.clip())

    def dp_event(self) -> dp_accounting.DpEvent:
        """The privacy event of one step before batch sampling (see :meth:`DPConfig.dp_event`)."""
        return self._dp_config.dp_event()

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return self.inner(inputs, training=training)

    # ----------------------------------------------------------------------------------------------------
    # Accounting: the steps that ran, with the sampling they used (tfe_lite.privacy.tracking)

    @property
    def steps_taken(self) -> int:
        """DP-SGD steps taken: by ``fit``, ``train_on_batch`` or custom loops, across save and load."""
        return self._privacy_tracker.steps

    @property
    def running_sampling(self) -> Sampling | None:
        """The sampling of the batches the running ``fit`` trains on (``None`` outside ``fit``)."""
        return self._privacy_tracker.running_sampling

    def projected_ledger(self, fit_steps: int) -> PrivacyLedger:
        """The ledger once the running ``fit`` has taken ``fit_steps`` steps (the ledger outside ``fit``)."""
        return self._privacy_tracker.projected_ledger(fit_steps)

    @property
    def privacy_ledger(self) -> PrivacyLedger:
        """Every step trained so far (the running ``fit``'s too), with its sampling, noise and clip."""
        return self._privacy_tracker.ledger

    def privacy_spent(self, delta: float, accountant: str = "rdp") -> float:
        """Example-level epsilon at ``delta`` of the steps this model trained, composed over the sampling
        each of them used (see :mod:`tfe_lite.privacy.ledger`): ``dp_accounting``'s ``"rdp"`` or ``"pld"``
        accountant. 0 before the first step; ``inf`` without noise."""
        return self.privacy_ledger.epsilon(delta, accountant)

    def privacy_statement(self, delta: float) -> str:
        """:meth:`privacy_spent` in words: what ran, what each bound assumes, both accountants' epsilon."""
        return self.privacy_ledger.statement(delta)

    # ----------------------------------------------------------------------------------------------------
    # Compile and fit: checks that need the loss, the optimizer or the data

    def compile(self, *args: Any, **kwargs: Any) -> None:
        if self._dp_config.secure_noise and kwargs.get("jit_compile") is True:
            raise ConfigError(
                _invalid(
                    "jit_compile",
                    "False with secure_noise=True (its per-step os.urandom key cannot be XLA-compiled)",
                    True,
                )
            )
        loss = kwargs.get("loss", args[1] if len(args) > 1 else None)
        if loss is None:
            raise ConfigError(
                "Received loss=None: DP-SGD clips the gradient of each example's loss, so `compile` needs a "
                "`loss`."
            )
        super().compile(*args, **kwargs)
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            raise ConfigError(
                "Received a LossScaleOptimizer (mixed precision): DP-SGD computes its gradients itself and "
                "does not support loss scaling; use a float32 dtype policy."
            )
        if self._dp_config.secure_noise:
            self.jit_compile = False  # "auto" never picks XLA here (supports_jit is False); make it explicit
        self._clipper = make_clipper(
            self.inner,
            self.trainable_variables,
            self._per_example_loss,
            method=self._dp_config.clipping,
            num_microbatches=self._dp_config.num_microbatches,
        )

    def compile_from_config(self, config: dict[str, Any]) -> None:
        # Keras skips models that override `compile`; this is its own implementation, through ours.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def clipping_method(self) -> str | None:
        """``"ghost"`` or ``"vectorized"``: the clipper in use (``None`` before ``compile``)."""
        if self._clipper is None:
            return None
        return "ghost" if isinstance(self._clipper, GhostClipper) else "vectorized"

    def fit(self, x: Any = None, y: Any = None, batch_size: int | None = None, *args: Any, **kwargs: Any):
        try:
            arguments = inspect.signature(keras.Model.fit).bind(self, x, y, batch_size, *args, **kwargs)
        except TypeError:
            return super().fit(x, y, batch_size, *args, **kwargs)  # Keras says what is wrong
        validation_split = arguments.arguments.get("validation_split", 0.0)
        sampling = fit_sampling(x, y, arguments.arguments.get("sample_weight"), batch_size, validation_split)
        self._privacy_tracker.check_sampling(sampling)
        check_microbatches(self._dp_config.num_microbatches, x, batch_size, validation_split)
        self._privacy_tracker.begin_fit(sampling)
        try:
            return super().fit(x, y, batch_size, *args, **kwargs)
        except tf.errors.OpError as error:
            failure = vectorization_failure(error, self.inner)
            if failure is None:
                raise
            raise failure from error
        finally:
            self._privacy_tracker.end_fit()

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        strategy = self._distribute_strategy
        if strategy is None or iterator is None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            data_batch = first_replica_batch(strategy, next(batches))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    # ----------------------------------------------------------------------------------------------------
    # The DP-SGD step

    def _per_example_loss(self, y: Any, y_pred: Any, sample_weight: Any) -> tf.Tensor:
        return per_example_loss(self._compile_loss, y, y_pred, sample_weight)

    def train_step(self, data: Any) -> dict[str, Any]:
        if self._clipper is None:
            raise ConfigError("Call `compile` before training a DPModel.")
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(local_batch(data))
        self._privacy_tracker.count_step()
        batch = tf.shape(_first_tensor(x))[0]
        m = self._dp_config.num_microbatches
        if m is not None:
            check = tf.debugging.assert_equal(
                batch % m,
                0,
                message="Received an invalid value for `num_microbatches`, expected a divisor of every "
                f"batch size. Received: num_microbatches={m} with a batch whose size it does not divide",
            )
            with tf.control_dependencies([check]):  # before the batch is reshaped into microbatches
                x = tf.nest.map_structure(tf.identity, x)
        variables = self.trainable_variables
        global_state = self._mechanism.global_state()
        clip = self._mechanism.clip(global_state)

        result = self._clipper(x, y, sample_weight)
        norms = result.norms
        clip = tf.cast(clip, norms.dtype)
        factors = tf.math.divide_no_nan(clip, tf.maximum(norms, clip))
        clipped_sum = result.weighted_sum(factors)
        sample = self._mechanism.sample_state(global_state, clipped_sum, norms)
        records = tf.cast(tf.size(norms), tf.float32)
        grads, next_clip = self._mechanism.noised_mean(sample, global_state, records)

        regularized = [(v, v.regularizer) for v in variables if getattr(v, "regularizer", None) is not None]
        penalty = tf.constant(0.0)
        if regularized:
            context = tf.distribute.get_replica_context()
            replicas = context.num_replicas_in_sync if context is not None else 1
            with tf.GradientTape() as tape:
                penalty = tf.add_n([tf.cast(reg(v), tf.float32) for v, reg in regularized])
            penalty_grads = tape.gradient(
                penalty, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            grads = [g + tf.cast(p, g.dtype) / replicas for g, p in zip(grads, penalty_grads)]
        self.optimizer.apply_gradients(zip(grads, variables))

        losses = result.losses
        mean_loss = tf.math.divide_no_nan(tf.reduce_sum(losses), tf.cast(batch, losses.dtype))
        self._loss_tracker.update_state(mean_loss + tf.cast(penalty, losses.dtype), sample_weight=batch)
        update_output_loss_metrics(self._compile_loss, y, result.y_pred, sample_weight, batch)
        logs = self.compute_metrics(x, y, result.y_pred, sample_weight=sample_weight)
        if self._dp_config.adaptive_clipping is not None:
            logs["l2_norm_clip"] = next_clip
        return logs

    # ----------------------------------------------------------------------------------------------------
    # Serialization: the ledger and the step counter travel with the weights

    def save_own_variables(self, store: Any) -> None:
        super().save_own_variables(store)
        self._privacy_tracker.save(store)

    def load_own_variables(self, store: Any) -> None:
        variables = self._trainable_variables + self._non_trainable_variables
        for i, variable in enumerate(variables):
            variable.assign(store[f"{i}"])
        self._privacy_tracker.load(store)

    def get_config(self) -> dict[str, Any]:
        config = self._dp_config.to_dict()
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model": keras.saving.serialize_keras_object(self.inner),
            **config,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> DPModel:
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"), custom_objects=custom_objects)
        return cls(model, **config)


def make_private(
    model: keras.Model,
    *,
    l2_norm_clip: float,
    noise_multiplier: float,
    num_microbatches: int | None = None,
    clipping: str = "auto",
    adaptive_clipping: AdaptiveClipping | dict | bool | None = None,
    secure_noise: bool = False,
    seed: int | None = None,
    expected_batch_size: int | None = None,
) -> DPModel:
    """Wraps a built Keras model so that ``fit`` trains it with DP-SGD (compile with any optimizer, loss).

    Args:
        model: a built Keras model (Functional, Sequential or subclassed). Layers and weights are shared.
        l2_norm_clip: the L2 norm each record's gradient is clipped to (the initial clip when adaptive).
        noise_multiplier: the Gaussian noise std on the clipped sum, in units of the clip. With adaptive
            clipping, the total of the sum's and the clipped count's noise (see :class:`AdaptiveClipping`):
            the number to give :func:`tfe_lite.privacy.compute_epsilon` either way.
        num_microbatches: split each (per-replica) batch into this many microbatches of consecutive
            examples and clip each microbatch's mean gradient instead of each example's. ``None``: per
            example. It must divide every batch.
        clipping: ``"vectorized"`` (any model), ``"ghost"`` (Dense, Conv2D and Embedding layers only;
            faster where per-example gradients of other layers would be materialized), or ``"auto"``: ghost
            when the model is Functional or Sequential and every trainable layer allows it (each called
            once, no nested models), else vectorized. A subclassed model always gets the vectorized path
            under ``"auto"``, even when all its layers are Dense: ghost clipping rebuilds the model's graph
            with taps on each layer, and a subclassed ``call`` has no graph to rebuild (``"ghost"`` refuses
            it, naming the reason). Write the model as Functional or Sequential for ghost clipping; the
            vectorized path gives the same gradients. ``dp_model.clipping_method`` says which was chosen.
        adaptive_clipping: ``None`` for a fixed clip; ``True``, a dict of :class:`AdaptiveClipping` options or
            an :class:`AdaptiveClipping` for a clip that follows a quantile of the record norms.
        secure_noise: draw the noise with :class:`tfe_lite.privacy.noise.SecureNoise`: a fresh
            ``os.urandom`` key every step, float64, and the floating-point mitigation (about 5x the default
            draw; not XLA-compilable). The default source is ChaCha20 keyed from ``os.urandom`` (float32).
        seed: seed of the default noise source's key, for tests; ``None`` keys it from ``os.urandom``.
        expected_batch_size: divide the noised sum by this instead of the actual (global) number of
            records. Required to ``fit`` on :func:`tfe_lite.privacy.poisson_batches` (the Poisson bound
            assumes it: the realised batch size depends on the data). Batches of 0 examples apply a
            pure-noise update either way; without ``expected_batch_size`` its noise is divided by 1.

    Returns:
        A :class:`DPModel`.

    Raises:
        ConfigError: an invalid argument (the message names it and the received value).
        UnsupportedLayerError: layers without per-example gradients (all of them listed), or layers that
            ghost clipping cannot handle with ``clipping="ghost"``.
    """
    return DPModel(
        model,
        l2_norm_clip=l2_norm_clip,
        noise_multiplier=noise_multiplier,
        num_microbatches=num_microbatches,
        clipping=clipping,
        adaptive_clipping=adaptive_clipping,
        secure_noise=secure_noise,
        seed=seed,
        expected_batch_size=expected_batch_size,
    )
