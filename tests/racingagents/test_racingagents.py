"""Racing agents: the first answer wins and the loser is cancelled with its tool in flight,
also across a kill -9 of the service and of the server mid-race; a new message interrupts
the task in flight and regenerates it with the new context; bad input."""

from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from devkit.model_standin import ModelStandin, text
from devkit.processes import RestateServer
from tests.harness import (
    Admin,
    Ingress,
    StartService,
    assert_ingress_refuses,
    count_lines,
    eventually,
    logged,
    restate_cli,
)

INVOCATION = "SELECT id, status, completion_result, completion_failure FROM sys_invocation"
RESTART_TIMEOUT = 120.0  # a restart imports the Agents SDK: seconds of CPU, more under load


def test_the_first_answer_wins_and_the_loser_is_cancelled_with_its_tool(
    start_service: StartService,
    model: ModelStandin,
    ingress: Ingress,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    """The quick agent answers after 5 s; by then the thinking agent waits in its
    deep_research tool (for RESEARCH_DURATION_SECONDS, 60 here): cancelled, the tool never
    collects its results, the thinking agent's second model call is never made."""
    service = start_service(
        "racingagents", {**model.service_settings(), "RESEARCH_DURATION_SECONDS": "60"}
    )
    token = unique("q")
    model.script(token, rules=[
        {"when": {"user": "^Quick answer: "}, **text("Take a course, then build things.",
                                                       delay=5)},
        {"when": {"last": "user"}, "tool_calls": [{"name": "deep_research",
                                                   "arguments": {"topic": token}}]},
        {"when": {"last": "tool"}, **text("After deep research: {output}")},
    ])  # fmt: skip
    run_id = ingress.send(
        "/RacingAgent/run",
        json={"message": f"How do I learn machine learning? {token}"},
        headers={"idempotency-key": token},
    )
    response = ingress.get(f"/restate/invocation/{run_id}/attach")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "agent": "respondQuickly",
        "answer": "Take a course, then build things.",
    }

    def loser() -> dict[str, str] | None:
        rows = admin.query(f"{INVOCATION} WHERE invoked_by_id = '{run_id}' "
                           "AND target = 'RacingAgent/thinkLonger'")  # fmt: skip
        return rows[0] if rows and rows[0]["status"] == "completed" else None

    cancelled = eventually(loser, timeout=30, message="the slower agent to end")
    assert cancelled["completion_result"] == "failure"
    assert cancelled["completion_failure"] == "[409] cancelled"
    cli = restate_cli("invocations", "describe", cancelled["id"], env=client_env)
    assert "[409] cancelled" in cli.stdout, cli.stdout
    # its tool had started, and was waiting for the search results when it was cancelled
    logged(service, f"Deep research started: {token}")
    assert count_lines(service, "Deep research finished") == 0
    sql = f"SELECT entry_type, name FROM sys_journal WHERE id = '{cancelled['id']}'"
    journal = {(entry["entry_type"], entry.get("name")) for entry in admin.query(sql)}
    assert ("Command: Sleep", "wait for the search results") in journal
    assert ("Command: Run", "collect results") not in journal
    steps = Counter(request["step"] for request in model.requests(token))
    assert steps == {"rule 0": 1, "rule 1": 1}  # no model call after the tool


