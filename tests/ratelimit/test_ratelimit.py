"""Rate limiting: the walkthrough, the rate holding (also across kill -9), cancellation
giving tokens back, bad input.

The rate is checked as a lower bound only: N calls at limit L and burst B cannot all be
done sooner than (N - B) / L seconds after the bucket was set, however fast the machine
is; a slow machine only makes them take longer.
"""

import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from devkit.processes import PatternService, RestateServer
from ratelimit.client import refusal
from ratelimit.limiter import RateState, Reservation, cancel_at, reserve_at
from tests.harness import Admin, Ingress, StartService, count_lines, eventually, restate_cli

JSON = {"content-type": "application/json"}
EXPENSIVE = "expensive!"


def set_rate(ingress: Ingress, key: str, body: dict[str, Any]) -> None:
    response = ingress.post(f"/limiter/{key}/setRate", json=body)
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    assert response.content == b""


def bucket(ingress: Ingress, key: str) -> dict[str, Any]:
    response = ingress.get(f"/limiter/{key}/state")
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    state: dict[str, Any] = response.json()
    return state


def call_expensive(ingress: Ingress) -> None:
    response = ingress.get("/myService/expensiveMethod", timeout=60)
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    assert response.content == b""


def wait_for_lines(service: PatternService, text: str, count: int, timeout: float = 30) -> None:
    """The service's log reaches its file through a pipe: wait for the lines to land."""
    eventually(
        lambda: count_lines(service, text) >= count,
        timeout=timeout,
        message=f"{count} log lines {text!r}",
    )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def start_limited(start_service: StartService, key: str) -> PatternService:
    return start_service("ratelimit", {"LIMITER_KEY": key})


# --- the walkthrough ---------------------------------------------------------------------


