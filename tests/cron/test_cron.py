"""Cron jobs: the seed's commands, seconds-level schedules, time zones, crashes, bad input."""

# ruff: noqa: W291 (the seed's JSON bodies have trailing blanks; kept verbatim)

import itertools
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from devkit.processes import PatternService, RestateServer
from tests.harness import (
    Admin,
    Ingress,
    StartService,
    assert_ingress_refuses,
    count_lines,
    eventually,
)

EVERY_MINUTE = """{ 
      "cronExpression": "* * * * *", 
      "service": "TaskService", 
      "method": "executeTask", 
      "payload": "Hello new minute!" 
  }"""
AT_MIDNIGHT = """{ 
      "cronExpression": "0 0 * * *", 
      "service": "TaskService", 
      "method": "executeTask", 
      "payload": "Hello midnight!" 
  }"""
RUN_LINE = re.compile(r"Job (\S+): run due (\S+) started (\S+)")


def start_cron(start_service: StartService, server: RestateServer) -> PatternService:
    # the target check asks this test server's admin API
    return start_service("cron", {"RESTATE_ADMIN_URL": server.admin_url})


def create(ingress: Ingress, body: str | dict[str, Any]) -> dict[str, Any]:
    # what curl --json sends
    headers = {"content-type": "application/json", "accept": "application/json"}
    if isinstance(body, str):
        response = ingress.post("/CronJobInitiator/create", content=body, headers=headers)
    else:
        response = ingress.post("/CronJobInitiator/create", json=body, headers=headers)
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    created: dict[str, Any] = response.json()
    return created


def cancel(ingress: Ingress, job_id: str) -> None:
    response = ingress.get(f"/CronJob/{job_id}/cancel")  # the seed's curl: a GET
    assert response.status_code == 200, f"{response.status_code} {response.text}"


def runs(service: PatternService, job_id: str) -> list[tuple[datetime, datetime]]:
    """(due, started) of each run of the job, from the service log."""
    found = []
    for line in service.log_lines():
        match = RUN_LINE.search(line)
        if match and match.group(1) == job_id:
            found.append((datetime.fromisoformat(match[2]), datetime.fromisoformat(match[3])))
    return found


def unfinished(admin: Admin, job_id: str) -> int:
    """Invocations of this job's object not completed yet (its scheduled run included)."""
    rows = admin.query(
        "SELECT count(*) AS n FROM sys_invocation WHERE target_service_name = 'CronJob' "
        f"AND target_service_key = '{job_id}' AND status != 'completed'"
    )
    return int(rows[0]["n"])


def between_runs(admin: Admin, job_id: str) -> bool:
    """The job's last run is done and journaled, the next one waits on its timer."""
    rows = admin.query(
        "SELECT status FROM sys_invocation WHERE target_service_name = 'CronJob' "
        f"AND target_service_key = '{job_id}' AND status != 'completed'"
    )
    return [row["status"] for row in rows] == ["scheduled"]


def assert_consecutive(dues: list[datetime], period: timedelta) -> None:
    """One run per due time, none skipped: the due times are one period apart."""
    assert dues, "no runs"
    for earlier, later in itertools.pairwise(dues):
        assert later - earlier == period, f"{earlier} -> {later} in {dues}"


def test_seed_commands_create_get_info_and_cancel(
    start_service: StartService, server: RestateServer, ingress: Ingress, admin: Admin
) -> None:
    start_cron(start_service, server)
    minute_job = create(ingress, EVERY_MINUTE)
    midnight_job = create(ingress, AT_MIDNIGHT)
    assert minute_job["jobId"] != midnight_job["jobId"]

    next_minute = datetime.fromisoformat(minute_job["nextExecutionTime"])
    assert (next_minute.second, next_minute.microsecond) == (0, 0)
    assert next_minute.utcoffset() == timedelta(0)  # UTC unless the request names a zone
    midnight = datetime.fromisoformat(midnight_job["nextExecutionTime"])
    assert (midnight.hour, midnight.minute, midnight.second) == (0, 0, 0)
    # equal when the job is created in the last minute before midnight
    assert timedelta(0) <= midnight - next_minute <= timedelta(days=1)

    job_id = minute_job["jobId"]
    response = ingress.get(f"/CronJob/{job_id}/getInfo")
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["request"] == {
        "cronExpression": "* * * * *",
        "service": "TaskService",
        "method": "executeTask",
        "key": None,
        "payload": "Hello new minute!",
        "timezone": "UTC",
    }
    assert info["nextExecutionTime"] == minute_job["nextExecutionTime"]
    next_id = info["nextExecutionId"]
    assert next_id.startswith("inv_")
    assert admin.query(f"SELECT target FROM sys_invocation WHERE id = '{next_id}'") == [
        {"target": f"CronJob/{job_id}/execute"}
    ]

    for job in (minute_job, midnight_job):
        cancel(ingress, job["jobId"])
        assert ingress.get(f"/CronJob/{job['jobId']}/getInfo").status_code == 404
        assert admin.state("CronJob", job["jobId"]) == {}
    # the scheduled run was cancelled, it will not come
    eventually(lambda: unfinished(admin, job_id) == 0, timeout=30, message="run cancelled")
    assert ingress.get(f"/CronJob/{job_id}/cancel").status_code == 404


