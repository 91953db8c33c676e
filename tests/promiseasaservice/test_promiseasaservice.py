"""Durable promises as a service: the walkthrough, first completion wins, null vs not
completed, dispose, awaiters parked across crashes, the clients, bad input."""

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from devkit.processes import PatternService, RestateServer
from promiseasaservice.client import Outcome, PromiseRejectedError, durable_promise
from tests.harness import (
    Admin,
    Ingress,
    StartService,
    assert_ingress_refuses,
    count_lines,
    eventually,
    restate_cli,
    run_module,
)

JSON = {"content-type": "application/json"}
BARACK = '{"value":{"name":"Barack","email":"b@whitehouse.gov"}}'

# The original README's four curls, as they are there (path, body).
PEEK = ("/durablePromiseServer/peek", '{ "request": { "promiseName": "prom-1" } }')
AWAIT = ("/durablePromiseServer/await", '{ "request": { "promiseName": "prom-1" } }')
RESOLVE = (
    "/durablePromiseServer/resolve",
    '{ "request": { "promiseName": "prom-1", "value": '
    '{ "name": "Barack", "email": "b@whitehouse.gov" } } }',
)
REJECT = (
    "/durablePromiseServer/reject",
    '{ "request": { "promiseName": "prom-1", "errorMessage": "help!" } }',
)


def call(ingress: Ingress, handler: str, timeout: float = 30.0, **request: Any) -> httpx.Response:
    """POST /durablePromiseServer/<handler> with `{"request": {...}}`."""
    return ingress.post(
        f"/durablePromiseServer/{handler}", json={"request": request}, timeout=timeout
    )


def answer(response: httpx.Response) -> str:
    """The body of a 200 answer, as text (to tell `null` from `{"value":null}`)."""
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    return response.text


def peek(ingress: Ingress, name: str) -> str:
    return answer(call(ingress, "peek", promiseName=name))


def resolve(ingress: Ingress, name: str, value: Any) -> str:
    return answer(call(ingress, "resolve", promiseName=name, value=value))


def reject(ingress: Ingress, name: str, message: str) -> str:
    return answer(call(ingress, "reject", promiseName=name, errorMessage=message))


def state(admin: Admin, name: str) -> dict[str, str]:
    return admin.state("promises", name)


def parked(admin: Admin, name: str, awaiters: int = 1) -> None:
    """Wait until `awaiters` awaiters are parked on the promise."""

    def check() -> bool:
        listeners = state(admin, name).get("listeners")
        return listeners is not None and len(json.loads(listeners)) == awaiters

    eventually(check, message=f"{awaiters} awaiter(s) parked on {name}")


def start_await(ingress: Ingress, name: str) -> str:
    """durablePromiseServer/await without waiting for it; the invocation id."""
    return ingress.send("/durablePromiseServer/await", json={"request": {"promiseName": name}})


def attach(ingress: Ingress, invocation: str) -> httpx.Response:
    """The invocation's answer, waiting for it (and for the server, if it is restarting)."""

    def attached() -> httpx.Response | None:
        try:
            response = ingress.get(f"/restate/invocation/{invocation}/attach", timeout=60)
        except httpx.TransportError:
            return None
        return None if response.status_code in (502, 503, 504) else response

    return eventually(attached, timeout=90, message="the await answers")


def logged(service: PatternService, text: str, times: int) -> None:
    """The service's log reaches its file through a pipe: wait for the lines to land."""
    eventually(
        lambda: count_lines(service, text) == times,
        timeout=10,
        message=f"{text!r} logged {times} time(s): {count_lines(service, text)}",
    )


