"""Membership-inference attacks: an empirical check of what a trained model leaks about its training set.

Two attacks, both scored as "higher means more likely a member" and evaluated by the ROC of members
(positives) against non-members (negatives):

* :func:`loss_threshold_attack` (Yeom et al., 2018): a training example tends to have a lower loss than
  an unseen one; the score is the negated loss.
* :func:`lira_attack`, the likelihood-ratio attack of Carlini et al., "Membership Inference Attacks From
  First Principles" (S&P 2022). Steps:

  1. train the target model on a random half of the data (or take a trained target and its membership);
  2. train ``K`` shadow models on random (about) halves, balanced so that every example is in exactly
     ``K // 2`` of them ("IN") and out of the rest ("OUT");
  3. for every model and example compute the logit-scaled confidence
     ``phi = log(p_y / (1 - p_y))``, which is close to Gaussian across models;
  4. fit, per example, a Gaussian to its IN and to its OUT confidences (means per example; the standard
     deviation pooled over all examples by default, which the paper recommends for few shadow models);
  5. score the target's confidence: online, ``log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out)``;
     offline (OUT models only), the one-sided ``(phi - mu_out) / s_out``.

The figure that matters for privacy is the true-positive rate at a low false-positive rate (0.1%, 1%):
AUC averages over thresholds that no attacker would use. A TPR at FPR ``a`` is only resolved when there
are at least ``1 / a`` non-members; :meth:`AttackResult.summary` marks those that are not.

These are *audits*, lower bounds on leakage: a weak attack result does not prove privacy; an
``(epsilon, delta)`` guarantee bounds every attack's TPR by ``exp(epsilon) * FPR + delta``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tfe_lite.errors import ConfigError, ShapeError

DEFAULT_FPRS = (0.001, 0.01, 0.1)
DEFAULT_FIT_KWARGS = {"epochs": 20, "batch_size": 32, "verbose": 0}
_MIN_STD = 1e-4  # keeps a per-example Gaussian from collapsing when all its shadow confidences agree


# ----------------------------------------------------------------------------------------------------
# ROC
# ----------------------------------------------------------------------------------------------------


def _scores_and_labels(scores, is_member) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(is_member).reshape(-1)
    if scores.shape != labels.shape:
        raise ShapeError(
            f"Expected one label per score. Received {scores.size} scores and {labels.size} labels."
        )
    if not np.all(np.isfinite(scores)):
        raise ConfigError("Received non-finite membership scores (NaN or infinity).")
    if labels.dtype != bool:
        if not np.all(np.isin(labels, (0, 1))):
            raise ConfigError("Expected membership labels to be booleans or 0/1.")
        labels = labels.astype(bool)
    if labels.all() or not labels.any():
        raise ConfigError("Expected both members and non-members; an ROC needs both classes.")
    return scores, labels


def roc_curve(scores, is_member) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` for predicting "member" when ``score >= threshold``.

    One point per distinct score, from ``(0, 0)`` (threshold ``inf``) to ``(1, 1)``; tied scores form a
    single point, so ties count half in the area, as in the Mann-Whitney statistic.
    """
    scores, labels = _scores_and_labels(scores, is_member)
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_positives = np.cumsum(labels)[last_of_group]
    false_positives = last_of_group + 1 - true_positives
    tpr = np.r_[0.0, true_positives / labels.sum()]
    fpr = np.r_[0.0, false_positives / (~labels).sum()]
    return fpr, tpr, np.r_[np.inf, scores[last_of_group]]


def roc_auc(scores, is_member) -> float:
    """Area under the ROC curve: the probability that a random member outscores a random non-member."""
    fpr, tpr, _ = roc_curve(scores, is_member)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def tpr_at_fpr(
    fpr: np.ndarray, tpr: np.ndarray, targets: Sequence[float] = DEFAULT_FPRS
) -> dict[float, float]:
    """The best true-positive rate among ROC points whose false-positive rate is at most each target."""
    return {float(a): float(tpr[fpr <= a].max()) for a in targets}


