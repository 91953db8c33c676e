"""Payment state machine: the seed's walkthrough, races of pay and cancel, expiry, crashes,
bad input."""

import json
import re
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from devkit import binaries
from devkit.processes import PatternService, RestateServer
from tests.harness import (
    Admin,
    Ingress,
    StartService,
    assert_ingress_refuses,
    count_lines,
    eventually,
)

PATTERN = "statemachinepayments"
NO_EXPIRY = {"PAYMENT_EXPIRY_SECONDS": "3600"}
SUCCESS = {"success": True, "reason": "Withdrawal successful"}
ALREADY_CANCELLED = {"success": False, "reason": "Payment already cancelled"}
ALREADY_COMPLETED = {"success": False, "reason": "Payment already completed in prior call"}


def pay(ingress: Ingress, payment_id: str, account: str, amount: int) -> dict[str, Any]:
    response = ingress.post(
        f"/PaymentProcessor/{payment_id}/makePayment",
        json={"accountId": account, "amountCents": amount},
    )
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    result: dict[str, Any] = response.json()
    return result


def cancel(ingress: Ingress, payment_id: str) -> None:
    response = ingress.post(f"/PaymentProcessor/{payment_id}/cancelPayment")
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    assert response.content == b""


def attach(ingress: Ingress, invocation_id: str) -> httpx.Response:
    response = ingress.get(f"/restate/invocation/{invocation_id}/attach", timeout=60)
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    return response


def balance(admin: Admin, account: str) -> int:
    return int(admin.state("Account", account)["balance"])


def open_account(ingress: Ingress, admin: Admin, account: str) -> int:
    """Open the account with a payment that is too large (the Account's own handlers are
    closed to the ingress); its balance (unchanged)."""
    probe = f"opening-{account}"
    result = pay(ingress, probe, account, 10**12)
    assert payment_state(admin, probe) == {}
    assert result["success"] is False
    match = re.fullmatch(r"Insufficient funds: (\d+) cents", result["reason"])
    assert match, result
    opening = int(match.group(1))
    assert opening > 0
    assert balance(admin, account) == opening
    return opening


def payment_state(admin: Admin, payment_id: str) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in admin.state("PaymentProcessor", payment_id).items()}


def charges(service: PatternService, payment_id: str) -> int:
    return count_lines(service, f"Payment {payment_id} completed")


def refunds(service: PatternService, payment_id: str) -> int:
    return count_lines(service, f"Payment {payment_id} cancelled:")