def test_walkthrough_verbatim(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    """The README's curls with prom-1; the await blocks until the resolve."""
    service = start_service("promiseasaservice")
    call(ingress, "dispose", promiseName="prom-1")  # prom-1 is new to this test's server

    def curl(command: tuple[str, str], timeout: float = 30.0) -> str:
        return answer(ingress.post(command[0], content=command[1], headers=JSON, timeout=timeout))

    assert curl(PEEK) == "null"
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(curl, AWAIT, 60.0)
        parked(admin, "prom-1")
        assert not waiting.done()
        assert curl(RESOLVE) == BARACK
        assert waiting.result() == BARACK
    assert curl(REJECT) == BARACK  # too late: the first completion holds
    assert curl(PEEK) == BARACK
    assert curl(AWAIT) == BARACK  # completed: answers at once
    assert state(admin, "prom-1") == {"value": BARACK}
    logged(service, "Promise prom-1 resolved, 1 awaiter(s) notified", 1)
    logged(service, "Promise prom-1 is already completed: rejected ignored", 1)
    line = next(line for line in service.log_lines() if "Promise prom-1 resolved" in line)
    assert "[promises/resolve][inv_" in line

    # the same reject on a promise nobody resolved
    fresh = unique("prom")
    assert reject(ingress, fresh, "help!") == '{"error":"help!"}'
    assert answer(call(ingress, "await", promiseName=fresh)) == '{"error":"help!"}'
    assert resolve(ingress, fresh, "late") == '{"error":"help!"}'


def test_first_completion_wins(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    start_service("promiseasaservice")
    first, second = unique("prom"), unique("prom")
    assert resolve(ingress, first, 1) == '{"value":1}'
    assert resolve(ingress, first, 2) == '{"value":1}'
    assert reject(ingress, first, "no") == '{"value":1}'
    assert reject(ingress, second, "no") == '{"error":"no"}'
    assert reject(ingress, second, "again") == '{"error":"no"}'
    assert resolve(ingress, second, 2) == '{"error":"no"}'
    assert state(admin, first) == {"value": '{"value":1}'}
    assert state(admin, second) == {"value": '{"error":"no"}'}


def test_concurrent_completions_agree_on_one_winner(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service("promiseasaservice")
    name = unique("contended")

    def complete_body(index: int) -> str:
        return f'{{"error":"error {index}"}}' if index % 2 else f'{{"value":{index}}}'

    def complete(index: int) -> str:
        if index % 2:
            return reject(ingress, name, f"error {index}")
        return resolve(ingress, name, index)

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(complete, range(10)))
    winner = answers[0]
    possible = [json.dumps(json.loads(complete_body(i)), separators=(",", ":")) for i in range(10)]
    assert winner in possible
    assert answers == [winner] * 10
    assert peek(ingress, name) == winner
    assert state(admin, name) == {"value": winner}
    verb = "resolved" if "value" in winner else "rejected"
    logged(service, f"Promise {name} {verb}, 0 awaiter(s) notified", 1)
    logged(service, f"Promise {name} is already completed", 9)


def test_resolved_with_null_is_not_the_same_as_not_completed(
    start_service: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    start_service("promiseasaservice")
    name = unique("nothing")
    assert peek(ingress, name) == "null"
    assert resolve(ingress, name, None) == '{"value":null}'
    assert peek(ingress, name) == '{"value":null}'
    assert answer(call(ingress, "await", promiseName=name)) == '{"value":null}'

    promise = durable_promise(name, ingress.url)
    assert asyncio.run(promise.peek()) == Outcome(value=None)
    assert asyncio.run(durable_promise(unique("nothing"), ingress.url).peek()) is None


def test_dispose_rejects_awaiters_and_frees_the_id(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service("promiseasaservice")
    name = unique("disposable")
    awaiters = [start_await(ingress, name) for _ in range(2)]
    parked(admin, name, awaiters=2)

    response = call(ingress, "dispose", promiseName=name)
    assert response.status_code == 200, response.text
    assert response.content == b""
    for invocation in awaiters:
        response = attach(ingress, invocation)
        assert response.status_code == 410, response.text
        assert response.json()["message"] == "promise was disposed"
    assert state(admin, name) == {}
    assert peek(ingress, name) == "null"
    logged(service, f"Promise {name} disposed, 2 awaiter(s) rejected", 1)

    # the id can be used again; a completed promise can be disposed too
    assert resolve(ingress, name, "second life") == '{"value":"second life"}'
    assert answer(call(ingress, "await", promiseName=name)) == '{"value":"second life"}'
    assert call(ingress, "dispose", promiseName=name).status_code == 200
    assert peek(ingress, name) == "null"
    assert state(admin, name) == {}


def crash_while_parked(
    crash: Callable[[], None],
    service: PatternService,
    ingress: Ingress,
    admin: Admin,
    name: str,
) -> None:
    """An awaiter parks; `crash` kills something; the resolve after it reaches the awaiter."""
    invocation = start_await(ingress, name)
    parked(admin, name)
    crash()
    assert resolve(ingress, name, {"after": "crash"}) == '{"value":{"after":"crash"}}'
    response = attach(ingress, invocation)
    assert response.status_code == 200, response.text
    assert response.text == '{"value":{"after":"crash"}}'
    assert state(admin, name) == {"value": '{"value":{"after":"crash"}}'}
    # each step happened once: one awaiter parked, one completion, which notified it
    logged(service, f"Promise {name} is not completed yet: awaiter parked", 1)
    logged(service, f"Promise {name} resolved, 1 awaiter(s) notified", 1)


@pytest.mark.kills_server
def test_an_awaiter_parked_across_a_server_crash_gets_the_value(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    service = start_service("promiseasaservice")

    def crash() -> None:
        server.kill()
        server.start()

    crash_while_parked(crash, service, ingress, admin, unique("survivor"))


def test_an_awaiter_parked_across_a_service_crash_gets_the_value(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service("promiseasaservice")

    def crash() -> None:
        service.kill()
        service.start()

    crash_while_parked(crash, service, ingress, admin, unique("survivor"))


def test_a_cancelled_awaiter_is_forgotten(
    start_service: StartService,
    ingress: Ingress,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    start_service("promiseasaservice")
    name = unique("cancelled")
    invocation = start_await(ingress, name)
    parked(admin, name)
    restate_cli("-y", "invocations", "cancel", invocation, env=client_env)
    response = attach(ingress, invocation)
    assert response.status_code == 409, response.text
    eventually(lambda: state(admin, name) == {}, message="the awakeable is no longer parked")
    assert resolve(ingress, name, 7) == '{"value":7}'


def test_await_times_out_with_408_when_a_timeout_is_set(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    start_service("promiseasaservice", {"PROMISE_AWAIT_TIMEOUT_SECONDS": "1"})
    name = unique("slow")
    response = call(ingress, "await", promiseName=name, timeout=60)
    assert response.status_code == 408, response.text
    assert response.json()["message"] == f"Promise {name} was not completed within 1 s"
    assert state(admin, name) == {}
    # a promise completed before the deadline answers as usual
    assert resolve(ingress, name, "in time") == '{"value":"in time"}'
    assert answer(call(ingress, "await", promiseName=name)) == '{"value":"in time"}'


def test_the_object_handlers_are_reachable_and_await_is_internal(
    start_service: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    start_service("promiseasaservice")
    name = unique("direct")
    assert answer(ingress.post(f"/promises/{name}/peek")) == "null"
    assert answer(ingress.post(f"/promises/{name}/resolve", json=[1, "two"])) == (
        '{"value":[1,"two"]}'
    )
    assert answer(ingress.post(f"/promises/{name}/reject", json="late")) == '{"value":[1,"two"]}'
    assert answer(ingress.post(f"/promises/{name}/peek")) == '{"value":[1,"two"]}'
    assert_ingress_refuses(ingress, f"/promises/{name}/await", "sign_1abc")
    assert_ingress_refuses(ingress, f"/promises/{name}/forget", "sign_1abc")
    assert ingress.post(f"/promises/{name}/dispose").status_code == 200
    assert peek(ingress, name) == "null"


def test_the_client_demo(
    start_service: StartService,
    client_env: dict[str, str],
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    start_service("promiseasaservice")
    name = unique("demo")
    without_scheme = ingress.url.removeprefix("http://")  # "localhost:8080" works too
    result = run_module("promiseasaservice.client", name, without_scheme, env=client_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Peeked value: null",
        "This promise will notify everyone",
        "This promise will notify everyone",
        "This promise will notify everyone",
    ]
    assert peek(ingress, name) == '{"value":"This promise will notify everyone"}'


def test_the_flat_body_of_the_original_code(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    """`promise/*` with `{"promiseId": ...}`: the same promises as durablePromiseServer."""
    start_service("promiseasaservice")
    name = unique("flat")

    def flat(handler: str, **body: Any) -> httpx.Response:
        return ingress.post(f"/promise/{handler}", json={"promiseId": name, **body})

    assert answer(flat("peek")) == "null"
    waiting = ingress.send("/promise/await", json={"promiseId": name})
    parked(admin, name)
    assert answer(flat("resolve", value=None)) == '{"value":null}'
    assert attach(ingress, waiting).text == '{"value":null}'
    assert answer(flat("reject", errorMessage="late")) == '{"value":null}'
    assert peek(ingress, name) == '{"value":null}'  # one promise, two interfaces
    assert answer(flat("dispose")) == ""
    assert answer(flat("reject", errorMessage="help!")) == '{"error":"help!"}'
    assert answer(flat("await")) == '{"error":"help!"}'
    for handler, body, problem in [
        ("resolve", {"value": 1}, "promiseId: Field required"),
        ("reject", {"promiseId": name}, "errorMessage: Field required"),
        ("await", {"promiseName": name}, "promiseId: Field required"),
    ]:
        response = ingress.post(f"/promise/{handler}", json=body)
        assert response.status_code == 400, response.text
        assert problem in response.json()["message"], response.text
    assert state(admin, name) == {"value": '{"error":"help!"}'}


def test_the_client_library_outside_a_handler(
    start_service: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    start_service("promiseasaservice")
    without_scheme = ingress.url.removeprefix("http://")  # "localhost:8080", as in the original

    async def scenario() -> None:
        rejected = durable_promise(unique("client"), without_scheme)
        assert await rejected.peek() is None
        with pytest.raises(PromiseRejectedError, match="broken"):
            await rejected.reject("broken")
        with pytest.raises(PromiseRejectedError, match="broken"):
            await rejected.resolve("too late")  # the outcome that holds is the error
        with pytest.raises(PromiseRejectedError, match="broken"):
            await rejected.get()
        assert await rejected.peek() == Outcome(error="broken")

        resolved = durable_promise(unique("client"), ingress.url)
        waiting = asyncio.gather(resolved.get(), resolved.get())
        assert await resolved.resolve({"n": 1}) == {"n": 1}
        assert list(await waiting) == [{"n": 1}, {"n": 1}]
        assert await resolved.reject("ignored") == {"n": 1}
        await resolved.dispose()
        assert await resolved.peek() is None

    asyncio.run(scenario())


def test_the_client_inside_a_handler_questions_and_answers(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    start_service("promiseasaservice")
    question = unique("q")
    asking = ingress.send("/qna/ask", json=question)
    parked(admin, f"question-{question}")
    response = ingress.post("/qna/answer", json={"questionId": question, "answer": "42"})
    assert response.json() == {"answer": "42"}
    response = attach(ingress, asking)
    assert response.status_code == 200, response.text
    assert response.json() == {"answer": "42"}
    # the first answer counts; a question answered already is answered at once
    response = ingress.post("/qna/answer", json={"questionId": question, "answer": "43"})
    assert response.json() == {"answer": "42"}
    assert ingress.post("/qna/ask", json=question).json() == {"answer": "42"}

    # a rejected promise fails the waiting handler terminally (no retries), naming the error
    refused = unique("q")
    asking = ingress.send("/qna/ask", json=refused)
    parked(admin, f"question-{refused}")
    assert reject(ingress, f"question-{refused}", "no comment") == '{"error":"no comment"}'
    response = attach(ingress, asking)
    assert response.status_code == 500, response.text
    assert response.json()["message"] == "no comment"


BAD_INPUT = [
    ("peek", {}, "request: Field required"),
    ("peek", {"request": {}}, "request.promiseName: Field required"),
    ("peek", {"request": {"promiseName": ""}}, "request.promiseName: String should have"),
    ("peek", {"request": {"promiseName": 7}}, "request.promiseName: Input should be a valid"),
    ("await", {"request": None}, "request: Input should be an object"),
    ("await", {"request": {"promiseId": "p"}}, "request.promiseName: Field required"),
    ("dispose", {"promiseName": "p"}, "request: Field required"),
    ("resolve", {"request": {"promiseName": "p"}}, "request.value: Field required"),
    ("resolve", {"request": {"value": 1}}, "request.promiseName: Field required"),
    ("reject", {"request": {"promiseName": "p"}}, "request.errorMessage: Field required"),
    ("reject", {"request": {"promiseName": "p", "errorMessage": 1}}, "request.errorMessage: Inpu"),
    ("reject", {"request": {"promiseName": "p", "errorMessage": ""}}, "request.errorMessage: Str"),
    ("resolve", {"request": {"promiseName": "p", "value": 1, "x": 2}}, "request.x: Extra inputs"),
]


def test_bad_input_is_400_naming_the_field_and_changes_nothing(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    start_service("promiseasaservice")
    name = unique("p")
    for handler, body, problem in BAD_INPUT:
        body = json.loads(json.dumps(body).replace('"p"', json.dumps(name)))
        response = ingress.post(f"/durablePromiseServer/{handler}", json=body)
        assert response.status_code == 400, f"{handler} {body}: {response.text}"
        assert problem in response.json()["message"], f"{handler} {body}: {response.text}"
    for handler in ("peek", "await", "resolve", "reject", "dispose"):
        for content in (b"", b"{not json"):
            response = ingress.post(
                f"/durablePromiseServer/{handler}", content=content, headers=JSON
            )
            assert response.status_code == 400, f"{handler} {content!r}: {response.text}"
            # the ingress itself refuses an empty JSON body ("Empty body not allowed")
            assert "body" in response.json()["message"], response.text
    response = ingress.post(
        "/durablePromiseServer/resolve",
        content=b'{"request": {"promiseName": "%s", "value": 1e400}}' % name.encode(),
        headers=JSON,
    )
    assert response.status_code == 400, response.text
    assert "request.value" in response.json()["message"]
    for handler, content in [
        ("resolve", b"  "),  # no body at all resolves with null, as the original's resolve()
        ("resolve", b"{x"),
        ("reject", b"1"),
        ("reject", b'""'),
    ]:
        headers = JSON if content else None  # the ingress refuses an empty JSON body itself
        response = ingress.post(f"/promises/{name}/{handler}", content=content, headers=headers)
        assert response.status_code == 400, f"{handler} {content!r}: {response.text}"
        assert response.json()["message"].startswith("Invalid request: body: expected")
    assert state(admin, name) == {}
    assert peek(ingress, name) == "null"