# ----------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AttackResult:
    """The outcome of a membership-inference attack.

    Attributes:
        name: The attack, e.g. ``"loss threshold"`` or ``"LiRA (online)"``.
        auc: Area under the ROC curve (0.5 is chance).
        tpr_at_fpr: True-positive rate at each false-positive rate in ``DEFAULT_FPRS`` (or as asked).
        advantage: ``max(tpr - fpr)``, the membership advantage of the best threshold.
        scores: Per-example scores, higher meaning "member".
        is_member: The ground truth for each score.
        details: Attack settings (shadow models, variant...).
    """

    name: str
    auc: float
    tpr_at_fpr: Mapping[float, float]
    advantage: float
    scores: np.ndarray = dataclasses.field(repr=False)
    is_member: np.ndarray = dataclasses.field(repr=False)
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_members(self) -> int:
        return int(self.is_member.sum())

    @property
    def num_nonmembers(self) -> int:
        return int((~self.is_member).sum())

    def summary(self) -> str:
        settings = ", ".join(f"{key}={value}" for key, value in self.details.items())
        lines = [
            f"{self.name}{f' ({settings})' if settings else ''}: "
            f"{self.num_members} members, {self.num_nonmembers} non-members",
            f"  AUC {self.auc:.3f}   membership advantage {self.advantage:.3f}",
        ]
        unresolved = False
        for rate, tpr in self.tpr_at_fpr.items():
            mark = ""
            if rate * self.num_nonmembers < 1:
                mark, unresolved = " *", True
            lines.append(f"  TPR at FPR {rate:.1%}: {tpr:.3f}{mark}")
        if unresolved:
            lines.append(f"  * fewer than 1/FPR non-members: the rate allows no false positive at all "
                         f"(resolution {1 / self.num_nonmembers:.2%})")
        return "\n".join(lines)


def evaluate_scores(
    scores, is_member, *, name: str = "attack", fprs: Sequence[float] = DEFAULT_FPRS,
    details: Mapping[str, Any] | None = None,
) -> AttackResult:
    """An :class:`AttackResult` for arbitrary membership scores (higher means member)."""
    scores, labels = _scores_and_labels(scores, is_member)
    fpr, tpr, _ = roc_curve(scores, labels)
    return AttackResult(
        name=name,
        auc=roc_auc(scores, labels),
        tpr_at_fpr=tpr_at_fpr(fpr, tpr, fprs),
        advantage=float(np.max(tpr - fpr)),
        scores=scores,
        is_member=labels,
        details=dict(details or {}),
    )


# ----------------------------------------------------------------------------------------------------
# Per-example statistics of a model
# ----------------------------------------------------------------------------------------------------


def _log_weights(outputs: np.ndarray, from_logits: bool) -> np.ndarray:
    """``(n, classes)`` unnormalised log-probabilities in float64; one sigmoid output becomes two classes."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim == 1:
        outputs = outputs[:, None]
    if outputs.shape[1] == 1:
        if from_logits:
            return np.concatenate([np.zeros_like(outputs), outputs], axis=1)
        outputs = np.concatenate([1 - outputs, outputs], axis=1)
    if from_logits:
        return outputs
    # Probabilities from a float32 softmax underflow to 0; clip at float32's smallest subnormal.
    return np.log(np.clip(outputs, 1e-45, 1.0))


def _label_statistics(outputs, labels, from_logits: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-example ``(loss, phi)``: cross-entropy and logit-scaled confidence of the true label.

    With log-weights ``w`` (logits, or log-probabilities): ``phi = w_y - logsumexp_{j != y} w_j`` is
    ``log(p_y / (1 - p_y))`` without forming ``1 - p_y``, and the loss ``-log p_y`` is
    ``log(1 + exp(-phi))``; both keep full precision when ``p_y`` is close to 1.
    """
    weights = _log_weights(outputs, from_logits)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if labels.shape[0] != weights.shape[0]:
        raise ShapeError(f"Expected one label per example. Received {labels.shape[0]} labels for "
                         f"{weights.shape[0]} predictions.")
    if labels.min() < 0 or labels.max() >= weights.shape[1]:
        raise ConfigError(f"Expected integer class labels in [0, {weights.shape[1]}). Received labels in "
                          f"[{labels.min()}, {labels.max()}].")
    rows = np.arange(labels.size)
    others = weights.copy()
    others[rows, labels] = -np.inf
    peak = others.max(axis=1)
    phi = weights[rows, labels] - (peak + np.log(np.exp(others - peak[:, None]).sum(axis=1)))
    return np.logaddexp(0.0, -phi), phi


def _predict(model, x, batch_size: int) -> np.ndarray:
    # Direct calls rather than `model.predict`: attacks query many small models once each, and
    # `predict` would trace a new function for every one of them.
    x = np.asarray(x)
    parts = [np.asarray(model(x[start:start + batch_size], training=False))
             for start in range(0, len(x), batch_size)]
    return np.concatenate(parts)


def per_example_loss(model, x, y, *, from_logits: bool = False, batch_size: int = 1024) -> np.ndarray:
    """Sparse categorical cross-entropy of each example under ``model`` (float64)."""
    return _label_statistics(_predict(model, x, batch_size), y, from_logits)[0]


def logit_scaled_confidence(model, x, y, *, from_logits: bool = False, batch_size: int = 1024) -> np.ndarray:
    """``log(p_y / (1 - p_y))`` of each example's true label under ``model`` (float64)."""
    return _label_statistics(_predict(model, x, batch_size), y, from_logits)[1]


