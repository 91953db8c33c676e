"""Parallelizing work: the seed's fan-out/fan-in, real parallelism, a crash, bad input."""

import time
from collections.abc import Callable

import httpx

from devkit.processes import PatternService, RestateServer
from tests.harness import (
    Admin,
    Ingress,
    StartService,
    assert_ingress_refuses,
    count_lines,
    eventually,
)

SEED_TASK = "get out of bed,shower,make coffee,have breakfast"
SEED_ANSWER = "get out of bed: DONE, shower: DONE, make coffee: DONE, have breakfast: DONE"


def fixed_duration(seconds: float) -> dict[str, str]:
    """Settings that make every subtask take exactly `seconds`."""
    return {
        "SUBTASK_MIN_DURATION_SECONDS": str(seconds),
        "SUBTASK_MAX_DURATION_SECONDS": str(seconds),
    }


def started(service: PatternService, subtask: str) -> int:
    return count_lines(service, f"Started executing subtask: {subtask}")


def finished(service: PatternService, subtask: str) -> int:
    return count_lines(service, f"Execution subtask finished: {subtask}")


def test_seed_request_answers_the_aggregate_and_logs_each_subtask(
    start_service: StartService, ingress: Ingress
) -> None:
    # random durations as in the seed, only shorter: between 0 and 1 s
    service = start_service("parallelizework", {"SUBTASK_MAX_DURATION_SECONDS": "1"})
    # the seed's curl: -H "Content-Type: application/json" -d '{...}'
    response = ingress.post(
        "/FanOutWorker/run",
        content='{"description": "get out of bed,shower,make coffee,have breakfast"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == SEED_ANSWER

    for subtask in SEED_TASK.split(","):
        assert started(service, subtask) == 1
        assert finished(service, subtask) == 1
    lines = service.log_lines()
    start_line = next(line for line in lines if "Started executing subtask: shower" in line)
    assert "[FanOutWorker/runSubtask][inv_" in start_line
    aggregate_line = next(line for line in lines if "Aggregated result: " in line)
    assert "[FanOutWorker/run][inv_" in aggregate_line
    assert aggregate_line.endswith(f"Aggregated result: {SEED_ANSWER}")
    # all subtasks started before the first one finished: they ran side by side
    first_finish = next(i for i, line in enumerate(lines) if "Execution subtask finished" in line)
    assert sum("Started executing subtask" in line for line in lines[:first_finish]) == 4


def test_subtasks_run_in_parallel(start_service: StartService, ingress: Ingress) -> None:
    duration = 1.5
    subtasks = [f"step {i}" for i in range(10)]
    start_service("parallelizework", fixed_duration(duration))
    warm_up = ingress.post("/FanOutWorker/run", json={"description": "warm up"})
    assert warm_up.status_code == 200, warm_up.text

    begin = time.monotonic()
    response = ingress.post("/FanOutWorker/run", json={"description": ",".join(subtasks)})
    elapsed = time.monotonic() - begin

    assert response.status_code == 200, response.text
    assert response.json() == ", ".join(f"{s}: DONE" for s in subtasks)
    # in sequence the subtasks would take 10 durations; in parallel about one
    total_work = duration * len(subtasks)
    assert elapsed >= duration  # no subtask ends before its timer
    assert elapsed < 0.5 * total_work, f"{elapsed:.2f} s for {total_work:.0f} s of subtasks"


def test_a_hundred_subtasks_complete(start_service: StartService, ingress: Ingress) -> None:
    service = start_service("parallelizework", fixed_duration(0.2))
    subtasks = [f"subtask {i:03d}" for i in range(100)]
    response = ingress.post(
        "/FanOutWorker/run", json={"description": ", ".join(subtasks)}, timeout=120
    )
    assert response.status_code == 200, response.text
    assert response.json() == ", ".join(f"{s}: DONE" for s in subtasks)
    assert count_lines(service, "Started executing subtask: subtask ") == 100
    assert count_lines(service, "Execution subtask finished: subtask ") == 100


def test_crash_of_service_and_server_mid_fan_out(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    service = start_service("parallelizework", fixed_duration(3))
    key = unique("fan-out")
    subtasks = ["get out of bed", "shower", "make coffee", "have breakfast"]
    run_id = ingress.send(
        "/FanOutWorker/run",
        json={"description": ",".join(subtasks)},
        headers={"idempotency-key": key},
    )
    # wait until every subtask's start step is journaled and it waits on its timer
    eventually(
        lambda: (
            admin.journal_count("Command: Sleep", "work on subtask", invoked_by=run_id)
            == len(subtasks)
        ),
        timeout=30,
        message="all subtasks started and waiting on their timers",
    )
    assert all(started(service, s) == 1 for s in subtasks)
    assert all(finished(service, s) == 0 for s in subtasks)
    # crash both
    service.kill()
    server.kill()
    server.start()
    service.start()

    def answer() -> httpx.Response | None:
        response = ingress.get(f"/restate/invocation/FanOutWorker/run/{key}/attach")
        return response if response.status_code == 200 else None

    response = eventually(answer, timeout=60, message="the fan-out to finish after the crash")
    assert response.json() == SEED_ANSWER
    for subtask in subtasks:
        assert started(service, subtask) == 1, subtask
        assert finished(service, subtask) == 1, subtask
    assert count_lines(service, f"Aggregated result: {SEED_ANSWER}") == 1


def test_bad_input_is_400_naming_the_field(start_service: StartService, ingress: Ingress) -> None:
    service = start_service("parallelizework")
    cases = {
        '{"description": ""}': "description",
        '{"description": " , ,"}': "description",
        "{}": "description: Field required",
        '{"description": 42}': "description: Input should be a valid string",
        "not json": "Invalid JSON",
    }
    for body, message in cases.items():
        response = ingress.post(
            "/FanOutWorker/run", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, f"{body}: {response.status_code} {response.text}"
        assert message in response.json()["message"], body
    # runSubtask is for run only: the ingress refuses it, good input or bad
    assert_ingress_refuses(ingress, "/FanOutWorker/runSubtask", {"description": "shower"})
    assert_ingress_refuses(ingress, "/FanOutWorker/runSubtask", {"task": "shower"})
    assert count_lines(service, "Started executing subtask") == 0