def test_walkthrough_verbatim(
    start_service: StartService, ingress: Ingress, client_env: dict[str, str]
) -> None:
    """The README's commands with the README's key and rate (1 per second, burst 1), with
    4 calls instead of 31 so that it takes about 4 s."""
    service = start_service("ratelimit")
    key = "myService-expensiveMethod"

    # before any setRate the bucket is all zeros: no call is allowed
    assert bucket(ingress, key) == {"limit": 0, "burst": 0, "tokens": 0, "last": 0, "lastEvent": 0}
    response = ingress.get("/myService/expensiveMethod")
    assert response.status_code == 429
    assert response.json()["message"] == "rate: Wait(n=1) would exceed the limiters burst"

    started = time.monotonic()
    # curl localhost:8080/limiter/myService-expensiveMethod/setRate
    #     -H 'content-type:application/json' -d '{"newLimit": 1, "newBurst": 1}'
    response = ingress.post(
        f"/limiter/{key}/setRate",
        content=b'{"newLimit": 1, "newBurst": 1}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.content == b""

    call_expensive(ingress)  # curl localhost:8080/myService/expensiveMethod
    for _ in range(3):  # for i in $(seq 1 30); do curl ...; done, shortened
        call_expensive(ingress)
    elapsed = time.monotonic() - started
    # 4 calls at 1/s with a burst of 1 (the bucket is empty right after setRate)
    assert elapsed >= (4 - 1) / 1, f"4 calls took only {elapsed:.2f} s"

    wait_for_lines(service, EXPENSIVE, 4)
    assert count_lines(service, EXPENSIVE) == 4
    line = next(line for line in service.log_lines() if EXPENSIVE in line)
    assert "[myService/expensiveMethod][inv_" in line

    state = bucket(ingress, key)
    assert state["limit"] == 1
    assert state["burst"] == 1
    cli = restate_cli("kv", "get", "limiter", key, env=client_env)
    assert "state" in cli.stdout
    assert '"lastEvent"' in cli.stdout


def test_a_batch_takes_as_many_tokens_and_the_default_20_exceeds_a_small_burst(
    start_service: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    key = unique("batch")
    service = start_limited(start_service, key)
    set_rate(ingress, key, {"newLimit": 50, "newBurst": 5})

    response = ingress.post("/myService/expensiveMethodBatch", json=3)
    assert response.status_code == 200, response.text
    wait_for_lines(service, EXPENSIVE, 3)
    line = next(line for line in service.log_lines() if EXPENSIVE in line)
    assert "[myService/expensiveMethodBatch][inv_" in line

    response = ingress.post("/myService/expensiveMethodBatch")  # no body: 20
    assert response.status_code == 429
    assert response.json()["message"] == "rate: Wait(n=20) would exceed the limiters burst"
    response = ingress.post("/myService/expensiveMethodBatch", json=6)
    assert response.status_code == 429
    assert response.json()["message"] == "rate: Wait(n=6) would exceed the limiters burst"
    assert count_lines(service, EXPENSIVE) == 3


# --- the rate holds ----------------------------------------------------------------------

# 5 s from the first call to the last: at 4/s (2.5 s) a loaded machine had sent all 12 and
# seen them act before the crash test could crash anything in the middle
N, LIMIT, BURST = 12, 2.0, 2
MIN_SECONDS = (N - BURST) / LIMIT  # 5 s


def test_parallel_calls_hold_the_rate(
    start_service: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    key = unique("rate")
    service = start_limited(start_service, key)
    set_at = now_ms()
    started = time.monotonic()
    set_rate(ingress, key, {"newLimit": LIMIT, "newBurst": BURST})
    with ThreadPoolExecutor(max_workers=N) as pool:
        list(pool.map(lambda _: call_expensive(ingress), range(N)))
    elapsed = time.monotonic() - started

    assert elapsed >= MIN_SECONDS, f"{N} calls took only {elapsed:.2f} s"
    state = bucket(ingress, key)
    # the latest reservation's time to act, by the limiter's clock
    assert state["lastEvent"] - set_at >= MIN_SECONDS * 1000, state
    wait_for_lines(service, EXPENSIVE, N)
    assert count_lines(service, EXPENSIVE) == N


def reserve_invocations(admin: Admin, key: str) -> int:
    rows = admin.query(
        "SELECT count(*) AS n FROM sys_invocation "
        "WHERE target_service_name = 'limiter' AND target_handler_name = 'reserve' "
        f"AND target_service_key = '{key}'"
    )
    return int(rows[0]["n"])


def attach_all(ingress: Ingress, invocations: list[str]) -> None:
    for invocation in invocations:

        def attached(invocation: str = invocation) -> bool:
            try:
                response = ingress.get(f"/restate/invocation/{invocation}/attach", timeout=60)
            except httpx.TransportError:  # the server is still starting
                return False
            assert response.status_code == 200, f"{response.status_code} {response.text}"
            return True

        eventually(attached, timeout=90, message=f"{invocation} completed")


def crash_in_the_middle(
    start_service: StartService,
    ingress: Ingress,
    admin: Admin,
    key: str,
    crash: Callable[[PatternService], None],
) -> None:
    """Send N calls at once, crash something once the first has acted, then check that
    all N completed, each acted once, and the rate held."""
    service = start_limited(start_service, key)
    set_at = now_ms()
    set_rate(ingress, key, {"newLimit": LIMIT, "newBurst": BURST})
    invocations = [ingress.send("/myService/expensiveMethod") for _ in range(N)]
    wait_for_lines(service, EXPENSIVE, 1)
    assert count_lines(service, EXPENSIVE) < N, "all calls were done before the crash"

    crash(service)
    attach_all(ingress, invocations)

    state = bucket(ingress, key)
    assert state["lastEvent"] - set_at >= MIN_SECONDS * 1000, state
    wait_for_lines(service, EXPENSIVE, N)
    # Every call did its work, once; only a step that was running when the process died
    # (its result not yet in the journal) may have run again: Restate's steps are at least
    # once across a crash, and exactly once for everything the journal holds.
    acted = Counter(
        line.split("][", 1)[1].split("]", 1)[0]
        for line in service.log_lines()
        if EXPENSIVE in line and "[myService/expensiveMethod][" in line
    )
    assert sorted(acted) == sorted(invocations), acted
    assert sum(acted.values()) - N <= 1, f"steps repeated after the crash: {acted}"
    assert reserve_invocations(admin, key) == N  # each call reserved once


def test_the_rate_holds_across_a_kill_of_the_service(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    def crash(service: PatternService) -> None:
        service.kill()
        service.start()

    crash_in_the_middle(start_service, ingress, admin, unique("service-crash"), crash)


@pytest.mark.kills_server
def test_the_rate_holds_across_a_kill_of_the_server(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    def crash(service: PatternService) -> None:
        server.kill()
        server.start()

    crash_in_the_middle(start_service, ingress, admin, unique("server-crash"), crash)


# --- cancellation ------------------------------------------------------------------------


def sleeps(admin: Admin, invocation: str) -> bool:
    rows = admin.query(
        "SELECT count(*) AS n FROM sys_journal "
        f"WHERE id = '{invocation}' AND entry_type = 'Command: Sleep'"
    )
    return int(rows[0]["n"]) == 1


def test_cancelling_a_waiting_caller_gives_its_tokens_back(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    key = unique("cancel")
    service = start_limited(start_service, key)
    set_rate(ingress, key, {"newLimit": 0.05, "newBurst": 1})  # one token per 20 s
    invocation = ingress.send("/myService/expensiveMethod")
    eventually(lambda: sleeps(admin, invocation), timeout=30, message="the caller sleeps")
    reserved = bucket(ingress, key)
    assert reserved["tokens"] < 0, reserved  # the token is promised to the sleeping caller

    response = httpx.patch(f"{server.admin_url}/invocations/{invocation}/cancel", timeout=30)
    assert response.status_code in (200, 202), f"{response.status_code} {response.text}"
    response = ingress.get(f"/restate/invocation/{invocation}/attach", timeout=60)
    assert response.status_code == 409, response.text
    assert response.json()["message"] == "cancelled"

    def given_back() -> dict[str, Any]:
        state = bucket(ingress, key)
        assert state["last"] > reserved["last"], state
        return state

    state = eventually(given_back, timeout=30, message="cancelReservation ran")
    # the token is back (plus what accrued meanwhile), and the bucket is no longer in debt
    assert state["tokens"] >= reserved["tokens"] + 1, (reserved, state)
    assert state["tokens"] >= 0, state
    assert count_lines(service, EXPENSIVE) == 0


# --- reservations, straight from the object ---------------------------------------------


def reserve(ingress: Ingress, key: str, body: dict[str, Any]) -> dict[str, Any]:
    response = ingress.post(f"/limiter/{key}/reserve", json=body)
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    answer: dict[str, Any] = response.json()
    assert set(answer) == {"ok", "tokens", "creationDate", "dateToAct", "limit"}, answer
    return answer


def test_reserve_honours_the_wait_limit_and_refuses_an_infinite_wait(
    start_service: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    key = unique("reserve")
    start_limited(start_service, key)
    # one token per 10 s: nothing here waits, and no token accrues while the test runs
    set_rate(ingress, key, {"newLimit": 0.1, "newBurst": 3})
    set_at = bucket(ingress, key)["last"]  # the bucket is empty from then on
    granted = reserve(ingress, key, {"n": 2})
    assert granted["ok"] is True
    assert granted["tokens"] == 2
    assert granted["limit"] == 0.1
    assert abs(granted["dateToAct"] - (set_at + 20_000)) <= 1, (set_at, granted)

    refused = reserve(ingress, key, {"n": 1, "waitLimitMillis": 100})
    assert refused == {**refused, "ok": False, "tokens": 0, "dateToAct": 0}
    assert reserve(ingress, key, {"n": 4})["ok"] is False  # more than the burst
    later = reserve(ingress, key, {"waitLimitMillis": None})  # null: no wait limit
    assert later["ok"] is True
    assert abs(later["dateToAct"] - (set_at + 30_000)) <= 1, (set_at, later)

    tokens = ingress.get(f"/limiter/{key}/tokens")
    assert tokens.status_code == 200
    assert -3 <= tokens.json() < 0  # 3 tokens promised, less than one accrued

    # a rate of 0 refills nothing: a wait for a missing token would be infinite
    key = unique("rate-zero")
    set_rate(ingress, key, {"newLimit": 0, "newBurst": 5})
    answer = reserve(ingress, key, {"n": 1})
    assert answer["ok"] is False
    assert answer["dateToAct"] == 0
    assert bucket(ingress, key)["lastEvent"] == 0


# --- bad input ----------------------------------------------------------------------------

BAD_INPUT = [
    ("/limiter/{key}/reserve", {"n": -1}, "n"),
    ("/limiter/{key}/reserve", {"n": 1.5}, "n"),
    ("/limiter/{key}/reserve", {"n": "1"}, "n"),
    ("/limiter/{key}/reserve", {"n": True}, "n"),
    ("/limiter/{key}/reserve", {"n": None}, "n"),
    ("/limiter/{key}/reserve", {"waitLimitMillis": -1}, "waitLimitMillis"),
    ("/limiter/{key}/reserve", {"waitLimitMillis": "soon"}, "waitLimitMillis"),
    ("/limiter/{key}/reserve", {"count": 1}, "count"),
    ("/limiter/{key}/setRate", {"newLimit": -1}, "newLimit"),
    ("/limiter/{key}/setRate", {"newLimit": "1"}, "newLimit"),
    ("/limiter/{key}/setRate", {"newLimit": False}, "newLimit"),
    ("/limiter/{key}/setRate", {"newLimit": 1, "newBurst": 1.5}, "newBurst"),
    ("/limiter/{key}/setRate", {"newLimit": 1, "newBurst": -1}, "newBurst"),
    ("/limiter/{key}/setRate", {"limit": 1}, "limit"),
    ("/limiter/{key}/cancelReservation", {"ok": True, "tokens": 1}, "creationDate"),
    (
        "/limiter/{key}/cancelReservation",
        {"ok": True, "tokens": -1, "creationDate": 1, "dateToAct": 1, "limit": 1},
        "tokens",
    ),
    ("/myService/expensiveMethodBatch", -1, "batchSize"),
    ("/myService/expensiveMethodBatch", 1.5, "batchSize"),
    ("/myService/expensiveMethodBatch", "3", "batchSize"),
]
# JSON's grammar has no Infinity or NaN; Python's json module would write them
NOT_FINITE = [
    ("/limiter/{key}/reserve", b'{"waitLimitMillis": Infinity}', "waitLimitMillis"),
    ("/limiter/{key}/reserve", b'{"waitLimitMillis": 1e999}', "waitLimitMillis"),
    ("/limiter/{key}/setRate", b'{"newLimit": Infinity}', "newLimit"),
    ("/limiter/{key}/setRate", b'{"newLimit": NaN}', "newLimit"),
    ("/myService/expensiveMethodBatch", b"Infinity", "batchSize"),
]


def test_bad_input_is_a_400_naming_the_field_and_changes_nothing(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    key = unique("bad")
    service = start_limited(start_service, key)
    set_rate(ingress, key, {"newLimit": 100, "newBurst": 100})
    before = admin.state("limiter", key)
    cases = [(path, json.dumps(body).encode(), name) for path, body, name in BAD_INPUT]
    for path, body, name in cases + NOT_FINITE:
        response = ingress.post(path.format(key=key), content=body, headers=JSON)
        where = f"{path} <- {body!r}"
        assert response.status_code == 400, f"{where}: {response.status_code} {response.text}"
        assert name in response.json()["message"], f"{where}: {response.text}"
    assert admin.state("limiter", key) == before
    assert count_lines(service, EXPENSIVE) == 0


def test_refusal_messages() -> None:
    assert refusal(3, None) == "rate: Wait(n=3) would exceed the limiters burst"
    assert refusal(3, 100) == (
        "rate: Wait(n=3) would either exceed the limiters burst or the provided waitLimitMillis"
    )


# --- the arithmetic (pure functions, no server) --------------------------------------------


def test_a_cancelled_reservation_keeps_the_tokens_promised_to_later_ones() -> None:
    state = RateState(limit=1, burst=1, tokens=0, last=0, last_event=0)
    first = reserve_at(state, 0, 1, None)
    assert first.state is not None
    second = reserve_at(first.state, 0, 1, None)
    assert second.state is not None
    assert (first.reservation.date_to_act, second.reservation.date_to_act) == (1000, 2000)

    # cancelling the first: its token is the one the second waits for, so nothing comes back
    assert cancel_at(second.state, 500, first.reservation) is None
    # cancelling the latest gives its token back and moves the latest action back
    back = cancel_at(second.state, 500, second.reservation)
    assert back is not None
    assert back.tokens == -2 + 0.5 + 1
    assert back.last_event == 1000
    # a reservation whose time has come can no longer be cancelled
    assert cancel_at(second.state, 2001, second.reservation) is None
    refused = Reservation(ok=False, tokens=0, creation_date=0, date_to_act=0, limit=1)
    assert cancel_at(second.state, 500, refused) is None


def test_refill_is_capped_at_the_burst_and_ignores_a_clock_going_back() -> None:
    state = RateState(limit=2, burst=3, tokens=0, last=10_000, last_event=0)
    assert reserve_at(state, 100_000, 3, 0).reservation.ok  # full after a long pause
    assert not reserve_at(state, 100_000, 4, None).reservation.ok  # more than the burst
    went_back = reserve_at(state, 5_000, 1, None)  # earlier than `last`: no refill
    assert went_back.reservation.date_to_act == 5_000 + 500