# ----------------------------------------------------------------------------------------------------
# Loss threshold
# ----------------------------------------------------------------------------------------------------


def loss_threshold_attack(
    member_losses, nonmember_losses, *, fprs: Sequence[float] = DEFAULT_FPRS
) -> AttackResult:
    """Scores each example by its negated loss; members (training examples) should score higher."""
    members = np.asarray(member_losses, dtype=np.float64).reshape(-1)
    nonmembers = np.asarray(nonmember_losses, dtype=np.float64).reshape(-1)
    labels = np.r_[np.ones(members.size, bool), np.zeros(nonmembers.size, bool)]
    return evaluate_scores(-np.r_[members, nonmembers], labels, name="loss threshold", fprs=fprs)


def loss_threshold_attack_on_model(
    model, members: tuple, nonmembers: tuple, *, from_logits: bool = False,
    fprs: Sequence[float] = DEFAULT_FPRS,
) -> AttackResult:
    """:func:`loss_threshold_attack` on ``model``'s losses for ``members`` and ``nonmembers``, ``(x, y)``."""
    return loss_threshold_attack(
        per_example_loss(model, *members, from_logits=from_logits),
        per_example_loss(model, *nonmembers, from_logits=from_logits),
        fprs=fprs,
    )


# ----------------------------------------------------------------------------------------------------
# LiRA
# ----------------------------------------------------------------------------------------------------


def _balanced_halves(rng: np.random.Generator, num_models: int, num_examples: int) -> np.ndarray:
    """``(num_models, num_examples)`` membership: each example is IN for exactly ``num_models // 2``."""
    ranks = np.argsort(rng.random((num_models, num_examples)), axis=0)
    return ranks < num_models // 2


