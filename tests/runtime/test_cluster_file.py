"""The cluster file and RemoteConfig: bad input gets an error naming the file and the entry, before any
connection; `tfe-lite serve` refuses bad input the same way (exit status 2)."""

import json
import socket
import time

import pytest

import tfe_lite
from tfe_lite import ConfigError, PlayerError, RemoteConfig
from tfe_lite.players import Config
from tfe_lite.runtime import cli, cluster
from tfe_lite.runtime.wait import wait_for_players

PLAYERS = {"server0": "127.0.0.1:4440", "server1": "127.0.0.1:4441", "crypto-producer": "127.0.0.1:4442",
           "alice": "127.0.0.1:4443"}


def write(tmp_path, data, name="cluster.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_remote_config_is_a_config_with_one_job_per_player(tmp_path):
    config = RemoteConfig.load(write(tmp_path, {"players": PLAYERS, "driver": "alice"}))
    assert isinstance(config, Config) and not config.connected
    assert config.player_names == ("server0", "server1", "crypto-producer", "alice")
    assert config.addresses == PLAYERS and config.driver == "alice"
    assert config.served == {k: v for k, v in PLAYERS.items() if k != "alice"}
    spec = config.cluster_spec().as_dict()
    assert spec == {"server0": ["127.0.0.1:4440"], "server1": ["127.0.0.1:4441"],
                    "crypto_producer": ["127.0.0.1:4442"], "alice": ["127.0.0.1:4443"]}
    assert cluster.device_of("crypto-producer") == "/job:crypto_producer/replica:0/task:0/device:CPU:0"
    assert tfe_lite.RemoteConfig is RemoteConfig


def test_a_driver_that_is_no_player_gets_a_job_of_its_own():
    config = RemoteConfig(PLAYERS, driver_address="127.0.0.1:4450")
    assert config.cluster_spec().as_dict()["driver"] == ["127.0.0.1:4450"]
    assert RemoteConfig(PLAYERS).cluster_spec().as_dict()["driver"][0].startswith("127.0.0.1:")


def test_malformed_json_names_the_file_line_and_column(tmp_path):
    path = write(tmp_path, '{"players": {"server0": "127.0.0.1:1",}}')
    with pytest.raises(ConfigError, match=rf"{path}.*not valid JSON.*line 1 column 39"):
        RemoteConfig.load(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.json.*No such file"):
        RemoteConfig.load(tmp_path / "nope.json")


@pytest.mark.parametrize("data,entry", [
    ([1, 2], "expected a JSON object"),
    ({"player": PLAYERS}, r"unknown entries \['player'\]"),
    ({"driver": "alice"}, 'no "players" entry'),
    ({"players": []}, '"players": expected a non-empty mapping'),
])
def test_wrong_structure(tmp_path, data, entry):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError, match=rf"{path}.*{entry}|{entry}.*"):
        RemoteConfig.load(path)


def test_every_bad_entry_is_named_at_once(tmp_path):
    players = {"server0": "127.0.0.1:4440", "server1": "127.0.0.1:4440", "alice": "127.0.0.1",
               "bad name": "127.0.0.1:1", "bob": "127.0.0.1:70000"}
    path = write(tmp_path, {"players": players})
    with pytest.raises(ConfigError) as info:
        RemoteConfig.load(path)
    message = str(info.value)
    assert f"{path}: players['server1']: duplicate address '127.0.0.1:4440', already the address of players['server0']" in message
    assert f"{path}: players['alice']: expected an address \"host:port\"" in message and "Received: '127.0.0.1'" in message
    assert f"{path}: players['bob']: expected an address" in message and "'127.0.0.1:70000'" in message
    assert f"{path}: players['bad name']: invalid player name" in message
    assert f"{path}: players: the protocol player 'crypto-producer' is missing" in message


@pytest.mark.parametrize("extra,match", [
    ({"driver": "carol"}, r"\"driver\": expected the name of one of the players.*'carol'"),
    ({"driver": "alice", "driver_address": "127.0.0.1:9"}, r"\"driver_address\": not allowed with \"driver\""),
    ({"driver_address": "127.0.0.1:4441"}, r"\"driver_address\": duplicate address '127.0.0.1:4441'.*server1"),
    ({"driver_address": "nowhere"}, r"\"driver_address\": expected an address"),
])
def test_bad_driver_entries(tmp_path, extra, match):
    path = write(tmp_path, {"players": PLAYERS, **extra})
    with pytest.raises(ConfigError, match=match):
        RemoteConfig.load(path)


def test_names_that_map_to_one_job_are_refused():
    with pytest.raises(ConfigError, match=r"players\['crypto_producer'\].*job 'crypto_producer', like 'crypto-producer'"):
        RemoteConfig({**PLAYERS, "crypto_producer": "127.0.0.1:4449"})
    with pytest.raises(ConfigError, match=r"players\['driver'\]: the job 'driver' is the driver's"):
        RemoteConfig({**PLAYERS, "driver": "127.0.0.1:4449"})


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), "5", True])
def test_timeout_is_validated(timeout):
    with pytest.raises(ConfigError, match=r"`timeout`.*Received: timeout="):
        RemoteConfig(PLAYERS, timeout=timeout)
    with pytest.raises(ConfigError, match=r"`hang_timeout`.*Received: hang_timeout="):
        RemoteConfig(PLAYERS, hang_timeout=timeout)


