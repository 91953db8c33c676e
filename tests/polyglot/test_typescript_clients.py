"""The TypeScript collection's own clients drive our Python wave-2 objects unchanged.

Two proofs for each object (queue, limiter, promises):
- the exact requests that the TypeScript collection's clients send (its
  `priorityqueue/queue_client.ts`, `ratelimit/limiter_client.ts`,
  `promiseasaservice/dp/clients.ts`), sent through the ingress: same paths, same bodies
  (absent fields, no body at all, `null`, numbers, strings), one-way where the client sends
  one-way, with the original's answers;
- a TypeScript service of our own (`ts/service.ts`, the TypeScript SDK on Node 24) that
  makes those calls through the SDK's typed object clients, registered beside the Python
  pattern on one server.
"""

import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from devkit.bench import typescript
from devkit.processes import RestateServer
from devkit.pytest_restate import ManagedProcess, attach_log, free_port, register
from tests.harness import Admin, Ingress, StartService, count_lines, eventually

TS_DIR = Path(__file__).parent / "ts"
QUEUE_KEY = "myService/expensiveMethod"  # the key the original's service uses
QUEUE = "/queue/myService%2FexpensiveMethod"


class TsService:
    """`node ts/service.ts` on a free port, registered with the server."""

    def __init__(self, server: RestateServer, log: Path, request: pytest.FixtureRequest) -> None:
        node = typescript.ensure()  # Node 24 and the SDK, as `./dev bench` installs them
        modules = TS_DIR / "node_modules"  # the SDK of bench/ts, where Node looks for it
        if not modules.exists():
            modules.symlink_to(typescript.TS_DIR / "node_modules", target_is_directory=True)
        self.port = free_port()
        env = dict(os.environ, PORT=str(self.port))
        self.process = ManagedProcess("ts-service", [str(node), "service.ts"], log, env, TS_DIR)
        attach_log(request, self.process)  # shown if the test fails
        self.process.start()
        self.process.wait_ready(
            lambda: f"listening on {self.port}" in self.process.log_text(), 30, "node to listen"
        )
        register(
            server.admin_url, f"http://127.0.0.1:{self.port}", ingress_urls=[server.ingress_url]
        )


@pytest.fixture
def ts_service(
    server: RestateServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[], TsService]]:
    started: list[TsService] = []

    def start() -> TsService:
        service = TsService(server, tmp_path / "ts-service.log", request)
        started.append(service)
        return service

    yield start
    for service in started:
        service.process.stop()


def ok(response: Any) -> Any:
    assert response.status_code == 200, response.text
    return response.json() if response.content else None


# --- the queue (priorityqueue) ---------------------------------------------------------------


def queue_state(admin: Admin, key: str = QUEUE_KEY) -> tuple[list[Any], list[str], int]:
    raw = admin.state("queue", key)
    items = json.loads(raw.get("items", "[]"))
    admitted = json.loads(raw.get("admitted", "[]"))
    in_flight = int(raw.get("inFlight", "0"))
    assert in_flight == len(admitted), raw
    return items, admitted, in_flight


@pytest.mark.kills_server  # priorityqueue's myService: never on a server ratelimit uses
def test_the_queue_clients_requests(
    start_service: StartService, admin: Admin, ingress: Ingress
) -> None:
    """queue_client.ts: `push({awakeable, priority})`, `drop(awakeable.id)` and `done()`
    (no body), all one-way."""
    service = start_service("priorityqueue", {"QUEUE_MAX_IN_FLIGHT": "2"})
    # three callers' awakeables (real ones are made by `ctx.awakeable()`; the queue only
    # resolves them, which for these ids reaches no one)
    tickets = [f"sign_1{os.urandom(28).hex()[:37]}A" for _ in range(3)]
    for ticket in tickets:
        ingress.send(f"{QUEUE}/push", json={"awakeable": ticket, "priority": 1})
    eventually(lambda: len(queue_state(admin)[0]) == 1, 30, "three pushed, two admitted")
    assert queue_state(admin) == ([{"awakeable": tickets[2], "priority": 1}], tickets[:2], 2)

    # done(): no body, one-way, as `client.done()` sends it: the slot of the first admitted
    # ticket is given back, the waiting one is admitted
    ingress.send(f"{QUEUE}/done")
    eventually(lambda: queue_state(admin)[0] == [], 30, "the waiting ticket admitted")
    assert queue_state(admin) == ([], [tickets[1], tickets[2]], 2)
    assert count_lines(service, f"Done without a ticket id: the slot of {tickets[0]}") == 1

    # drop(id) of an admitted ticket (its caller was cancelled) frees its slot
    ingress.send(f"{QUEUE}/drop", json=tickets[1])
    eventually(lambda: queue_state(admin)[2] == 1, 30, "the dropped slot is free")
    # more done() than tickets in flight: the count stops at zero
    for _ in range(3):
        ingress.send(f"{QUEUE}/done")
    eventually(
        lambda: count_lines(service, "Done without a ticket id while none is in flight") == 2,
        30,
        "the surplus done() calls ignored",
    )
    assert queue_state(admin) == ([], [], 0)
    # the original's service call still works end to end
    answer = ingress.post("/myService/expensiveMethod", json={"left": 1, "right": 2})
    assert ok(answer) == 3


