import pytest

import tfe_lite
from tfe_lite.protocols import Pond

CLIENT, OWNER = "client", "model-owner"


@pytest.fixture(scope="session")
def config():
    return tfe_lite.LocalConfig([CLIENT, OWNER, "eve"])


@pytest.fixture(scope="session")
def prot(config):
    # A fixed seed keeps the (tiny) truncation failure probability from making a run flaky.
    return Pond(config, seed=4321)
