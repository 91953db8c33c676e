"""Stateful actors: the seed's walkthrough, queued calls per key, retries, crashes, bad input."""

import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from devkit import binaries
from devkit.processes import PatternService, RestateServer
from tests.harness import Admin, Ingress, StartService, count_lines, eventually

FAST = {"TRANSITION_DURATION_SECONDS": "0.3", "TRANSITION_FAILED_ATTEMPTS": "0"}


def call(ingress: Ingress, machine: str, handler: str) -> str:
    response = ingress.post(f"/MachineOperator/{machine}/{handler}")
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    answer = response.json()
    assert isinstance(answer, str)
    return answer


def attach(ingress: Ingress, invocation_id: str) -> str:
    response = ingress.get(f"/restate/invocation/{invocation_id}/attach", timeout=60)
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    answer = response.json()
    assert isinstance(answer, str)
    return answer


def line_index(service: PatternService, text: str) -> int:
    """Position of the one log line containing `text`."""
    found = [i for i, line in enumerate(service.log_lines()) if text in line]
    assert len(found) == 1, f"{len(found)} lines contain {text!r}"
    return found[0]


def transitions(service: PatternService, machine: str) -> list[tuple[int, int]]:
    """(begin, end) log positions of the machine's transitions to UP and to down."""
    return [
        (
            line_index(service, f"{machine} beginning transition to UP"),
            line_index(service, f"{machine} is now running"),
        ),
        (
            line_index(service, f"{machine} beginning transition to down"),
            line_index(service, f"{machine} is now down"),
        ),
    ]


def wait_until_sleeping(admin: Admin, invocation_id: str) -> None:
    """Wait until the transition's durable timer is in the journal (the first step is done)."""

    def sleeping() -> bool:
        rows = admin.query(
            f"SELECT entry_type FROM sys_journal WHERE id = '{invocation_id}' "
            "AND entry_type LIKE '%Sleep%'"
        )
        return bool(rows)

    eventually(sleeping, timeout=30, message=f"{invocation_id} to reach its durable sleep")


