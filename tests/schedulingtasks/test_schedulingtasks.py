"""Scheduling tasks: reminders on durable timers, escalation, payment, crashes, bad input.

Each test lets the reminder chains it starts run to their end, so that no delayed call
of one test reaches the service of the next.
"""

from collections.abc import Callable

import httpx

from devkit.processes import RestateServer
from tests.harness import Admin, Ingress, StartService, count_lines, eventually, restate_cli

# the seed's event, as its curl commands send it
SEED_EVENT = """{
      "type": "customer.subscription_created",
      "created": 1633025000,
      "data": {
      "id": "evt_1JH2Y4F2eZvKYlo2C8b9",
      "customer": "cus_J5K2Y4F2eZvKYlo2"
      }
  }"""
EVENT_ID = "evt_1JH2Y4F2eZvKYlo2C8b9"
REMINDER = f"Sending reminder email for event {EVENT_ID}"
ESCALATION = f"Escalating {EVENT_ID} invoice to support team"


def event(event_id: str) -> str:
    """The seed's event with another id, so that a test counts only its own log lines."""
    return SEED_EVENT.replace(EVENT_ID, event_id)


def reminder(event_id: str) -> str:
    return f"Sending reminder email for event {event_id}"


def escalation(event_id: str) -> str:
    return f"Escalating {event_id} invoice to support team"


def post_event(
    ingress: Ingress, invoice: str, handler: str, body: str = SEED_EVENT
) -> httpx.Response:
    # what curl --json sends: the body with content-type and accept application/json
    return ingress.post(
        f"/PaymentTracker/{invoice}/{handler}",
        content=body,
        headers={"content-type": "application/json", "accept": "application/json"},
    )


def failure_calls(admin: Admin, invoice: str, status: str = "completed") -> int:
    """onPaymentFailure invocations of this invoice's tracker in this status."""
    rows = admin.query(
        "SELECT count(*) AS n FROM sys_invocation WHERE target_service_name = 'PaymentTracker' "
        f"AND target_service_key = '{invoice}' AND target_handler_name = 'onPaymentFailure' "
        f"AND status = '{status}'"
    )
    return int(rows[0]["n"])


def unfinished_calls(admin: Admin, invoice: str) -> int:
    """Invocations of this invoice's tracker not completed yet (scheduled ones included)."""
    rows = admin.query(
        "SELECT count(*) AS n FROM sys_invocation WHERE target_service_name = 'PaymentTracker' "
        f"AND target_service_key = '{invoice}' AND status != 'completed'"
    )
    return int(rows[0]["n"])


