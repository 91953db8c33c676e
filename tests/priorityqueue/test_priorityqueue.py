"""Priority queue: the walkthrough, admission order and the bound, crashes, strays, bad input.

Every test here has a server of its own (`kills_server`): ratelimit registers a `myService`
with another `expensiveMethod`, and the queue's key is fixed, so two tests sharing a server
would share (and break) one queue.
"""

import base64
import json
import os
import re
import shlex
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from devkit import patterns
from devkit.processes import PatternService, RestateServer
from tests.harness import Admin, Ingress, StartService, count_lines, eventually, restate_cli

pytestmark = pytest.mark.kills_server

METHOD = "/myService/expensiveMethod"
QUEUE_KEY = "myService/expensiveMethod"
QUEUE = "/queue/myService%2FexpensiveMethod"  # the key has a slash: URL-encoded
LIMIT = 10


def fake_awakeable() -> str:
    """A well-formed awakeable id that no caller holds (resolving it reaches no one)."""
    return "sign_1" + base64.urlsafe_b64encode(os.urandom(28)).decode().rstrip("=")


STRAY = fake_awakeable()

TICK = re.compile(r"Tick end\. Queue length: (\d+), In Flight: (\d+)")
QUEUED = re.compile(r"Queued (sign_1\S+) \(priority ([-\d.e+]+)\)")
ADMITTED = re.compile(r"Admitted (sign_1\S+) \(priority ([-\d.e+]+)\)")
WAITING = re.compile(r"\[myService/expensiveMethod\]\[(inv_\w+)\] .*Waiting in the queue as (\S+)")
WORK = re.compile(r"\[myService/expensiveMethod\]\[(inv_\w+)\] .*Expensive operation (started|fin)")


def settings(**extra: str) -> dict[str, str]:
    return {"EXPENSIVE_WORK_SECONDS": "1", **extra}


@dataclass
class QueueState:
    items: list[dict[str, Any]] = field(default_factory=list)
    admitted: list[str] = field(default_factory=list)
    in_flight: int = 0


def queue_state(admin: Admin) -> QueueState:
    raw = admin.state("queue", QUEUE_KEY)
    state = QueueState(
        items=json.loads(raw.get("items", "[]")),
        admitted=json.loads(raw.get("admitted", "[]")),
        in_flight=int(raw.get("inFlight", "0")),
    )
    assert state.in_flight == len(state.admitted), raw
    assert 0 <= state.in_flight <= LIMIT, raw
    return state


@contextmanager
def watching_the_bound(admin: Admin, limit: int = LIMIT) -> Iterator[list[int]]:
    """Poll the queue's state while the block runs: every in-flight count seen must lie in
    [0, limit]. Yields the counts seen (a failure to read the state, e.g. while the server
    restarts, is skipped)."""
    seen: list[int] = []
    problems: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.2):
            try:
                raw = admin.state("queue", QUEUE_KEY)
            except AssertionError:
                continue  # the admin API is down for a moment (server restart)
            count = int(raw.get("inFlight", "0"))
            seen.append(count)
            if not 0 <= count <= limit or count != len(json.loads(raw.get("admitted", "[]"))):
                problems.append(repr(raw))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield seen
    finally:
        stop.set()
        poller.join(timeout=60)
    assert not problems, f"in-flight count out of [0, {limit}]: {problems[:3]}"


def empties(admin: Admin) -> None:
    """The queue becomes empty: the last callers' `done` (one-way messages, delivered after
    their answers) have arrived."""
    eventually(lambda: queue_state(admin) == QueueState(), 30, "the queue is empty again")


def waiting(admin: Admin, n: int) -> Callable[[], bool]:
    """A check: `n` tickets wait in the queue."""
    return lambda: len(queue_state(admin).items) == n


