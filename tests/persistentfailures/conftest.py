"""The downstream stand-in of the persistentfailures tests: one per test session."""

from collections.abc import Iterator

import pytest

from devkit.processes import free_port
from devkit.pytest_restate import attach_log
from tests.persistentfailures.standin import Downstream


@pytest.fixture(scope="session")
def downstream_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Downstream]:
    standin = Downstream(free_port(), tmp_path_factory.mktemp("downstream") / "downstream.log")
    standin.start()
    yield standin
    standin.stop()


@pytest.fixture
def downstream(
    downstream_process: Downstream, request: pytest.FixtureRequest
) -> Iterator[Downstream]:
    """The stand-in, its log shown if the test fails; its carrier up when the test ends."""
    attach_log(request, downstream_process)
    yield downstream_process
    downstream_process.set_carrier(up=True)
