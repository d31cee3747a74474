import pytest

import tfe_lite
from tfe_lite.protocols import Pond


@pytest.fixture(scope="module")
def config():
    return tfe_lite.LocalConfig(["alice", "bob"])


@pytest.fixture(scope="module")
def prot(config):
    # A fixed seed makes share values repeatable, so the (tiny) probability of a truncation failure
    # cannot make a run flaky; the protocol's randomness still advances on every use.
    return Pond(config, seed=1234)


@pytest.fixture(scope="module", params=["dealt", "assisted"])
def compare_prot(request, config):
    """A seeded protocol with each comparison protocol (the dealt one of comparison.py, the assisted one)."""
    return Pond(config, seed=1234, comparison=request.param)
