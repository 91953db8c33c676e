"""Durable agent: the walkthrough against the model stand-in, the three kinds of errors,
a crash of the service and of the server during a tool call, bad input."""

from collections.abc import Callable
from typing import Any

import httpx

from devkit.model_standin import ModelStandin, default_script, error, text, tool_call
from devkit.processes import PatternService, RestateServer
from tests.harness import Ingress, StartService, count_lines, eventually

# importing the OpenAI Agents SDK takes ~3 CPU-s: on a busy machine a restart can take
# longer than the harness's default 30 s
RESTART_TIMEOUT = 120.0

RUN = "/WeatherAgent/run"
QUICK_RETRIES = {"MODEL_RETRY_INTERVAL_SECONDS": "0.05", "TOOL_RETRY_INTERVAL_SECONDS": "0.05"}


def agent(start_service: StartService, model: ModelStandin, **settings: str) -> PatternService:
    return start_service("durableagent", {**model.service_settings(), **QUICK_RETRIES, **settings})


def ask(ingress: Ingress, message: str) -> str:
    response = ingress.post(RUN, json={"message": message})
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    answer = response.json()
    assert isinstance(answer, str)
    return answer


def fetched(service: PatternService, city: str) -> int:
    """Weather API calls that answered: the side effect, logged inside the step."""
    return count_lines(service, f"Fetched the weather for {city}: ")


def report_of(service: PatternService, city: str) -> str:
    line = next(line for line in service.log_lines() if f"Fetched the weather for {city}: " in line)
    return line.split(f"Fetched the weather for {city}: ", 1)[1]


def test_walkthrough_with_the_default_script_then_bad_input(
    start_service: StartService, model: ModelStandin, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    """The README's question, answered by the script `./dev run durableagent` uses; then
    bodies that are refused before the agent starts."""
    service = agent(start_service, model)
    token = unique("t")
    script = default_script("durableagent")
    assert script is not None
    model.script(token, **script)

    answer = ask(ingress, f"What is the weather in San Francisco? {token}")

    report = report_of(service, "San Francisco")
    assert answer == f"The weather in San Francisco: {report}."
    assert fetched(service, "San Francisco") == 1
    # two model calls: the one that asked for the tool, the one that answered in text
    assert [r["last"] for r in model.requests(token)] == ["user", "tool"]
    assert model.answered_twice(token) == []
    line = next(line for line in service.log_lines() if "The agent answered: " in line)
    assert "[WeatherAgent/run][inv_" in line

    other = unique("t")
    model.script(other, **script)
    assert ask(ingress, f"Hello {other}").startswith("I can tell you the weather")

    # bad input: a 400 naming the field, and no model call (one service start for both)
    for body, field in [
        ({}, "message: Field required"),
        ({"message": ""}, "message: String should have at least 1 character"),
        ({"message": 42}, "message: Input should be a valid string"),
        ({"message": other, "tone": "cheerful"}, "tone: Extra inputs are not permitted"),
    ]:
        response = ingress.post(RUN, json=body)
        assert response.status_code == 400, response.text
        assert field in response.json()["message"]
    assert model.count(other) == 1


def test_model_errors_are_retried_within_limits_and_tool_errors_by_kind(
    start_service: StartService, model: ModelStandin, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    service = agent(start_service, model, MODEL_MAX_ATTEMPTS="3", WEATHER_API_FAILURES="2")

    # 429 and 500 from the model API: retried by Restate, the third attempt is answered
    flaky_model = unique("t")
    model.script(flaky_model, steps=[error(429), error(500), tool_call("get_weather", city="Oslo"),
                                     text("Oslo: {output}")])  # fmt: skip
    assert ask(ingress, f"Weather in Oslo? {flaky_model}") == f"Oslo: {report_of(service, 'Oslo')}"
    assert [r["status"] for r in model.requests(flaky_model)] == [429, 500, 200, 200]

    # a model API that keeps failing: MODEL_MAX_ATTEMPTS requests, then a clear answer
    down = unique("t")
    model.script(down, steps=[error(500, "upstream overloaded")] * 5)
    answer = ask(ingress, f"Weather in Oslo? {down}")
    assert answer.startswith("The agent couldn't complete the request: ")
    assert "upstream overloaded" in answer
    assert model.count(down) == 3

    # a tool that fails transiently: its step is retried until the weather API answers
    denver = unique("t")
    model.script(denver, steps=[tool_call("get_weather", city="Denver"), text("{output}")])
    assert ask(ingress, f"Weather in Denver? {denver}") == report_of(service, "Denver")
    assert count_lines(service, "weather_api - [👻 SIMULATED] The weather API is down") == 2
    assert fetched(service, "Denver") == 1
    assert model.count(denver) == 2  # the retries were the tool's, not the model's

    # a tool that fails for good: no retry, no further model call, a clear answer
    atlantis = unique("t")
    model.script(atlantis, steps=[tool_call("get_weather", city="Atlantis"), text("unreachable")])
    answer = ask(ingress, f"Weather in Atlantis? {atlantis}")
    assert answer == "The agent couldn't complete the request: Unknown city: Atlantis"
    assert count_lines(service, "Fetching the weather for Atlantis") == 1
    assert model.count(atlantis) == 1


def test_crash_of_the_service_then_of_the_server_during_a_tool_call(
    start_service: StartService,
    model: ModelStandin,
    server: RestateServer,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    """The service is killed while the second tool call runs, then the server while the
    invocation waits to be retried: after the restarts the first tool call is not made
    again, no model request that was answered is sent again, and the run completes."""
    service = agent(start_service, model, WEATHER_API_DELAY_SECONDS="1.5")
    token = unique("t")
    both: dict[str, Any] = {"tool_calls": [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "London"}},
    ]}  # fmt: skip
    model.script(token, steps=[both, text("Paris and London: done")])
    invocation = ingress.send(RUN, json={"message": f"Paris and London? {token}"})

    eventually(
        lambda: count_lines(service, "Fetching the weather for London") == 1,
        timeout=30,
        message="the tool call for London starts",
    )
    service.kill()  # while London's weather API call is in flight, Paris's is done
    server.kill()  # while the invocation waits to be retried
    server.start()
    service.start(timeout=RESTART_TIMEOUT)

    def attached() -> httpx.Response | None:
        response = ingress.get(f"/restate/invocation/{invocation}/attach")
        return response if response.status_code == 200 else None

    response = eventually(attached, timeout=60, message="the run completes after the crashes")
    assert response.json() == "Paris and London: done"
    assert fetched(service, "Paris") == 1  # finished before the crashes: not made again
    assert fetched(service, "London") == 1
    assert count_lines(service, "Fetching the weather for Paris") == 1
    assert count_lines(service, "Fetching the weather for London") == 2  # killed in the 1st
    assert model.count(token, 200) == 2
    assert model.answered_twice(token) == []
