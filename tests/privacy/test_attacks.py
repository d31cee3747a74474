"""Membership-inference attacks: the ROC against scikit-learn, and both attacks on real (tiny) models."""

import time

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn import metrics

from tfe_lite.datasets import load_digits
from tfe_lite.errors import ConfigError, ShapeError
from tfe_lite.privacy import attacks


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 60),
    levels=st.integers(2, 8),  # few distinct scores: many ties
    seed=st.integers(0, 2**31),
)
def test_roc_matches_sklearn(n, levels, seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.5
    labels[:2] = [True, False]
    scores = rng.integers(0, levels, n) + 0.3 * labels
    fpr, tpr, thresholds = attacks.roc_curve(scores, labels)
    ref_fpr, ref_tpr, ref_thresholds = metrics.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_allclose(thresholds[1:], ref_thresholds[1:])
    assert attacks.roc_auc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)


def test_tpr_at_fpr_and_perfect_separation():
    scores = np.r_[np.arange(10, 20), np.arange(10)]
    labels = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    result = attacks.evaluate_scores(scores, labels, fprs=(0.0, 0.1))
    assert result.auc == 1.0 and result.advantage == 1.0
    assert result.tpr_at_fpr == {0.0: 1.0, 0.1: 1.0}
    # Reversed: no threshold catches a member without catching every non-member first.
    flipped = attacks.evaluate_scores(-scores, labels, fprs=(0.5,))
    assert flipped.auc == 0.0 and flipped.tpr_at_fpr == {0.5: 0.0}
    # One overlap: the best TPR at FPR <= 10% (one false positive among ten) is 100%.
    fpr, tpr, _ = attacks.roc_curve([3, 2, 1.5, 1, 0], [True, True, False, True, False])
    assert attacks.tpr_at_fpr(fpr, tpr, (0.0, 0.5, 1.0)) == {0.0: pytest.approx(2 / 3), 0.5: 1.0, 1.0: 1.0}


def test_label_statistics_against_a_float64_oracle():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [30.0, -30.0, 0.0]])
    labels = np.array([0, 1, 0])
    # With r = sum over j != y of exp(z_j - z_y): loss = log(1 + r) and phi = log(p / (1 - p)) = -log(r).
    others = np.exp(logits - logits[np.arange(3), labels][:, None])
    others[np.arange(3), labels] = 0.0
    r = others.sum(axis=1)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for outputs, from_logits in ((logits, True), (p, False)):
        loss, phi = attacks._label_statistics(outputs, labels, from_logits)
        # Probabilities near 1 are stored to float64 precision only: absolute error up to ~1e-16 in the loss.
        np.testing.assert_allclose(loss, np.log1p(r), rtol=1e-9, atol=0 if from_logits else 1e-15)
        np.testing.assert_allclose(phi, -np.log(r), rtol=1e-9)
    # A single sigmoid output: class 1 has logit z, class 0 has -z.
    z = np.array([[1.5], [-0.5]])
    loss, phi = attacks._label_statistics(z, np.array([1, 1]), from_logits=True)
    np.testing.assert_allclose(phi, [1.5, -0.5])


