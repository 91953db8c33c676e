"""Payment signals against the local Stripe stand-in: synchronous and webhook paths,
declines, forged webhooks, crashes while waiting for the webhook, bad requests."""

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from devkit.processes import PatternService, RestateServer
from devkit.stripe_standin import SECRET_KEY, WEBHOOK_SECRET, LocalStripe
from tests.harness import Ingress, StartService, count_lines, eventually

WEBHOOK = "/PaymentService/processWebhook"


@pytest.fixture
def payments(
    start_service: StartService, stripe_standin: LocalStripe, ingress: Ingress
) -> PatternService:
    return start_service("signalspayments", stripe_standin.service_settings())


@pytest.fixture
def webhooks_lost(stripe_standin: LocalStripe, server: RestateServer) -> Iterator[None]:
    """The stand-in's webhooks go nowhere during the test (it never retries them)."""
    stripe_standin.send_webhooks_to("http://127.0.0.1:9/nowhere")
    yield
    stripe_standin.send_webhooks_to(f"{server.ingress_url}{WEBHOOK}")


def pay(ingress: Ingress, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"idempotency-key": key} if key else None
    return ingress.post("/PaymentService/processPayment", json=body, headers=headers)


def signed(event: dict[str, Any], secret: str = WEBHOOK_SECRET) -> tuple[bytes, dict[str, str]]:
    """A webhook request as Stripe signs it: HMAC-SHA256 of "<timestamp>.<payload>"."""
    payload = json.dumps(event).encode()
    timestamp = int(time.time())
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return payload, {"stripe-signature": f"t={timestamp},v1={digest.hexdigest()}",
                     "content-type": "application/json; charset=utf-8"}  # fmt: skip


def intent_event(event_type: str, intent: dict[str, Any]) -> dict[str, Any]:
    return {"id": "evt_test", "object": "event", "type": event_type, "created": int(time.time()),
            "data": {"object": intent}}  # fmt: skip


def intents_for(standin: LocalStripe, amount: int) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{standin.url}/v1/payment_intents", params={"limit": 100}, auth=(SECRET_KEY, ""),
        timeout=10,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return [intent for intent in response.json()["data"] if intent["amount"] == amount]


def test_synchronous_success(payments: PatternService, ingress: Ingress) -> None:
    response = pay(ingress, {"paymentMethodId": "pm_card_visa", "amount": 101})
    assert response.status_code == 200, response.text
    assert count_lines(payments, "was processed synchronously!") == 1
    assert count_lines(payments, "awaiting webhook") == 0


