"""Failures that do not go away: the walkthrough (give up and compensate, refuse at once, wait
as told, pause and resume, resume on a new deployment, blocking calls in threads and, for
contrast, on the event loop), a crash while one order is paused and another compensates,
bad input."""

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from devkit.processes import PatternService, RestateServer, http
from tests.harness import Admin, Ingress, StartService, count_lines, eventually, restate_cli
from tests.persistentfailures.standin import Downstream

# Short retries: the charge step retries after 0.1 s, 0.2 s; the handler after 0.1 s, 0.2 s,
# then pauses. The stand-in asks for a Retry-After of 1 s: a retry that ignored it would
# come after 0.1 s.
FAST = {
    "CHARGE_RETRY_INTERVAL_SECONDS": "0.1",
    "ORDER_RETRY_INTERVAL_SECONDS": "0.1",
    "ORDER_RETRY_MAX_INTERVAL_SECONDS": "0.5",
    "DOWNSTREAM_TIMEOUT_SECONDS": "30",  # longer than any hold of a test
}
SOCKS = "socks"


def start(start_service: StartService, downstream: Downstream, **more: str) -> PatternService:
    return start_service("persistentfailures", downstream.service_settings({**FAST, **more}))


def body(card: str) -> dict[str, str]:
    return {"item": SOCKS, "card": card}


def place(ingress: Ingress, order_id: str, card: str) -> httpx.Response:
    return ingress.post(f"/Order/{order_id}/place", json=body(card))


def send(ingress: Ingress, order_id: str, card: str = "tok_visa") -> str:
    """Place the order without waiting (`/send`), the order id as idempotency key."""
    return ingress.send(
        f"/Order/{order_id}/place", json=body(card), headers={"idempotency-key": order_id}
    )


def attach(ingress: Ingress, order_id: str) -> httpx.Response:
    return ingress.get(f"/restate/invocation/Order/{order_id}/place/{order_id}/attach")


def output_status(ingress: Ingress, order_id: str) -> int:
    """470 while the order placed with `send` is not done."""
    return ingress.get(f"/restate/invocation/Order/{order_id}/place/{order_id}/output").status_code


def completed(order_id: str) -> dict[str, str]:
    return {"orderId": order_id, "paymentId": f"pay-{order_id}",
            "trackingNumber": f"TRK-{order_id}", "invoice": f"INV-{order_id}"}  # fmt: skip


def status(admin: Admin, order_id: str) -> str | None:
    rows = admin.query(f"SELECT status FROM sys_invocation WHERE target = 'Order/{order_id}/place'")
    return str(rows[0]["status"]) if rows else None


def wait_paused(admin: Admin, order_id: str) -> None:
    eventually(lambda: status(admin, order_id) == "paused", 30, f"{order_id} paused")


def why_paused(admin: Admin, order_id: str) -> list[str]:
    """The last failure before each pause of the order, from its journal events."""
    rows = admin.query(
        "SELECT json_get_str(e.event_json, 'last_failure', 'error_message') AS why "
        "FROM sys_journal_events e JOIN sys_invocation i ON e.id = i.id "
        f"WHERE i.target = 'Order/{order_id}/place' AND e.event_type = 'Paused' "
        "ORDER BY e.appended_at"
    )
    return [str(row["why"]) for row in rows]


def calls(order: dict[str, Any]) -> dict[str, int]:
    return {name: value for name, value in order.items() if name.endswith("Calls")}


def assert_effects_once(service: PatternService, order_id: str, lines: list[str]) -> None:
    """Each step's log line (written inside the step, after its call returned) once."""
    texts = [line.format(order=order_id) for line in lines]

    def counts() -> dict[str, int]:
        found = {text: count_lines(service, text) for text in texts}
        assert all(found.values()), f"log lines missing: {found}"
        return found

    assert set(eventually(counts, 10, "the steps' log lines").values()) == {1}


PAID_LINES = [
    "Reserved socks for {order}",
    "Charged {order}: pay-{order}",
    "Booked shipping label TRK-{order} for {order}",
    "Rendered invoice INV-{order} for {order}",
]


# --- the walkthrough -------------------------------------------------------------------------


