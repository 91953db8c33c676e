"""The model stand-in (devkit/model_standin.py) answers as its scripts say, keeps tests
apart by token, and counts what it answered: the agent patterns' tests rely on all three."""

from collections.abc import Callable
from typing import Any

import httpx

from devkit.model_standin import ModelStandin, error, text, tool_call
from devkit.processes import http


def respond(
    model: ModelStandin, content: str, extra: list[dict[str, Any]] | None = None
) -> httpx.Response:
    items: list[dict[str, Any]] = [{"role": "user", "content": content}, *(extra or [])]
    return http().post(f"{model.url}/v1/responses", json={"model": "m", "input": items}, timeout=10)


def test_steps_in_order_then_exhausted(model: ModelStandin, unique: Callable[[str], str]) -> None:
    token = unique("t")
    model.script(token, steps=[error(429, retry_after=1), tool_call("lookup", city="Paris"),
                               text("It is {output} ({tool})")])  # fmt: skip
    first = respond(model, f"hi {token}")
    assert first.status_code == 429
    assert first.headers["retry-after"] == "1"
    call = respond(model, f"hi {token}").json()["output"][0]
    assert (call["type"], call["name"]) == ("function_call", "lookup")
    assert call["arguments"] == '{"city": "Paris"}'
    after_tool = [
        {"type": "function_call", "call_id": call["call_id"], "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"},
    ]
    answer = respond(model, f"hi {token}", after_tool).json()["output"][0]
    assert answer["content"][0]["text"] == "It is sunny (lookup)"
    exhausted = respond(model, f"hi {token}")
    assert exhausted.status_code == 400
    assert exhausted.json()["error"]["type"] == "standin_script_exhausted"
    assert [r["status"] for r in model.requests(token)] == [429, 200, 200, 400]
    assert model.count(token) == 4
    assert model.count(token, 200) == 2
    assert model.answered_twice(token) == []


def test_tokens_keep_tests_apart_and_rules_repeat(
    model: ModelStandin, unique: Callable[[str], str]
) -> None:
    mine, theirs = unique("t"), unique("t")
    model.script(mine, rules=[{"when": {"user": r"weather in (?P<city>\w+)"},
                               "text": "Weather for {city}"}])  # fmt: skip
    model.script(theirs, steps=[text("theirs")])
    for _ in range(2):
        answer = respond(model, f"weather in Oslo {mine}").json()
        assert answer["output"][0]["content"][0]["text"] == "Weather for Oslo"
    assert model.answered_twice(mine) != []  # the same conversation answered twice
    assert model.count(theirs) == 0
    assert (
        respond(model, f"anything {theirs}").json()["output"][0]["content"][0]["text"] == "theirs"
    )


def test_chat_completions_too(model: ModelStandin, unique: Callable[[str], str]) -> None:
    token = unique("t")
    model.script(token, steps=[tool_call("lookup", city="Rome")])
    response = http().post(
        f"{model.url}/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": token}]},
        timeout=10,
    )
    call = response.json()["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "lookup", "arguments": '{"city": "Rome"}'}
    assert model.count(token, 200) == 1


def test_history_rules_see_earlier_user_messages(
    model: ModelStandin, unique: Callable[[str], str]
) -> None:
    token = unique("t")
    model.script(token, rules=[
        {"when": {"user": "my name", "history": r"I am (?P<name>\w+)"}, "text": "{name} ({turn})"},
        {"when": {"user": "my name"}, "text": "unknown ({turn})"},
    ])  # fmt: skip
    earlier = [{"role": "user", "content": f"I am Ada {token}"},
               {"role": "assistant", "content": "Hello"}]  # fmt: skip
    first = respond(model, f"my name? {token}").json()["output"][0]["content"][0]["text"]
    assert first == "unknown (1)"
    items = [*earlier, {"role": "user", "content": "my name?"}]
    second = http().post(f"{model.url}/v1/responses", json={"model": "m", "input": items})
    assert second.json()["output"][0]["content"][0]["text"] == "Ada (2)"
    assert [r["turn"] for r in model.requests(token)] == [1, 2]
