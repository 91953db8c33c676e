"""Versioning: the README's walkthrough, crashes during the switch, an in-place overwrite,
bad input.

Each test serves v1 and v2 (and v3) of `python -m versioning` on ports of their own, as a
user does on 9080 and 9081, and drives the server with the `restate` CLI and `restate sql`
as the README does. The renewal sleep is shortened to a few seconds.
"""

import importlib.util
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit import ROOT, binaries
from devkit.processes import PatternService, RestateServer, free_port
from devkit.pytest_restate import attach_log
from tests.harness import Admin, Ingress, StartService, count_lines, eventually, restate_cli

# The README's queries, verbatim: where each renewal is pinned, and the drain check.
PINNED = (
    "SELECT i.target, i.status, i.pinned_deployment_id, d.endpoint FROM sys_invocation i "
    "LEFT JOIN sys_deployment d ON i.pinned_deployment_id = d.id "
    "WHERE i.target LIKE 'Subscription/%/renew' ORDER BY i.created_at"
)
DRAIN_CHECK = (
    "SELECT d.id, d.endpoint, count(i.id) AS unfinished FROM sys_deployment d "
    "LEFT JOIN sys_invocation i ON i.pinned_deployment_id = d.id AND i.status != 'completed' "
    "GROUP BY d.id, d.endpoint ORDER BY d.endpoint"
)
ALICE = {"customer": "alice", "priceCents": 999}
V1_ANSWER = {"version": "v1", "chargedCents": 999}
V2_ANSWER = {"version": "v2", "chargedCents": 899}  # 10 % loyalty discount

Serve = Callable[..., PatternService]


@pytest.fixture
def serve(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Serve]:
    """`serve(settings, port=None, module="versioning")`: `python -m module` started, not
    registered (the test registers it with the CLI, as the README does); stopped when the
    test ends."""
    started: list[PatternService] = []

    def start(
        settings: dict[str, str], port: int | None = None, module: str = "versioning"
    ) -> PatternService:
        log = tmp_path / f"{module}-{settings.get('VERSION', 'v1')}-{len(started)}.log"
        service = PatternService(
            module, port or free_port(), log, settings, cwd=ROOT, move_if_taken=not port
        )
        started.append(service)
        attach_log(request, service)
        service.start()
        return service

    yield start
    for service in started:
        service.stop()


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The `restate` CLI, whatever its exit code (restate_cli fails on a non-zero one)."""
    return subprocess.run(
        [str(binaries.find(binaries.CLI)), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def said(result: subprocess.CompletedProcess[str]) -> str:
    """All the CLI printed: it writes some of its tables and messages to stderr."""
    return result.stdout + result.stderr


def sql(query: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """`restate sql --json <query>`: the README's query, its rows as the CLI prints them."""
    rows: list[dict[str, Any]] = json.loads(restate_cli("sql", "--json", query, env=env).stdout)
    return rows


def deployment_of(service: PatternService, env: dict[str, str]) -> str:
    """The id of the deployment registered from this service's address."""
    rows = sql(f"SELECT id FROM sys_deployment WHERE endpoint = '{service.url}/'", env)
    assert len(rows) == 1, rows
    deployment: str = rows[0]["id"]
    return deployment


def unfinished(deployment: str, env: dict[str, str]) -> int | None:
    """The drain check's count for one deployment (None: the deployment is gone)."""
    counts = {row["id"]: row["unfinished"] for row in sql(DRAIN_CHECK, env)}
    return counts.get(deployment)


def pinned(subscription: str, env: dict[str, str]) -> dict[str, Any]:
    """The README's row of this subscription's renewal: where it runs."""
    rows = [
        row for row in sql(PINNED, env) if row["target"] == f"Subscription/{subscription}/renew"
    ]
    assert len(rows) == 1, rows
    return rows[0]


def renew(ingress: Ingress, subscription: str, body: Any = None) -> str:
    """Send a renewal (`/send`, as the README's curl does); its invocation id."""
    return ingress.send(f"/Subscription/{subscription}/renew", json=body or ALICE)


