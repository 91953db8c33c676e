"""Chat agent: sessions with memory, isolated from each other, messages answered in order,
memory surviving crashes of the service and the server, bad input."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from devkit.model_standin import ModelStandin, default_script, error, text
from devkit.processes import PatternService, RestateServer
from tests.harness import Ingress, StartService, eventually, restate_cli

# importing the OpenAI Agents SDK takes ~3 CPU-s: on a busy machine a restart can take
# longer than the harness's default 30 s
RESTART_TIMEOUT = 120.0

QUICK_RETRIES = {"MODEL_RETRY_INTERVAL_SECONDS": "0.05"}


def chat(start_service: StartService, model: ModelStandin, **settings: str) -> PatternService:
    return start_service("chatagent", {**model.service_settings(), **QUICK_RETRIES, **settings})


def say(ingress: Ingress, session: str, message: str) -> str:
    response = ingress.post(f"/Chat/{session}/message", json={"message": message})
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    answer = response.json()
    assert isinstance(answer, str)
    return answer


def history(ingress: Ingress, session: str) -> list[tuple[str, str]]:
    """(role, text) of each item of the session's conversation."""
    response = ingress.get(f"/Chat/{session}/getHistory")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()

    def text_of(content: Any) -> str:
        return content if isinstance(content, str) else "".join(p["text"] for p in content)

    return [(item["role"], text_of(item["content"])) for item in items]


def test_walkthrough_two_sessions_with_memory_the_cli_and_bad_input(
    start_service: StartService,
    model: ModelStandin,
    ingress: Ingress,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    service = chat(start_service, model)
    script = default_script("chatagent")
    assert script is not None
    alice, bob, carol = unique("session"), unique("session"), unique("session")
    tokens = {session: unique("t") for session in (alice, bob, carol)}
    for token in tokens.values():
        model.script(token, **script)

    hello = f"Hi! My name is Alice. {tokens[alice]}"
    assert say(ingress, alice, hello) == "Nice to meet you, Alice! I will remember your name."
    assert say(ingress, bob, f"My name is Bob. {tokens[bob]}").startswith("Nice to meet you, Bob!")
    assert say(ingress, alice, "What is my name?") == "Your name is Alice."
    assert say(ingress, bob, "What is my name?") == "Your name is Bob."
    unknown = say(ingress, carol, f"What is my name? {tokens[carol]}")
    assert unknown.startswith("I don't know your name yet.")

    # the model got the memory: Alice's second request held both of her messages, no more
    assert [r["turn"] for r in model.requests(tokens[alice])] == [1, 2]
    assert history(ingress, alice) == [
        ("user", hello),
        ("assistant", "Nice to meet you, Alice! I will remember your name."),
        ("user", "What is my name?"),
        ("assistant", "Your name is Alice."),
    ]
    assert all("Bob" not in text for _, text in history(ingress, alice))

    cli = restate_cli("kv", "get", "Chat", alice, env=client_env)
    assert "items" in cli.stdout
    assert "Your name is Alice." in cli.stdout
    line = next(line for line in service.log_lines() if f"Session {alice} answered" in line)
    assert "[Chat/message][inv_" in line

    # bad input: a 400 naming the field, no model call, the session as it was
    before = history(ingress, carol)
    for body, field in [
        ({}, "message: Field required"),
        ({"message": ""}, "message: String should have at least 1 character"),
        ({"message": ["hi"]}, "message: Input should be a valid string"),
        ({"message": "hi", "user": "alice"}, "user: Extra inputs are not permitted"),
    ]:
        response = ingress.post(f"/Chat/{carol}/message", json=body)
        assert response.status_code == 400, response.text
        assert field in response.json()["message"]
    assert history(ingress, carol) == before
    assert model.count(tokens[carol]) == 1


def test_messages_sent_at_once_are_answered_in_order_and_model_failures_end_clearly(
    start_service: StartService,
    model: ModelStandin,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    chat(start_service, model, MODEL_MAX_ATTEMPTS="2")
    session, token = unique("session"), unique("t")
    # each answer says how many user messages the model saw: 1, 2, 3 if one after the other
    model.script(token, rules=[{"text": "{turn}: {user}", "delay": 0.3}])
    messages = [f"message {i} {token}" for i in range(3)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        answers = list(pool.map(lambda m: say(ingress, session, m), messages))

    turns = {answer.split(": ", 1)[1]: int(answer.split(": ", 1)[0]) for answer in answers}
    assert sorted(turns.values()) == [1, 2, 3]
    in_order = sorted(messages, key=lambda m: turns[m])
    assert [text for role, text in history(ingress, session) if role == "user"] == in_order
    assert [r["turn"] for r in model.requests(token)] == [1, 2, 3]

    # a model that keeps failing: MODEL_MAX_ATTEMPTS attempts, then a clear error
    failing = unique("t")
    model.script(failing, steps=[error(500, "model overloaded")] * 3 + [text("unreachable")])
    response = ingress.post(f"/Chat/{unique('session')}/message", json={"message": failing})
    assert response.status_code == 502, response.text
    assert "The model could not answer" in response.json()["message"]
    assert "model overloaded" in response.json()["message"]
    assert model.count(failing) == 2  # MODEL_MAX_ATTEMPTS


def test_memory_survives_crashes_of_the_service_and_the_server(
    start_service: StartService,
    model: ModelStandin,
    server: RestateServer,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    service = chat(start_service, model)
    session, token = unique("session"), unique("t")
    model.script(token, rules=[
        {"when": {"user": r"my name is (?P<name>\w+)"}, "text": "Nice to meet you, {name}!"},
        {"when": {"user": "remember"}, "text": "Noted.", "delay": 1.5},
        {"when": {"user": "my name", "history": r"my name is (?P<name>\w+)"},
         "text": "Your name is {name}."},
    ])  # fmt: skip
    assert say(ingress, session, f"My name is Alice {token}") == "Nice to meet you, Alice!"

    # the service dies while the model works on the second message
    invocation = ingress.send(f"/Chat/{session}/message", json={"message": "Remember: tea"})
    eventually(lambda: model.count(token) == 2, timeout=30, message="the second model call")
    service.kill()
    service.start(timeout=RESTART_TIMEOUT)

    def attached() -> httpx.Response | None:
        response = ingress.get(f"/restate/invocation/{invocation}/attach")
        return response if response.status_code == 200 else None

    assert eventually(attached, timeout=60, message="the second turn completes").json() == "Noted."

    # the server dies between turns
    server.kill()
    server.start()
    assert say(ingress, session, "What is my name?") == "Your name is Alice."

    # the first turn's model call was not made again; the one cut off by the crash was
    assert [r["turn"] for r in model.requests(token)] == [1, 2, 2, 3]
    assert [role for role, _ in history(ingress, session)] == ["user", "assistant"] * 3
