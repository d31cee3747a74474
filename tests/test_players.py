import pytest
import tensorflow as tf

import tfe_lite
from tfe_lite import ConfigError, LocalConfig, PlayerError


def test_default_players_and_devices():
    config = LocalConfig()
    assert config.player_names == ("server0", "server1", "crypto-producer")
    devices = [p.device for p in config.players]
    assert len(set(devices)) == 3 and "/device:CPU:0" not in devices
    assert not tf.config.get_soft_device_placement()


def test_data_owners_are_added_after_the_protocol_players():
    config = LocalConfig(["alice", "server1", "model-owner"])
    assert config.player_names == ("server0", "server1", "crypto-producer", "alice", "model-owner")
    assert config.get_player("model-owner").device == "/device:CPU:5"


@pytest.mark.parametrize("names,match", [
    (["alice", "alice"], "duplicate"),
    (["bad name"], "'bad name'"),
    ([3], "3"),
])
def test_invalid_names(names, match):
    with pytest.raises(ConfigError, match=match):
        LocalConfig(names)


def test_unknown_player():
    with pytest.raises(PlayerError, match="'carol'"):
        LocalConfig(["alice"]).get_player("carol")


def test_too_many_players_after_runtime_start_is_a_clear_error():
    tf.constant(1)  # runtime is up
    with pytest.raises(tfe_lite.errors.RuntimeConfigError, match="ensure_logical_cpus\\(41\\)"):
        LocalConfig([f"owner{i}" for i in range(37)])