def push(ingress: Ingress, awakeable: str, priority: float = 0) -> None:
    """Queue a ticket as a caller would (the test then holds it: nobody waits on it)."""
    response = ingress.post(f"{QUEUE}/push", json={"awakeable": awakeable, "priority": priority})
    assert response.status_code == 200, response.text


def send_all(ingress: Ingress, bodies: list[dict[str, Any]]) -> list[str]:
    """POST every body to `expensiveMethod/send` at once; the invocation ids, in order."""
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(lambda body: ingress.send(METHOD, json=body), bodies))


def result_of(ingress: Ingress, invocation_id: str) -> Any:
    """The invocation's answer (waiting for it, and for the server if it restarts)."""

    def attached() -> Any:
        try:
            response = ingress.get(f"/restate/invocation/{invocation_id}/attach", timeout=10)
        except Exception as error:  # the server is restarting, or the answer is slow
            raise AssertionError(repr(error)) from None
        assert response.status_code == 200, f"{response.status_code} {response.text}"
        return [response.json()]

    return eventually(attached, timeout=120, message=f"{invocation_id} answers")[0]


def check_queue_log(service: PatternService, limit: int = LIMIT) -> list[str]:
    """Replay the queue's log: every admission took the waiting ticket with the lowest
    priority number, the earliest pushed among equals; no tick saw more than `limit` in
    flight, nor a ticket waiting while a slot was free. The awakeable ids admitted, in order.

    A crash can cut a queue handler short after it logged; Restate then runs it again, on
    the same state, before any other queue call: its lines come again, the same. So a ticket
    counts as queued (admitted) at its first `Queued` (`Admitted`) line."""
    waiting: list[tuple[float, int, str]] = []  # (priority, push order, awakeable)
    admitted: list[str] = []
    seen: set[tuple[str, str]] = set()
    pushes = 0
    for line in service.log_lines():
        event = QUEUED.search(line) or ADMITTED.search(line)
        if event and (event.re.pattern, event.group(1)) in seen:
            continue
        if event:
            seen.add((event.re.pattern, event.group(1)))
        if queued := QUEUED.search(line):
            waiting.append((float(queued.group(2)), pushes, queued.group(1)))
            pushes += 1
        elif admission := ADMITTED.search(line):
            assert waiting, f"admitted a ticket that was never queued: {line}"
            first = min(waiting)
            assert admission.group(1) == first[2], (
                f"admitted {admission.group(1)} (priority {admission.group(2)}) while "
                f"{first[2]} (priority {first[0]}, pushed earlier or lower) was waiting"
            )
            waiting.remove(first)
            admitted.append(first[2])
        elif tick := TICK.search(line):
            queue_length, in_flight = int(tick.group(1)), int(tick.group(2))
            assert in_flight <= limit, line
            assert queue_length == len(waiting), f"{line}: expected {len(waiting)} waiting"
            assert queue_length == 0 or in_flight == limit, f"a free slot left unused: {line}"
    assert not waiting, f"never admitted: {waiting}"
    return admitted


def max_work_in_flight(service: PatternService) -> int:
    """The most invocations that were inside the expensive operation at the same time, from
    the order of the service's log lines: an invocation counts from its first `started`
    (a crash may make it run the operation again) to its `finished`."""
    running: set[str] = set()
    finished: set[str] = set()
    most = 0
    for line in service.log_lines():
        if match := WORK.search(line):
            invocation, what = match.groups()
            if what == "started" and invocation not in finished:
                running.add(invocation)
            elif what == "fin":
                running.discard(invocation)
                finished.add(invocation)
            most = max(most, len(running))
    return most


def finished_per_invocation(service: PatternService) -> Counter[str]:
    """How many times each invocation's expensive operation finished."""
    return Counter(
        match.group(1)
        for match in map(WORK.search, service.log_lines())
        if match and match.group(2) == "fin"
    )


def priorities(n: int) -> list[int]:
    """n priorities, mixed so that arrival order and priority order differ: 3, 1, 2, 3, 1..."""
    return [(3, 1, 2)[i % 3] for i in range(n)]