def test_walkthrough_pay_cancel_and_look_at_the_state(
    start_service: StartService,
    ingress: Ingress,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    service = start_service(PATTERN, NO_EXPIRY)
    payment_id, account = unique("some-string-id"), unique("abc")
    opening = open_account(ingress, admin, account)

    # the seed's curl: body with spaces, content-type header
    response = ingress.post(
        f"/PaymentProcessor/{payment_id}/makePayment",
        headers={"content-type": "application/json"},
        content='{  "accountId": "' + account + '", "amountCents": 100 }',
    )
    assert response.status_code == 200, response.text
    assert response.json() == SUCCESS
    assert balance(admin, account) == opening - 100
    assert payment_state(admin, payment_id) == {
        "status": "COMPLETED_SUCCESSFULLY",
        "payment": {"accountId": account, "amountCents": 100},
    }
    line = next(line for line in service.log_lines() if f"Payment {payment_id} completed" in line)
    assert "[PaymentProcessor/makePayment][inv_" in line

    cancel(ingress, payment_id)
    assert balance(admin, account) == opening  # the money came back
    assert payment_state(admin, payment_id) == {
        "status": "CANCELLED",
        "payment": {"accountId": account, "amountCents": 100},
    }

    cli = subprocess.run(
        [str(binaries.find(binaries.CLI)), "kv", "get", "PaymentProcessor", payment_id],
        env=client_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert '"CANCELLED"' in cli.stdout
    assert f'"accountId": "{account}"' in cli.stdout
    assert '"amountCents": 100' in cli.stdout

    # a cancelled payment stays cancelled: paying again is refused, cancelling again is a no-op
    assert pay(ingress, payment_id, account, 100) == ALREADY_CANCELLED
    cancel(ingress, payment_id)
    assert balance(admin, account) == opening
    assert charges(service, payment_id) == 1
    assert refunds(service, payment_id) == 1


def test_a_payment_is_charged_once(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service(PATTERN, NO_EXPIRY)
    payment_id, account = unique("payment"), unique("account")
    opening = open_account(ingress, admin, account)
    assert pay(ingress, payment_id, account, 250) == SUCCESS
    assert pay(ingress, payment_id, account, 250) == ALREADY_COMPLETED
    assert pay(ingress, payment_id, account, 999) == ALREADY_COMPLETED
    assert balance(admin, account) == opening - 250
    assert charges(service, payment_id) == 1


def test_a_cancellation_before_the_payment_refuses_the_payment(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service(PATTERN, NO_EXPIRY)
    payment_id, account = unique("payment"), unique("account")
    opening = open_account(ingress, admin, account)
    cancel(ingress, payment_id)
    assert payment_state(admin, payment_id) == {"status": "CANCELLED"}
    assert pay(ingress, payment_id, account, 100) == ALREADY_CANCELLED
    assert balance(admin, account) == opening
    assert charges(service, payment_id) == 0
    assert count_lines(service, f"Payment {payment_id} cancelled before it was made") == 1


def test_insufficient_funds_charge_nothing_and_the_payment_can_be_retried(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    start_service(PATTERN, NO_EXPIRY)
    payment_id, account = unique("payment"), unique("account")
    opening = open_account(ingress, admin, account)
    assert pay(ingress, payment_id, account, opening + 1) == {
        "success": False,
        "reason": f"Insufficient funds: {opening} cents",
    }
    assert payment_state(admin, payment_id) == {}  # nothing recorded: the id is still free
    assert balance(admin, account) == opening
    assert pay(ingress, payment_id, account, opening) == SUCCESS
    assert balance(admin, account) == 0


@pytest.mark.parametrize("pay_first", [True, False], ids=["pay-then-cancel", "cancel-then-pay"])
def test_pay_and_cancel_queued_together_end_consistently_in_either_order(
    start_service: StartService,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
    pay_first: bool,
) -> None:
    service = start_service(PATTERN, NO_EXPIRY)
    account = unique("account")
    opening = open_account(ingress, admin, account)
    payment_ids = [unique("payment") for _ in range(5)]

    def pay_and_cancel(payment_id: str) -> tuple[str, str]:
        """Send both without waiting, in the given order; Restate queues them per payment.

        Returns the invocation ids of (makePayment, cancelPayment)."""
        pay_path = f"/PaymentProcessor/{payment_id}/makePayment"
        cancel_path = f"/PaymentProcessor/{payment_id}/cancelPayment"
        body = {"accountId": account, "amountCents": 100}
        if pay_first:
            paid = ingress.send(pay_path, json=body)
            return paid, ingress.send(cancel_path)
        cancelled = ingress.send(cancel_path)
        return ingress.send(pay_path, json=body), cancelled

    with ThreadPoolExecutor(max_workers=len(payment_ids)) as pool:
        sent = list(pool.map(pay_and_cancel, payment_ids))
        results = list(pool.map(lambda ids: attach(ingress, ids[0]).json(), sent))
        list(pool.map(lambda ids: attach(ingress, ids[1]), sent))

    for payment_id, result in zip(payment_ids, results, strict=True):
        assert result == (SUCCESS if pay_first else ALREADY_CANCELLED)
        assert payment_state(admin, payment_id)["status"] == "CANCELLED"
        assert charges(service, payment_id) == (1 if pay_first else 0)
        assert refunds(service, payment_id) == (1 if pay_first else 0)
    assert balance(admin, account) == opening  # every payment was cancelled


def test_pay_and_cancel_racing_from_two_clients_never_lose_or_double_money(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service(PATTERN, NO_EXPIRY)
    account = unique("account")
    opening = open_account(ingress, admin, account)
    payment_ids = [unique("payment") for _ in range(8)]
    jobs = [(payment_id, kind) for payment_id in payment_ids for kind in ("pay", "cancel")]

    def run(job: tuple[str, str]) -> dict[str, Any] | None:
        payment_id, kind = job
        if kind == "pay":
            return pay(ingress, payment_id, account, 100)
        cancel(ingress, payment_id)
        return None

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = dict(zip(jobs, pool.map(run, jobs), strict=True))

    for payment_id in payment_ids:
        result = results[(payment_id, "pay")]
        assert result in (SUCCESS, ALREADY_CANCELLED)
        state = payment_state(admin, payment_id)
        assert state["status"] == "CANCELLED"
        charged = result == SUCCESS
        # charged exactly when a payment is recorded, refunded exactly when charged
        assert ("payment" in state) == charged
        assert charges(service, payment_id) == int(charged)
        assert refunds(service, payment_id) == int(charged)
    assert balance(admin, account) == opening


def test_expiry_clears_the_state_and_frees_the_payment_id(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service(PATTERN, {"PAYMENT_EXPIRY_SECONDS": "1"})
    paid, cancelled, account = unique("paid"), unique("cancelled"), unique("account")
    opening = open_account(ingress, admin, account)
    assert pay(ingress, paid, account, 100) == SUCCESS
    cancel(ingress, cancelled)

    def expired() -> bool:
        return not admin.state("PaymentProcessor", paid) and not admin.state(
            "PaymentProcessor", cancelled
        )

    eventually(expired, timeout=30, message="both payments' state to expire")
    assert count_lines(service, f"Payment {paid} expired") == 1
    assert count_lines(service, f"Payment {cancelled} expired") == 1
    # a forgotten id is new again; the expired payment itself stays paid (no refund)
    assert pay(ingress, cancelled, account, 50) == SUCCESS
    assert balance(admin, account) == opening - 150


def test_pending_expiry_survives_a_server_crash(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    service = start_service(PATTERN, {"PAYMENT_EXPIRY_SECONDS": "5"})
    payment_id, account = unique("payment"), unique("account")
    opening = open_account(ingress, admin, account)
    assert pay(ingress, payment_id, account, 100) == SUCCESS

    # the expiry timer is pending when the server crashes
    assert payment_state(admin, payment_id)["status"] == "COMPLETED_SUCCESSFULLY"
    assert count_lines(service, f"Payment {payment_id} expired") == 0
    server.kill()
    server.start()

    # Wait for the expiry itself first: right after a restart, a state query may answer
    # with no rows before the partitions are back, which would look like an expiry.
    eventually(
        lambda: count_lines(service, f"Payment {payment_id} expired") == 1,
        timeout=60,
        message="the payment to expire after the server crash",
    )
    eventually(
        lambda: not admin.state("PaymentProcessor", payment_id),
        timeout=60,
        message="the payment's state to be cleared",
    )
    assert count_lines(service, f"Payment {payment_id} expired") == 1
    assert balance(admin, account) == opening - 100
    assert charges(service, payment_id) == 1


def test_requests_accepted_while_the_service_is_down_are_processed_once(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service(PATTERN, NO_EXPIRY)
    payment_id, account = unique("payment"), unique("account")
    opening = open_account(ingress, admin, account)

    service.kill()
    body = {"accountId": account, "amountCents": 100}
    paid = ingress.send(f"/PaymentProcessor/{payment_id}/makePayment", json=body)
    cancelled = ingress.send(f"/PaymentProcessor/{payment_id}/cancelPayment")
    service.start()

    assert attach(ingress, paid).json() == SUCCESS
    attach(ingress, cancelled)
    assert payment_state(admin, payment_id)["status"] == "CANCELLED"
    assert balance(admin, account) == opening
    assert charges(service, payment_id) == 1
    assert refunds(service, payment_id) == 1


BAD_PAYMENTS: list[tuple[Any, str]] = [
    ({"accountId": "ACCOUNT", "amountCents": 0}, "amountCents"),
    ({"accountId": "ACCOUNT", "amountCents": -100}, "amountCents"),
    ({"accountId": "ACCOUNT", "amountCents": 1.5}, "amountCents"),
    ({"accountId": "ACCOUNT", "amountCents": "100"}, "amountCents"),
    ({"accountId": "ACCOUNT"}, "amountCents"),
    ({"amountCents": 100}, "accountId"),
    ({"accountId": "", "amountCents": 100}, "accountId"),
    ("not json", "body"),
]


def test_bad_payment_is_400_naming_the_field_and_changes_nothing(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service(PATTERN, NO_EXPIRY)
    payment_id, account = unique("payment"), unique("account")
    opening = open_account(ingress, admin, account)
    for body, field in BAD_PAYMENTS:
        if isinstance(body, dict):
            body = {k: account if v == "ACCOUNT" else v for k, v in body.items()}
            content = json.dumps(body)
        else:
            content = body
        response = ingress.post(
            f"/PaymentProcessor/{payment_id}/makePayment",
            content=content,
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 400, f"{body!r}: {response.status_code} {response.text}"
        message = response.json()["message"]
        assert message.startswith("Invalid request: "), message
        assert f"{field}:" in message, f"{body!r}: {message}"
    # no body at all: Restate's ingress refuses it before the handler runs
    response = ingress.post(
        f"/PaymentProcessor/{payment_id}/makePayment", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert "Empty body not allowed" in response.json()["message"]

    assert payment_state(admin, payment_id) == {}
    assert balance(admin, account) == opening
    assert charges(service, payment_id) == 0
    # the id is still free: a good payment goes through
    assert pay(ingress, payment_id, account, 100) == SUCCESS


def test_account_handlers_and_expire_are_closed_to_the_ingress(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    """Only the PaymentProcessor moves money and only its timer expires a payment (the
    walkthrough and expiry tests show that both still happen)."""
    service = start_service(PATTERN, NO_EXPIRY)
    payment_id, account = unique("payment"), unique("account")
    opening = open_account(ingress, admin, account)
    assert pay(ingress, payment_id, account, 100) == SUCCESS
    assert_ingress_refuses(ingress, f"/Account/{account}/withdraw", 5)
    assert_ingress_refuses(ingress, f"/Account/{account}/deposit", 5)
    assert_ingress_refuses(ingress, f"/PaymentProcessor/{payment_id}/expire")
    assert balance(admin, account) == opening - 100
    assert payment_state(admin, payment_id)["status"] == "COMPLETED_SUCCESSFULLY"
    assert count_lines(service, f"Account {account}: deposited") == 0
    assert count_lines(service, f"Payment {payment_id} expired") == 0
