"""The README's wire-security recipe, run (tests/runtime/tunnel.py): every player's gRPC traffic through
stunnel, TLS with certificates checked both ways, the cluster file pointing at the tunnel ends. The
cluster of test_remote.py runs this way (conftest.cluster_run)."""

import pytest

pytestmark = pytest.mark.slow


def test_every_connection_to_a_player_goes_through_the_tunnel(cluster_run):
    # Every connection that reaches a player's gRPC port comes from stunnel: no player or driver talks to
    # another one around the tunnel.
    connections = cluster_run["connections"]
    assert connections, "no established connection to a player's gRPC port"
    assert all(f"pid={cluster_run['stunnel_pid']}," in line for line in connections), connections
    assert "certificate accepted" in cluster_run["stunnel_log"].lower()


def test_the_tls_ends_authenticate_both_ways(cluster_run):
    tls = cluster_run["tls"]
    assert tls["member"] is True  # a certificate of the cluster's CA gets through
    assert tls["no certificate"] is False and tls["other CA"] is False
    assert "Hostname mismatch" in tls["wrong name"]  # the client checks the server's name
