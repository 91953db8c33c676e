"""Webhook callbacks: the README's walkthrough, signed and unsigned events, duplicates,
crashes of the service and of the server while events wait, malformed events.

The tests sign events themselves, as Stripe documents it (the local Stripe stand-in
sends no invoice events): `Stripe-Signature: t=<ts>,v1=<hex HMAC-SHA256 of "<ts>.<body>">`.
"""

import hashlib
import hmac
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from devkit.processes import PatternService, RestateServer, register
from tests.harness import Admin, Ingress, StartService, count_lines, eventually, restate_cli

ROUTER = "/WebhookCallbackRouter/onStripeEvent"
SECRET = "whsec_test_secret"
SIGNED = {"STRIPE_WEBHOOK_SECRET": SECRET}
UNSIGNED = {"STRIPE_WEBHOOK_SECRET": ""}  # also when the caller's shell exports one
README = Path(__file__).parents[2] / "webhookcallbacks" / "README.md"

# --- helpers (this module's own) ----------------------------------------------------------


def readme_events() -> list[str]:
    """The bodies of the README's `curl ... --json '<body>'` commands, in order."""
    text = README.read_text(encoding="utf-8")
    return re.findall(
        r"^curl localhost:8080/WebhookCallbackRouter/onStripeEvent --json '(.*)'$", text, re.M
    )


def event(event_id: str, event_type: str, invoice: str, customer: str = "cus_1") -> str:
    return json.dumps(
        {"id": event_id, "type": event_type, "created": 1633025000,
         "data": {"object": {"id": invoice, "customer": customer}}}
    )  # fmt: skip


def signature(body: str, secret: str = SECRET, timestamp: int | None = None) -> str:
    """The Stripe-Signature header Stripe would send with this body."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def deliver(
    ingress: Ingress, body: str, sig: str | None = None, timeout: float = 30.0
) -> httpx.Response:
    """POST the event as curl --json does (and Stripe, with a signature)."""
    headers = {"content-type": "application/json", "accept": "application/json"}
    if sig is not None:
        headers["stripe-signature"] = sig
    return ingress.post(ROUTER, content=body, headers=headers, timeout=timeout)


def tracker_calls(admin: Admin, invoice: str, status: str | None = None) -> int:
    """Invocations of this invoice's PaymentTracker (in this status)."""
    where = f" AND status = '{status}'" if status else ""
    rows = admin.query(
        "SELECT count(*) AS n FROM sys_invocation WHERE target_service_name = 'PaymentTracker' "
        f"AND target_service_key = '{invoice}'{where}"
    )
    return int(rows[0]["n"])


def deliveries(admin: Admin, sig: str, completed: bool) -> int:
    """Router invocations started by a request with this Stripe-Signature header (it is in
    their journal's input entry), completed or not."""
    status = "= 'completed'" if completed else "!= 'completed'"
    rows = admin.query(
        "SELECT count(*) AS n FROM sys_journal j JOIN sys_invocation i ON j.id = i.id "
        "WHERE i.target = 'WebhookCallbackRouter/onStripeEvent' "
        f"AND j.entry_type = 'Command: Input' AND j.entry_json LIKE '%{sig}%' "
        f"AND i.status {status}"
    )
    return int(rows[0]["n"])


def failure_logged(invoice: str, event_id: str) -> str:
    return f"Payment failed for invoice {invoice} (event {event_id})"


def routed(service: PatternService, event_id: str) -> list[str]:
    """The tracker invocation ids the router logged for this event, one per delivery."""
    return re.findall(rf"Event {event_id} \(.*\) -> .*, invocation (inv_\w+)", service.log_text())


class Background:
    """A delivery in a thread: Stripe waiting for an answer while the test goes on."""

    def __init__(self, call: Callable[[], httpx.Response]) -> None:
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], httpx.Response]) -> None:
        try:
            self.response = call()
        except httpx.HTTPError as error:
            self.error = error

    def result(self, timeout: float = 60.0) -> httpx.Response | Exception:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the delivery got no answer"
        if self.response is not None:
            return self.response
        assert self.error is not None
        return self.error


# --- the walkthrough ------------------------------------------------------------------------


