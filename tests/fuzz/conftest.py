"""The fuzz test's own server, and the table of inputs tried per handler."""

from collections.abc import Iterator

import pytest

from devkit.processes import RestateServer
from tests.conftest import _live, _start_server

# handler ("Service/handler") -> how many generated bodies were sent to it
INPUTS_TRIED = pytest.StashKey[dict[str, int]]()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestateServer]:
    """A server of its own: no timer or background invocation left by another test can
    change the state that the fuzz test compares before and after."""
    server = _start_server(tmp_path_factory.mktemp("restate-fuzz"))
    yield server
    server.stop()
    _live.remove(server)


@pytest.fixture
def server(fuzz_server: RestateServer) -> RestateServer:
    """The services of the fuzz test register with its own server."""
    return fuzz_server


@pytest.fixture
def inputs_tried(request: pytest.FixtureRequest) -> dict[str, int]:
    return request.config.stash.setdefault(INPUTS_TRIED, {})


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    counts = config.stash.get(INPUTS_TRIED, {})
    if not counts:
        return
    width = max(len(handler) for handler in counts)
    terminalreporter.section("fuzzed bad input: inputs tried per handler")
    for handler, count in sorted(counts.items()):
        terminalreporter.write_line(f"{handler:<{width}}  {count:>5}")
    terminalreporter.write_line(
        f"{'total':<{width}}  {sum(counts.values()):>5}  ({len(counts)} handlers)"
    )