def test_unknown_player_of_a_remote_config():
    with pytest.raises(PlayerError, match="'carol'"):
        RemoteConfig(PLAYERS).get_player("carol")


def test_waiting_is_bounded_and_names_each_unreachable_player_with_the_reason():
    with socket.socket() as listening, socket.socket() as bound:
        listening.bind(("127.0.0.1", 0))
        listening.listen()  # accepts connections, never answers gRPC: not a TensorFlow server
        silent = f"127.0.0.1:{listening.getsockname()[1]}"
        bound.bind(("127.0.0.1", 0))
        down = f"127.0.0.1:{bound.getsockname()[1]}"  # bound, not listening: refuses connections
        start = time.monotonic()
        with pytest.raises(tfe_lite.errors.PartyUnavailableError) as info:
            wait_for_players({"server0": silent, "server1": down}, timeout=1.5, source="cluster.json")
        assert time.monotonic() - start < 4
    message = str(info.value)
    assert "Could not reach 2 of 2 players of cluster.json within 1.5 s: " in message
    assert f"'server0' at {silent} (no answer within" in message
    assert f"'server1' at {down} (connection refused" in message
    assert "tfe-lite serve --config" in message


# ----------------------------------------------------------------------------------- tfe-lite serve
def serve(capsys, *args):
    status = cli.main(["serve", *args])
    return status, capsys.readouterr().err


def test_serve_refuses_an_unknown_player(tmp_path, capsys):
    path = write(tmp_path, {"players": PLAYERS})
    status, err = serve(capsys, "--config", str(path), "--player", "carol")
    assert status == 2
    assert f"error: {path}: no player 'carol' in \"players\"; the cluster has ['server0', 'server1', 'crypto-producer', 'alice']" in err


def test_serve_refuses_the_driver_player_and_a_bad_file(tmp_path, capsys):
    path = write(tmp_path, {"players": PLAYERS, "driver": "alice"})
    status, err = serve(capsys, "--config", str(path), "--player", "alice")
    assert status == 2 and f"{path}: players['alice']: 'alice' is the \"driver\"" in err
    bad = write(tmp_path, {"players": {**PLAYERS, "server1": "127.0.0.1:4440"}}, "dup.json")
    status, err = serve(capsys, "--config", str(bad), "--player", "server0")
    assert status == 2 and f"{bad}: players['server1']: duplicate address" in err