def test_readme_walkthrough(
    start_service: StartService,
    ingress: Ingress,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    service = start_service("webhookcallbacks", UNSIGNED)
    failed, succeeded, other, malformed = readme_events()
    # the README's events, with ids of this test's own (the server is shared)
    invoice, evt = unique("invoice123"), unique("evt")
    ids = {"invoice123": invoice, "evt_1": f"{evt}_1", "evt_2": f"{evt}_2",
           "evt_3": f"{evt}_3", "evt_4": f"{evt}_4"}  # fmt: skip

    def own(body: str) -> str:
        return re.sub(r"\b(invoice123|evt_\d)\b", lambda m: ids[m.group(1)], body)

    response = deliver(ingress, own(failed))
    assert response.status_code == 200, response.text
    assert response.content == b""
    eventually(lambda: count_lines(service, failure_logged(invoice, f"{evt}_1")) == 1,
               message="the tracker got the failure")  # fmt: skip
    assert count_lines(service, "STRIPE_WEBHOOK_SECRET is not set: accepting unsigned") == 1

    # the same command again: Stripe's redelivery; the tracker does not run again
    again = deliver(ingress, own(failed))
    assert again.status_code == 200, again.text
    first, second = routed(service, f"{evt}_1")
    assert first == second, "the redelivery found the first delivery's invocation"

    assert deliver(ingress, own(succeeded)).status_code == 200
    eventually(lambda: count_lines(service, f"Invoice {invoice} paid (event {evt}_2)") == 1,
               message="the tracker got the payment")  # fmt: skip
    eventually(lambda: tracker_calls(admin, invoice, "completed") == 2, message="2 calls done")
    assert tracker_calls(admin, invoice) == 2
    assert count_lines(service, failure_logged(invoice, f"{evt}_1")) == 1
    # each line carries [Service/handler][invocation id]
    [tracker_line] = [
        line for line in service.log_lines() if failure_logged(invoice, f"{evt}_1") in line
    ]
    assert f"[PaymentTracker/onPaymentFailure][{first}]" in tracker_line

    cli = restate_cli("kv", "get", "PaymentTracker", invoice, env=client_env)
    rows = {tuple(line.split()) for line in cli.stdout.splitlines()}
    assert ("paid", "true") in rows, cli.stdout
    assert ("payment_failures", "1") in rows, cli.stdout
    assert admin.state("PaymentTracker", invoice) == {"paid": "true", "payment_failures": "1"}

    ignored = deliver(ingress, own(other))
    assert ignored.status_code == 200, ignored.text
    assert count_lines(service, f"Ignoring event {evt}_3 of type customer.created") == 1

    refused = deliver(ingress, own(malformed))
    assert refused.status_code == 400
    assert refused.json() == {
        "code": 400,
        "message": "data.object.id: Field required",
        "source": "invocation",
    }
    assert tracker_calls(admin, invoice) == 2
    assert f"{evt}_4" not in service.log_text()


def test_readme_signing_recipe_is_accepted(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    """The README's bash + openssl recipe for signing an event, run as it stands (only the
    ingress address and the ids changed)."""
    service = start_service("webhookcallbacks", SIGNED)
    text = README.read_text(encoding="utf-8")
    section = text[text.index("Sign a test event the way Stripe does") :]
    [recipe] = re.findall(r"```shell\n(body=.*?)```", section, re.S)
    assert "-hmac whsec_test_secret" in recipe
    invoice, evt = unique("invoice456"), unique("evt")
    script = (recipe.replace("localhost:8080", ingress.url.removeprefix("http://"))
              .replace("invoice456", invoice).replace("evt_5", evt))  # fmt: skip
    result = subprocess.run(
        ["bash", "-c", f"set -e\n{script.rstrip()} -s -w '%{{http_code}}' --max-time 30"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "200", result.stdout
    eventually(lambda: count_lines(service, failure_logged(invoice, evt)) == 1,
               message="the signed event reached the tracker")  # fmt: skip


# --- signatures -------------------------------------------------------------------------------


def test_signed_mode_accepts_only_valid_signatures(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service("webhookcallbacks", SIGNED)
    invoice, evt = unique("invoice"), unique("evt")
    body = event(evt, "invoice.payment_failed", invoice)
    tampered = event(evt, "invoice.payment_failed", invoice, customer="cus_attacker")
    now = int(time.time())
    refusals = {
        "missing": (body, None, "Missing Stripe-Signature header"),
        "other secret": (body, signature(body, secret="whsec_forged"),
                         "Invalid Stripe-Signature header: No signatures found matching"),
        "tampered body": (tampered, signature(body),
                          "Invalid Stripe-Signature header: No signatures found matching"),
        "too old": (body, signature(body, timestamp=now - 3600),
                    "Invalid Stripe-Signature header: Timestamp outside the tolerance zone"),
        "garbage": (body, "garbage", "Invalid Stripe-Signature header: Unable to extract"),
        "other scheme": (body, signature(body).replace("v1=", "v0="),
                         "Invalid Stripe-Signature header: No signatures found with expected"),
        "empty": (body, "", "Missing Stripe-Signature header"),
    }  # fmt: skip
    for case, (sent, sig, message) in refusals.items():
        response = deliver(ingress, sent, sig)
        assert response.status_code == 400, f"{case}: {response.status_code} {response.text}"
        assert response.json()["message"].startswith(message), f"{case}: {response.text}"
    assert tracker_calls(admin, invoice) == 0
    assert evt not in service.log_text()

    # a signed but malformed event: the signature is fine, the event is not
    broken = json.dumps({"id": evt, "type": "invoice.payment_failed", "created": 1,
                         "data": {"object": {"id": invoice}}})  # fmt: skip
    response = deliver(ingress, broken, signature(broken))
    assert response.status_code == 400
    assert response.json()["message"] == "data.object.customer: Field required"

    # the real thing; the header's case does not matter, nor does a second v1 signature
    # (Stripe sends one per active secret while a secret is being rolled)
    sig = signature(body).replace("v1=", "v1=00ff,v1=", 1)
    response = ingress.post(ROUTER, content=body, headers={
        "Content-Type": "application/json; charset=utf-8", "Stripe-Signature": sig})  # fmt: skip
    assert response.status_code == 200, response.text
    eventually(lambda: tracker_calls(admin, invoice, "completed") == 1, message="forwarded")
    assert count_lines(service, failure_logged(invoice, evt)) == 1
    assert count_lines(service, "accepting unsigned events") == 0
    assert admin.state("PaymentTracker", invoice) == {"payment_failures": "1"}


def test_unsigned_mode_accepts_events_without_a_signature(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service("webhookcallbacks", UNSIGNED)
    invoice, evt = unique("invoice"), unique("evt")
    assert deliver(ingress, event(f"{evt}_1", "invoice.payment_failed", invoice)).status_code == 200
    # a header that would not verify is not looked at either
    forged = event(f"{evt}_2", "invoice.payment_succeeded", invoice)
    assert deliver(ingress, forged, "t=1,v1=00").status_code == 200
    eventually(lambda: tracker_calls(admin, invoice, "completed") == 2, message="both forwarded")
    assert count_lines(service, failure_logged(invoice, f"{evt}_1")) == 1
    assert count_lines(service, f"Invoice {invoice} paid (event {evt}_2)") == 1
    assert count_lines(service, "STRIPE_WEBHOOK_SECRET is not set: accepting unsigned") == 1


# --- duplicates --------------------------------------------------------------------------------


def test_a_redelivered_event_id_is_processed_once(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service("webhookcallbacks", SIGNED)
    invoice, evt = unique("invoice"), unique("evt")
    failed = event(f"{evt}_1", "invoice.payment_failed", invoice)
    paid = event(f"{evt}_2", "invoice.payment_succeeded", invoice)
    now = int(time.time())
    # each delivery signed anew, as Stripe does (a new timestamp per attempt)
    for attempt in range(3):
        assert (
            deliver(ingress, failed, signature(failed, timestamp=now + attempt)).status_code == 200
        )
    for attempt in range(2):
        assert deliver(ingress, paid, signature(paid, timestamp=now + attempt)).status_code == 200
    # the failure once more, after the payment: still a duplicate, not a new failure
    assert deliver(ingress, failed, signature(failed, timestamp=now + 9)).status_code == 200

    eventually(lambda: tracker_calls(admin, invoice, "completed") == 2, message="2 calls done")
    assert tracker_calls(admin, invoice) == 2, "one tracker call per event id"
    assert count_lines(service, failure_logged(invoice, f"{evt}_1")) == 1
    assert count_lines(service, f"Invoice {invoice} paid (event {evt}_2)") == 1
    assert count_lines(service, "is paid already") == 0
    # every delivery was routed, each to the invocation the first delivery of its id made
    failure_calls, payment_calls = routed(service, f"{evt}_1"), routed(service, f"{evt}_2")
    assert len(failure_calls) == 4
    assert len(set(failure_calls)) == 1
    assert len(payment_calls) == 2
    assert len(set(payment_calls)) == 1
    assert admin.state("PaymentTracker", invoice) == {"paid": "true", "payment_failures": "1"}

    # a new failure event (another id) for the paid invoice is processed, and ignored
    late = event(f"{evt}_3", "invoice.payment_failed", invoice)
    assert deliver(ingress, late, signature(late)).status_code == 200
    eventually(
        lambda: count_lines(service, f"Invoice {invoice} is paid already; event {evt}_3 ignored"),
        message="the late failure ignored",
    )
    assert admin.state("PaymentTracker", invoice) == {"paid": "true", "payment_failures": "1"}


# --- crashes ------------------------------------------------------------------------------------


def test_service_crash_events_wait_and_are_processed_once(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service("webhookcallbacks", SIGNED)
    invoice, evt = unique("invoice"), unique("evt")
    body = event(evt, "invoice.payment_failed", invoice)
    now = int(time.time())
    first_sig, second_sig = signature(body, timestamp=now), signature(body, timestamp=now + 1)

    service.kill()
    first = Background(lambda: deliver(ingress, body, first_sig, timeout=90))
    eventually(lambda: deliveries(admin, first_sig, completed=False) == 1,
               message="the ingress holds the delivery while the service is down")  # fmt: skip
    # Stripe gave up waiting and delivers the event again
    second = Background(lambda: deliver(ingress, body, second_sig, timeout=90))
    eventually(lambda: deliveries(admin, second_sig, completed=False) == 1,
               message="the ingress holds the redelivery too")  # fmt: skip
    assert tracker_calls(admin, invoice) == 0

    service.start()
    for delivery in (first, second):
        response = delivery.result(timeout=90)
        assert isinstance(response, httpx.Response), repr(response)
        assert response.status_code == 200, response.text
    eventually(lambda: tracker_calls(admin, invoice, "completed") == 1, message="processed")
    assert tracker_calls(admin, invoice) == 1
    assert count_lines(service, failure_logged(invoice, evt)) == 1
    assert admin.state("PaymentTracker", invoice) == {"payment_failures": "1"}


@pytest.mark.kills_server
def test_server_crash_events_survive_and_are_processed_once(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    service = start_service("webhookcallbacks", SIGNED)
    invoice, evt = unique("invoice"), unique("evt")
    failed = event(f"{evt}_1", "invoice.payment_failed", invoice)
    paid = event(f"{evt}_2", "invoice.payment_succeeded", invoice)
    failed_sig = signature(failed)

    # a failure event that is processed before the crash ...
    assert deliver(ingress, paid, signature(paid)).status_code == 200
    eventually(lambda: tracker_calls(admin, invoice, "completed") == 1, message="paid")
    # ... and one accepted while the service is down, then the server crashes too
    service.kill()
    first = Background(lambda: deliver(ingress, failed, failed_sig, timeout=90))
    eventually(lambda: deliveries(admin, failed_sig, completed=False) == 1,
               message="the ingress holds the delivery")  # fmt: skip
    server.kill()
    outcome = first.result(timeout=30)
    assert isinstance(outcome, httpx.HTTPError), f"answered despite the crash: {outcome!r}"

    server.start()
    service.start()
    # Stripe saw no answer: it delivers both events again (new signatures)
    now = int(time.time())
    again = deliver(ingress, failed, signature(failed, timestamp=now + 1), timeout=90)
    assert again.status_code == 200, again.text
    assert deliver(ingress, paid, signature(paid, timestamp=now + 1)).status_code == 200

    # the delivery accepted before the crash completed as well, after the restart
    eventually(lambda: deliveries(admin, failed_sig, completed=True) == 1, timeout=60,
               message="the first delivery completed after the restart")  # fmt: skip
    eventually(lambda: tracker_calls(admin, invoice, "completed") == 2, timeout=60,
               message="the failure processed")  # fmt: skip
    assert tracker_calls(admin, invoice) == 2, "one tracker call per event id"
    assert count_lines(service, f"Invoice {invoice} paid (event {evt}_2)") == 1
    # the failure came after the payment: recorded as ignored, once
    assert count_lines(service, f"Invoice {invoice} is paid already; event {evt}_1 ignored") == 1
    assert count_lines(service, failure_logged(invoice, f"{evt}_1")) == 0
    assert admin.state("PaymentTracker", invoice) == {"paid": "true"}


# --- bad input ------------------------------------------------------------------------------


def test_malformed_events_are_400_naming_the_field_and_forward_nothing(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service("webhookcallbacks", UNSIGNED)
    invoice, evt = unique("invoice"), unique("evt")

    def with_(**changes: object) -> str:
        body = json.loads(event(evt, "invoice.payment_failed", invoice))
        body.update(changes)
        return json.dumps({k: v for k, v in body.items() if v is not None})

    cases = {
        with_(data={"object": {"customer": "cus_1"}}): "data.object.id: Field required",
        with_(data={"object": {"id": "", "customer": "c"}}): (
            "data.object.id: String should have at least 1 character"
        ),
        with_(data={"object": {"id": invoice}}): "data.object.customer: Field required",
        with_(data={"object": {"id": invoice, "customer": 7}}): (
            "data.object.customer: Input should be a valid string"
        ),
        with_(data={"object": "in_1"}): "data.object: Input should be an object",
        with_(data={}): "data.object: Field required",
        with_(data=None): "data: Field required",
        with_(id=None): "id: Field required",
        with_(id=""): "id: String should have at least 1 character",
        with_(type=None): "type: Field required",
        with_(type=["invoice.payment_failed"]): "type: Input should be a valid string",
        with_(created="yesterday"): "created: Input should be a valid integer",
        # an unhandled type needs only the envelope, but that one complete
        with_(type="customer.created", created=None): "created: Field required",
        "[1, 2]": "body: Input should be an object",
        "{": "Invalid JSON",
        "": "Empty body not allowed",  # refused by the ingress already
    }
    for body, message in cases.items():
        response = deliver(ingress, body)
        assert response.status_code == 400, f"{body}: {response.status_code} {response.text}"
        assert message in response.json()["message"], f"{body}: {response.text}"
    response = ingress.post(ROUTER, content=b"\xff\xfe", headers={"content-type": "text/plain"})
    assert response.status_code == 400, response.text
    assert "Invalid JSON" in response.json()["message"]

    assert tracker_calls(admin, invoice) == 0
    assert admin.state("PaymentTracker", invoice) == {}
    assert invoice not in service.log_text()  # nothing was forwarded

    # the tracker called directly refuses malformed events the same way
    direct = ingress.post(
        f"/PaymentTracker/{invoice}/onPaymentFailure",
        content='{"type": "invoice.payment_failed", "created": 1, "data": {"customer": "c"}}',
        headers={"content-type": "application/json"},
    )
    assert direct.status_code == 400
    assert direct.json()["message"] == "data.id: Field required"
    assert admin.state("PaymentTracker", invoice) == {}


def test_an_unsigned_event_in_signed_mode_changes_nothing_even_when_well_formed(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    """The signature is checked before the body is parsed: a malformed unsigned body is
    refused for its missing signature, not for its fields."""
    start_service("webhookcallbacks", SIGNED)
    invoice = unique("invoice")
    response = deliver(ingress, '{"id": 1}')
    assert response.status_code == 400
    assert response.json()["message"] == "Missing Stripe-Signature header"
    response = deliver(ingress, event(unique("evt"), "invoice.payment_failed", invoice))
    assert response.status_code == 400
    assert tracker_calls(admin, invoice) == 0


# --- the schedulingtasks tracker behind the router ------------------------------------------


def test_the_router_feeds_the_schedulingtasks_tracker_unchanged(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    """Registered after this pattern, the schedulingtasks PaymentTracker takes the router's
    events as they are; registering this pattern again switches back."""
    router = start_service("webhookcallbacks", UNSIGNED)
    scheduling = start_service(
        "schedulingtasks", {"REMINDER_INTERVAL_SECONDS": "0.5", "MAX_REMINDERS": "1"}
    )
    invoice, evt = unique("invoice"), unique("evt")
    assert deliver(ingress, event(f"{evt}_1", "invoice.payment_failed", invoice)).status_code == 200
    eventually(
        lambda: count_lines(scheduling, f"Escalating {evt}_1 invoice to support team") == 1,
        message="the scheduling tracker's reminder chain ran to its end",
    )
    eventually(lambda: tracker_calls(admin, invoice, "completed") == 2, message="chain ended")
    assert count_lines(scheduling, f"Sending reminder email for event {evt}_1") == 1
    assert count_lines(router, failure_logged(invoice, f"{evt}_1")) == 0
    assert admin.state("PaymentTracker", invoice)["reminder_count"] == "1"

    # the payment, then this pattern's tracker again
    assert (
        deliver(ingress, event(f"{evt}_2", "invoice.payment_succeeded", invoice)).status_code == 200
    )
    eventually(lambda: admin.state("PaymentTracker", invoice).get("paid") == "true",
               message="the scheduling tracker recorded the payment")  # fmt: skip
    register(server.admin_url, router.url)
    late = event(f"{evt}_3", "invoice.payment_failed", invoice)
    assert deliver(ingress, late).status_code == 200
    eventually(
        lambda: count_lines(router, f"Invoice {invoice} is paid already; event {evt}_3 ignored"),
        message="this pattern's tracker, reading the state the other one wrote",
    )
    assert tracker_calls(admin, invoice) == 4
