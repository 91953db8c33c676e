"""The serving file's choices: granian (SERVER=granian), the event loop (LOOP), stopping.

Every pattern's `__main__.py` serves on hypercorn by default and on granian with
SERVER=granian. Here the walkthrough and the crash tests of three patterns (durablerpc, the
sagas, and concurrenttasks, which waits on timers and an awakeable) run again on granian,
reusing those tests' own assertions; `SERVER=granian ./dev test` runs the whole suite so.
"""

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devkit import ROOT
from devkit.processes import PatternService, ProcessError, RestateServer, free_port
from tests.concurrenttasks import test_concurrenttasks as concurrenttasks
from tests.durablerpc import test_durablerpc as durablerpc
from tests.harness import Admin, Ingress, StartService, eventually
from tests.sagas import test_sagas as sagas

# What each server logs when it starts: proof of which one serves.
BANNER = {"granian": "Starting granian (embedded)", "hypercorn": "hypercorn.error - Running on"}


def served_by(service: PatternService, server: str) -> None:
    eventually(
        lambda: BANNER[server] in service.log_text(),
        timeout=10,
        message=f"{service.name} to log that {server} serves it",
    )


@pytest.fixture
def on_granian(start_service: StartService) -> StartService:
    """`start_service`, with SERVER=granian added to the pattern's settings."""

    def start(pattern: str, settings: dict[str, str] | None = None) -> PatternService:
        service = start_service(pattern, {**(settings or {}), "SERVER": "granian"})
        served_by(service, "granian")
        return service

    return start