def test_seconds_job_runs_at_its_times_until_cancelled(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    service = start_cron(start_service, server)
    payload = unique("tick")
    job = create(
        ingress,
        {"cronExpression": "*/2 * * * * *", "service": "TaskService", "method": "executeTask",
         "payload": payload},
    )  # fmt: skip
    job_id = job["jobId"]
    eventually(
        lambda: count_lines(service, f"Executing task: {payload}") >= 3,
        timeout=60,
        message="three runs",
    )
    cancel(ingress, job_id)
    eventually(lambda: unfinished(admin, job_id) == 0, timeout=30, message="nothing scheduled")

    done = runs(service, job_id)
    assert count_lines(service, f"Executing task: {payload}") == len(done)
    dues = [due for due, _ in done]
    assert dues[0] == datetime.fromisoformat(job["nextExecutionTime"])
    assert all(due.second % 2 == 0 and due.microsecond == 0 for due in dues)
    assert_consecutive(dues, timedelta(seconds=2))
    assert all(started >= due for due, started in done), "a run started before it was due"
    assert count_lines(service, f"Job {job_id} cancelled") == 1


def test_job_calls_a_virtual_object_with_key_and_payload(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    service = start_cron(start_service, server)
    key = unique("reports")
    job = create(
        ingress,
        {"cronExpression": "* * * * * *", "service": "TaskObject", "method": "executeTask",
         "key": key, "payload": "make the report"},
    )  # fmt: skip
    eventually(
        lambda: admin.state("TaskObject", key).get("runs") in ("2", "3"),
        timeout=60,
        message="two runs on the object",
    )
    cancel(ingress, job["jobId"])
    eventually(lambda: unfinished(admin, job["jobId"]) == 0, timeout=30, message="cancelled")
    total = len(runs(service, job["jobId"]))
    assert admin.state("TaskObject", key)["runs"] == str(total)
    assert count_lines(service, f"Executing task for {key} (run 1): make the report") == 1
    assert count_lines(service, f"Executing task for {key} (run 2): make the report") == 1


def test_timezone_is_honoured(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    service = start_cron(start_service, server)
    midnight = {"cronExpression": "0 0 * * *", "service": "TaskService", "method": "executeTask"}
    utc = create(ingress, midnight)
    tokyo = create(ingress, {**midnight, "timezone": "Asia/Tokyo"})
    new_york = create(ingress, {**midnight, "timezone": "America/New_York"})
    utc_time = datetime.fromisoformat(utc["nextExecutionTime"])
    tokyo_time = datetime.fromisoformat(tokyo["nextExecutionTime"])
    new_york_time = datetime.fromisoformat(new_york["nextExecutionTime"])

    assert tokyo_time.utcoffset() == timedelta(hours=9)
    assert new_york_time.utcoffset() in (timedelta(hours=-5), timedelta(hours=-4))  # DST
    for local in (utc_time, tokyo_time, new_york_time):
        assert (local.hour, local.minute, local.second) == (0, 0, 0)
    # midnight in Tokyo comes 9 hours before midnight in UTC (modulo a day)
    assert (utc_time - tokyo_time) % timedelta(days=1) == timedelta(hours=9)

    # a running job reports its due times in its zone
    payload = unique("kolkata")
    job = create(
        ingress,
        {"cronExpression": "* * * * * *", "service": "TaskService", "method": "executeTask",
         "payload": payload, "timezone": "Asia/Kolkata"},
    )  # fmt: skip
    eventually(lambda: runs(service, job["jobId"]), timeout=60, message="a run")
    cancel(ingress, job["jobId"])
    due, _ = runs(service, job["jobId"])[0]
    assert due.utcoffset() == timedelta(hours=5, minutes=30)
    for created in (utc, tokyo, new_york):
        cancel(ingress, created["jobId"])


def test_bad_requests_are_400_naming_the_field_and_create_nothing(
    start_service: StartService, server: RestateServer, ingress: Ingress, admin: Admin
) -> None:
    start_cron(start_service, server)
    task = {"service": "TaskService", "method": "executeTask"}
    cases: list[tuple[dict[str, Any] | str, str]] = [
        ({**task, "cronExpression": "61 * * * *"},
         "cronExpression: [61 * * * *] is not acceptable, out of range"),
        ({**task, "cronExpression": "*/0 * * * *"}, "cronExpression: [*/0 * * * *] step '0'"),
        ({**task, "cronExpression": "* * *"}, "cronExpression: expected 5 fields"),
        ({**task, "cronExpression": "* * * * *", "timezone": "Mars/Olympus"},
         "timezone: unknown time zone 'Mars/Olympus'"),
        (task, "cronExpression: Field required"),
        ({"cronExpression": "* * * * *", "method": "executeTask"}, "service: Field required"),
        ({"cronExpression": "* * * * *", "service": "NoSuchService", "method": "run"},
         "service: no service 'NoSuchService' is registered in Restate"),
        ({"cronExpression": "* * * * *", "service": "TaskService", "method": "nope"},
         "method: TaskService has no handler 'nope'"),
        ({"cronExpression": "* * * * *", "service": "TaskObject", "method": "executeTask"},
         "key: TaskObject is a VirtualObject"),
        ({**task, "cronExpression": "* * * * *", "key": "k"},
         "key: TaskService is a Service: it takes no key"),
        # a job must not reach what the ingress refuses
        ({"cronExpression": "* * * * *", "service": "CronJob", "method": "execute", "key": "k"},
         "method: CronJob/execute is ingress-private: a cron job cannot call it"),
        ("{not json", "Invalid JSON"),
    ]  # fmt: skip
    jobs_before = admin.query("SELECT count(*) AS n FROM state WHERE service_name = 'CronJob'")
    for body, message in cases:
        headers = {"content-type": "application/json"}
        if isinstance(body, str):
            response = ingress.post("/CronJobInitiator/create", content=body, headers=headers)
        else:
            response = ingress.post("/CronJobInitiator/create", json=body, headers=headers)
        assert response.status_code == 400, f"{body}: {response.status_code} {response.text}"
        assert message in response.json()["message"], f"{body}: {response.text}"
    jobs_after = admin.query("SELECT count(*) AS n FROM state WHERE service_name = 'CronJob'")
    assert jobs_after == jobs_before

    assert ingress.get("/CronJob/no-such-job/getInfo").status_code == 404
    assert ingress.get("/CronJob/no-such-job/cancel").status_code == 404


def test_initiate_and_execute_are_closed_to_the_ingress(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    """Only `create` starts a job and only the job schedules its runs (the walkthrough
    test shows both still happen)."""
    service = start_cron(start_service, server)
    job_id = unique("job")
    body = {"cronExpression": "* * * * * *", "service": "TaskService", "method": "executeTask",
            "payload": job_id}  # fmt: skip
    assert_ingress_refuses(ingress, f"/CronJob/{job_id}/initiate", body)
    assert_ingress_refuses(ingress, f"/CronJob/{job_id}/execute")
    assert admin.state("CronJob", job_id) == {}
    assert ingress.get(f"/CronJob/{job_id}/getInfo").status_code == 404
    assert count_lines(service, f"Executing task: {job_id}") == 0


def test_crashes_between_runs_neither_skip_nor_double_a_run(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    service = start_cron(start_service, server)
    payload = unique("tock")
    job = create(
        ingress,
        {"cronExpression": "*/3 * * * * *", "service": "TaskService", "method": "executeTask",
         "payload": payload},
    )  # fmt: skip
    job_id = job["jobId"]

    def crash_between_runs(runs_before: int, server_too: bool) -> None:
        eventually(
            lambda: len(runs(service, job_id)) >= runs_before and between_runs(admin, job_id),
            timeout=90,
            message=f"{runs_before} runs, the next one scheduled",
        )
        service.kill()
        if server_too:
            server.kill()
            server.start()
        service.start()

    crash_between_runs(2, server_too=True)
    crash_between_runs(len(runs(service, job_id)) + 2, server_too=False)
    eventually(
        lambda: len(runs(service, job_id)) >= 6 and between_runs(admin, job_id),
        timeout=90,
        message="six runs",
    )
    cancel(ingress, job_id)
    eventually(lambda: unfinished(admin, job_id) == 0, timeout=30, message="nothing scheduled")

    done = runs(service, job_id)
    assert len(done) >= 6
    assert count_lines(service, f"Executing task: {payload}") == len(done)
    assert_consecutive([due for due, _ in done], timedelta(seconds=3))