def walkthrough_commands(ingress_url: str) -> list[str]:
    """The README's `## Try it` shell code, pointed at the test server."""
    host = ingress_url.removeprefix("http://")
    return [
        line.replace("localhost:8080", host)
        for line in patterns.try_it("priorityqueue").splitlines()
        if line.strip() and not line.startswith("#")
    ]


def json_objects(text: str) -> list[Any]:
    """The JSON values printed one after another (curl prints no newline after a body)."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        value, at = decoder.raw_decode(text, at)
        values.append(value)
    return values


# --- the walkthrough -----------------------------------------------------------------------


def test_the_readme_walkthrough_verbatim(
    start_service: StartService,
    admin: Admin,
    ingress: Ingress,
    client_env: dict[str, str],
) -> None:
    service = start_service("priorityqueue", settings())
    commands = walkthrough_commands(ingress.url)
    sends = [c for c in commands if "/myService/expensiveMethod/send" in c]
    assert len(sends) == 2, commands  # one entry, then the loop of 30
    with watching_the_bound(admin):
        answers = []
        for command in sends:
            done = subprocess.run(
                ["bash", "-c", command], capture_output=True, text=True, timeout=120, check=False
            )
            assert done.returncode == 0, done.stderr
            answers += json_objects(done.stdout)
        assert len(answers) == 31
        assert all(a["status"] == "Accepted" and a["invocationId"] for a in answers), answers
        results = [result_of(ingress, a["invocationId"]) for a in answers]
    assert results == [3] * 31
    empties(admin)

    admitted = check_queue_log(service)
    assert len(admitted) == len(set(admitted)) == 31
    assert max_work_in_flight(service) <= LIMIT
    ticks = [TICK.search(line) for line in service.log_lines()]
    seen = [(int(m.group(1)), int(m.group(2))) for m in ticks if m]
    assert seen[0] == (0, 1), seen[:3]  # the single entry: admitted at once
    assert seen[-1] == (0, 0)
    assert count_lines(service, "Expensive operation finished: 3") == 31

    # the attach command the README shows, with the id of the single entry
    attach = next(c for c in commands if "/attach" in c)
    attach = attach.replace("<invocationId>", answers[0]["invocationId"])
    attached = subprocess.run(["bash", "-c", attach], capture_output=True, text=True, timeout=60)
    assert attached.returncode == 0, attached.stderr
    assert json.loads(attached.stdout) == 3

    # the CLI command of the README: the queue is empty again
    kv = shlex.split(next(c for c in commands if "restate kv get" in c))
    shown = restate_cli(*kv[kv.index("restate") + 1 :], env=client_env).stdout
    assert re.search(r"^ *inFlight +0 *$", shown, re.M), shown
    assert re.search(r"^ *items +\[\] *$", shown, re.M), shown


def test_thirty_at_once_are_admitted_by_priority_never_more_than_the_limit(
    start_service: StartService, admin: Admin, ingress: Ingress
) -> None:
    service = start_service("priorityqueue", settings())
    bodies = [{"left": i, "right": 2, "priority": p} for i, p in enumerate(priorities(30))]
    with watching_the_bound(admin) as seen:
        ids = send_all(ingress, bodies)
        results = [result_of(ingress, invocation_id) for invocation_id in ids]
    assert results == [i + 2 for i in range(30)]
    assert max(seen, default=0) <= LIMIT

    admitted = check_queue_log(service)
    assert len(admitted) == len(set(admitted)) == 30
    assert max_work_in_flight(service) <= LIMIT
    empties(admin)


def test_tickets_waiting_together_go_by_priority_then_first_come(
    start_service: StartService, admin: Admin, ingress: Ingress
) -> None:
    """With both slots held (by tickets the test pushes itself, as callers would), tickets
    queue up one by one; freed, the slots go to them strictly by priority, then arrival."""
    service = start_service("priorityqueue", settings(QUEUE_MAX_IN_FLIGHT="2"))
    holders = [fake_awakeable(), fake_awakeable()]
    for holder in holders:
        response = ingress.post(f"{QUEUE}/push", json={"awakeable": holder, "priority": 0})
        assert response.status_code == 200, response.text
    assert queue_state(admin).admitted == holders

    ids = []
    for i, p in enumerate([5, 1, 3, 1, 5, 2, 1]):  # one at a time: a known push order
        ids.append(ingress.send(METHOD, json={"left": i, "right": 10, "priority": p}))
        eventually(waiting(admin, i + 1), 30, f"ticket {i} queued")
    items = queue_state(admin).items
    assert [item["priority"] for item in items] == [5, 1, 3, 1, 5, 2, 1]  # arrival order
    assert queue_state(admin).admitted == holders  # nobody got in meanwhile

    for holder in holders:
        assert ingress.post(f"{QUEUE}/done", json=holder).status_code == 200
    results = [result_of(ingress, invocation_id) for invocation_id in ids]
    assert results == [10, 11, 12, 13, 14, 15, 16]
    admitted = check_queue_log(service, limit=2)
    order = [item["awakeable"] for item in items]
    assert admitted == holders + [order[i] for i in (1, 3, 6, 5, 2, 0, 4)]  # 1 1 1 2 3 5 5
    assert max_work_in_flight(service) <= 2
    empties(admin)


# --- crashes -------------------------------------------------------------------------------


def crash_in_the_middle(
    service: PatternService,
    admin: Admin,
    ingress: Ingress,
    crash: Callable[[], None],
) -> None:
    """30 at once; when the slots are full and tickets wait, crash; everyone gets the right
    answer, is admitted once, in order, and reports back once; the bound held all along.

    An operation in progress at the crash may run again (a journaled step that had not
    been recorded yet runs again, from the start), even if it had logged its end: with the
    server killed, the service can finish a step whose result then never reaches Restate.
    An operation whose caller had reported back before the crash never runs again."""
    bodies = [{"left": i, "right": 1, "priority": p} for i, p in enumerate(priorities(30))]
    with watching_the_bound(admin):
        ids = send_all(ingress, bodies)

        def full_and_waiting() -> bool:
            state = queue_state(admin)
            return state.in_flight == LIMIT and len(state.items) > 0

        eventually(full_and_waiting, 60, "10 in flight and tickets waiting")
        before_crash = service.log_lines()
        crash()
        results = [result_of(ingress, invocation_id) for invocation_id in ids]
    assert results == [i + 1 for i in range(30)]
    admitted = check_queue_log(service)
    assert len(admitted) == len(set(admitted)) == 30
    assert max_work_in_flight(service) <= LIMIT
    finished = finished_per_invocation(service)
    assert len(finished) == 30
    tickets = {m.group(1): m.group(2) for m in map(WAITING.search, service.log_lines()) if m}
    assert len(tickets) == 30
    done_before = "\n".join(line for line in before_crash if "[queue/done]" in line)
    reported = {inv for inv, ticket in tickets.items() if f"Done {ticket}" in done_before}
    assert all(finished[inv] == 1 for inv in reported), {inv: finished[inv] for inv in reported}
    # each caller reported back once: no duplicate `done` came to the queue
    assert count_lines(service, "which is not in flight: ignored") == 0
    empties(admin)


def test_kill_9_of_the_service_in_the_middle(
    start_service: StartService, admin: Admin, ingress: Ingress
) -> None:
    service = start_service("priorityqueue", settings(EXPENSIVE_WORK_SECONDS="2"))

    def crash() -> None:
        service.kill()
        service.start()

    crash_in_the_middle(service, admin, ingress, crash)


def test_kill_9_of_the_server_in_the_middle(
    start_service: StartService, server: RestateServer, admin: Admin, ingress: Ingress
) -> None:
    service = start_service("priorityqueue", settings(EXPENSIVE_WORK_SECONDS="2"))

    def crash() -> None:
        server.kill()
        server.start()

    crash_in_the_middle(service, admin, ingress, crash)


# --- strays, cancellation, leases ----------------------------------------------------------


def test_duplicate_and_stray_done_keep_the_count_within_0_and_the_limit(
    start_service: StartService, admin: Admin, ingress: Ingress
) -> None:
    """The test holds every ticket itself (as callers would, without their work), so the
    queue changes only when the test says so."""
    service = start_service("priorityqueue", settings(QUEUE_MAX_IN_FLIGHT="2"))
    first, second, third, fourth = (fake_awakeable() for _ in range(4))

    def done(awakeable: str) -> None:
        response = ingress.post(f"{QUEUE}/done", json=awakeable)
        assert response.status_code == 200, response.text

    def ignored(awakeable: str) -> int:
        return count_lines(service, f"Done for {awakeable}, which is not in flight: ignored")

    with watching_the_bound(admin, limit=2):
        for ticket in (first, second, third, fourth):
            push(ingress, ticket)
        before = queue_state(admin)
        assert before.admitted == [first, second]
        assert [item["awakeable"] for item in before.items] == [third, fourth]

        # a done (or drop) naming no ticket in flight changes nothing, however often it comes
        for _ in range(3):
            done(STRAY)
            response = ingress.post(f"{QUEUE}/drop", json=STRAY)
            assert response.status_code == 200, response.text
        assert queue_state(admin) == before
        assert ignored(STRAY) == 3

        # a done whose body is not a ticket id is refused (no body at all is the original's
        # `done()`: tests/polyglot)
        for body in (5, "not-an-awakeable", {"awakeable": STRAY}):
            response = ingress.post(f"{QUEUE}/done", json=body)
            assert response.status_code == 400, response.text
            assert "awakeable" in response.json()["message"]
        assert queue_state(admin) == before

        # a done frees its ticket's slot once: its duplicates change nothing
        for _ in range(3):
            done(first)
        assert queue_state(admin) == QueueState(
            items=before.items[1:], admitted=[second, third], in_flight=2
        )
        assert ignored(first) == 2

        # the last ones out: the count goes down to 0, and no further
        for ticket in (second, third, fourth, fourth, first, third):
            done(ticket)
        assert queue_state(admin) == QueueState()
        assert ignored(fourth) == 1

    # the queue still works as it should
    assert ingress.post(METHOD, json={"left": 1, "right": 1}).json() == 2
    admitted = check_queue_log(service, limit=2)
    assert admitted[:4] == [first, second, third, fourth]
    empties(admin)


def test_a_cancelled_caller_leaves_the_queue(
    start_service: StartService, admin: Admin, ingress: Ingress, client_env: dict[str, str]
) -> None:
    service = start_service("priorityqueue", settings(QUEUE_MAX_IN_FLIGHT="1"))
    holder = fake_awakeable()
    push(ingress, holder)  # the only slot is taken
    waiting_one = ingress.send(METHOD, json={"left": 2, "right": 2})
    eventually(waiting(admin, 1), 30, "the caller waits")

    restate_cli("-y", "invocations", "cancel", waiting_one, env=client_env)
    response = ingress.get(f"/restate/invocation/{waiting_one}/attach")
    assert response.status_code == 409, response.text
    eventually(waiting(admin, 0), 30, "the cancelled ticket was dropped")
    assert queue_state(admin).admitted == [holder]
    assert count_lines(service, "Dropped sign_") == 1
    assert count_lines(service, "Expensive operation started: 2 + 2") == 0


def test_a_killed_caller_gives_its_slot_back_when_its_lease_runs_out(
    start_service: StartService, admin: Admin, ingress: Ingress, client_env: dict[str, str]
) -> None:
    service = start_service(
        "priorityqueue",
        settings(QUEUE_MAX_IN_FLIGHT="1", EXPENSIVE_WORK_SECONDS="30", QUEUE_LEASE_SECONDS="3"),
    )
    stuck = ingress.send(METHOD, json={"left": 1, "right": 1})
    eventually(lambda: queue_state(admin).in_flight == 1, 30, "the first is in flight")
    [ticket] = queue_state(admin).admitted
    restate_cli("-y", "invocations", "kill", stuck, env=client_env)  # never reports back
    ingress.send(METHOD, json={"left": 2, "right": 2})
    # the lease of the killed one runs out; then (not before) the next one is let in
    eventually(lambda: count_lines(service, "Expensive operation started: 2 + 2"), 60, "next")
    lines = service.log_lines()
    lease_over = next(i for i, line in enumerate(lines) if "ran out before it reported" in line)
    started = next(i for i, line in enumerate(lines) if "operation started: 2 + 2" in line)
    assert ticket in lines[lease_over]
    assert lease_over < started
    state = queue_state(admin)
    assert ticket not in state.admitted
    assert state.in_flight == 1
    assert state.items == []


# --- bad input -----------------------------------------------------------------------------


def test_bad_input_is_refused_with_400_naming_the_field_and_changes_nothing(
    start_service: StartService, admin: Admin, ingress: Ingress
) -> None:
    service = start_service("priorityqueue", settings())
    cases: list[tuple[str, Any, str]] = [
        (METHOD, {"right": 2}, "left: Field required"),
        (METHOD, {"left": 1, "right": "2"}, "right: Input should be a valid number"),
        (METHOD, {"left": 1, "right": 2, "priority": True}, "priority: Input should be a valid"),
        (METHOD, {"left": 1, "right": 2, "priority": None}, "priority: Input should be a valid"),
        (METHOD, {"left": 1, "right": 2, "extra": 1}, "extra: Extra inputs are not permitted"),
        (METHOD, {"left": 1e308, "right": 1e308}, "left + right"),
        (METHOD, [1, 2], "invalid ExpensiveRequest"),
        (f"{QUEUE}/push", {"awakeable": STRAY}, "priority: Field required"),
        (f"{QUEUE}/push", {"awakeable": "x", "priority": 1}, "awakeable: String should match"),
        (f"{QUEUE}/done", 5, "awakeable: Input should be a valid string"),
        (f"{QUEUE}/drop", None, "awakeable: missing"),
        (f"{QUEUE}/drop", {"awakeable": STRAY}, "awakeable: Input should be a valid string"),
    ]
    for path, body, message in cases:
        response = ingress.post(path, json=body)
        assert response.status_code == 400, f"{path} {body}: {response.text}"
        assert message in response.json()["message"], f"{path} {body}: {response.text}"
    for raw in ("{", '{"left": NaN, "right": 1}'):
        response = ingress.post(METHOD, content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        assert "invalid ExpensiveRequest" in response.json()["message"]
    assert count_lines(service, "Queued ") == 0
    assert count_lines(service, "Expensive operation started") == 0
    assert admin.state("queue", QUEUE_KEY) == {}
    # the lease expiry is for the queue itself: the ingress refuses it
    response = ingress.post(f"{QUEUE}/expire", json=STRAY)
    assert response.status_code == 400, response.text


def test_a_fractional_priority_and_sum_work_as_javascript_numbers(
    start_service: StartService, ingress: Ingress
) -> None:
    start_service("priorityqueue", settings(EXPENSIVE_WORK_SECONDS="0"))
    response = ingress.post(METHOD, json={"left": 1.5, "right": 1.5, "priority": 0.5})
    assert response.status_code == 200, response.text
    assert response.text == "3"
    response = ingress.post(METHOD, json={"left": 0.25, "right": 2, "priority": -1e20})
    assert response.json() == 2.25