def test_durablerpc_walkthrough_on_granian(
    on_granian: StartService,
    client_env: dict[str, str],
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    durablerpc.test_walkthrough_with_the_client_and_the_cli(on_granian, client_env, admin, unique)


def test_durablerpc_concurrency_on_granian(
    on_granian: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    durablerpc.test_concurrent_reservations_of_one_product_reserve_it_once(
        on_granian, ingress, unique
    )


def test_durablerpc_service_killed_on_granian(
    on_granian: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    durablerpc.test_request_accepted_while_the_service_is_down_runs_when_it_is_back(
        on_granian, ingress, unique
    )


@pytest.mark.kills_server
def test_durablerpc_server_killed_on_granian(
    on_granian: StartService,
    server: RestateServer,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    durablerpc.test_accepted_request_survives_a_server_crash(on_granian, server, ingress, unique)


def test_sagas_walkthrough_on_granian(
    on_granian: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    sagas.test_walkthrough_hotel_fully_booked_compensates_in_reverse_order(
        on_granian, ingress, unique
    )


@pytest.mark.parametrize("crash", ["service", "server"])
def test_sagas_crash_between_two_bookings_on_granian(
    crash: str,
    on_granian: StartService,
    server: RestateServer,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    sagas.test_a_crash_between_two_bookings_books_nothing_twice(
        crash, on_granian, server, ingress, unique
    )


def test_concurrenttasks_walkthrough_on_granian(
    on_granian: StartService, server: RestateServer, ingress: Ingress, admin: Admin
) -> None:
    concurrenttasks.test_walkthrough_reminders_until_the_user_clicks_the_link(
        on_granian, server, ingress, admin
    )


def test_concurrenttasks_service_killed_while_waiting_on_granian(
    on_granian: StartService, server: RestateServer, ingress: Ingress, admin: Admin
) -> None:
    concurrenttasks.test_a_service_crash_while_waiting_loses_nothing_and_repeats_nothing(
        on_granian, server, ingress, admin
    )


@pytest.mark.kills_server
def test_concurrenttasks_server_killed_while_waiting_on_granian(
    on_granian: StartService, server: RestateServer, ingress: Ingress, admin: Admin
) -> None:
    concurrenttasks.test_a_server_crash_while_waiting_loses_nothing_and_repeats_nothing(
        on_granian, server, ingress, admin
    )


@pytest.mark.parametrize("name", ["granian", "hypercorn"])
def test_sigint_stops_the_service_while_an_invocation_waits_on_it(
    name: str, start_service: StartService, server: RestateServer, ingress: Ingress
) -> None:
    """Ctrl-C (SIGINT, as the tests' and ./dev's stop send it) ends the service within a
    bound although restate-server keeps its HTTP/2 connection, with an invocation in flight
    on it; Restate resumes that invocation on the restarted service."""
    service = start_service(
        "concurrenttasks",
        concurrenttasks.settings(server, SERVER=name, REMINDER_INTERVAL_SECONDS="0.5"),
    )
    served_by(service, name)
    invocation = concurrenttasks.start(ingress)
    link = concurrenttasks.verification_link(service, invocation)
    eventually(
        lambda: concurrenttasks.reminders(service, invocation) >= 1,
        message="the invocation waits on its timers and the awakeable",
    )

    began = time.monotonic()
    assert service.request_stop()
    eventually(lambda: not service.running(), timeout=30, message=f"{name} to exit after SIGINT")
    took = time.monotonic() - began
    assert service.exit_code() == 0, f"exit code {service.exit_code()} after {took:.1f} s"

    service.start()
    concurrenttasks.click(link)
    response = concurrenttasks.outcome(ingress, invocation)
    assert response.status_code == 200, response.text
    assert response.json() == "Email verified"


@pytest.mark.parametrize(("name", "loop"), [("hypercorn", "uvloop"), ("granian", "asyncio")])
def test_the_other_event_loop(
    name: str,
    loop: str,
    start_service: StartService,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    """LOOP: hypercorn runs on asyncio and granian on uvloop unless told otherwise."""
    service = start_service("durablerpc", {"SERVER": name, "LOOP": loop})
    served_by(service, name)
    product = unique("product")
    assert durablerpc.reserve(ingress, product, "r1") is True
    assert durablerpc.reserve(ingress, product, "r2") is False
    durablerpc.wait_for_runs(service, product, 2)


def test_granian_missing_is_one_clear_line() -> None:
    """SERVER=granian without granian installed: one line saying what to install."""
    hide_granian = (
        "import runpy, sys; sys.modules['granian'] = None; "
        "runpy.run_module('durablerpc', run_name='__main__', alter_sys=True)"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide_granian],
        cwd=ROOT,
        env={"SERVER": "granian", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == "SERVER=granian needs granian: pip install granian uvloop\n"


def test_an_unknown_server_is_refused(tmp_path: Path) -> None:
    service = PatternService(
        "durablerpc", free_port(), tmp_path / "durablerpc.log", {"SERVER": "gunicorn"}
    )
    try:
        with pytest.raises(ProcessError, match="exited"):
            service.start()
    finally:
        service.stop()
    assert "SERVER=gunicorn: hypercorn (the default) or granian" in service.log_text()


@pytest.mark.parametrize("name", ["granian", "hypercorn"])
def test_more_idle_connections_than_granians_default_backpressure_do_not_stall_a_request(
    name: str, start_service: StartService
) -> None:
    """Registered with HTTP/1.1, Restate opens a connection per request in flight and keeps
    them open while idle. At granian's default backpressure (128 requests) the 129th
    connection's request waited until idle ones closed (a 100-subtask fan-out took 30 s
    instead of 1): 200 idle keep-alive connections must not hold a new request back."""
    service = start_service("durablerpc", {"SERVER": name})
    served_by(service, name)
    idle = []
    try:
        for _ in range(200):
            conn = socket.create_connection(("127.0.0.1", service.port), timeout=10)
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            idle.append(conn)
        for conn in idle:  # every one answered, and stays open (HTTP/1.1 keep-alive)
            assert conn.recv(4096).startswith(b"HTTP/1.1 200"), "an idle connection's answer"
        with socket.create_connection(("127.0.0.1", service.port), timeout=10) as conn:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.1 200"), "the 201st connection's answer"
    finally:
        for conn in idle:
            conn.close()
