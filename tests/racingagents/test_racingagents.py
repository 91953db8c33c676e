"""Racing agents: the first answer wins and the loser is cancelled with its tool in flight;
a new message interrupts the task in flight and regenerates it with the new context; bad
input."""

from collections import Counter
from collections.abc import Callable

from devkit.model_standin import ModelStandin, text
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


def test_a_new_message_interrupts_the_task_and_regenerates_with_the_new_context(
    start_service: StartService,
    model: ModelStandin,
    ingress: Ingress,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    """The first task is cancelled during its first model call (the plan, held 10 s by the
    stand-in); the second task plans, drafts and polishes with both messages. Counted: 4
    model requests (1 for the first task, 3 for the second), 1 cleanup note, 1 answer."""
    start_service("racingagents", model.service_settings())
    session = unique("bob")
    model.script(session, steps=[
        text("plan for Flask", delay=10),  # the first task's plan: interrupted
        text("plan for FastAPI"),
        text("draft for FastAPI"),
        text("final FastAPI app"),
    ])  # fmt: skip
    first = f"Build a Flask app with user auth. {session}"
    second = "Actually, use FastAPI instead of Flask."
    ingress.send(f"/CodingAgent/{session}/message", json={"content": first})
    eventually(lambda: model.count(session) == 1, timeout=30, message="the first plan requested")
    response = ingress.post(f"/CodingAgent/{session}/message", json={"content": second})
    assert response.status_code == 200, response.text

    def history() -> list[dict[str, str]] | None:
        messages: list[dict[str, str]] = ingress.post(f"/CodingAgent/{session}/getHistory").json()
        return messages if len(messages) == 4 else None

    assert eventually(history, timeout=60, message="the regenerated answer") == [
        {"role": "user", "content": first},
        {"role": "user", "content": second},
        {"role": "assistant", "content": "[task cleanup ran after cancellation]"},
        {"role": "assistant", "content": "final FastAPI app"},
    ]
    requests = model.requests(session)
    assert [r["step"] for r in requests] == ["0", "1", "2", "3"]
    # user messages in each request (the user's and the step's prompt): the first task saw
    # one message of the user, the second task both, in each of its steps
    assert [r["turn"] for r in requests] == [2, 3, 3, 3]
    tasks = admin.query(f"{INVOCATION} WHERE target = 'CodingTask/runTask' "
                        f"AND invoked_by_id IN (SELECT id FROM sys_invocation WHERE "
                        f"target_service_key = '{session}') ORDER BY created_at")  # fmt: skip
    assert [(t["completion_result"], t.get("completion_failure")) for t in tasks] == [
        ("failure", "[409] cancelled"),
        ("success", None),
    ]
    cli = restate_cli("invocations", "describe", tasks[0]["id"], env=client_env)
    assert "[409] cancelled" in cli.stdout, cli.stdout
    assert "currentTask" not in admin.state("CodingAgent", session)  # nothing in flight


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
