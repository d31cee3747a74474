"""What a DP model has trained, step by step, and the privacy that cost: the model's own accounting.

A :class:`PrivacyLedger` lists *segments*: runs of training steps with one batch sampling and one DP-SGD
configuration. :class:`tfe_lite.privacy.DPModel` counts every step its ``train_step`` takes (a counter in
the graph, so ``fit``, ``train_on_batch`` and custom loops all count) and records, for each ``fit`` call,
how its batches were drawn:

``"poisson"``
    ``fit`` got a dataset made by :func:`tfe_lite.privacy.poisson_batches` (unchanged: a ``.map`` or
    ``.repeat`` on it makes another dataset, which the model cannot see into). Each step includes each of
    the ``n`` examples independently with probability ``q = expected_batch_size / n``: the step is
    ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``.
``"shuffle"``
    ``fit`` got arrays (numpy, tensors, dicts of them), which Keras cuts into disjoint batches of
    ``batch_size``, each example once per pass (shuffled or not). A pass of ``ceil(n / batch_size)``
    steps costs each example at most one ``GaussianDpEvent(z)``; the segment costs ``ceil(steps /
    ceil(n / batch_size))`` of them. No amplification by sampling is claimed (none is proven for
    shuffled batches).
``"arbitrary"``
    Anything else: other datasets and generators, ``train_on_batch``, custom loops calling
    ``train_step``. The model cannot know which examples a batch held, so every step counts as one
    ``GaussianDpEvent(z)`` for every example: a proven bound, and a pessimistic one.

``z`` is the noise multiplier (with adaptive clipping, the total of the gradient sum's and the clipped
count's, which together cost exactly one Gaussian mechanism of multiplier ``z``; see
:class:`tfe_lite.privacy.AdaptiveClipping`), halved when microbatches hold several examples (the
sensitivity doubles). Segments compose. The ledger is saved and loaded with the model's weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import textwrap
from typing import Any

import dp_accounting

from tfe_lite.errors import ConfigError
from tfe_lite.privacy import accounting
from tfe_lite.privacy._validation import invalid, is_int, is_real, raise_if

SAMPLINGS = ("poisson", "shuffle", "arbitrary")

#: The version of the JSON form written by :meth:`PrivacyLedger.to_json`.
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the batches of a segment were drawn: ``kind`` (one of :data:`SAMPLINGS`), and for ``"poisson"``
    and ``"shuffle"`` the number of examples and the (expected) batch size."""

    kind: str
    num_examples: int | None = None
    batch_size: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in SAMPLINGS:
            raise ConfigError(invalid("sampling", f"one of {SAMPLINGS}", self.kind))
        sized = self.kind != "arbitrary"
        n, b = self.num_examples, self.batch_size
        if sized and not (is_int(n) and n > 0 and is_real(b) and 0 < b <= n):
            raise ConfigError(
                f"Expected {self.kind} sampling to have 0 < batch_size <= num_examples. "
                f"Received: num_examples={n!r}, batch_size={b!r}"
            )

    @property
    def steps_per_pass(self) -> int | None:
        """Shuffled batches: the steps of one pass over the data (Keras's batches per epoch)."""
        if self.kind != "shuffle":
            return None
        return math.ceil(self.num_examples / self.batch_size)

    def describe(self) -> str:
        if self.kind == "poisson":
            q = self.batch_size / self.num_examples
            return (f"Poisson sampling of {self.num_examples} examples, expected batch size "
                    f"{self.batch_size:g} (q = {q:.4g})")
        if self.kind == "shuffle":
            return (f"fixed-size batches of {self.batch_size:g} from {self.num_examples} examples, each once "
                    f"per pass of {self.steps_per_pass} steps")
        return "batches of unknown composition (each step may hold any example)"