def test_walkthrough_set_up_and_tear_down_one_machine(
    start_service: StartService,
    ingress: Ingress,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    service = start_service("statefulactors", FAST)
    machine = unique("my-machine")

    assert call(ingress, machine, "setUp") == f"{machine} is now running"
    assert admin.state("MachineOperator", machine) == {"state": '"UP"'}
    begin = service.log_lines()[line_index(service, f"{machine} beginning transition to UP")]
    assert "[MachineOperator/setUp][inv_" in begin
    assert count_lines(service, f"{machine} is now running") == 1

    cli = subprocess.run(
        [str(binaries.find(binaries.CLI)), "kv", "get", "MachineOperator", machine],
        env=client_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert '"UP"' in cli.stdout

    # already up: answered without a transition
    assert call(ingress, machine, "setUp") == f"{machine} is already running"
    assert count_lines(service, f"{machine} beginning transition") == 1

    assert call(ingress, machine, "tearDown") == f"{machine} is now down"
    assert admin.state("MachineOperator", machine) == {"state": '"DOWN"'}
    down = service.log_lines()[line_index(service, f"{machine} is now down")]
    assert "[MachineOperator/tearDown][inv_" in down

    assert call(ingress, machine, "tearDown") == f"{machine} is not up, cannot tear down"
    assert count_lines(service, f"{machine} beginning transition to down") == 1


def test_tear_down_of_a_new_machine_is_refused(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service("statefulactors", FAST)
    machine = unique("new-machine")
    assert call(ingress, machine, "tearDown") == f"{machine} is not up, cannot tear down"
    assert admin.state("MachineOperator", machine) == {}
    assert count_lines(service, f"{machine} beginning transition") == 0


def test_the_seeds_five_calls_queue_per_machine_and_run_in_parallel_across_machines(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service(
        "statefulactors",
        {"TRANSITION_DURATION_SECONDS": "2", "TRANSITION_FAILED_ATTEMPTS": "0"},
    )
    a, b = unique("a"), unique("b")
    calls = {a: ["setUp", "tearDown"], b: ["setUp", "setUp", "tearDown"]}

    def send_in_order(machine: str) -> list[str]:
        return [ingress.send(f"/MachineOperator/{machine}/{handler}") for handler in calls[machine]]

    # sent without waiting for results, in the seed's order per machine, both machines at
    # once; Restate queues the calls per key
    with ThreadPoolExecutor(max_workers=2) as pool:
        ids = [i for sent in pool.map(send_in_order, [a, b]) for i in sent]
    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        answers = list(pool.map(lambda i: attach(ingress, i), ids))

    assert answers == [
        f"{a} is now running",
        f"{a} is now down",
        f"{b} is now running",
        f"{b} is already running",
        f"{b} is now down",
    ]
    assert admin.state("MachineOperator", a) == {"state": '"DOWN"'}
    assert admin.state("MachineOperator", b) == {"state": '"DOWN"'}

    spans = {machine: transitions(service, machine) for machine in (a, b)}
    for machine in (a, b):
        # per machine strictly one after another: a transition begins after the previous ends
        (up_begins, up_ends), (down_begins, down_ends) = spans[machine]
        assert up_begins < up_ends < down_begins < down_ends
    # across machines at the same time: some transition of `a` overlapped one of `b`
    assert any(
        a_begins < b_ends and b_begins < a_ends
        for a_begins, a_ends in spans[a]
        for b_begins, b_ends in spans[b]
    ), f"no transitions of {a} and {b} overlapped: {spans}"


@pytest.mark.parametrize("failed_attempts", [None, "3"], ids=["default", "three"])
def test_a_failing_transition_is_retried_until_it_completes(
    start_service: StartService,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
    failed_attempts: str | None,
) -> None:
    settings = {"TRANSITION_DURATION_SECONDS": "0.3"}
    if failed_attempts is not None:
        settings["TRANSITION_FAILED_ATTEMPTS"] = failed_attempts
    expected_failures = int(failed_attempts or "1")  # the default shows the seed's failure
    service = start_service("statefulactors", settings)
    machine = unique("b")

    invocation_id = ingress.send(f"/MachineOperator/{machine}/tearDown")
    assert attach(ingress, invocation_id) == f"{machine} is not up, cannot tear down"
    invocation_id = ingress.send(f"/MachineOperator/{machine}/setUp")
    assert attach(ingress, invocation_id) == f"{machine} is now running"

    failures = [line for line in service.log_lines() if "A failure happened!" in line]
    ours = [line for line in failures if f"[MachineOperator/setUp][{invocation_id}]" in line]
    assert len(ours) == expected_failures
    assert all(" ERROR " in line for line in ours)
    # each attempt began the transition again; only the successful one finished it
    assert count_lines(service, f"{machine} beginning transition to UP") == expected_failures + 1
    assert count_lines(service, f"{machine} is now running") == 1
    assert admin.state("MachineOperator", machine) == {"state": '"UP"'}


def test_service_crash_mid_transition_resumes_without_repeating_steps(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service(
        "statefulactors", {"TRANSITION_DURATION_SECONDS": "3", "TRANSITION_FAILED_ATTEMPTS": "0"}
    )
    machine = unique("crashing-machine")
    invocation_id = ingress.send(f"/MachineOperator/{machine}/setUp")
    wait_until_sleeping(admin, invocation_id)
    assert count_lines(service, f"{machine} is now running") == 0

    service.kill()
    service.start()

    assert attach(ingress, invocation_id) == f"{machine} is now running"
    assert count_lines(service, f"{machine} beginning transition to UP") == 1
    assert count_lines(service, f"{machine} is now running") == 1
    assert admin.state("MachineOperator", machine) == {"state": '"UP"'}


def test_server_crash_mid_transition_resumes_without_repeating_steps(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    service = start_service(
        "statefulactors", {"TRANSITION_DURATION_SECONDS": "3", "TRANSITION_FAILED_ATTEMPTS": "0"}
    )
    machine = unique("crashing-machine")
    assert call(ingress, machine, "setUp") == f"{machine} is now running"
    invocation_id = ingress.send(f"/MachineOperator/{machine}/tearDown")
    wait_until_sleeping(admin, invocation_id)

    server.kill()
    server.start()

    def attached() -> httpx.Response | None:
        try:
            response = ingress.get(f"/restate/invocation/{invocation_id}/attach", timeout=60)
        except httpx.TransportError:  # the restarted server may still drop a connection
            return None
        return response if response.status_code == 200 else None

    response = eventually(attached, timeout=60, message="tearDown to finish after the crash")
    assert response.json() == f"{machine} is now down"
    assert count_lines(service, f"{machine} beginning transition to down") == 1
    assert count_lines(service, f"{machine} is now down") == 1
    assert admin.state("MachineOperator", machine) == {"state": '"DOWN"'}


def test_a_body_sent_to_set_up_is_refused_and_changes_nothing(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service("statefulactors", FAST)
    machine = unique("machine")
    # `setUp` takes no input, so Restate's ingress refuses a body before any handler runs
    response = ingress.post(f"/MachineOperator/{machine}/setUp", json={"state": "UP"})
    assert response.status_code == 400
    assert "Expected body and content-type to be empty" in response.json()["message"]
    assert admin.state("MachineOperator", machine) == {}
    assert count_lines(service, machine) == 0


def test_unknown_handler_is_404_and_changes_nothing(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    start_service("statefulactors", FAST)
    machine = unique("machine")
    response = ingress.post(f"/MachineOperator/{machine}/startUp")
    assert response.status_code == 404
    assert admin.state("MachineOperator", machine) == {}
