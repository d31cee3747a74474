import numpy as np
import tensorflow as tf

from tfe_lite import ConfigError, LocalConfig
from tfe_lite.random import RandomStreams, SeedStream

import pytest


def test_seeds_are_fresh_on_every_call_and_every_graph_run():
    stream = SeedStream("/device:CPU:1")
    eager = {tuple(stream.next_seed().numpy()) for _ in range(3)}
    assert len(eager) == 3

    @tf.function
    def draw():
        return stream.next_seed(), stream.uniform([4])

    runs = [draw() for _ in range(3)]
    assert len({tuple(seed.numpy()) for seed, _ in runs} | eager) == 6
    assert len({tuple(values.numpy()) for _, values in runs}) == 3
    assert runs[0][0].dtype == tf.int64 and runs[0][0].shape == (4,)


def test_next_seeds_draws_several_fresh_seeds_at_once_on_every_call_and_graph_run():
    stream = SeedStream("/device:CPU:1", seed=5)
    single = stream.next_seed().numpy()
    several = stream.next_seeds(3).numpy()
    assert several.shape == (3, 4) and several.dtype == np.int64

    @tf.function
    def draw():
        return stream.next_seeds(3)

    runs = [draw().numpy() for _ in range(2)]
    seeds = [single, *several, *runs[0], *runs[1]]
    assert len({tuple(s) for s in seeds}) == 10  # one counter draw per call, disjoint from every other one
    assert stream._counter.read_value().numpy() == 4  # four draws: one seed, then three batches


def test_streams_by_player_and_purpose_are_independent():
    config = LocalConfig(["alice"])
    streams = RandomStreams(seed=3)
    alice, server0 = config.get_player("alice"), config.get_player("server0")
    draws = {(p.name, purpose): tuple(streams.stream(p, purpose).next_seed().numpy())
             for p in (alice, server0) for purpose in ("crypto", "data")}
    assert len(set(draws.values())) == 4
    assert streams.stream(alice) is streams.stream(alice, "crypto")
    assert streams.stream(alice).device == alice.device


def test_fixed_seed_repeats_and_os_seed_does_not():
    player = LocalConfig().get_player("server0")
    fixed = [RandomStreams(seed=9).stream(player).next_seed().numpy() for _ in range(2)]
    np.testing.assert_array_equal(*fixed)
    fresh = [RandomStreams().stream(player).next_seed().numpy() for _ in range(2)]
    assert not np.array_equal(*fresh)


def test_seed_must_be_an_integer():
    with pytest.raises(ConfigError, match="seed=1.5"):
        RandomStreams(seed=1.5)


def test_keys_are_made_on_the_players_device_by_the_native_op(monkeypatch, switch_backend):
    """Issue 8 (low): keys were made in the driving process (os.urandom at Pond()); they must be made where
    the player runs, so that in multi-host mode no key exists in the driver."""
    import os

    switch_backend("native")

    def no_urandom(n):
        raise AssertionError("a key was read from os.urandom in the driving process")

    monkeypatch.setattr(os, "urandom", no_urandom)
    device = LocalConfig().get_player("server1").device
    streams = [SeedStream(device) for _ in range(2)]
    assert streams[0]._key.device.endswith(device.split("/")[-1].replace("device:", "device:"))
    keys = [tuple(s._key.numpy()) for s in streams]
    assert keys[0] != keys[1] and len(set(keys[0])) == 4


def test_on_device_keys_refuse_the_driver_fallback(switch_backend):
    from tfe_lite.errors import RuntimeConfigError

    switch_backend("tensorflow")
    with pytest.raises(RuntimeConfigError, match="created on the player's own host"):
        SeedStream("/device:CPU:1", on_device=True)
    SeedStream("/device:CPU:1")  # local mode: os.urandom in this process, the players' own
    SeedStream("/device:CPU:1", seed=3, on_device=True)  # fixed test keys need no CSPRNG