@pytest.mark.kills_server
def test_a_race_survives_a_crash_of_the_service_and_of_the_server_mid_race(
    start_service: StartService,
    model: ModelStandin,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    """kill -9 of the service, then of the server, while both racers are in flight: the
    thinking agent waits in its deep_research tool (its search submitted, a durable timer
    of RESEARCH_DURATION_SECONDS, 60 here, running), the quick agent's model call is held
    by the stand-in. That is the moment that matters: the race's two calls, the tool's
    submitted search and its timer exist only in Restate's journal, and nothing has won
    yet. After the restarts, the quick agent's model call is made again (the one cut
    short was never journaled) and wins; the thinking agent is cancelled where it waits.
    Counted: model requests (before the crash, 1 per agent; after it, 1: the quick one
    retried, the thinking agent's first answer read from the journal, its second call
    never made), search submitted 1 (logged inside its step), search results collected
    0, the run's answer 1, racers 2 (one won, one cancelled)."""
    service = start_service(
        "racingagents", {**model.service_settings(), "RESEARCH_DURATION_SECONDS": "60"}
    )
    token = unique("q")
    held = {"when": {"user": "^Quick answer: "}, **text("Take a course.", delay=60)}
    tool = {
        "when": {"last": "user"},
        "tool_calls": [{"name": "deep_research", "arguments": {"topic": token}}],
    }
    after_tool = {"when": {"last": "tool"}, **text("After deep research: {output}")}
    model.script(token, rules=[held, tool, after_tool])
    run_id = ingress.send(
        "/RacingAgent/run",
        json={"message": f"How do I learn machine learning? {token}"},
        headers={"idempotency-key": token},
    )
    eventually(lambda: count_lines(service, f"Deep research started: {token}") == 1,
               timeout=30, message="the thinking agent's tool to start")  # fmt: skip
    eventually(lambda: model.by_step(token) == {"rule 0": 1, "rule 1": 1},
               timeout=30, message="the quick agent's model call in flight")  # fmt: skip

    service.kill()
    server.kill()
    # the same rules, the quick answer no longer held (the counts start again from 0)
    model.script(token, rules=[{**held, "delay": 0}, tool, after_tool])
    server.start()
    service.start(timeout=RESTART_TIMEOUT)

    def attached() -> httpx.Response | None:
        response = ingress.get(f"/restate/invocation/{run_id}/attach")
        return response if response.status_code == 200 else None

    answer = eventually(attached, timeout=60, message="the race to end after the crashes")
    assert answer.json() == {"agent": "respondQuickly", "answer": "Take a course."}

    def racers() -> list[dict[str, str]] | None:
        rows = admin.query(
            "SELECT target, status, completion_result, completion_failure FROM sys_invocation "
            f"WHERE invoked_by_id = '{run_id}'"
        )
        return rows if len(rows) == 2 and {r["status"] for r in rows} == {"completed"} else None

    outcomes = {r["target"]: (r["completion_result"], r.get("completion_failure"))
                for r in eventually(racers, timeout=30, message="both racers to end")}  # fmt: skip
    assert outcomes == {
        "RacingAgent/respondQuickly": ("success", None),
        "RacingAgent/thinkLonger": ("failure", "[409] cancelled"),
    }
    logged(service, "respondQuickly answered first; cancelled thinkLonger")
    logged(service, f"Deep research started: {token}")  # not submitted again on recovery
    assert count_lines(service, "Deep research finished") == 0
    assert model.by_step(token) == {"rule 0": 1}  # after the crash: the quick call only


def test_each_new_message_interrupts_the_task_in_flight_and_a_failing_racer_is_skipped(
    start_service: StartService,
    model: ModelStandin,
    ingress: Ingress,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    """Interrupt: the first task is cancelled during its first model call (the plan, held
    8 s by the stand-in), and so is the second, by a third message (the first task's
    cleanup note, which lands after the second task began, must not clear the second
    task's id); the third task plans, drafts and polishes with all three messages.
    Counted: 5 model requests (1 per cancelled task, 3 for the last), 2 cleanup notes, 1
    answer. Meanwhile, a race whose quick agent fails (its model calls a tool it does not
    have: terminal, 502): skipped, the thinking agent wins after its research
    (RESEARCH_DURATION_SECONDS 0.5 here). Counted: 3 model requests, 1 failure logged,
    the research collected once, nothing cancelled."""
    service = start_service(
        "racingagents", {**model.service_settings(), "RESEARCH_DURATION_SECONDS": "0.5"}
    )
    race = unique("q")
    model.script(race, rules=[
        {"when": {"user": "^Quick answer: "}, "tool_calls": [{"name": "no_such_tool",
                                                              "arguments": {}}]},
        {"when": {"last": "user"}, "tool_calls": [{"name": "deep_research",
                                                   "arguments": {"topic": race}}]},
        {"when": {"last": "tool"}, **text("After deep research: {output}")},
    ])  # fmt: skip
    run_id = ingress.send(
        "/RacingAgent/run", json={"message": f"ML? {race}"}, headers={"idempotency-key": race}
    )

    session = unique("bob")
    model.script(session, steps=[
        text("plan for Flask", delay=8),  # the first task's plan: interrupted
        text("plan for FastAPI", delay=8),  # the second task's plan: interrupted
        text("plan for Django"),
        text("draft for Django"),
        text("final Django app"),
    ])  # fmt: skip
    first = f"Build a Flask app with user auth. {session}"
    second = "Actually, use FastAPI instead of Flask."
    third = "No, use Django."
    ingress.send(f"/CodingAgent/{session}/message", json={"content": first})

    def interrupt(content: str, once_requested: int) -> None:
        """Send `content` once the task in flight has requested its plan."""
        eventually(lambda: model.count(session) == once_requested, timeout=30,
                   message=f"plan {once_requested} requested")  # fmt: skip
        response = ingress.post(f"/CodingAgent/{session}/message", json={"content": content})
        assert response.status_code == 200, response.text

    interrupt(second, once_requested=1)
    interrupt(third, once_requested=2)

    def history() -> list[dict[str, str]] | None:
        messages: list[dict[str, str]] = ingress.post(f"/CodingAgent/{session}/getHistory").json()
        return messages if len(messages) == 6 else None

    note = {"role": "assistant", "content": "[task cleanup ran after cancellation]"}
    assert eventually(history, timeout=60, message="the regenerated answer") == [
        {"role": "user", "content": first},
        {"role": "user", "content": second},
        note,
        {"role": "user", "content": third},
        note,
        {"role": "assistant", "content": "final Django app"},
    ]
    requests = model.requests(session)
    assert [r["step"] for r in requests] == ["0", "1", "2", "3", "4"]
    # user messages in each request (the user's and the step's prompt): each task saw the
    # user's messages so far, the last one all three, in each of its steps
    assert [r["turn"] for r in requests] == [2, 3, 4, 4, 4]
    tasks = admin.query(f"{INVOCATION} WHERE target = 'CodingTask/runTask' "
                        f"AND invoked_by_id IN (SELECT id FROM sys_invocation WHERE "
                        f"target_service_key = '{session}') ORDER BY created_at")  # fmt: skip
    assert [(t["completion_result"], t.get("completion_failure")) for t in tasks] == [
        ("failure", "[409] cancelled"),
        ("failure", "[409] cancelled"),
        ("success", None),
    ]
    cli = restate_cli("invocations", "describe", tasks[1]["id"], env=client_env)
    assert "[409] cancelled" in cli.stdout, cli.stdout
    assert "currentTask" not in admin.state("CodingAgent", session)  # nothing in flight

    # the race: the quick agent failed, the thinking agent answered after its research
    response = ingress.get(f"/restate/invocation/{run_id}/attach")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "agent": "thinkLonger",
        "answer": f"After deep research: Results of the search job on {race}: "
        "three surveys and a textbook chapter.",
    }
    # written between two awaits of call results, with no journal entry in between: the
    # always-replay pass, which replays the run at each of them, may log it again
    assert count_lines(service, "respondQuickly failed: QuickResponder: ") >= 1
    logged(service, f"Deep research finished: search job on {race}")
    assert count_lines(service, "answered first; cancelled") == 0
    assert model.by_step(race) == {"rule 0": 1, "rule 1": 1, "rule 2": 1}
    racers = admin.query(f"SELECT target, completion_failure FROM sys_invocation "
                         f"WHERE invoked_by_id = '{run_id}' ORDER BY target")  # fmt: skip
    assert [r["target"] for r in racers] == [
        "RacingAgent/respondQuickly",
        "RacingAgent/thinkLonger",
    ]
    assert racers[0]["completion_failure"].startswith("[502] QuickResponder: ")
    assert racers[1].get("completion_failure") is None


def test_bad_input_is_400_naming_the_field_and_starts_nothing(
    start_service: StartService,
    model: ModelStandin,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    start_service("racingagents", model.service_settings())
    token = unique("t")
    model.script(token, rules=[text("unused")])
    cases = [
        ("/RacingAgent/run", {}, "message: Field required"),
        ("/RacingAgent/run", {"message": ""}, "message: String should have at least 1 character"),
        ("/RacingAgent/run", {"question": token}, "question: Extra inputs are not permitted"),
        (
            f"/CodingAgent/{token}/message",
            {"content": 7},
            "content: Input should be a valid string",
        ),
        (f"/CodingAgent/{token}/message", "hello", "Input should be an object"),
    ]
    for path, body, message in cases:
        response = ingress.post(path, json=body)
        assert response.status_code == 400, f"{path} {body}: {response.text}"
        assert message in response.json()["message"], response.text
    response = ingress.post(f"/CodingAgent/{token}/getHistory", json={"content": token})
    assert response.status_code == 400  # it takes no body
    assert model.count(token) == 0
    assert admin.state("CodingAgent", token) == {}

    # only the pattern itself runs the racers, the tasks and their answers
    assert_ingress_refuses(ingress, "/RacingAgent/thinkLonger", {"message": token})
    assert_ingress_refuses(ingress, "/RacingAgent/respondQuickly", {"message": token})
    assert_ingress_refuses(ingress, "/CodingTask/runTask", {"agentId": token, "messages": []})
    assert_ingress_refuses(
        ingress, f"/CodingAgent/{token}/appendMessage", {"taskId": "inv_1", "content": "x"}
    )