def test_failure_sends_three_reminders_then_escalates(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service("schedulingtasks", {"REMINDER_INTERVAL_SECONDS": "0.5"})
    invoice = unique("invoice123")
    response = post_event(ingress, invoice, "onPaymentFailure")
    assert response.status_code == 200, response.text

    eventually(lambda: count_lines(service, ESCALATION) == 1, timeout=60, message="the escalation")
    eventually(lambda: unfinished_calls(admin, invoice) == 0, timeout=30, message="chain ended")
    assert count_lines(service, REMINDER) == 3
    assert count_lines(service, ESCALATION) == 1
    assert failure_calls(admin, invoice) == 4  # the event, then three scheduled calls

    # as in the seed's log: three reminders, then the escalation, each in its own invocation
    lines = [line for line in service.log_lines() if EVENT_ID in line]
    assert [REMINDER in line for line in lines] == [True, True, True, False]
    assert all(line.count("[PaymentTracker/onPaymentFailure][inv_") == 1 for line in lines)
    assert len({line.split("][")[1] for line in lines}) == 4

    state = admin.state("PaymentTracker", invoice)
    assert state["reminder_count"] == "3"
    assert "paid" not in state


def test_payment_after_the_first_reminder_stops_the_reminders(
    start_service: StartService,
    ingress: Ingress,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    service = start_service("schedulingtasks", {"REMINDER_INTERVAL_SECONDS": "5"})
    invoice = unique("invoice123")
    assert post_event(ingress, invoice, "onPaymentFailure").status_code == 200
    # the first reminder goes out at once, the next call is scheduled
    eventually(lambda: count_lines(service, REMINDER) == 1, timeout=10, message="1st reminder")
    assert failure_calls(admin, invoice, "scheduled") == 1

    assert post_event(ingress, invoice, "onPaymentSuccess").status_code == 200
    # paid while the second reminder was still scheduled (5 s are plenty for one request)
    assert failure_calls(admin, invoice, "scheduled") == 1
    assert failure_calls(admin, invoice) == 1
    # the scheduled call still comes, finds the invoice paid and sends nothing
    eventually(lambda: unfinished_calls(admin, invoice) == 0, timeout=30, message="chain ended")
    assert failure_calls(admin, invoice) == 2
    assert count_lines(service, REMINDER) == 1
    assert count_lines(service, ESCALATION) == 0

    assert admin.state("PaymentTracker", invoice) == {"paid": "true", "reminder_count": "1"}
    cli = restate_cli("kv", "get", "PaymentTracker", invoice, env=client_env)
    rows = {tuple(line.split()) for line in cli.stdout.splitlines()}
    assert ("paid", "true") in rows, cli.stdout
    assert ("reminder_count", "1") in rows, cli.stdout


def test_duplicate_failure_events_do_not_start_a_second_chain(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service("schedulingtasks", {"REMINDER_INTERVAL_SECONDS": "2"})
    invoice, event_id = unique("invoice"), unique("evt")
    for _ in range(3):
        assert post_event(ingress, invoice, "onPaymentFailure", event(event_id)).status_code == 200
    # the second and third event found the first one's reminder scheduled
    eventually(
        lambda: count_lines(service, f"are already scheduled; event {event_id} ignored") == 2,
        timeout=10,
        message="two events ignored",
    )

    eventually(
        lambda: count_lines(service, escalation(event_id)) == 1,
        timeout=60,
        message="the escalation",
    )
    eventually(lambda: unfinished_calls(admin, invoice) == 0, timeout=30, message="chain ended")
    assert count_lines(service, reminder(event_id)) == 3
    assert count_lines(service, escalation(event_id)) == 1
    assert failure_calls(admin, invoice) == 3 + 3  # three events, three scheduled calls


def test_crashes_during_the_chain_keep_the_counts_exact(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    service = start_service("schedulingtasks", {"REMINDER_INTERVAL_SECONDS": "2"})
    invoice, event_id = unique("invoice"), unique("evt")
    assert post_event(ingress, invoice, "onPaymentFailure", event(event_id)).status_code == 200

    # between the first and the second reminder: crash the service and the server
    service.kill()
    server.kill()
    server.start()
    service.start()
    eventually(
        lambda: failure_calls(admin, invoice) == 2, timeout=60, message="the second reminder"
    )
    # between the second and the third: crash the service only
    service.kill()
    service.start()

    eventually(
        lambda: count_lines(service, escalation(event_id)) == 1,
        timeout=60,
        message="the escalation",
    )
    eventually(lambda: unfinished_calls(admin, invoice) == 0, timeout=30, message="chain ended")
    assert count_lines(service, reminder(event_id)) == 3
    assert count_lines(service, escalation(event_id)) == 1
    assert admin.state("PaymentTracker", invoice)["reminder_count"] == "3"


def test_malformed_events_are_400_naming_the_field_and_change_nothing(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service("schedulingtasks", {"REMINDER_INTERVAL_SECONDS": "1"})
    invoice = unique("invoice")
    cases = {
        '{"type": "x", "created": 1, "data": {"customer": "cus_1"}}': "data.id: Field required",
        '{"type": "x", "created": "yesterday", "data": {"id": "evt_1", "customer": "c"}}': (
            "created: Input should be a valid integer"
        ),
        '{"created": 1, "data": {"id": "evt_1", "customer": "c"}}': "type: Field required",
        "[1, 2]": "body: Input should be an object",
        "": "Empty body not allowed",  # refused by the ingress already
        "{": "Invalid JSON",
    }
    for handler in ("onPaymentFailure", "onPaymentSuccess"):
        for body, message in cases.items():
            response = post_event(ingress, invoice, handler, body)
            assert response.status_code == 400, f"{handler} {body}: {response.text}"
            assert message in response.json()["message"], f"{handler} {body}"
    assert admin.state("PaymentTracker", invoice) == {}
    assert count_lines(service, "Sending reminder email") == 0