@dataclasses.dataclass(frozen=True)
class Segment:
    """A run of ``steps`` training steps with one sampling and the DP-SGD settings in force."""

    sampling: Sampling
    steps: int
    noise_multiplier: float
    microbatching: bool
    l2_norm_clip: float
    #: Adaptive clipping: the clipped count's noise multiplier (its share of ``noise_multiplier``).
    count_noise_multiplier: float | None = None
    #: Adaptive clipping: the clip when the segment ended.
    final_l2_norm_clip: float | None = None
    #: Where the steps came from: ``"fit"`` or ``"outside fit"`` (``train_on_batch``, custom loops).
    entry: str = "fit"

    @property
    def effective_noise_multiplier(self) -> float:
        return self.noise_multiplier / 2 if self.microbatching else self.noise_multiplier

    @property
    def gaussians(self) -> int:
        """How many Gaussian mechanisms one example can be part of: the steps, or for shuffled batches the
        passes over the data."""
        if self.sampling.kind == "shuffle":
            return math.ceil(self.steps / self.sampling.steps_per_pass)
        return self.steps

    def event(self) -> dp_accounting.DpEvent:
        gaussian = dp_accounting.GaussianDpEvent(self.effective_noise_multiplier)
        if self.sampling.kind == "poisson":
            q = self.sampling.batch_size / self.sampling.num_examples
            return dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, gaussian), self.steps)
        return dp_accounting.SelfComposedDpEvent(gaussian, self.gaussians)

    def merges_with(self, other: Segment) -> bool:
        """Whether ``other`` continues this segment with the same event per step (not for shuffled
        batches, whose passes restart with every ``fit``)."""
        same = dataclasses.replace(other, steps=self.steps, final_l2_norm_clip=self.final_l2_norm_clip)
        return self.sampling.kind != "shuffle" and same == self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Segment:
        data = dict(data)
        return cls(sampling=Sampling(**data.pop("sampling")), **data)


def _check_query(delta: Any, accountant: Any) -> None:
    problems: list[str] = []
    accounting._check_delta(problems, delta)
    accounting._check_accountant(problems, accountant)
    raise_if(problems)