def test_lira_scores_on_synthetic_gaussians():
    # Members' confidences are shifted up by 1 in every model; shadow and target draw from the same law.
    rng = np.random.default_rng(0)
    k, n = 16, 2000
    base = rng.normal(0, 2, n)
    shadow_in = attacks._balanced_halves(rng, k, n)
    assert np.all(shadow_in.sum(axis=0) == k // 2)
    shadow_phi = base + 1.0 * shadow_in + rng.normal(0, 0.5, (k, n))
    target_in = rng.random(n) < 0.5
    target_phi = base + 1.0 * target_in + rng.normal(0, 0.5, n)
    # The oracle: the true likelihood ratio of N(base + 1, 0.5) against N(base, 0.5).
    oracle = stats.norm.logpdf(target_phi, base + 1, 0.5) - stats.norm.logpdf(target_phi, base, 0.5)
    oracle_auc = attacks.roc_auc(oracle, target_in)
    for online in (True, False):
        for variance in ("global", "per_example"):
            scores = attacks.lira_scores(shadow_phi, shadow_in, target_phi, online=online, variance=variance)
            assert attacks.roc_auc(scores, target_in) > oracle_auc - 0.03
    # The loss-like baseline that ignores per-example difficulty is much weaker.
    assert attacks.roc_auc(target_phi, target_in) < oracle_auc - 0.2


def test_lira_scores_needs_two_models_each_side():
    with pytest.raises(ConfigError, match="at least two"):
        attacks.lira_scores(np.zeros((2, 3)), np.array([[True] * 3, [False] * 3]), np.zeros(3))
    with pytest.raises(ShapeError):
        attacks.lira_scores(np.zeros((4, 3)), np.zeros((4, 2), bool), np.zeros(3))


def _digits(noise, seed=0):
    (x_train, y_train), (x_test, y_test) = load_digits(flatten=True, seed=seed)
    rng = np.random.default_rng(seed)
    x = np.r_[x_train, x_test]
    return (x + noise * rng.normal(size=x.shape)).astype(np.float32), np.r_[y_train, y_test]


def _mlp():
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_loss_threshold_separates_an_overfit_model_from_an_untrained_one():
    keras.utils.set_random_seed(0)
    x, y = _digits(noise=0.5)
    members, nonmembers = (x[:300], y[:300]), (x[300:600], y[300:600])
    overfit = _mlp()
    overfit.fit(*members, epochs=60, batch_size=50, verbose=0)
    leaky = attacks.loss_threshold_attack_on_model(overfit, members, nonmembers, from_logits=True)
    blind = attacks.loss_threshold_attack_on_model(_mlp(), members, nonmembers, from_logits=True)
    # Under no leakage the AUC of 300 vs 300 examples has standard deviation 0.024.
    assert leaky.auc > 0.7
    assert abs(blind.auc - 0.5) < 0.1
    assert leaky.tpr_at_fpr[0.1] > blind.tpr_at_fpr[0.1]
    assert attacks.loss_threshold_attack(
        attacks.per_example_loss(overfit, *members, from_logits=True),
        attacks.per_example_loss(overfit, *nonmembers, from_logits=True),
    ).auc == leaky.auc
    text = leaky.summary()
    assert "loss threshold" in text and "300 members, 300 non-members" in text and "TPR at FPR 0.1%" in text
    assert "*" in text  # 300 non-members cannot resolve an FPR of 0.1%


@pytest.mark.slow
def test_lira_end_to_end_on_tiny_data():
    x, y = _digits(noise=0.0)
    x, y = x[:400], y[:400]
    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    result = attacks.lira_attack(_mlp, x, y, num_shadow=4, from_logits=True, seed=0,
                                 fit_kwargs={"epochs": 40, "batch_size": 50})
    assert result.num_members == 200 and result.num_nonmembers == 200
    assert result.auc > 0.6
    assert set(result.tpr_at_fpr) == set(attacks.DEFAULT_FPRS)
    assert "LiRA (online)" in result.summary() and "shadow_models=4" in result.summary()
    assert time.perf_counter() - start < 120


def test_lira_with_a_given_target_and_fit_fn():
    x, y = _digits(noise=0.0)
    x, y = x[:80], y[:80]
    trained = []

    def fit_fn(model, x_train, y_train):
        trained.append(len(x_train))
        model.fit(x_train, y_train, epochs=2, batch_size=40, verbose=0)

    target = _mlp()
    target_in = np.arange(80) < 40
    fit_fn(target, x[target_in], y[target_in])
    result = attacks.lira_attack(_mlp, x, y, num_shadow=4, target_model=target, target_in=target_in,
                                 from_logits=True, fit_fn=fit_fn, online=False, seed=1)
    # The target, then four shadow models; each example is in exactly two of them (about half each).
    assert trained[0] == 40 and len(trained) == 5 and sum(trained[1:]) == 2 * 80
    assert result.name == "LiRA (offline)" and result.scores.shape == (80,)
    np.testing.assert_array_equal(result.is_member, target_in)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_shadow": 2}, "Received: num_shadow=2"),
        ({"variance": "local"}, "Received: variance='local'"),
        ({"target_in": np.ones(8, bool)}, "together"),
        ({"fit_kwargs": {}, "fit_fn": print}, "both `fit_kwargs` and `fit_fn`"),
    ],
)
def test_lira_invalid_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        attacks.lira_attack(_mlp, np.zeros((8, 64)), np.zeros(8, int), **kwargs)


def test_scores_need_both_classes_and_finite_values():
    with pytest.raises(ConfigError, match="both members and non-members"):
        attacks.evaluate_scores([1.0, 2.0], [True, True])
    with pytest.raises(ConfigError, match="non-finite"):
        attacks.evaluate_scores([1.0, np.nan], [True, False])
    with pytest.raises(ShapeError):
        attacks.roc_curve([1.0, 2.0, 3.0], [True, False])