@pytest.mark.kills_server
def test_fourteen_typescript_callers_through_the_python_queue(
    start_service: StartService,
    admin: Admin,
    ingress: Ingress,
    ts_service: Callable[[], TsService],
    unique: Callable[[str], str],
) -> None:
    """14 concurrent calls of a TypeScript service that queues with the original client's
    calls (`done()` without a body): all answer, never more than 10 in flight."""
    service = start_service("priorityqueue", {"EXPENSIVE_WORK_SECONDS": "0"})
    ts_service()
    queue, gate = unique("polyglot-queue"), unique("gate")
    calls = [
        {"queue": queue, "gate": gate, "left": index, "right": 100, "priority": 1 + index % 3}
        for index in range(14)
    ]
    with ThreadPoolExecutor(14) as pool:
        answers = [pool.submit(ingress.post, "/PolyglotCaller/queued", json=c) for c in calls]
        # the gate holds the admitted callers: the queue fills up to its bound, 4 wait
        eventually(
            lambda: [len(part) if isinstance(part, list) else part
                     for part in queue_state(admin, queue)] == [4, 10, 10],
            60,
            "10 TypeScript callers admitted, 4 waiting",
        )  # fmt: skip
        ok(ingress.post(f"/PolyglotGate/{gate}/open"))
        results = [ok(answer.result()) for answer in answers]
    assert results == [index + 100 for index in range(14)]
    # the client does not await `done()`: a caller can answer before its slot is given back
    eventually(lambda: queue_state(admin, queue) == ([], [], 0), 30, "every slot given back")
    ticks = [line for line in service.log_lines() if "Tick end." in line and "queue/" in line]
    in_flight = [int(line.rsplit("In Flight: ", 1)[1]) for line in ticks]
    assert max(in_flight) == 10, in_flight  # the bound held, and was reached
    assert count_lines(service, "Done without a ticket id: the slot of") == 14


# --- the limiter (ratelimit) -----------------------------------------------------------------


