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

Under ``tf.distribute`` each replica clips its own examples (a batch given whole to every replica, as
``train_on_batch`` does, is split between them first: :mod:`tfe_lite.privacy.replicas`). With a fixed clip the first replica adds the
noise to its local sum and the optimizer's all-reduce sums the replicas, so no other replica ever sees an
unnoised sum (as Opacus does). With adaptive clipping the query's state update needs the global clipped
count, so the replicas first all-reduce their sample states and then all apply the same noise, drawn on the
first replica and shared by an all-reduce. Either way the update equals single-device DP-SGD on the global
batch in distribution. Tested with MirroredStrategy (2 to 4 replicas, uneven and empty per-replica batches)
and with a two-process MultiWorkerMirroredStrategy driving ``train_step`` through ``strategy.run`` (Keras
3.15's ``fit`` itself fails under MultiWorkerMirroredStrategy for any model).

``evaluate``, ``predict``, callbacks, the progress bar and ``save``/``keras.models.load_model`` are Keras'
own; the wrapped model's layers and weights are shared, not copied.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import warnings
from typing import Any

import dp_accounting
import keras
import numpy as np
import tensorflow as tf
from keras.src.backend.common.masking import get_keras_mask
from keras.src.losses.loss import reduce_weighted_values

from tfe_lite.errors import ConfigError, UnsupportedLayerError
from tfe_lite.privacy import _tf_privacy, accounting
from tfe_lite.privacy.clipping import (
    CLIPPING_METHODS,
    GhostClipper,
    check_layers,
    ghost_blockers,
    make_clipper,
    vectorization_failure,
)
from tfe_lite.privacy.ledger import PrivacyLedger, Sampling, Segment
from tfe_lite.privacy.noise import make_noise_source
from tfe_lite.privacy.replicas import local_batch
from tfe_lite.privacy.sampling import fit_sampling


def _invalid(name: str, expected: str, value: Any) -> str:
    return f"Received an invalid value for `{name}`, expected {expected}. Received: {name}={value!r}"


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class AdaptiveClipping:
    """Options of adaptive clipping (tensorflow-privacy's ``QuantileAdaptiveClipSumQuery``).

    The clip moves towards the ``target_unclipped_quantile`` of record norms, estimated from a count of
    unclipped records noised with std ``clipped_count_stddev`` (default ``expected_num_records / 20``, the
    recommendation of Andrew et al. 2021). That count is a second Gaussian mechanism on the same records,
    with sensitivity 0.5, so noise multiplier ``z_count = 2 clipped_count_stddev``. The ``noise_multiplier``
    given to :func:`make_private` is the total: the gradient sum gets ``z_sum = (z^-2 - z_count^-2)^-1/2``,
    and the two mechanisms together cost exactly what one Gaussian mechanism with multiplier ``z`` costs
    (Andrew et al. 2021, sec. 3.1), so ``compute_epsilon(noise_multiplier=z, ...)`` accounts for both. This
    needs ``z_count > z``.

    Attributes:
        target_unclipped_quantile: fraction of records that should stay unclipped, in [0, 1].
        learning_rate: adaptation rate; with geometric updates the clip changes by at most ``exp(rate)``.
        clipped_count_stddev: noise std of the unclipped count; ``None`` for ``expected_num_records / 20``.
        expected_num_records: expected records per global batch; ``None`` to use ``expected_batch_size``.
        geometric_update: multiplicative (recommended) rather than additive updates.
    """

    target_unclipped_quantile: float = 0.5
    learning_rate: float = 0.2
    clipped_count_stddev: float | None = None
    expected_num_records: float | None = None
    geometric_update: bool = True

    def __post_init__(self) -> None:
        problems = []
        q = self.target_unclipped_quantile
        if not _is_real(q) or not 0 <= q <= 1:
            problems.append(_invalid("target_unclipped_quantile", "a float in [0, 1]", q))
        if not _is_real(self.learning_rate) or self.learning_rate < 0:
            problems.append(_invalid("learning_rate", "a non-negative float", self.learning_rate))
        stddev = self.clipped_count_stddev
        if stddev is not None and (not _is_real(stddev) or stddev < 0):
            problems.append(_invalid("clipped_count_stddev", "a non-negative float or None", stddev))
        records = self.expected_num_records
        if records is not None and (not _is_real(records) or records <= 0):
            problems.append(_invalid("expected_num_records", "a positive number or None", records))
        if not isinstance(self.geometric_update, bool):
            problems.append(_invalid("geometric_update", "a bool", self.geometric_update))
        if problems:
            raise ConfigError("\n".join(problems))


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """The validated DP-SGD settings of a :class:`DPModel` (see :func:`make_private` for their meaning)."""

    l2_norm_clip: float
    noise_multiplier: float
    num_microbatches: int | None = None
    clipping: str = "auto"
    adaptive_clipping: AdaptiveClipping | None = None
    secure_noise: bool = False
    seed: int | None = None
    expected_batch_size: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not _is_real(self.l2_norm_clip) or self.l2_norm_clip <= 0:
            problems.append(_invalid("l2_norm_clip", "a positive float", self.l2_norm_clip))
        if not _is_real(self.noise_multiplier) or self.noise_multiplier < 0:
            problems.append(_invalid("noise_multiplier", "a non-negative float", self.noise_multiplier))
        m = self.num_microbatches
        if m is not None and (not _is_int(m) or m < 1):
            problems.append(_invalid("num_microbatches", "a positive integer or None", m))
        if self.clipping not in CLIPPING_METHODS:
            problems.append(_invalid("clipping", f"one of {CLIPPING_METHODS}", self.clipping))
        adaptive = self.adaptive_clipping
        if adaptive is not None and not isinstance(adaptive, AdaptiveClipping):
            problems.append(_invalid("adaptive_clipping", "None or an AdaptiveClipping", adaptive))
        if not isinstance(self.secure_noise, bool):
            problems.append(_invalid("secure_noise", "a bool", self.secure_noise))
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            problems.append(_invalid("seed", "a non-negative integer or None", self.seed))
        if self.secure_noise is True and self.seed is not None:
            problems.append(
                _invalid("seed", "None with secure_noise=True (secure noise cannot be seeded)", self.seed)
            )
        size = self.expected_batch_size
        if size is not None and (not _is_int(size) or size < 1):
            problems.append(_invalid("expected_batch_size", "a positive integer or None", size))
        elif size is not None and m is not None:
            problems.append(
                _invalid(
                    "expected_batch_size", "None when num_microbatches is set (Poisson batches vary)", size
                )
            )
        if (
            isinstance(adaptive, AdaptiveClipping)
            and adaptive.expected_num_records is None
            and size is None
        ):
            problems.append(
                _invalid(
                    "adaptive_clipping",
                    "expected_num_records, or expected_batch_size given to make_private",
                    adaptive,
                )
            )
        elif (
            isinstance(adaptive, AdaptiveClipping)
            and _is_real(self.noise_multiplier)
            and self.noise_multiplier > 0
            and self.count_noise_multiplier <= self.noise_multiplier
        ):
            problems.append(
                _invalid(
                    "clipped_count_stddev",
                    f"more than noise_multiplier / 2 = {self.noise_multiplier / 2:g} (the noised count alone "
                    "would cost more privacy than noise_multiplier allows for both; default: "
                    "expected_num_records / 20)",
                    self.count_stddev,
                )
            )
        if problems:
            raise ConfigError("\n".join(problems))

    @property
    def expected_num_records(self) -> float | None:
        """Adaptive clipping's expected records per global batch (``None`` for a fixed clip)."""
        adaptive = self.adaptive_clipping
        return None if adaptive is None else adaptive.expected_num_records or self.expected_batch_size

    @property
    def count_stddev(self) -> float | None:
        """Adaptive clipping's noise std on the unclipped count (``None`` for a fixed clip)."""
        adaptive = self.adaptive_clipping
        if adaptive is None:
            return None
        if adaptive.clipped_count_stddev is not None:
            return adaptive.clipped_count_stddev
        return self.expected_num_records / 20

    @property
    def count_noise_multiplier(self) -> float | None:
        """Adaptive clipping's count mechanism: ``2 clipped_count_stddev`` (sensitivity 0.5)."""
        stddev = self.count_stddev
        return None if stddev is None else 2.0 * stddev

    @property
    def sum_noise_multiplier(self) -> float:
        """The gradient sum's noise multiplier: ``noise_multiplier``, less the share adaptive clipping's
        count takes (see :class:`AdaptiveClipping`)."""
        count = self.count_noise_multiplier
        if count is None or self.noise_multiplier == 0:
            return float(self.noise_multiplier)
        return accounting.split_noise_multiplier(self.noise_multiplier, count)

    def to_dict(self) -> dict[str, Any]:
        config = dataclasses.asdict(self)
        return config

    @classmethod
    def from_arguments(cls, adaptive_clipping: Any = None, **kwargs: Any) -> DPConfig:
        """Builds the config, accepting ``adaptive_clipping`` as None, True, a dict or AdaptiveClipping."""
        if adaptive_clipping is True:
            adaptive_clipping = AdaptiveClipping()
        elif adaptive_clipping is False:
            adaptive_clipping = None
        elif isinstance(adaptive_clipping, dict):
            unknown = set(adaptive_clipping) - {f.name for f in dataclasses.fields(AdaptiveClipping)}
            if unknown:
                raise ConfigError(
                    _invalid("adaptive_clipping", "AdaptiveClipping options only", adaptive_clipping)
                    + f" (unknown options: {sorted(unknown)})"
                )
            adaptive_clipping = AdaptiveClipping(**adaptive_clipping)
        return cls(adaptive_clipping=adaptive_clipping, **kwargs)


def _resolve(path: tuple, structure: Any) -> Any:
    for key in path:
        structure = structure[key]
    return structure


def _unreduced_loss(loss: keras.losses.Loss, y_true: Any, y_pred: Any, sample_weight: Any) -> tf.Tensor:
    """``loss`` of each example: Keras' ``Loss.__call__`` without the batch reduction, then the mean
    over the remaining (non-batch) axes, so that the batch mean equals Keras' default reduction when no
    mask is used."""
    in_mask = get_keras_mask(y_pred)
    y_pred = keras.ops.convert_to_tensor(y_pred, dtype=loss.dtype)
    y_true = keras.ops.convert_to_tensor(y_true, dtype=loss.dtype)
    values = loss.call(y_true, y_pred)
    out_mask = get_keras_mask(values)
    masks = [m for m in (in_mask, out_mask) if m is not None]
    mask = None if not masks else masks[0] if len(masks) == 1 else masks[0] & masks[1]
    values = reduce_weighted_values(values, sample_weight, mask=mask, reduction="none", dtype=loss.dtype)
    if values.shape.rank == 0:
        raise ConfigError(
            f"The loss {loss.name!r} returns one value per batch; DP-SGD needs a loss with one value per "
            "example (Keras losses' `call` returns per-example values)."
        )
    if values.shape.rank > 1:
        values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
    return values


_STEPS_KEY = "dp_steps"
_LEDGER_KEY = "dp_privacy_ledger"


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
        adaptive = config.adaptive_clipping
        noise = make_noise_source(secure=config.secure_noise, seed=config.seed, shared=adaptive is not None)
        if adaptive is None:
            self._query = _tf_privacy.gaussian_sum_query(config.l2_norm_clip, config.noise_multiplier, noise)
        else:
            self._query = _tf_privacy.adaptive_clip_sum_query(
                config.l2_norm_clip,
                config.sum_noise_multiplier,
                target_unclipped_quantile=adaptive.target_unclipped_quantile,
                learning_rate=adaptive.learning_rate,
                clipped_count_stddev=config.count_stddev,
                expected_num_records=config.expected_num_records,
                geometric_update=adaptive.geometric_update,
                noise=noise,
            )
        self._state_variables = [
            self.add_weight(
                shape=(),
                dtype=leaf.dtype.name,
                initializer=keras.initializers.Constant(float(leaf)),
                trainable=False,
                aggregation="only_first_replica",
                name=f"dp_query_state_{i}",
            )
            for i, leaf in enumerate(tf.nest.flatten(self._query.initial_global_state()))
        ]
        # Steps taken by train_step, however it is called; every replica counts the same steps.
        self._step_counter = tf.Variable(
            np.int64(0),
            name="dp_steps",
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        self._ledger = PrivacyLedger()
        self._ledger_steps = 0  # the counter's value when the ledger last took its steps in
        self._ledger_clip = float(config.l2_norm_clip)  # the clip then
        self._running: tuple[Sampling, int] | None = None  # the running fit's sampling and first step
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
        params = self._query.derive_sample_params(self._global_state())
        return float(_tf_privacy.clip_norm(self._query, params))

    def dp_event(self) -> dp_accounting.DpEvent:
        """The privacy event of one step before batch sampling, as tensorflow-privacy's query reports it.

        A Gaussian mechanism with ``noise_multiplier``. With adaptive clipping, the gradient sum's mechanism
        (``sum_noise_multiplier``) composed with the noised unclipped count's (sensitivity 0.5, hence
        multiplier ``2 clipped_count_stddev``); together they cost what ``GaussianDpEvent(noise_multiplier)``
        costs. An accountant wraps it in the sampling event (Poisson or fixed-size) and composes it over
        steps.
        """
        config = self._dp_config
        gradient = dp_accounting.GaussianDpEvent(config.sum_noise_multiplier)
        if config.adaptive_clipping is None:
            return gradient
        count = dp_accounting.GaussianDpEvent(config.count_noise_multiplier)
        return dp_accounting.ComposedDpEvent([gradient, count])

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return self.inner(inputs, training=training)

    # ----------------------------------------------------------------------------------------------------
    # Accounting: the steps that ran, with the sampling they used

    @property
    def steps_taken(self) -> int:
        """DP-SGD steps taken: by ``fit``, ``train_on_batch`` or custom loops, across save and load."""
        return int(self._step_counter.numpy())

    def _segment(self, sampling: Sampling, steps: int, entry: str = "fit") -> Segment:
        config = self._dp_config
        adaptive = config.adaptive_clipping is not None
        return Segment(
            sampling=sampling,
            steps=int(steps),
            noise_multiplier=float(config.noise_multiplier),
            microbatching=config.num_microbatches is not None,
            l2_norm_clip=self._ledger_clip,
            count_noise_multiplier=config.count_noise_multiplier if adaptive else None,
            final_l2_norm_clip=self.l2_norm_clip if adaptive else None,
            entry=entry,
        )

    def _take_in_steps(self, steps: int, sampling: Sampling | None = None) -> None:
        """Records the steps since the ledger last looked: the ones of a ``fit`` with ``sampling``, or
        (``None``) the ones taken outside ``fit``."""
        new = steps - self._ledger_steps
        if new > 0:
            entry = "fit" if sampling is not None else "outside fit"
            self._ledger = self._ledger.add(self._segment(sampling or Sampling("arbitrary"), new, entry))
        self._ledger_steps = steps
        self._ledger_clip = self.l2_norm_clip

    @property
    def running_sampling(self) -> Sampling | None:
        """The sampling of the batches the running ``fit`` trains on (``None`` outside ``fit``)."""
        return None if self._running is None else self._running[0]

    def projected_ledger(self, fit_steps: int) -> PrivacyLedger:
        """The ledger once the running ``fit`` has taken ``fit_steps`` steps (the ledger outside ``fit``)."""
        if self._running is None:
            self._take_in_steps(self.steps_taken)
            return self._ledger
        sampling, _ = self._running
        return self._ledger.add(self._segment(sampling, fit_steps))

    @property
    def privacy_ledger(self) -> PrivacyLedger:
        """Every step trained so far (the running ``fit``'s too), with its sampling, noise and clip."""
        if self._running is None:
            return self.projected_ledger(0)
        return self.projected_ledger(self.steps_taken - self._running[1])

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
                    "jit_compile", "False with secure_noise=True (its per-step os.urandom key cannot be XLA-compiled)", True
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
        self._check_sampling(sampling)
        self._check_batches(x, batch_size, validation_split)
        steps = self.steps_taken
        self._take_in_steps(steps)
        self._running = (sampling, steps)
        try:
            return super().fit(x, y, batch_size, *args, **kwargs)
        except tf.errors.OpError as error:
            failure = vectorization_failure(error, self.inner)
            if failure is None:
                raise
            raise failure from error
        finally:
            self._running = None
            self._take_in_steps(self.steps_taken, sampling)

    def _check_sampling(self, sampling: Sampling) -> None:
        """Poisson batches need the noised sum divided by the expected batch size (the bound assumes it)."""
        if sampling.kind != "poisson":
            return
        expected = self._dp_config.expected_batch_size
        if expected is None:
            raise ConfigError(
                _invalid("expected_batch_size", f"{sampling.batch_size:g} (the batches' expected size) for "
                         "a poisson_batches dataset", None)
                + ". Dividing the noised sum by the realised batch size, which depends on the data, is not "
                "the mechanism the Poisson bound is proven for: make the model with make_private(..., "
                f"expected_batch_size={sampling.batch_size:g})."
            )
        if expected != sampling.batch_size:
            warnings.warn(
                f"make_private(expected_batch_size={expected}) differs from the poisson_batches dataset's "
                f"expected_batch_size={sampling.batch_size:g}: the updates are scaled by "
                f"{sampling.batch_size / expected:.4g} (the accounting uses the dataset's sampling rate).",
                stacklevel=3,
            )

    def _check_batches(self, x: Any, batch_size: int | None, validation_split: float) -> None:
        """Checks before training that ``num_microbatches`` divides every batch, where sizes are known."""
        m = self._dp_config.num_microbatches
        if m is None or x is None:
            return
        if isinstance(x, tf.data.Dataset):
            sizes = {spec.shape[0] for spec in tf.nest.flatten(x.element_spec) if spec.shape.rank}
            sizes.discard(None)
            bad = sorted(s for s in sizes if s % m)
            if bad:
                raise ConfigError(
                    _invalid("num_microbatches", "a divisor of every batch size", m)
                    + f" with dataset batches of {bad[0]} examples"
                )
            return
        first = tf.nest.flatten(x)[0]
        if not hasattr(first, "shape") or not len(first.shape):
            return
        examples = int(first.shape[0] * (1.0 - validation_split)) if validation_split else int(first.shape[0])
        size = batch_size or 32
        last = examples % size
        if size % m or last % m:
            where = f"batch_size={size}" + (f" ({last} examples in the last batch)" if last else "")
            raise ConfigError(
                _invalid("num_microbatches", "a divisor of every batch size", m) + f" with {where}"
            )

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        # Keras builds metrics from a template batch that it gets by averaging the replicas' first batches,
        # which fails when replicas hold different numbers of examples (a global batch that does not split
        # evenly, or a Poisson-sampled one). Any one replica's batch is as good a template.
        strategy = self._distribute_strategy
        if strategy is None or iterator is None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            data_batch = tf.nest.map_structure(
                lambda v: strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues)
                else v,
                next(batches),
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    # ----------------------------------------------------------------------------------------------------
    # The DP-SGD step

    def _per_output_losses(self, y: Any, y_pred: Any, sample_weight: Any) -> list[tuple[tf.Tensor, Any]]:
        """Each compiled loss of each example, unweighted, with its loss weight: ``[([batch], weight)]``."""
        if y is None:
            raise ConfigError(
                "DP-SGD needs targets `y`: the per-example loss compares them with predictions."
            )
        compile_loss = self._compile_loss
        if not compile_loss.built:
            compile_loss.build(y, y_pred)
        nested = tf.nest.is_nested(sample_weight)
        return [
            (
                _unreduced_loss(
                    loss,
                    _resolve(path, y),
                    _resolve(path, y_pred),
                    _resolve(path, sample_weight) if nested else sample_weight,
                ),
                weight,
            )
            for path, loss, weight, _ in compile_loss._flat_losses
        ]

    def _per_example_loss(self, y: Any, y_pred: Any, sample_weight: Any) -> tf.Tensor:
        """The compiled loss of each example (loss-weighted sum over outputs), shape ``[batch]``."""
        weighted = [
            values if weight is None else values * weight
            for values, weight in self._per_output_losses(y, y_pred, sample_weight)
        ]
        return tf.add_n(weighted)

    def _update_output_loss_metrics(self, y: Any, y_pred: Any, sample_weight: Any, batch: tf.Tensor) -> None:
        """Keras' per-output loss metrics (models with several losses), from the batch's predictions."""
        metrics = self._compile_loss.metrics
        if not metrics:
            return
        for (values, _), metric in zip(self._per_output_losses(y, y_pred, sample_weight), metrics):
            mean = tf.math.divide_no_nan(tf.reduce_sum(values), tf.cast(batch, values.dtype))
            metric.update_state(mean, sample_weight=batch)

    def _global_state(self) -> Any:
        template = self._query.initial_global_state()
        return tf.nest.pack_sequence_as(template, [tf.convert_to_tensor(v) for v in self._state_variables])

    def _noised_mean(self, sample: Any, global_state: Any, records: tf.Tensor) -> tuple[list, tf.Tensor]:
        """The noised sum divided by the global record count, per replica, ready for the optimizer's
        cross-replica sum; and the query's clip for the next step."""
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        expected = self._dp_config.expected_batch_size
        if _tf_privacy.has_adaptive_state(self._query):
            if replicas > 1:
                sample, records = context.all_reduce(tf.distribute.ReduceOp.SUM, (sample, records))
            noised, new_state, _ = self._query.get_noised_result(sample, global_state)
            for variable, value in zip(self._state_variables, tf.nest.flatten(new_state)):
                variable.assign(value)
            share = float(replicas)  # every replica holds the same noised sum
        else:
            noised, new_state, _ = self._query.get_noised_result(sample, global_state)
            if replicas > 1 and expected is None:
                records = context.all_reduce(tf.distribute.ReduceOp.SUM, records)
            share = 1.0  # noise only on the first replica: the replicas' sum is the noised global sum
        denominator = float(expected) if expected is not None else tf.maximum(records, 1.0)
        grads = [g / (tf.cast(denominator, g.dtype) * share) for g in tf.nest.flatten(noised)]
        next_clip = _tf_privacy.clip_norm(self._query, self._query.derive_sample_params(new_state))
        return grads, next_clip

    def train_step(self, data: Any) -> dict[str, Any]:
        if self._clipper is None:
            raise ConfigError("Call `compile` before training a DPModel.")
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(local_batch(data))
        self._step_counter.assign_add(1)
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
        global_state = self._global_state()
        params = self._query.derive_sample_params(global_state)
        clip = _tf_privacy.clip_norm(self._query, params)

        result = self._clipper(x, y, sample_weight)
        norms = result.norms
        clip = tf.cast(clip, norms.dtype)
        factors = tf.math.divide_no_nan(clip, tf.maximum(norms, clip))
        clipped_sum = result.weighted_sum(factors)
        sample = _tf_privacy.sample_state(self._query, params, clipped_sum, norms)
        records = tf.cast(tf.size(norms), tf.float32)
        grads, next_clip = self._noised_mean(sample, global_state, records)

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
        self._update_output_loss_metrics(y, result.y_pred, sample_weight, batch)
        logs = self.compute_metrics(x, y, result.y_pred, sample_weight=sample_weight)
        if self._dp_config.adaptive_clipping is not None:
            logs["l2_norm_clip"] = next_clip
        return logs

    # ----------------------------------------------------------------------------------------------------
    # Serialization: the ledger and the step counter travel with the weights

    def save_own_variables(self, store: Any) -> None:
        super().save_own_variables(store)
        self._take_in_steps(self.steps_taken)  # a fit's steps are in once it returns
        store[_STEPS_KEY] = np.array(self._ledger_steps, np.int64)
        store[_LEDGER_KEY] = np.frombuffer(self._ledger.to_json().encode(), np.uint8)

    def load_own_variables(self, store: Any) -> None:
        variables = self._trainable_variables + self._non_trainable_variables
        for i, variable in enumerate(variables):
            variable.assign(store[f"{i}"])
        if _LEDGER_KEY not in store:
            warnings.warn(
                "The saved DPModel has no privacy ledger (it was saved by an older tfe_lite): the steps it "
                "trained before it was saved are not counted by privacy_spent.",
                stacklevel=2,
            )
            return
        self._ledger = PrivacyLedger.from_json(np.asarray(store[_LEDGER_KEY], np.uint8).tobytes().decode())
        self._ledger_steps = int(np.asarray(store[_STEPS_KEY]))
        self._ledger_clip = self.l2_norm_clip
        self._step_counter.assign(self._ledger_steps)

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