def test_give_up_and_compensate_refuse_at_once_and_wait_as_told(
    start_service: StartService,
    downstream: Downstream,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    service = start(start_service, downstream)

    paid = unique("order")
    response = place(ingress, paid, "tok_visa")
    assert response.status_code == 200, response.text
    assert response.json() == completed(paid)
    assert admin.state("Order", paid) == {"status": '"completed"'}
    assert calls(downstream.order(paid)) == {"reserveCalls": 1, "releaseCalls": 0,
        "chargeCalls": 1, "earlyChargeCalls": 0, "labelCalls": 1, "invoiceCalls": 1}  # fmt: skip
    assert_effects_once(service, paid, PAID_LINES)
    line = next(line for line in service.log_lines() if f"Charged {paid}" in line)
    assert "[Order/place][inv_" in line

    # The provider fails at every attempt: 3 attempts (RunOptions), then the compensation.
    unavailable = unique("order")
    response = place(ingress, unavailable, "tok_unavailable")
    assert response.status_code == 502, response.text
    assert response.json()["message"] == (
        f"Order {unavailable} cancelled and its stock released: payment failed 3 times, the "
        "last: payment provider answered 503 Service Unavailable: payment provider unavailable"
    )
    record = downstream.order(unavailable)
    assert record["chargeCalls"] == 3
    assert (record["stock"], record["paymentId"], record["labelCalls"]) == ("released", None, 0)
    assert admin.state("Order", unavailable) == {"status": '"cancelled"'}
    assert_effects_once(
        service, unavailable, ["Reserved socks for {order}", "Released the stock of {order}"]
    )

    # A refusal (402) is terminal at the first attempt: no retries, the same compensation.
    declined = unique("order")
    response = place(ingress, declined, "tok_declined")
    assert response.status_code == 402, response.text
    assert response.json()["message"] == (
        f"Order {declined} cancelled and its stock released: payment refused: card declined"
    )
    assert downstream.order(declined)["chargeCalls"] == 1
    assert downstream.order(declined)["stock"] == "released"

    # 429 with Retry-After: 1 s. The step's own backoff would retry after 0.1 s; the second
    # charge comes when the provider asked (it counts calls that come back too early).
    busy = unique("order")
    response = place(ingress, busy, "tok_ratelimited")
    assert response.status_code == 200, response.text
    assert response.json() == completed(busy)
    record = downstream.order(busy)
    assert (record["chargeCalls"], record["earlyChargeCalls"]) == (2, 0)
    assert count_lines(service, f"Payment provider busy: charging {busy} again in 1 s") == 1
    assert_effects_once(service, busy, PAID_LINES)

    # An order id is used once.
    again = place(ingress, paid, "tok_visa")
    assert again.status_code == 409, again.text
    assert again.json()["message"] == f"Order {paid} was placed already"
    assert downstream.order(paid)["reserveCalls"] == 1
    # A cancelled one too: its id is used up, nothing is reserved or charged again.
    again = place(ingress, unavailable, "tok_visa")
    assert again.status_code == 409, again.text
    assert again.json()["message"] == f"Order {unavailable} was placed already"
    assert calls(downstream.order(unavailable)) == {"reserveCalls": 1, "releaseCalls": 1,
        "chargeCalls": 3, "earlyChargeCalls": 0, "labelCalls": 0, "invoiceCalls": 0}  # fmt: skip
    assert admin.state("Order", unavailable) == {"status": '"cancelled"'}


def test_an_order_paused_by_a_carrier_outage_completes_once_resumed(
    start_service: StartService,
    downstream: Downstream,
    ingress: Ingress,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    service = start(start_service, downstream)
    order = unique("order")
    downstream.set_carrier(up=False)
    send(ingress, order)

    wait_paused(admin, order)
    # paid, then 3 attempts at the label (ORDER_MAX_ATTEMPTS): paused, not failed
    record = downstream.order(order)
    assert (record["chargeCalls"], record["labelCalls"]) == (1, 3)
    assert admin.state("Order", order) == {"status": '"paid"'}
    assert output_status(ingress, order) == 470  # not done
    listed = restate_cli("invocations", "list", "--status", "paused", env=client_env).stdout
    assert f"Order/{order}/place" in listed
    assert why_paused(admin, order) == [
        "carrier answered 503 Service Unavailable: carrier API unavailable"
    ]

    downstream.set_carrier(up=True)
    resumed = restate_cli("-y", "invocations", "resume", f"Order/{order}", env=client_env)
    assert "Resumed 1 invocations" in resumed.stdout
    response = attach(ingress, order)
    assert response.status_code == 200, response.text
    assert response.json() == completed(order)
    assert admin.state("Order", order) == {"status": '"completed"'}
    assert calls(downstream.order(order)) == {"reserveCalls": 1, "releaseCalls": 0,
        "chargeCalls": 1, "earlyChargeCalls": 0, "labelCalls": 4, "invoiceCalls": 1}  # fmt: skip
    assert_effects_once(service, order, PAID_LINES)


def test_an_order_paused_by_a_misconfigured_deployment_completes_on_a_new_one(
    start_service: StartService,
    downstream: Downstream,
    ingress: Ingress,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
    unused_port_url: str,
) -> None:
    broken = start(start_service, downstream, CARRIER_URL=unused_port_url)
    order = unique("order")
    invocation_id = send(ingress, order)
    wait_paused(admin, order)
    assert why_paused(admin, order) == [
        "carrier did not answer (ConnectError: All connection attempts failed)"
    ]

    # Resumed where it is pinned, the broken deployment, it fails and pauses again (here
    # with the admin API, which the CLI calls).
    resumed = http().patch(f"{admin.server.admin_url}/invocations/{invocation_id}/resume")
    assert resumed.is_success, f"{resumed.status_code} {resumed.text}"
    eventually(lambda: len(why_paused(admin, order)) == 2, 30, f"{order} paused again")

    fixed = start(start_service, downstream)  # registered beside it: the latest deployment
    restate_cli(
        "-y", "invocations", "resume", f"Order/{order}", "--deployment", "latest", env=client_env
    )
    response = attach(ingress, order)
    assert response.status_code == 200, response.text
    assert response.json() == completed(order)
    assert count_lines(broken, f"Charged {order}: pay-{order}") == 1
    assert count_lines(fixed, f"Charged {order}") == 0  # journaled: not charged again
    assert count_lines(broken, f"Booked shipping label TRK-{order}") == 0
    assert count_lines(fixed, f"Booked shipping label TRK-{order} for {order}") == 1
    assert downstream.order(order)["chargeCalls"] == 1


def test_blocking_calls_in_threads_overlap(
    start_service: StartService,
    downstream: Downstream,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    """Two orders' renderer calls are in flight at the same time: each arrives at the
    stand-in while the other's answer is held, which a blocked event loop could not do."""
    start(start_service, downstream)
    orders = [unique("order"), unique("order")]
    for order in orders:
        downstream.hold(order, "invoice")
        send(ingress, order)
    eventually(
        lambda: all(downstream.received(order, "invoice") == 1 for order in orders),
        30,
        "both renderer calls in flight at once",
    )
    for order in orders:
        downstream.release(order, "invoice")
    for order in orders:
        response = attach(ingress, order)
        assert response.status_code == 200, response.text
        assert response.json() == completed(order)
    events = downstream.events(set(orders), "invoice")
    received = [e["seq"] for e in events if e["event"] == "received"]
    answered = [e["seq"] for e in events if e["event"] == "answered"]
    assert len(received) == len(answered) == 2
    assert max(received) < min(answered), events


def test_a_blocking_call_on_the_event_loop_stops_every_other_order(
    start_service: StartService,
    downstream: Downstream,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    """The contrast (RENDER_IN_THREAD=false): while one order's renderer call blocks the
    loop, the process serves nothing else, not even its health check; orders go one by one."""
    service = start(start_service, downstream, RENDER_IN_THREAD="false")
    first, second = unique("order"), unique("order")
    downstream.hold(first, "invoice")
    send(ingress, first)
    eventually(lambda: downstream.received(first, "invoice") == 1, 30, "first render in flight")

    send(ingress, second)
    with pytest.raises(httpx.TimeoutException):
        httpx.get(f"{service.url}/health", timeout=1.0)
    assert downstream.order(second)["reserveCalls"] == 0  # not even its first step ran

    downstream.release(first, "invoice")
    for order in (first, second):
        response = attach(ingress, order)
        assert response.status_code == 200, response.text
    events = downstream.events({first, second})
    first_answered = next(
        e["seq"]
        for e in events
        if (e["orderId"], e["event"]) == (first, "answered") and e["call"] == "invoice"
    )
    second_began = min(e["seq"] for e in events if e["orderId"] == second)
    assert first_answered < second_began, events


# --- crashes ---------------------------------------------------------------------------------


@pytest.mark.kills_server
def test_crashes_while_one_order_is_paused_and_another_is_compensating(
    start_service: StartService,
    server: RestateServer,
    downstream: Downstream,
    ingress: Ingress,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    """kill -9 of the server and the service at the two moments that matter: an order
    paused (the carrier is down), and another in its compensation (the stock release done
    by the warehouse, its answer held), both at once."""
    service = start(start_service, downstream)
    paused, compensating = unique("order"), unique("order")
    downstream.set_carrier(up=False)
    send(ingress, paused)
    downstream.hold(compensating, "release")
    send(ingress, compensating, "tok_unavailable")
    wait_paused(admin, paused)
    eventually(
        lambda: downstream.received(compensating, "release") == 1, 30, "the compensation began"
    )

    server.kill()  # first: a running server would count the dead service's refusals as attempts
    service.kill()
    service.start()
    server.start()

    # The compensation runs again: its call was cut by the crash.
    eventually(
        lambda: downstream.received(compensating, "release") == 2, 30, "the compensation again"
    )
    downstream.release(compensating, "release")
    response = attach(ingress, compensating)
    assert response.status_code == 502, response.text
    assert response.json()["message"].startswith(
        f"Order {compensating} cancelled and its stock released"
    )
    record = downstream.order(compensating)
    # the charge's failure was in the journal: not charged again after the crash
    assert (record["reserveCalls"], record["chargeCalls"], record["releaseCalls"]) == (1, 3, 2)
    assert record["stock"] == "released"
    assert admin.state("Order", compensating) == {"status": '"cancelled"'}
    # the first release's answer never came back: its line (written after it) never was
    assert_effects_once(
        service, compensating, ["Reserved socks for {order}", "Released the stock of {order}"]
    )

    # The paused order is still paused, and made no attempt meanwhile (3 label calls).
    assert status(admin, paused) == "paused"
    listed = restate_cli("invocations", "list", "--status", "paused", env=client_env).stdout
    assert f"Order/{paused}/place" in listed
    assert downstream.order(paused)["labelCalls"] == 3
    downstream.set_carrier(up=True)
    restate_cli("-y", "invocations", "resume", f"Order/{paused}", env=client_env)
    response = attach(ingress, paused)
    assert response.status_code == 200, response.text
    assert response.json() == completed(paused)
    assert calls(downstream.order(paused)) == {"reserveCalls": 1, "releaseCalls": 0,
        "chargeCalls": 1, "earlyChargeCalls": 0, "labelCalls": 4, "invoiceCalls": 1}  # fmt: skip
    assert_effects_once(service, paused, PAID_LINES)


# --- bad input -------------------------------------------------------------------------------

BAD_ORDERS = [
    (b"{}", ["item: Field required", "card: Field required"]),
    (b'{"item": "", "card": "tok_visa"}', ["item: String should have at least 1 character"]),
    (b'{"item": "socks", "card": 7}', ["card: Input should be a valid string"]),
    (b'{"item": "socks", "card": "tok_visa", "coupon": "x"}', ["coupon: Extra inputs"]),
    (b'{"item": "socks", "card": "tok_visa"', ["body: Invalid JSON"]),
    (b"[]", ["body: Input should be an object"]),
    (b"", ["Empty body not allowed"]),  # refused by the SDK before the handler runs
]


def test_a_bad_order_is_refused_naming_the_field_and_changes_nothing(
    start_service: StartService,
    downstream: Downstream,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    start(start_service, downstream)
    order = unique("order")
    for raw, names in BAD_ORDERS:
        response = ingress.post(
            f"/Order/{order}/place", content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, f"{raw!r}: {response.text}"
        message = response.json()["message"]
        for name in names:
            assert name in message, f"{raw!r}: {message}"
    assert admin.state("Order", order) == {}
    assert set(calls(downstream.order(order)).values()) == {0}  # no system was called
    # and the order id is still free: a good order goes through
    assert place(ingress, order, "tok_visa").json() == completed(order)