@dataclasses.dataclass(frozen=True)
class PrivacyLedger:
    """The segments a model trained, in order (see the module docstring)."""

    segments: tuple[Segment, ...] = ()

    @property
    def steps(self) -> int:
        return sum(segment.steps for segment in self.segments)

    def add(self, segment: Segment) -> PrivacyLedger:
        """The ledger with ``segment`` appended (merged into the last one when it continues it)."""
        if segment.steps == 0:
            return self
        if self.segments and self.segments[-1].merges_with(segment):
            last = self.segments[-1]
            merged = dataclasses.replace(
                last, steps=last.steps + segment.steps, final_l2_norm_clip=segment.final_l2_norm_clip
            )
            return PrivacyLedger(self.segments[:-1] + (merged,))
        return PrivacyLedger(self.segments + (segment,))

    def event(self) -> dp_accounting.DpEvent:
        """Every segment's event, composed (``NoOpDpEvent`` before any step)."""
        events = [segment.event() for segment in self.segments]
        if not events:
            return dp_accounting.NoOpDpEvent()
        return events[0] if len(events) == 1 else dp_accounting.ComposedDpEvent(events)

    def epsilon(self, delta: float, accountant: str = "rdp") -> float:
        """Example-level epsilon at ``delta`` of everything recorded (0 before any step, ``inf`` when a
        step had no noise)."""
        _check_query(delta, accountant)
        if not self.segments:
            return 0.0
        if any(segment.noise_multiplier == 0 for segment in self.segments):
            return math.inf
        new = accounting._new_accountant(accountant)
        return float(new.compose(self.event()).get_epsilon(float(delta)))

    def statement(self, delta: float) -> str:
        """The guarantee in words: each segment, what its bound assumes, and epsilon by both accountants."""
        _check_query(delta, "rdp")
        fill = lambda text: textwrap.fill(text, width=88)  # noqa: E731
        if not self.segments:
            return fill(f"No DP-SGD step has been taken: epsilon = 0 at delta = {delta:g}.") + "\n"
        lines = [fill(f"DP-SGD, {self.steps} steps in {len(self.segments)} segment(s):")]
        for i, segment in enumerate(self.segments, 1):
            lines.append(textwrap.fill(_describe(segment), width=88, initial_indent=f"{i:>3}. ",
                                       subsequent_indent="     "))
        eps = {acc: self.epsilon(delta, acc) for acc in accounting.ACCOUNTANTS}
        paragraphs = [
            "\n".join(lines),
            fill(
                f"Example-level DP with add-or-remove-one adjacency at delta = {delta:g}: "
                f"epsilon = {_number(eps['rdp'])} (RDP), {_number(eps['pld'])} (PLD, the tighter of the two "
                "upper bounds). The guarantee covers every intermediate model as well as the final one. It "
                "does not cover hyperparameter tuning on the same data, and it is not user-level: a person "
                "who contributed k examples is protected only through group privacy (roughly k times "
                "epsilon)."
            ),
        ]
        kinds = {segment.sampling.kind for segment in self.segments}
        if "poisson" in kinds:
            paragraphs.append(fill(
                "Poisson segments: a proven bound provided the batches really came from poisson_batches "
                "unchanged (each example included independently with probability q at every step), every "
                "step was taken even when its batch was empty, and the noised sum was divided by the "
                "expected batch size (make_private(expected_batch_size=...)), not the realised one."
            ))
        if "shuffle" in kinds:
            paragraphs.append(fill(
                "Fixed-size batches (fit on arrays): each example is in at most one batch per pass, so a "
                "pass costs at most one Gaussian mechanism; no amplification by sampling is claimed. The "
                "Poisson figure for the same schedule is NOT a bound for such batches (it is an "
                "assumption, and shuffling can be measurably less private: Chua et al., ICML 2024). Train on "
                "poisson_batches for the Poisson bound."
            ))
        if "arbitrary" in kinds:
            paragraphs.append(fill(
                "Segments with batches the model cannot see into (other datasets, train_on_batch, custom "
                "loops) count every step as one Gaussian mechanism on every example: proven, and "
                "pessimistic. Give fit the arrays, or poisson_batches, for tighter bounds."
            ))
        return "\n\n".join(paragraphs) + "\n"

    def to_json(self) -> str:
        return json.dumps({"version": FORMAT_VERSION, "segments": [s.to_dict() for s in self.segments]})

    @classmethod
    def from_json(cls, text: str) -> PrivacyLedger:
        data = json.loads(text)
        if data.get("version") != FORMAT_VERSION:
            raise ConfigError(
                f"Expected a privacy ledger of format version {FORMAT_VERSION}. "
                f"Received: version={data.get('version')!r}"
            )
        return cls(tuple(Segment.from_dict(s) for s in data["segments"]))


def _number(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "inf"


def _describe(segment: Segment) -> str:
    clip = f"clip {segment.l2_norm_clip:g}"
    if segment.count_noise_multiplier is not None:
        final = segment.final_l2_norm_clip
        clip = (f"adaptive clip from {segment.l2_norm_clip:g}" + (f" to {final:g}" if final is not None else "")
                + f", the unclipped count noised with multiplier {segment.count_noise_multiplier:g} (its "
                "share of the total)")
    micro = ", microbatches of several examples (sensitivity doubled: accounted with half the multiplier)" \
        if segment.microbatching else ""
    cost = (f"{segment.steps} Poisson-sampled steps" if segment.sampling.kind == "poisson"
            else f"{segment.gaussians} Gaussian mechanism(s) per example")
    return (f"{segment.steps} steps ({segment.entry}), {segment.sampling.describe()}; noise multiplier "
            f"{segment.noise_multiplier:g}, {clip}{micro}; costs {cost}.")