def _gaussian_fit(phi: np.ndarray, inside: np.ndarray, variance: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean and standard deviation of ``phi[k, i]`` over models ``k`` with ``inside[k, i]``."""
    counts = inside.sum(axis=0)
    means = np.where(inside, phi, 0.0).sum(axis=0) / counts
    residuals = np.where(inside, phi - means, 0.0)
    pooled = math.sqrt(float((residuals ** 2).sum()) / max(int(counts.sum()) - counts.size, 1))
    if variance == "global":
        return means, np.full_like(means, max(pooled, _MIN_STD))
    per_example = np.sqrt((residuals ** 2).sum(axis=0) / np.maximum(counts - 1, 1))
    # With a single sample an example has no variance estimate of its own: use the pooled one.
    return means, np.maximum(np.where(counts > 1, per_example, pooled), _MIN_STD)


def _log_normal_pdf(x, mean, std):
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * math.log(2 * math.pi)


def lira_scores(
    shadow_phi: np.ndarray, shadow_in: np.ndarray, target_phi: np.ndarray, *, online: bool = True,
    variance: str = "global",
) -> np.ndarray:
    """LiRA's membership scores from logit-scaled confidences (steps 4 and 5 of the module docstring).

    Args:
        shadow_phi: ``(K, n)`` confidences of every example under every shadow model.
        shadow_in: ``(K, n)`` booleans, whether example ``i`` was in shadow model ``k``'s training set; every
            example needs two OUT models (and two IN models when ``online``).
        target_phi: ``(n,)`` confidences under the target model.
        online: Likelihood ratio of IN and OUT Gaussians; ``False``: one-sided test against OUT only.
        variance: ``"global"`` or ``"per_example"`` standard deviations.
    """
    shadow_phi = np.asarray(shadow_phi, dtype=np.float64)
    shadow_in = np.asarray(shadow_in, dtype=bool)
    target_phi = np.asarray(target_phi, dtype=np.float64)
    if (shadow_phi.shape != shadow_in.shape or shadow_phi.ndim != 2
            or target_phi.shape != shadow_phi.shape[1:]):
        raise ShapeError(
            "Expected shadow_phi and shadow_in of shape (K, n) and target_phi of shape (n,). Received "
            f"{shadow_phi.shape}, {shadow_in.shape} and {target_phi.shape}."
        )
    needed = [~shadow_in, shadow_in] if online else [~shadow_in]
    if any(side.sum(axis=0).min() < 2 for side in needed):
        raise ConfigError(
            "Expected every example to be IN at least two shadow models and OUT of at least two."
        )
    mean_out, std_out = _gaussian_fit(shadow_phi, ~shadow_in, variance)
    if not online:
        return (target_phi - mean_out) / std_out
    mean_in, std_in = _gaussian_fit(shadow_phi, shadow_in, variance)
    return _log_normal_pdf(target_phi, mean_in, std_in) - _log_normal_pdf(target_phi, mean_out, std_out)


def _train(build_model, x, y, fit_kwargs, fit_fn):
    model = build_model()
    if fit_fn is not None:
        fit_fn(model, x, y)
    else:
        model.fit(x, y, **fit_kwargs)
    return model


def lira_attack(
    build_model: Callable[[], Any],
    x,
    y,
    *,
    num_shadow: int = 8,
    target_model=None,
    target_in=None,
    online: bool = True,
    variance: str = "global",
    from_logits: bool = False,
    fit_kwargs: Mapping[str, Any] | None = None,
    fit_fn: Callable[[Any, np.ndarray, np.ndarray], Any] | None = None,
    fprs: Sequence[float] = DEFAULT_FPRS,
    seed: int | None = None,
) -> AttackResult:
    """The likelihood-ratio attack (LiRA) of Carlini et al. (2022) against a model trained on half of ``x``.

    Args:
        build_model: Returns a fresh compiled Keras model (a DP one from ``make_private`` included); it is
            called once for the target (unless given) and once per shadow model.
        x, y: The attack's data universe; the target's members and non-members are both drawn from it.
            ``y`` holds integer class labels.
        num_shadow: Shadow models ``K`` (at least 4; each example is IN for ``K // 2`` of them, so that
            both Gaussians have two samples or more).
        target_model, target_in: A trained target and the boolean membership of every row of ``x`` in its
            training set. Without them, a target is trained on a random half.
        online: The online variant (IN and OUT Gaussians); ``False`` for the offline one-sided test.
        variance: ``"global"`` (one standard deviation pooled over examples, best for few shadows) or
            ``"per_example"``.
        from_logits: Whether the models output logits rather than probabilities.
        fit_kwargs: Keyword arguments of ``model.fit`` (default ``DEFAULT_FIT_KWARGS``).
        fit_fn: Instead of ``fit_kwargs``, ``fit_fn(model, x_train, y_train)`` trains a model (e.g. on
            Poisson batches).
        fprs: False-positive rates at which to report the true-positive rate.
        seed: Seeds the target split and the shadow halves (not the models' own initialisation).

    Returns:
        An :class:`AttackResult` over all rows of ``x``.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    problems = []
    if not callable(build_model):
        problems.append("Received an invalid value for `build_model`, expected a callable returning a "
                        f"compiled Keras model. Received: build_model={build_model!r}")
    if len(x) != len(y):
        raise ShapeError(
            f"Expected `x` and `y` with the same number of rows. Received {len(x)} and {len(y)}."
        )
    if len(x) < 4:
        problems.append(f"Received only {len(x)} examples; the attack needs at least 4.")
    if not (isinstance(num_shadow, (int, np.integer)) and not isinstance(num_shadow, bool)
            and num_shadow >= 4):
        problems.append(f"Received an invalid value for `num_shadow`, expected an integer >= 4. "
                        f"Received: num_shadow={num_shadow!r}")
    if variance not in ("global", "per_example"):
        problems.append(f"Received an invalid value for `variance`, expected 'global' or 'per_example'. "
                        f"Received: variance={variance!r}")
    if (target_model is None) != (target_in is None):
        problems.append("Expected `target_model` and `target_in` together (a trained target and its "
                        "membership) or neither.")
    if target_in is not None and np.shape(target_in) != (len(x),):
        problems.append(f"Expected `target_in` to hold one boolean per row of x ({len(x)}). "
                        f"Received shape {np.shape(target_in)}.")
    if fit_kwargs is not None and fit_fn is not None:
        problems.append("Received both `fit_kwargs` and `fit_fn`; pass one of them.")
    if problems:
        raise ConfigError("\n".join(problems))

    fit_kwargs = {**DEFAULT_FIT_KWARGS, **(fit_kwargs or {})}
    rng = np.random.default_rng(seed)
    if target_model is None:
        target_in = rng.permutation(len(x)) < len(x) // 2
        target_model = _train(build_model, x[target_in], y[target_in], fit_kwargs, fit_fn)
    target_in = np.asarray(target_in, dtype=bool)

    shadow_in = _balanced_halves(rng, int(num_shadow), len(x))
    shadow_phi = np.stack([
        logit_scaled_confidence(_train(build_model, x[inside], y[inside], fit_kwargs, fit_fn), x, y,
                                from_logits=from_logits)
        for inside in shadow_in
    ])
    target_phi = logit_scaled_confidence(target_model, x, y, from_logits=from_logits)
    scores = lira_scores(shadow_phi, shadow_in, target_phi, online=online, variance=variance)
    return evaluate_scores(
        scores, target_in, name=f"LiRA ({'online' if online else 'offline'})", fprs=fprs,
        details={"shadow_models": int(num_shadow), "variance": variance},
    )