def test_the_limiter_clients_requests(
    start_service: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    """limiter_client.ts: each method becomes these requests (request-response, but
    `cancel()`, which is one-way)."""
    start_service("ratelimit")
    key = unique("limiter")

    def call(handler: str, body: Any = None, **kwargs: Any) -> Any:
        if body is None:  # no argument: the SDK sends no body
            return ok(ingress.post(f"/limiter/{key}/{handler}", **kwargs))
        return ok(ingress.post(f"/limiter/{key}/{handler}", json=body))

    assert call("setRate", {"newLimit": 1, "newBurst": 4}) is None  # setRate(1, 4)
    assert call("setRate", {"newLimit": 1000}) is None  # setLimit(1000): newBurst absent
    assert call("setRate", {"newBurst": 3}) is None  # setBurst(3): newLimit absent
    bucket = call("state")  # limit(), burst(): state() without a body
    assert (bucket["limit"], bucket["burst"]) == (1000, 3)
    assert 0 <= call("tokens") <= 3  # tokens(): no body
    # allow(4): reserve({n: 4, waitLimitMillis: 0}); more than the burst, refused
    assert call("reserve", {"n": 4, "waitLimitMillis": 0})["ok"] is False
    # allow(): n undefined, so absent from the body
    assert call("reserve", {"waitLimitMillis": 0})["tokens"] in (0, 1)
    # reserve(): both absent
    reserved = call("reserve", {})
    assert reserved["ok"] is True
    assert reserved["tokens"] == 1
    assert set(reserved) == {"ok", "tokens", "creationDate", "dateToAct", "limit"}
    # reserve(2, 5000) then cancel(): the reservation as it came back, one-way
    reserved = call("reserve", {"n": 2, "waitLimitMillis": 5000})
    assert reserved["ok"] is True
    invocation = ingress.send(f"/limiter/{key}/cancelReservation", json=reserved)
    assert ok(ingress.get(f"/restate/invocation/{invocation}/attach")) is None
    # wait(): reserve({n: 1}) (waitLimitMillis absent), then sleep until dateToAct
    reserved = call("reserve", {"n": 1})
    assert reserved["ok"] is True
    assert reserved["dateToAct"] >= reserved["creationDate"]


def test_a_typescript_service_takes_tokens_from_the_python_limiter(
    start_service: StartService,
    ingress: Ingress,
    ts_service: Callable[[], TsService],
    unique: Callable[[str], str],
) -> None:
    start_service("ratelimit")
    ts_service()
    key = unique("limiter")
    tour = ok(ingress.post("/PolyglotCaller/limiterTour", json={"limiterId": key}))
    assert (tour["limit"], tour["burst"]) == (5, 3)
    assert 0 <= tour["tokens"] <= 3
    assert tour["allowTooMany"] is False
    assert tour["reserved"]["ok"] is True
    assert tour["reserved"]["tokens"] == 1
    assert tour["waitTooMany"].startswith("429 rate: Wait(n=4) would exceed")

    # 8 callers take one token each from a limiter of 5/s with a burst of 3: between any
    # two of their times to act, at most the burst plus what the rate refills
    ok(ingress.post(f"/limiter/{key}/setRate", json={"newLimit": 5, "newBurst": 3}))
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda _: ingress.post("/PolyglotCaller/takeTokens", json={"limiterId": key}),
                range(8),
            )
        )
    acts = sorted(ok(answer)["dateToAct"] for answer in answers)
    for first, earlier in enumerate(acts):
        for last in range(first + 1, len(acts)):
            refilled = 5 * (acts[last] - earlier + 1) / 1000  # +1: times are whole ms
            assert last - first + 1 <= 3 + refilled, (first, last, acts)


# --- the durable promises (promiseasaservice) ------------------------------------------------


def test_the_promise_clients_requests(
    start_service: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    """dp/clients.ts from the ingress: `promise/{resolve,reject,peek,await}` with
    `{promiseId, ...}`; `resolve(undefined)` sends no `value` at all."""
    start_service("promiseasaservice")
    first, second = unique("ts-promise"), unique("ts-promise")

    def flat(handler: str, **body: Any) -> Any:
        return ok(ingress.post(f"/promise/{handler}", json=body))

    assert flat("peek", promiseId=first) is None  # not completed yet
    waiting = ingress.send("/promise/await", json={"promiseId": first})
    assert flat("resolve", promiseId=first, value={"n": 1}) == {"value": {"n": 1}}
    assert ok(ingress.get(f"/restate/invocation/{waiting}/attach")) == {"value": {"n": 1}}
    assert flat("reject", promiseId=first, errorMessage="late") == {"value": {"n": 1}}
    assert flat("resolve", promiseId=second) == {"value": None}  # resolve(): no value
    assert flat("await", promiseId=second) == {"value": None}


def test_a_typescript_service_uses_the_python_promises(
    start_service: StartService,
    ingress: Ingress,
    ts_service: Callable[[], TsService],
    unique: Callable[[str], str],
) -> None:
    """dp/clients.ts inside a handler: `promises/{peek,resolve,await,reject}` called by the
    TypeScript SDK's object client (`peek()` and `resolve()` without a body, `await` with an
    awakeable id, the promise's outcome delivered through that awakeable)."""
    start_service("promiseasaservice")
    ts_service()
    tour = ok(ingress.post("/PolyglotCaller/promiseTour", json={"promiseId": unique("ts")}))
    assert tour == {
        "before": None,
        "resolved": {"value": None},
        "awaited": {"value": None},
        "rejected": {"value": None},
    }
