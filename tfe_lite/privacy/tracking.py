"""How a DP model keeps its own privacy ledger while it trains (see :mod:`tfe_lite.privacy.ledger`).

:class:`PrivacyTracker` holds a step counter that ``train_step`` increments in the graph (so every entry
point counts: ``fit``, ``train_on_batch``, custom loops, under any ``tf.distribute`` strategy) and the
ledger of segments. ``fit`` tells it the sampling of its data before training and hands over the steps it
took when it returns (also when it fails or is interrupted); steps taken outside ``fit`` are taken in as
"arbitrary" batches whenever the ledger is read. The counter and the ledger are saved with the model's
weights and loaded with them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from tfe_lite.errors import ConfigError
from tfe_lite.privacy._validation import invalid
from tfe_lite.privacy.config import DPConfig
from tfe_lite.privacy.ledger import PrivacyLedger, Sampling, Segment

_STEPS_KEY = "dp_steps"
_LEDGER_KEY = "dp_privacy_ledger"


class PrivacyTracker:
    """The steps of one DP model and its ledger. ``clip`` returns the model's clip now (it moves with
    adaptive clipping). Create it where the model's variables are created (inside ``strategy.scope()``)."""

    def __init__(self, config: DPConfig, clip: Callable[[], float]) -> None:
        self._config = config
        self._clip = clip
        # Every replica counts the same steps: synchronized on read, "only first replica".
        self.counter = tf.Variable(
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

    @property
    def steps(self) -> int:
        return int(self.counter.numpy())

    def count_step(self) -> Any:
        """In ``train_step``: one more step."""
        return self.counter.assign_add(1)

    def _segment(self, sampling: Sampling, steps: int, entry: str = "fit") -> Segment:
        config = self._config
        adaptive = config.adaptive_clipping is not None
        return Segment(
            sampling=sampling,
            steps=int(steps),
            noise_multiplier=float(config.noise_multiplier),
            microbatching=config.num_microbatches is not None,
            l2_norm_clip=self._ledger_clip,
            count_noise_multiplier=config.count_noise_multiplier if adaptive else None,
            final_l2_norm_clip=self._clip() if adaptive else None,
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
        self._ledger_clip = self._clip()

    # ------------------------------------------------------------------------------------------------
    # fit

    def check_sampling(self, sampling: Sampling) -> None:
        """Poisson batches need the noised sum divided by the expected batch size (the bound assumes it)."""
        if sampling.kind != "poisson":
            return
        expected = self._config.expected_batch_size
        if expected is None:
            raise ConfigError(
                invalid(
                    "expected_batch_size",
                    f"{sampling.batch_size:g} (the batches' expected size) for a poisson_batches dataset",
                    None,
                )
                + ". Dividing the noised sum by the realised batch size, which depends on the data, is not "
                "the mechanism the Poisson bound is proven for: make the model with make_private(..., "
                f"expected_batch_size={sampling.batch_size:g})."
            )
        if expected != sampling.batch_size:
            warnings.warn(
                f"make_private(expected_batch_size={expected}) differs from the poisson_batches dataset's "
                f"expected_batch_size={sampling.batch_size:g}: the updates are scaled by "
                f"{sampling.batch_size / expected:.4g} (the accounting uses the dataset's sampling rate).",
                stacklevel=4,
            )

    def begin_fit(self, sampling: Sampling) -> None:
        steps = self.steps
        self._take_in_steps(steps)
        self._running = (sampling, steps)

    def end_fit(self) -> None:
        sampling, _ = self._running
        self._running = None
        self._take_in_steps(self.steps, sampling)

    @property
    def running_sampling(self) -> Sampling | None:
        return None if self._running is None else self._running[0]

    # ------------------------------------------------------------------------------------------------
    # The ledger

    def projected_ledger(self, fit_steps: int) -> PrivacyLedger:
        """The ledger once the running ``fit`` has taken ``fit_steps`` steps (the ledger outside ``fit``)."""
        if self._running is None:
            self._take_in_steps(self.steps)
            return self._ledger
        sampling, _ = self._running
        return self._ledger.add(self._segment(sampling, fit_steps))

    @property
    def ledger(self) -> PrivacyLedger:
        if self._running is None:
            return self.projected_ledger(0)
        return self.projected_ledger(self.steps - self._running[1])

    # ------------------------------------------------------------------------------------------------
    # Saving and loading, with the model's own variables

    def save(self, store: Any) -> None:
        self._take_in_steps(self.steps)  # a fit's steps are in once it returns
        store[_STEPS_KEY] = np.array(self._ledger_steps, np.int64)
        store[_LEDGER_KEY] = np.frombuffer(self._ledger.to_json().encode(), np.uint8)

    def load(self, store: Any) -> None:
        if _LEDGER_KEY not in store:
            warnings.warn(
                "The saved DPModel has no privacy ledger (it was saved by an older tfe_lite): the steps it "
                "trained before it was saved are not counted by privacy_spent.",
                stacklevel=3,
            )
            return
        self._ledger = PrivacyLedger.from_json(np.asarray(store[_LEDGER_KEY], np.uint8).tobytes().decode())
        self._ledger_steps = int(np.asarray(store[_STEPS_KEY]))
        self._ledger_clip = self._clip()
        self.counter.assign(self._ledger_steps)