def answer(ingress: Ingress, invocation: str) -> Any:
    response = ingress.get(f"/restate/invocation/{invocation}/attach")
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    return response.json()


def in_sleep(admin: Admin, invocation: str) -> bool:
    """The renewal's journal holds its sleep: the notice step before it is recorded."""
    rows = admin.query(
        f"SELECT count(*) AS n FROM sys_journal WHERE id = '{invocation}' "
        "AND entry_type = 'Command: Sleep'"
    )
    return int(rows[0]["n"]) == 1


def latest(admin: Admin) -> tuple[str, str]:
    """The deployment that serves new calls of Subscription, and the service's type."""
    row = admin.query("SELECT deployment_id, ty FROM sys_service WHERE name = 'Subscription'")[0]
    return row["deployment_id"], row["ty"]


def notices(service: PatternService, subscription: str) -> int:
    return count_lines(service, f"renewal notice for {subscription} sent")


def charges(service: PatternService, subscription: str) -> int:
    return count_lines(service, f"cents for {subscription}")


def test_walkthrough_pins_drains_removes_refuses_a_breaking_change_and_rolls_back(
    start_service: StartService,
    serve: Serve,
    ingress: Ingress,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    fast = {"RENEWAL_DELAY_SECONDS": "2"}
    v1 = start_service("versioning", fast)  # registered, as ./dev run does
    v2 = serve({**fast, "VERSION": "v2"})  # started now, registered once sub-1 runs on v1
    sub1, sub2, sub3 = unique("sub-1"), unique("sub-2"), unique("sub-3")

    first = renew(ingress, sub1)
    eventually(lambda: in_sleep(admin, first), timeout=30, message="sub-1 sleeps on v1")
    # A user has the 2 minutes of RENEWAL_DELAY to look; the test holds v1 (SIGSTOP) while
    # it looks, so that sub-1 is still in flight however slow the machine is.
    os.kill(v1.pid or 0, signal.SIGSTOP)
    try:
        registered = restate_cli("-y", "deployments", "register", v2.url, env=client_env)
        assert "Subscription" in said(registered)
        dp1, dp2 = deployment_of(v1, client_env), deployment_of(v2, client_env)
        second = renew(ingress, sub2, {"customer": "bob", "priceCents": 999})

        # each renewal is pinned to the deployment that was the latest when it started
        eventually(lambda: notices(v2, sub2) == 1, timeout=30, message="v2 sends sub-2's notice")
        assert pinned(sub1, client_env)["pinned_deployment_id"] == dp1
        assert pinned(sub1, client_env)["endpoint"] == f"{v1.url}/"
        assert pinned(sub2, client_env)["pinned_deployment_id"] == dp2
        assert pinned(sub2, client_env)["endpoint"] == f"{v2.url}/"

        # v1 is not drained: the check counts sub-1, and the CLI refuses to remove it
        assert unfinished(dp1, client_env) == 1
        refused = cli("-y", "deployments", "remove", dp1, env=client_env)
        assert refused.returncode != 0
        assert "Deployment is still Draining. There are 1 invocations" in said(refused)

        v3 = serve({**fast, "VERSION": "v3"})  # started while sub-1 waits
        # and a v2 that only drops `status` (tests/versioning/without_status.py)
        without_status = serve({}, module="tests.versioning.without_status")
    finally:
        os.kill(v1.pid or 0, signal.SIGCONT)

    # sub-1 finishes on v1 with v1's answer, sub-2 on v2 with v2's
    assert answer(ingress, first) == V1_ANSWER
    assert answer(ingress, second) == V2_ANSWER
    assert ingress.get(f"/Subscription/{sub1}/status").json() == V1_ANSWER
    for service, mine, other in ((v1, sub1, sub2), (v2, sub2, sub1)):
        assert notices(service, mine) == charges(service, mine) == 1
        assert notices(service, other) == charges(service, other) == 0
    assert count_lines(v2, f"loyalty discount for {sub2}: 10%") == 1
    assert count_lines(v1, "loyalty discount") == 0

    # drained: the check says 0, the CLI says Drained and removes it
    eventually(lambda: unfinished(dp1, client_env) == 0, timeout=30, message="v1 drained")
    removed = restate_cli("-y", "deployments", "remove", dp1, env=client_env)
    assert "The deployment is fully drained and is safe to remove" in said(removed)
    assert unfinished(dp1, client_env) is None

    # a renewal on v2, held in flight (SIGSTOP) while the breaking change comes in
    third = renew(ingress, sub3)
    eventually(lambda: in_sleep(admin, third), timeout=30, message="sub-3 sleeps on v2")
    os.kill(v2.pid or 0, signal.SIGSTOP)
    try:
        # the breaking change (a Virtual Object becomes a Service, `status` goes) is refused
        breaking = cli("-y", "deployments", "register", v3.url, env=client_env)
        assert breaking.returncode != 0
        assert "META0006" in said(breaking)
        assert "changing the service type" in said(breaking)
        assert latest(admin) == (dp2, "virtual_object")  # unchanged
        # ... until allowed: then every caller's path (/Subscription/<id>/...) is a bad path
        allowed = restate_cli("-y", "deployments", "register", "--breaking", v3.url, env=client_env)
        assert "--  status" in said(allowed)

        def broken() -> bool:
            response = ingress.get(f"/Subscription/{sub1}/status")
            assert response.status_code == 400, f"{response.status_code} {response.text}"
            return "bad path" in response.json()["message"]

        eventually(broken, timeout=30, message="the callers of the Virtual Object break")
        assert latest(admin) == (deployment_of(v3, client_env), "service")
    finally:
        os.kill(v2.pid or 0, signal.SIGCONT)
    # sub-3, pinned to v2, finishes there all the same
    assert answer(ingress, third) == V2_ANSWER
    assert pinned(sub3, client_env)["pinned_deployment_id"] == dp2

    # the rollback: v2's deployment made the latest again; the object's state is still there
    restate_cli("-y", "deployments", "register", "--force", v2.url, env=client_env)
    assert deployment_of(v2, client_env) == dp2  # the same deployment, not a new one
    eventually(
        lambda: ingress.get(f"/Subscription/{sub1}/status").status_code == 200,
        timeout=30,
        message="v2 serves status again",
    )
    assert ingress.get(f"/Subscription/{sub1}/status").json() == V1_ANSWER
    assert ingress.get(f"/Subscription/{sub3}/status").json() == V2_ANSWER
    # nothing ran on v3: it is drained, and goes
    assert count_lines(v3, "renewal notice") == 0
    dp3 = deployment_of(v3, client_env)
    assert unfinished(dp3, client_env) == 0
    restate_cli("-y", "deployments", "remove", dp3, env=client_env)
    assert ingress.get(f"/Subscription/{sub1}/status").json() == V1_ANSWER

    # a removed handler alone (the same service type) is not refused: only the diff says it
    registered = restate_cli("-y", "deployments", "register", without_status.url, env=client_env)
    assert "--  status" in said(registered)
    response = ingress.get(f"/Subscription/{sub1}/status")
    assert response.status_code == 404, response.text
    assert "the handler 'status' was not found" in response.json()["message"]


@pytest.mark.kills_server
def test_old_renewal_completes_on_v1_once_across_crashes_of_server_and_v1_during_the_switch(
    start_service: StartService,
    serve: Serve,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    fast = {"RENEWAL_DELAY_SECONDS": "1"}
    v1 = start_service("versioning", fast)
    v2 = serve({**fast, "VERSION": "v2"})
    sub1, sub2 = unique("sub-1"), unique("sub-2")

    first = renew(ingress, sub1)
    eventually(lambda: in_sleep(admin, first), timeout=30, message="sub-1 sleeps on v1")
    os.kill(v1.pid or 0, signal.SIGSTOP)  # sub-1 cannot finish before the crash, however slow
    restate_cli("-y", "deployments", "register", v2.url, env=client_env)  # the switch
    dp1 = deployment_of(v1, client_env)

    server.kill()  # kill -9 of both, right after the switch
    v1.kill()
    server.start()

    # v1 is down: a new renewal goes to v2; sub-1, its sleep over, waits for v1, not v2
    second = renew(ingress, sub2)
    assert answer(ingress, second) == V2_ANSWER

    def waits_for_v1() -> bool:
        row = admin.query(
            "SELECT status, pinned_deployment_id, last_attempt_deployment_id "
            f"FROM sys_invocation WHERE id = '{first}'"
        )[0]
        assert row.get("pinned_deployment_id") == dp1, row
        assert row.get("last_attempt_deployment_id") in (None, dp1), row  # never v2
        return row["status"] == "backing-off" and row.get("last_attempt_deployment_id") == dp1

    eventually(waits_for_v1, timeout=30, message="sub-1 retries v1 while v1 is down")
    assert notices(v2, sub1) == charges(v2, sub1) == 0

    v1.start()  # same address: the same deployment
    assert answer(ingress, first) == V1_ANSWER
    assert notices(v1, sub1) == charges(v1, sub1) == 1  # each side effect once
    assert notices(v2, sub1) == charges(v2, sub1) == 0
    assert notices(v2, sub2) == charges(v2, sub2) == 1
    assert unfinished(dp1, client_env) == 0


def stopped_by_a_journal_mismatch(
    admin: Admin, client_env: dict[str, str], invocation: str, difference: str
) -> None:
    """The invocation backs off with the SDK's journal mismatch, in `sys_invocation` and in
    `restate invocations describe` as the README shows them."""

    def mismatch() -> dict[str, Any]:
        row: dict[str, Any] = admin.query(
            "SELECT status, last_failure, last_failure_error_code FROM sys_invocation "
            f"WHERE id = '{invocation}'"
        )[0]
        assert row.get("last_failure_error_code") == "RT0016", row
        return row

    row = eventually(mismatch, timeout=30, message="a journal mismatch")
    assert row["status"] == "backing-off"
    assert "[570 Journal mismatch]" in row["last_failure"]
    assert f"name: {difference}" in row["last_failure"]

    def described() -> bool:  # shown while it backs off (not during an attempt)
        text = said(restate_cli("invocations", "describe", invocation, env=client_env))
        assert "570 Journal mismatch" in text, text
        return (
            "The mismatch happened while executing 'run' (index '1')" in text
            and f"name: {difference}" in text
        )

    eventually(described, timeout=30, message="restate invocations describe shows it")


def killed(ingress: Ingress, client_env: dict[str, str], invocation: str) -> None:
    """The way out, as the README says: kill the invocation; its caller gets an error."""
    restate_cli("-y", "invocations", "kill", invocation, env=client_env)
    response = ingress.get(f"/restate/invocation/{invocation}/attach")
    assert response.status_code == 409, response.text  # killed: a terminal failure


def test_overwriting_a_deployment_in_place_stops_its_renewals_with_a_journal_mismatch(
    start_service: StartService,
    serve: Serve,
    ingress: Ingress,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    """Both directions: v2's code over v1's deployment (an upgrade in place), then v1's code
    over that deployment again while a renewal started on v2's code is in flight (the
    README's "What not to do": v1's code at v2's address)."""
    # Each renewal's code is killed (-9) as soon as it sleeps, so that it does not finish
    # there: its next attempt, once the short sleep is over (the always-replay pass
    # suspends it) or right away, runs on the code that replaced it.
    fast = {"RENEWAL_DELAY_SECONDS": "2"}
    v1 = start_service("versioning", fast)
    dp1 = deployment_of(v1, client_env)
    sub1, sub3 = unique("sub-1"), unique("sub-3")
    first = renew(ingress, sub1)
    eventually(lambda: in_sleep(admin, first), timeout=30, message="sub-1 sleeps on v1")
    v1.kill()

    # v2's code at v1's address, registered over v1 with --force
    v2 = serve({**fast, "VERSION": "v2"}, port=v1.port)
    overwrite = restate_cli("-y", "deployments", "register", "--force", v1.url, env=client_env)
    assert "DANGEROUS" in said(overwrite)
    assert deployment_of(v2, client_env) == dp1  # overwritten in place: the same id

    # the retry replays sub-1's journal (written by v1) on v2's code: the SDK refuses
    stopped_by_a_journal_mismatch(
        admin, client_env, first, "send renewal notice != look up loyalty discount"
    )
    # never a wrong result: no charge, no answer, no state
    eventually(
        lambda: count_lines(v2, "VMException: (570)") >= 1,
        timeout=30,
        message="v2's log shows the mismatch",
    )
    assert charges(v2, sub1) == count_lines(v2, f"loyalty discount for {sub1}") == 0
    assert ingress.get(f"/restate/invocation/{first}/output").status_code == 470  # not done
    assert admin.state("Subscription", sub1) == {}
    killed(ingress, client_env, first)  # nothing was charged, so renew it again
    assert admin.state("Subscription", sub1) == {}

    # the README's direction: a renewal started on v2's code, then v1's code at that address
    third = renew(ingress, sub3, {"customer": "carol", "priceCents": 999})
    eventually(lambda: in_sleep(admin, third), timeout=30, message="sub-3 sleeps on v2's code")
    v2.kill()
    assert count_lines(v2, f"loyalty discount for {sub3}: 10%") == 1
    back = serve(fast, port=v1.port)  # VERSION=v1
    restate_cli("-y", "deployments", "register", "--force", v1.url, env=client_env)
    assert deployment_of(back, client_env) == dp1
    stopped_by_a_journal_mismatch(
        admin, client_env, third, "look up loyalty discount != send renewal notice"
    )
    eventually(
        lambda: count_lines(back, "VMException: (570)") >= 1,
        timeout=30,
        message="v1's log shows the mismatch",
    )
    assert notices(back, sub3) == charges(back, sub3) == 0
    assert admin.state("Subscription", sub3) == {}
    killed(ingress, client_env, third)
    assert admin.state("Subscription", sub3) == {}


def test_bad_input_is_refused_naming_the_field_and_changes_nothing(
    start_service: StartService,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    service = start_service("versioning")
    sub = unique("sub")
    cases: list[tuple[Any, str]] = [
        ({"priceCents": 999}, "customer: Field required"),
        ({"customer": "", "priceCents": 999}, "customer: String should have at least 1"),
        ({"customer": "alice"}, "priceCents: Field required"),
        ({"customer": "alice", "priceCents": 0}, "priceCents: Input should be greater than 0"),
        ({"customer": "alice", "priceCents": "lots"}, "priceCents: Input should be a valid int"),
        ({**ALICE, "plan": "gold"}, "plan: Extra inputs are not permitted"),
        ([1, 2], "body: Input should be an object"),
    ]
    for body, message in cases:
        response = ingress.post(f"/Subscription/{sub}/renew", json=body)
        assert response.status_code == 400, f"{body}: {response.status_code} {response.text}"
        assert message in response.json()["message"], f"{body}: {response.text}"
    not_json = ingress.post(
        f"/Subscription/{sub}/renew",
        content=b"{customer",
        headers={"content-type": "application/json"},
    )
    assert not_json.status_code == 400
    assert "Invalid JSON" in not_json.json()["message"]

    unknown = ingress.get(f"/Subscription/{sub}/status")
    assert unknown.status_code == 404
    assert unknown.json()["message"] == f"subscription {sub} was never renewed"
    with_body = ingress.post(f"/Subscription/{sub}/status", json={"x": 1})
    assert with_body.status_code == 400  # the ingress refuses a body for a handler without input

    assert admin.state("Subscription", sub) == {}
    assert count_lines(service, sub) == 0  # no step ran
    rows = admin.query(
        "SELECT count(*) AS n FROM sys_invocation WHERE target_service_name = 'Subscription' "
        f"AND target_service_key = '{sub}' AND status != 'completed'"
    )
    assert int(rows[0]["n"]) == 0


def test_an_unknown_version_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """VERSION names the build: a typo stops the process instead of serving v1 (app.py run
    as a module of its own here, as `python -m versioning` imports it)."""
    monkeypatch.setenv("VERSION", "v9")
    spec = importlib.util.spec_from_file_location("versioning_v9", ROOT / "versioning" / "app.py")
    assert spec is not None
    assert spec.loader is not None
    with pytest.raises(SystemExit, match="VERSION=v9: one of v1, v2, v3"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
