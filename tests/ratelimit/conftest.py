"""ratelimit's tests use a server of their own (one per test session, or one per test for
those marked `kills_server`): priorityqueue registers another `myService/expensiveMethod`
(other input and output), and a deployment registered later on a shared server would take
the name over from this pattern's, so the two must never meet on one server."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.processes import RestateServer
from tests.conftest import _live, _start_server, attach_log, use_server


@pytest.fixture(scope="session")
def ratelimit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestateServer]:
    server = _start_server(tmp_path_factory.mktemp("restate-ratelimit"))
    yield server
    server.stop()


@pytest.fixture
def server(
    ratelimit_server: RestateServer, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[RestateServer]:
    """As tests/conftest.py's `server`, but lending this folder's server, not the shared one."""
    if request.node.get_closest_marker("kills_server") is None:
        yield from use_server(ratelimit_server, request)
        return
    own = _start_server(tmp_path / "restate")
    attach_log(request, own)
    yield own
    own.stop()
    _live.remove(own)