def test_seed_request_completes_through_the_signed_webhook(
    payments: PatternService, ingress: Ingress
) -> None:
    response = ingress.post(
        "/PaymentService/processPayment",
        content='{\n        "paymentMethodId": "pm_card_visa",\n        "amount": 109,\n'
        '        "delayedStatus": true\n}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    log = payments.log_text()
    assert "still 'processing', awaiting webhook call..." in log
    assert "Received webhook call for payment intent pi_" in log
    assert count_lines(payments, "Webhook call for") == 1
    assert count_lines(payments, "succeeded") >= 1


def test_declined_payment_is_a_terminal_402(payments: PatternService, ingress: Ingress) -> None:
    response = pay(ingress, {"paymentMethodId": "pm_card_chargeCustomerFail", "amount": 102})
    assert response.status_code == 402
    assert response.json()["message"].startswith("Payment declined: ")


def test_forged_or_missing_signature_is_400_and_resolves_nothing(
    payments: PatternService,
    stripe_standin: LocalStripe,
    ingress: Ingress,
    webhooks_lost: None,
    unique: Callable[[str], str],
) -> None:
    key = unique("payment")
    ingress.send(
        "/PaymentService/processPayment",
        json={"paymentMethodId": "pm_card_visa", "amount": 103, "delayedStatus": True},
        headers={"idempotency-key": key},
    )
    output = f"/restate/invocation/PaymentService/processPayment/{key}/output"
    eventually(lambda: count_lines(payments, "awaiting webhook") == 1, message="payment waits")
    [intent] = intents_for(stripe_standin, 103)
    event = intent_event("payment_intent.succeeded", intent)

    payload, headers = signed(event, secret="whsec_forged")
    forged = ingress.post(WEBHOOK, content=payload, headers=headers)
    assert forged.status_code == 400
    assert forged.json()["message"] == "Invalid Stripe signature"
    missing = ingress.post(WEBHOOK, content=payload, headers={"content-type": "text/plain"})
    assert missing.status_code == 400
    assert ingress.get(output).status_code == 470  # still waiting: nothing was resolved

    payload, headers = signed(event)
    assert ingress.post(WEBHOOK, content=payload, headers=headers).json() is True
    eventually(lambda: ingress.get(output).status_code == 200, message="payment completed")


def test_processing_answer_then_failed_webhook_declines(
    payments: PatternService,
    stripe_standin: LocalStripe,
    ingress: Ingress,
    webhooks_lost: None,
    unique: Callable[[str], str],
) -> None:
    key = unique("payment")
    ingress.send(
        "/PaymentService/processPayment",
        json={"paymentMethodId": "pm_card_visa", "amount": 104, "delayedStatus": True},
        headers={"idempotency-key": key},
    )
    eventually(lambda: count_lines(payments, "awaiting webhook") == 1, message="payment waits")
    [intent] = intents_for(stripe_standin, 104)
    failed = {**intent, "status": "requires_payment_method",
              "last_payment_error": {"message": "Your card has insufficient funds."}}  # fmt: skip
    payload, headers = signed(intent_event("payment_intent.payment_failed", failed))
    assert ingress.post(WEBHOOK, content=payload, headers=headers).json() is True

    result = ingress.get(f"/restate/invocation/PaymentService/processPayment/{key}/attach")
    assert result.status_code == 402
    assert result.json()["message"] == "Payment declined: Your card has insufficient funds."


def test_webhooks_that_resolve_nothing_do_not_break_the_service(
    payments: PatternService, ingress: Ingress
) -> None:
    other = intent_event("customer.created", {"id": "cus_1", "object": "customer"})
    payload, headers = signed(other)
    assert ingress.post(WEBHOOK, content=payload, headers=headers).json() is True
    assert count_lines(payments, "Unhandled event type customer.created") == 1

    no_callback = intent_event("payment_intent.succeeded", {"id": "pi_1", "status": "succeeded"})
    payload, headers = signed(no_callback)
    response = ingress.post(WEBHOOK, content=payload, headers=headers)
    assert response.status_code == 400
    assert "Missing callback property" in response.json()["message"]

    malformed = intent_event(
        "payment_intent.succeeded",
        {"id": "pi_2", "status": "succeeded", "metadata": {"restate_callback_id": "sign_bogus"}},
    )
    payload, headers = signed(malformed)
    response = ingress.post(WEBHOOK, content=payload, headers=headers)
    assert response.status_code == 400
    assert response.json()["message"] == "Invalid callback property: sign_bogus"

    # well-formed, but no invocation waits for it
    nobody = "sign_1" + base64.urlsafe_b64encode(bytes(range(28))).decode()
    unknown = intent_event(
        "payment_intent.succeeded",
        {"id": "pi_3", "status": "succeeded", "metadata": {"restate_callback_id": nobody}},
    )
    payload, headers = signed(unknown)
    response = ingress.post(WEBHOOK, content=payload, headers=headers)
    assert response.status_code == 200, response.text

    after = pay(ingress, {"paymentMethodId": "pm_card_visa", "amount": 105})
    assert after.status_code == 200, after.text


def crash_while_waiting(
    crash: Callable[[], None],
    restart: Callable[[], None],
    payments: PatternService,
    stripe_standin: LocalStripe,
    ingress: Ingress,
    key: str,
    amount: int,
) -> None:
    ingress.send(
        "/PaymentService/processPayment",
        json={"paymentMethodId": "pm_card_visa", "amount": amount, "delayedStatus": True},
        headers={"idempotency-key": key},
    )
    eventually(lambda: count_lines(payments, "awaiting webhook") == 1, message="payment waits")
    crash()
    restart()
    [intent] = intents_for(stripe_standin, amount)
    payload, headers = signed(intent_event("payment_intent.succeeded", intent))
    assert ingress.post(WEBHOOK, content=payload, headers=headers).json() is True

    result = ingress.get(f"/restate/invocation/PaymentService/processPayment/{key}/attach")
    assert result.status_code == 200, result.text
    assert len(intents_for(stripe_standin, amount)) == 1, "the intent was created once"
    assert count_lines(payments, "Webhook call for") == 1


def test_service_crash_while_waiting_for_the_webhook(
    payments: PatternService,
    stripe_standin: LocalStripe,
    ingress: Ingress,
    webhooks_lost: None,
    unique: Callable[[str], str],
) -> None:
    crash_while_waiting(payments.kill, payments.start, payments, stripe_standin, ingress,
                        unique("payment"), 106)  # fmt: skip


def test_server_crash_while_waiting_for_the_webhook(
    payments: PatternService,
    server: RestateServer,
    stripe_standin: LocalStripe,
    ingress: Ingress,
    webhooks_lost: None,
    unique: Callable[[str], str],
) -> None:
    crash_while_waiting(server.kill, server.start, payments, stripe_standin, ingress,
                        unique("payment"), 107)  # fmt: skip


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"paymentMethodId": "pm_card_visa", "amount": 0}', "amount"),
        ('{"paymentMethodId": "pm_card_visa", "amount": -5}', "amount"),
        ('{"paymentMethodId": "pm_card_visa"}', "amount"),
        ('{"paymentMethodId": "", "amount": 100}', "paymentMethodId"),
        ('{"amount": 100}', "paymentMethodId"),
        ('{"paymentMethodId": "pm_card_visa", "amount": "lots"}', "amount"),
        ("not json", "body"),
        ("", "Empty body"),  # refused by Restate's ingress before the handler runs
    ],
)
def test_bad_requests_are_400_naming_the_field_and_pay_nothing(
    payments: PatternService, stripe_standin: LocalStripe, ingress: Ingress, body: str, field: str
) -> None:
    before = len(intents_for(stripe_standin, 100))
    response = ingress.post(
        "/PaymentService/processPayment",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert field in response.json()["message"]
    assert len(intents_for(stripe_standin, 100)) == before
