"""(Delayed) message queue: delayed tasks, deduplication, attach, crashes, bad input."""

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from devkit.processes import PatternService, RestateServer
from tests.harness import Admin, Ingress, StartService, count_lines, eventually, run_module

TASK = "/AsyncTaskWorker/runTask"


def task_runs(service: PatternService, key: str) -> int:
    return count_lines(service, f"Running task {key} ")


def invocation(admin: Admin, invocation_id: str) -> dict[str, Any]:
    rows = admin.query(
        "SELECT status, created_at, scheduled_start_at, running_at, completed_at "
        f"FROM sys_invocation WHERE id = '{invocation_id}'"
    )
    assert len(rows) == 1, rows
    return rows[0]


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def submit(ingress: Ingress, key: str, delay: str | None = None) -> str:
    """Queue a task with `/send`, its key as idempotency key; the invocation id."""
    response = ingress.post(
        f"{TASK}/send" + (f"?delay={delay}" if delay else ""),
        json={"key": key, "taskName": "resize", "payload": f"{key}.png"},
        headers={"idempotency-key": key},
    )
    assert response.status_code == 202, f"{response.status_code} {response.text}"
    invocation_id: str = response.json()["invocationId"]
    return invocation_id


def test_delayed_task_runs_once_after_the_delay_and_a_second_process_gets_the_result(
    start_service: StartService,
    client_env: dict[str, str],
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    service = start_service("queueing")
    key = unique("task")
    began = time.monotonic()
    submitted = run_module(
        "queueing.client", "submit", key, "resize", "image.png", "--delay", "2s", "--no-wait",
        env=client_env,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.startswith(f"Task {key} queued as inv_")
    invocation_id = submitted.stdout.split()[-1]

    # queued behind a durable timer, not run yet (on a machine too busy to look within the
    # delay, the timestamps below still prove it waited)
    status = invocation(admin, invocation_id)["status"]
    if time.monotonic() - began < 1.5:
        assert status == "scheduled"
        assert task_runs(service, key) == 0

    attached = run_module("queueing.client", "attach", key, env=client_env)
    assert attached.returncode == 0, attached.stderr
    assert attached.stdout == "Result: Task resize done: image.png\n"
    assert task_runs(service, key) == 1
    line = next(line for line in service.log_lines() if f"Running task {key} " in line)
    assert f"[AsyncTaskWorker/runTask][{invocation_id}]" in line
    assert "Running task" in line
    assert "(resize) with payload image.png" in line

    times = invocation(admin, invocation_id)
    assert times["status"] == "completed"
    # the server's timestamps have millisecond resolution: compare with a margin
    assert seconds_between(times["created_at"], times["running_at"]) >= 0.9 * 2.0


def test_task_without_delay_runs_at_once_and_the_client_prints_id_then_result(
    start_service: StartService, client_env: dict[str, str], unique: Callable[[str], str]
) -> None:
    service = start_service("queueing")
    key = unique("task")
    result = run_module("queueing.client", "submit", key, "resize", "a.png", env=client_env)
    assert result.returncode == 0, result.stderr
    queued, answer = result.stdout.splitlines()
    assert queued.startswith(f"Task {key} queued as inv_")
    assert answer == "Result: Task resize done: a.png"
    assert task_runs(service, key) == 1


def test_submitting_one_key_many_times_runs_the_task_once(
    start_service: StartService,
    ingress: Ingress,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    service = start_service("queueing")
    key = unique("task")
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(lambda _: submit(ingress, key, delay="1s"), range(8)))
    assert len(ids) == 1

    again = run_module("queueing.client", "submit", key, "resize", f"{key}.png", env=client_env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        f"Task {key} queued as {ids.pop()} (submitted before: same task)",
        f"Result: Task resize done: {key}.png",
    ]
    assert task_runs(service, key) == 1


def test_task_due_while_the_worker_is_down_runs_once_when_it_is_back(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service("queueing")
    key = unique("task")
    service.kill()
    invocation_id = submit(ingress, key, delay="500ms")

    def retrying() -> bool:  # due, and Restate keeps trying to reach the worker
        status: str = invocation(admin, invocation_id)["status"]
        return status == "backing-off"

    eventually(retrying, timeout=30, message="the due task is retried while the worker is down")
    assert task_runs(service, key) == 0

    service.start()
    response = ingress.get(f"/restate/invocation/{invocation_id}/attach")
    assert response.status_code == 200, response.text
    assert response.json() == f"Task resize done: {key}.png"
    assert task_runs(service, key) == 1


def test_delayed_task_survives_a_server_crash(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    service = start_service("queueing")
    key = unique("task")
    invocation_id = submit(ingress, key, delay="3s")
    server.kill()
    server.start()
    assert task_runs(service, key) == 0

    def attached() -> str | None:
        response = ingress.get(f"/restate/invocation/{invocation_id}/attach")
        return str(response.json()) if response.status_code == 200 else None

    result = eventually(attached, timeout=60, message="the task queued before the crash ran")
    assert result == f"Task resize done: {key}.png"
    assert task_runs(service, key) == 1
    times = invocation(admin, invocation_id)
    assert seconds_between(times["created_at"], times["running_at"]) >= 0.9 * 3.0


def test_bad_tasks_are_refused_with_400_naming_the_field_and_do_not_run(
    start_service: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    service = start_service("queueing")
    key = unique("task")
    cases = {
        "payload: Field required": {"key": key, "taskName": "resize"},
        "taskName: Input should be a valid string": {"key": key, "taskName": 5, "payload": "x"},
        "key: Field required": {"taskName": "resize", "payload": "x"},
    }
    for message, body in cases.items():
        response = ingress.post(TASK, json=body)
        assert response.status_code == 400, response.text
        assert message in response.json()["message"]
    not_json = ingress.post(TASK, content="{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400
    assert "invalid TaskOpts" in not_json.json()["message"]
    assert task_runs(service, key) == 0


def test_client_reports_unknown_keys_bad_delays_and_usage(
    start_service: StartService, client_env: dict[str, str], unique: Callable[[str], str]
) -> None:
    start_service("queueing")
    key = unique("task")
    unknown = run_module("queueing.client", "attach", key, env=client_env)
    assert unknown.returncode == 1
    assert f"error: no task with key {key}" in unknown.stderr

    bad_delay = run_module(
        "queueing.client", "submit", key, "resize", "x", "--delay", "soon", env=client_env
    )
    assert bad_delay.returncode == 1
    assert "error: 400" in bad_delay.stderr
    assert "bad delay query parameter" in bad_delay.stderr

    usage = run_module("queueing.client", "submit", key, env=client_env)
    assert usage.returncode == 2
    assert "required: taskName, payload" in usage.stderr
