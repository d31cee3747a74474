"""DP-FedAvg: noise once per round with the right std, adaptive clipping, epsilon from dp_accounting."""

import dp_accounting
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfe_lite.federated import ClientDP, FedAvg
from tfe_lite.federated.dp import ClientDPMechanism
from tfe_lite.federated.progress import RoundRandomness
from tfe_lite.privacy import AdaptiveClipping

from fedtools import CLIENTS, LOSS, toy_data, toy_model, weights


def _wide_model():
    return toy_model(hidden=400)  # 3,203 parameters: a precise estimate of the noise's std


def _zero_update_fit(config, dp, secure, names=CLIENTS, **fit):
    """Clients with learning rate 0 send zero updates: the model moves by the noise alone."""
    fed = FedAvg(_wide_model, config=config, loss=LOSS, client_optimizer=keras.optimizers.SGD(0.0),
                 secure_aggregation=secure, dp=dp, seed=0)
    before = weights(fed.model)
    history = fed.fit({n: toy_data(8, i) for i, n in enumerate(names)}, rounds=1, batch_size=8, verbose=0, **fit)
    moved = np.concatenate([(a - b).ravel() for a, b in zip(weights(fed.model), before)])
    return moved, history


@pytest.mark.parametrize("secure", [False, True])
def test_noise_is_added_once_per_round_with_std_z_clip(config, secure):
    z, clip = 0.8, 0.5
    moved, history = _zero_update_fit(config, ClientDP(clip, z, seed=3), secure)
    # The update is the noised sum over the expected clients (4): std z * clip / 4. Noise added by each of the
    # 4 clients would double it. The sample std of 3,203 normals is within 5% with probability > 0.999.
    assert history.history["clients"] == [4]
    np.testing.assert_allclose(moved.std(), z * clip / 4, rtol=0.05)
    assert abs(moved.mean()) < 4 * z * clip / 4 / np.sqrt(moved.size)


def test_adaptive_clip_follows_the_target_quantile(config):
    """Records with norms uniform on [1, 3]: the clip moves to their 0.3 quantile, 1.6."""
    dp = ClientDP(0.2, 0.0, adaptive_clipping=AdaptiveClipping(target_unclipped_quantile=0.3, learning_rate=0.2,
                                                                 clipped_count_stddev=0.0))
    clients = 30
    mechanism = ClientDPMechanism(dp, num_clients=clients, expected_clients=clients, aggregator=config.get_player("server0"),
                                  template=[tf.TensorSpec([10], tf.float32)])
    rng = np.random.default_rng(0)
    clips = []
    for _ in range(60):
        params = mechanism.sample_params()
        directions = rng.normal(size=(clients, 10))
        updates = directions / np.linalg.norm(directions, axis=1, keepdims=True) * rng.uniform(1, 3, (clients, 1))
        with tf.device(config.get_player("alice").device):
            records = [mechanism.preprocess(params, [tf.constant(u, tf.float32)]) for u in updates]
        total = [tf.add_n([r[i] for r in records]) for i in range(len(records[0]))]
        mechanism.noised_update(total)
        clips.append(mechanism.clip)
    assert abs(np.mean(clips[-30:]) - 1.6) < 0.1
    assert clips[0] < 0.3  # it started from 0.2 and moved


def test_epsilon_equals_dp_accounting_composed_directly(config):
    z, delta = 1.5, 1e-3
    fed = FedAvg(toy_model, config=config, loss=LOSS, dp=ClientDP(1.0, z, delta=delta), seed=0)
    history = fed.fit({n: toy_data(8, i) for i, n in enumerate(CLIENTS)}, rounds=3, batch_size=8, clients_per_round=2, verbose=0)
    for rounds, eps in enumerate(history.history["epsilon"], 1):
        event = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(z)), rounds)
        # RDP adds per-order bounds: composing round by round and self-composing differ by float rounding.
        assert eps == pytest.approx(dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(delta), rel=1e-6)
    assert fed.dp_mechanism.sampling_probability == 0.5
    statement = fed.privacy_statement()
    assert f"{history.history['epsilon'][-1]:.4g}" in statement and "probability q = 0.5" in statement


def test_epsilon_composes_across_fits(config):
    z, delta = 1.5, 1e-3
    fed = FedAvg(toy_model, config=config, loss=LOSS, dp=ClientDP(1.0, z, delta=delta), seed=0)
    data = {n: toy_data(8, i) for i, n in enumerate(CLIENTS)}
    fed.fit(data, rounds=2, batch_size=8, clients_per_round=2, verbose=0)
    history = fed.fit(data, rounds=1, batch_size=8, verbose=0)  # every client: q = 1
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(z)), 2)
    accountant.compose(dp_accounting.GaussianDpEvent(z))
    assert history.history["epsilon"] == [pytest.approx(accountant.get_epsilon(delta), rel=1e-6)]
    assert fed.dp_mechanism.rounds == 3 and "2 rounds with q = 0.5" in fed.privacy_statement()


def test_epsilon_with_every_client_and_pld(config):
    z, delta = 2.0, 1e-4
    fed = FedAvg(toy_model, config=config, loss=LOSS, dp=ClientDP(1.0, z, delta=delta, accountant="pld"), seed=0)
    history = fed.fit({n: toy_data(8, i) for i, n in enumerate(CLIENTS[:2])}, rounds=2, batch_size=8, verbose=0)
    accountant = dp_accounting.pld.PLDAccountant()  # every client in every round: no sampling event
    for rounds in (1, 2):
        accountant.compose(dp_accounting.GaussianDpEvent(z))
        assert history.history["epsilon"][rounds - 1] == pytest.approx(accountant.get_epsilon(delta), rel=1e-9)
    self_composed = dp_accounting.pld.PLDAccountant().compose(dp_accounting.GaussianDpEvent(z), 2).get_epsilon(delta)
    assert history.history["epsilon"][-1] == pytest.approx(self_composed, rel=1e-2)


def test_clients_are_poisson_sampled_with_the_accounted_probability():
    randomness = RoundRandomness(seed=5)
    counts = [len(randomness.poisson(100, 0.1)) for _ in range(400)]
    assert abs(np.mean(counts) - 10) < 4 * np.sqrt(9 / 400)
    assert abs(np.var(counts) - 9) < 3  # binomial(100, 0.1): variance 9, unlike a fixed-size sample (0)
    unseeded = RoundRandomness()
    assert not np.array_equal(unseeded.uniform(8), unseeded.uniform(8))


def test_clipping_happens_on_the_clients_before_aggregation(config):
    """A client with a huge update contributes at most the clip to the sum (no noise)."""
    fed = FedAvg(toy_model, config=config, loss=LOSS, client_optimizer=keras.optimizers.SGD(50.0),
                 dp=ClientDP(0.25, 0.0), seed=0)
    before = weights(fed.model)
    fed.fit({n: toy_data(8, i) for i, n in enumerate(CLIENTS[:2])}, rounds=1, batch_size=8, verbose=0)
    moved = np.concatenate([(a - b).ravel() for a, b in zip(weights(fed.model), before)])
    assert 0.1 < np.linalg.norm(moved) <= 0.25 + 1e-6  # the mean of two updates clipped to norm 0.25