def test_serve_refuses_a_port_in_use_and_a_foreign_address(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write(tmp_path, {"players": {**PLAYERS, "server0": f"127.0.0.1:{port}"}})
        status, err = serve(capsys, "--config", str(path), "--player", "server0")
    assert status == 2 and f"{path}: players['server0']: cannot serve there: port {port} is already in use" in err
    path = write(tmp_path, {"players": {**PLAYERS, "server0": "192.0.2.1:4440"}}, "foreign.json")  # TEST-NET, never contacted
    status, err = serve(capsys, "--config", str(path), "--player", "server0")
    assert status == 2 and "192.0.2.1 (192.0.2.1) is not an address of this machine" in err


@pytest.mark.parametrize("flag,value", [("--inter-op-threads", "0"), ("--intra-op-threads", "-2")])
def test_serve_refuses_a_bad_thread_count(tmp_path, capsys, flag, value):
    path = write(tmp_path, {"players": PLAYERS})
    status, err = serve(capsys, "--config", str(path), "--player", "server0", flag, value)
    assert status == 2 and f"Received an invalid value for `{flag}`, expected a positive number of threads. Received: {value}" in err


def test_serve_requires_config_and_player(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--player", "server0"])
    assert info.value.code == 2 and "--config" in capsys.readouterr().err


def test_the_watchdog_cuts_only_the_connections_to_the_silent_address():
    import socket

    from tfe_lite.runtime.watchdog import sever

    servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    try:
        clients = [socket.create_connection(s.getsockname(), timeout=5) for s in servers]
        accepted = [s.accept()[0] for s in servers]
        host, port = servers[0].getsockname()
        assert sever(f"{host}:{port}") == 1
        assert clients[0].recv(1) == b""  # shut down: end of stream at once, no wait
        clients[1].sendall(b"x")
        assert accepted[1].recv(1) == b"x"  # the other connection is untouched
        for c in clients + accepted:
            c.close()
    finally:
        for s in servers:
            s.close()


def test_a_silent_player_has_the_watchdog_cut_the_drivers_connections_to_every_player():
    """A stopped player can block a call the driver made to a healthy one (waiting for a share from the
    stopped one): the connections to the healthy player are cut too, and only the silent one is named."""
    import concurrent.futures

    import grpc

    from tfe_lite.runtime.watchdog import Watchdog

    healthy = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    healthy.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "tensorflow.WorkerService", {"GetStatus": grpc.unary_unary_rpc_method_handler(lambda request, context: b"")}),))
    healthy_port = healthy.add_insecure_port("127.0.0.1:0")
    healthy.start()
    stopped = socket.create_server(("127.0.0.1", 0))  # accepts at the kernel, never answers: a SIGSTOP'd player
    other = socket.create_server(("127.0.0.1", 0))  # not a player of the cluster
    addresses = {"server0": f"127.0.0.1:{stopped.getsockname()[1]}", "server1": f"127.0.0.1:{healthy_port}"}
    waiting = socket.create_connection(("127.0.0.1", healthy_port), timeout=30)  # a call to server1 pending
    unrelated = socket.create_connection(other.getsockname(), timeout=5)
    peer = other.accept()[0]
    try:
        watchdog = Watchdog(addresses, hang_timeout=1.0).arm()
        started = time.monotonic()
        while waiting.recv(4096):  # the server's HTTP/2 settings, then end of stream once server0 was silent
            pass  # for 1 s (the socket's 30 s bound: a hang; gRPC's own handshake deadline is 120 s)
        assert time.monotonic() - started < 20
        assert list(watchdog.hung) == ["server0"] and watchdog.hung["server0"] >= 1.0
        unrelated.sendall(b"x")
        assert peer.recv(1) == b"x"  # a connection elsewhere is untouched

        # Disarmed (the computation failed): a new connection is left alone while server0 stays silent.
        watchdog.disarm()  # cuts happen under the lock disarm() takes: none after it returns
        reconnected = socket.create_connection(("127.0.0.1", healthy_port), timeout=3.5)
        with pytest.raises(socket.timeout):  # 3.5 s: more than two rounds with server0 silent throughout
            while reconnected.recv(4096):
                pass
        reconnected.close()
    finally:
        for s in (waiting, unrelated, peer, stopped, other):
            s.close()
        healthy.stop(0)


def test_the_channel_options_give_a_connection_seconds_to_finish_its_handshake():
    """gRPC reads ``grpc.min_reconnect_backoff_ms`` as its connect timeout: at 100 ms a player slow to answer
    on a loaded machine failed the driver's connect. With the driver's options (gRPC's Python channel: the
    same core), an attempt to a port that never answers fails only after the 5 s they give it."""
    import grpc

    from tfe_lite.runtime.config import GRPC_OPTIONS

    silent = socket.create_server(("127.0.0.1", 0))  # accepts at the kernel, never answers
    options = [(name, int(value)) for name, value in GRPC_OPTIONS.items()]
    channel = grpc.insecure_channel(f"127.0.0.1:{silent.getsockname()[1]}", options=options)
    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as failed:
            channel.unary_unary("/tensorflow.WorkerService/GetStatus")(b"", timeout=30)
        assert time.monotonic() - started >= 4.5
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "timed out before receiving SETTINGS frame" in failed.value.details()
    finally:
        channel.close()
        silent.close()


def test_the_watchdog_ends_quietly_when_the_interpreter_exits():
    """A driver's script that ends while connected: the watchdog's thread may wake during the interpreter's
    exit (TensorFlow's own exit handlers take seconds), when no new probe can be scheduled; it stops without
    a traceback (CI's log showed one after the suite)."""
    import subprocess
    import sys

    script = f"""
import atexit, socket, time
from tfe_lite.runtime.watchdog import INTERVAL, Watchdog
silent = socket.create_server(("127.0.0.1", 0))
Watchdog({{"server0": "127.0.0.1:%d" % silent.getsockname()[1]}}, hang_timeout=60.0).arm()
atexit.register(time.sleep, 3 * INTERVAL)  # a slow exit handler: the watchdog wakes while it runs
time.sleep(0.2)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
