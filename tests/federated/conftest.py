"""Fixtures of the federated tests: one LocalConfig with four data owners (8 logical CPUs in all)."""

import pytest

import tfe_lite
from fedtools import CLIENTS


@pytest.fixture(scope="session")
def config():
    return tfe_lite.LocalConfig(list(CLIENTS))
