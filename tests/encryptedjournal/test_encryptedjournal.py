"""Encrypted journal: key rotation across a crash of server and service, a value under a key
that is gone, tampered values, bad input, the settings.

The walkthrough and the search of the server's files are in test_at_rest.py.
"""

import json
import runpy
from collections.abc import Callable

import httpx
import pytest

from devkit.processes import PatternService, RestateServer
from encryptedjournal.codec import KeysError, from_environment, parse_keys
from tests.encryptedjournal.helpers import (
    ENCRYPTED,
    answer,
    codec,
    invocation_of,
    journal,
    key_id,
    keys,
    post,
    settings,
    state_values,
)
from tests.harness import (
    Admin,
    Ingress,
    StartService,
    count_lines,
    eventually,
    restate_cli,
    run_module,
)

PROFILE = {"name": "Ada Lovelace", "email": "ada@example.com", "cardNumber": "4242424242424242"}
CHARGE = {"amountCents": 1999, "description": "Blood test"}


def restart_with_keys(service: PatternService, *ids: str) -> None:
    """Stop the service and start it again (same port, so the same deployment) with keys."""
    service.stop()
    assert service.env is not None
    service.env["JOURNAL_KEYS"] = keys(*ids)
    service.start()


def cli_output(*args: str, env: dict[str, str]) -> str:
    """All the `restate` CLI printed (it writes some of its tables to stderr)."""
    result = restate_cli(*args, env=env)
    return result.stdout + result.stderr


def register(ingress: Ingress, customer: str, *ids: str) -> None:
    response = post(ingress, f"/Customer/{customer}/register", PROFILE, codec(*ids))
    assert answer(response, codec(*ids))["name"] == PROFILE["name"]


@pytest.mark.kills_server
def test_a_charge_in_flight_finishes_under_a_new_key_across_a_crash_of_server_and_service(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    """Rotation: k2 put in front of k1 while a charge waits for its settlement, and both
    processes killed. The charge resumes: what it journaled under k1 is read, what it writes
    from then on is under k2; the card is charged and the receipt sent once."""
    service = start_service("encryptedjournal", settings("k1", delay="4"))
    customer = unique("ada")
    register(ingress, customer, "k1")
    sent = post(ingress, f"/Customer/{customer}/charge/send", CHARGE, codec("k1"),
                headers={"idempotency-key": "charge-1"})  # fmt: skip
    assert sent.status_code == 202, sent.text
    # the step's result is journaled once the settlement timer is: a kill before that would
    # run the step again (Restate's steps are at least once up to their journaling)
    eventually(
        lambda: admin.journal_count("Command: Sleep", "settlement", f"Customer/{customer}/charge"),
        30,
        "the charge to wait for its settlement",
    )
    assert count_lines(service, "Charged 19.99") == 1
    assert count_lines(service, "Receipt for payment") == 0, "too late: the settlement is over"

    service.kill()  # during the settlement timer
    server.kill()
    server.start()
    assert service.env is not None
    service.env["JOURNAL_KEYS"] = keys("k2", "k1")  # the rotation
    service.start()

    def attached() -> httpx.Response | None:
        response = ingress.get(f"/restate/invocation/Customer/{customer}/charge/charge-1/attach")
        return response if response.status_code == 200 else None

    response = eventually(attached, 60, "the charge accepted before the crash to finish")
    assert key_id(response.content) == "k2"  # the answer was written after the rotation
    receipt = answer(response, codec("k2", "k1"))
    assert receipt["amountCents"] == 1999
    eventually(lambda: count_lines(service, "Receipt for payment") == 1, 10, "the receipt")
    assert count_lines(service, f"Charged 19.99 to card ending 4242 for 'Blood test' "
                                f"(payment {receipt['paymentId']})") == 1  # fmt: skip

    # the charge's journal: its first values under k1, those written after the restart k2
    charge = invocation_of(admin, f"Customer/{customer}/charge")
    ids = [
        (kind, [key_id(value) for value in values]) for kind, _, values in journal(admin, charge)
    ]
    assert [(kind, found) for kind, found in ids if found] == [
        ("Command: Input", ["k1"]),
        ("Command: GetEagerState", ["k1"]),  # the profile, read before the crash
        ("Notification: Run", ["k1"]),  # "charge card"
        ("Notification: Run", ["k2"]),  # "email receipt"
        ("Command: SetState", ["k2"]),  # the payments
        ("Command: Output", ["k2"]),
    ]

    # state: the profile still under k1 (read fine), the payments under k2
    values = state_values(admin, customer)
    assert {key: key_id(value) for key, value in values.items()} == {
        "profile": "k1", "payments": "k2"}  # fmt: skip
    shown = answer(post(ingress, f"/Customer/{customer}/get"), codec("k2", "k1"))
    assert shown["payments"] == [
        {k: receipt[k] for k in ("paymentId", "amountCents", "description")}
    ]

    # a new write of the profile is under k2; requests under the old key are still read
    update = {**PROFILE, "email": "ada@lovelace.example"}
    response = post(ingress, f"/Customer/{customer}/register", update, codec("k1"))
    assert answer(response, codec("k2", "k1"))["email"] == "ada@lovelace.example"
    assert key_id(state_values(admin, customer)["profile"]) == "k2"


def test_a_value_under_a_key_that_is_gone_waits_until_the_key_is_back(
    start_service: StartService,
    ingress: Ingress,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    """k1 dropped from JOURNAL_KEYS too early: reading the profile written under k1 fails
    the attempt with an error naming k1, and Restate retries; with k1 back, the same
    invocation finishes. Nothing is read as a wrong value meanwhile."""
    service = start_service("encryptedjournal", settings("k1"))
    customer = unique("ada")
    register(ingress, customer, "k1")

    restart_with_keys(service, "k2")
    invocation = ingress.send(f"/Customer/{customer}/get")
    missing_key = "journal value encrypted with key id 'k1', which is not in JOURNAL_KEYS (k2)"

    def failing() -> bool:
        rows = admin.query(f"SELECT last_failure FROM sys_invocation WHERE id = '{invocation}'")
        assert missing_key in (rows[0].get("last_failure") or ""), rows
        return True

    eventually(failing, 30, "the invocation to retry with an error naming the key id")
    status = admin.query(f"SELECT status FROM sys_invocation WHERE id = '{invocation}'")
    assert status[0]["status"] in {"backing-off", "running"}, status  # not failed
    assert count_lines(service, f"cannot decrypt a journal value: {missing_key}") >= 1

    def shown_by_the_cli() -> bool:  # as the README shows it (while it backs off)
        listed = cli_output("invocations", "list", "--service", "Customer", "--key", customer,
                            env=client_env)  # fmt: skip
        described = cli_output("invocations", "describe", invocation, env=client_env)
        return all(f'UnknownKeyError("{missing_key}' in text for text in (listed, described))

    eventually(shown_by_the_cli, 30, "restate invocations list/describe to show the error")

    restart_with_keys(service, "k2", "k1")  # the key is back
    response = ingress.get(f"/restate/invocation/{invocation}/attach")
    assert key_id(response.content) == "k2"
    assert answer(response, codec("k2"))["email"] == PROFILE["email"]

    # a caller without the service's newest key cannot read the answer, and says why
    env = {**client_env, "JOURNAL_KEYS": keys("k1")}
    result = run_module("encryptedjournal.client", "get", customer, env=env)
    assert result.returncode == 1
    assert (
        "error: cannot decrypt the answer: journal value encrypted with key id 'k2', which is "
        "not in JOURNAL_KEYS (k1)" in result.stderr
    )


def test_tampered_values_and_unknown_keys_fail_with_an_error_naming_the_key_id(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    service = start_service("encryptedjournal", settings("k1"))
    customer = unique("ada")
    register(ingress, customer, "k1")

    # a stored value with one byte changed (through the admin API): a terminal 500 that
    # names the key id, not a profile that reads differently
    profile = bytearray(state_values(admin, customer)["profile"])
    profile[-20] ^= 0x01
    edited = httpx.post(
        f"{server.admin_url}/services/Customer/state",
        json={"object_key": customer, "new_state": {"profile": list(profile)}},
        timeout=30,
    )
    assert edited.status_code < 300, edited.text
    eventually(lambda: state_values(admin, customer)["profile"] == bytes(profile), 10, "edit")
    env = {**client_env, "JOURNAL_KEYS": keys("k1")}
    result = run_module("encryptedjournal.client", "get", customer, env=env)
    assert result.returncode == 1
    tampered = (
        "journal value under key id 'k1' failed authentication: its bytes were changed, or it "
        "was encrypted with another key of that id"
    )
    assert result.stderr.strip() == f"error: 500 {tampered}"
    # no retry: the invocation is over, failed, after one attempt to decrypt the value (the
    # codec logs each attempt's failure)
    rows = admin.query(
        "SELECT status, completion_result, completion_failure FROM sys_invocation "
        f"WHERE target = 'Customer/{customer}/get'"
    )
    assert rows == [{"status": "completed", "completion_result": "failure",
                     "completion_failure": f"[500] {tampered}"}]  # fmt: skip
    failed = f"cannot decrypt a journal value: {tampered}"
    eventually(lambda: count_lines(service, failed) >= 1, 10, "the attempt's log line")
    assert count_lines(service, failed) == 1

    # a request with one byte changed: refused, the service's log says why
    body = bytearray(codec("k1").encode(json.dumps(PROFILE).encode()))
    body[-1] ^= 0x01
    other = unique("bob")
    response = ingress.post(f"/Customer/{other}/register", content=bytes(body), headers=ENCRYPTED)
    assert response.status_code == 400
    assert response.json()["message"] == "Failed to decode input using journal value codec"
    assert count_lines(service, "journal value under key id 'k1' failed authentication") >= 2

    # a request under a key the service does not have: refused; the client names its key
    env = {**client_env, "JOURNAL_KEYS": keys("k9")}
    result = run_module("encryptedjournal.client", "register", other, json.dumps(PROFILE), env=env)
    assert result.returncode == 1
    assert "400 Failed to decode input using journal value codec" in result.stderr
    assert "this request was encrypted with key id 'k9'" in result.stderr
    missing = "journal value encrypted with key id 'k9', which is not in JOURNAL_KEYS (k1)"
    eventually(lambda: count_lines(service, missing) == 1, 10, "the service's reason")
    assert state_values(admin, other) == {}


def test_bad_input_is_refused_naming_the_field_and_changes_nothing(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service("encryptedjournal", settings("k1"))
    k1 = codec("k1")
    customer, other = unique("ada"), unique("bob")

    def refused(path: str, body: object, status: int = 400) -> str:
        response = post(ingress, path, body, k1)
        assert response.status_code == status, response.text
        message: str = response.json()["message"]
        return message

    assert refused(f"/Customer/{other}/charge", CHARGE, 404) == f"unknown customer {other}"
    assert post(ingress, f"/Customer/{other}/get").status_code == 404

    register(ingress, customer, "k1")
    before = state_values(admin, customer)
    no_card = {k: v for k, v in PROFILE.items() if k != "cardNumber"}
    assert refused(f"/Customer/{customer}/register", no_card) == "cardNumber: Field required"
    assert refused(f"/Customer/{customer}/register", {**PROFILE, "email": "ada"}).startswith(
        "email: String should match pattern"
    )
    card = {**PROFILE, "cardNumber": "4242 4242"}
    assert refused(f"/Customer/{customer}/register", card).startswith(
        "cardNumber: String should match pattern"
    )
    assert refused(f"/Customer/{customer}/register", {**PROFILE, "cvc": "123"}) == (
        "cvc: Extra inputs are not permitted"
    )
    assert refused(f"/Customer/{customer}/charge", {**CHARGE, "amountCents": 0}) == (
        "amountCents: Input should be greater than 0"
    )
    assert refused(f"/Customer/{customer}/charge", [CHARGE]).startswith("body: Input should be")

    # plaintext: refused by the ingress (JSON is not what the handlers take), or, sent as
    # bytes, by the service (it is not encrypted)
    plain = ingress.post(f"/Customer/{customer}/register", json=PROFILE)
    assert plain.status_code == 400
    assert "does not match 'application/octet-stream'" in plain.json()["message"]
    plain = ingress.post(
        f"/Customer/{customer}/register", content=json.dumps(PROFILE), headers=ENCRYPTED
    )
    assert plain.status_code == 400
    assert plain.json()["message"] == "Failed to decode input using journal value codec"
    assert count_lines(service, "journal value is not encrypted (no valid 'aesgcm:' header)") >= 1

    assert state_values(admin, customer) == before
    assert state_values(admin, other) == {}
    assert count_lines(service, "Charged") == 0


def test_malformed_keys_are_refused_without_showing_the_key() -> None:
    secret = keys("k1").partition(":")[2]
    cases = {
        "k1": "entry 1 is not `id:base64-key`",
        f"k1:{secret},k1:{secret}": "key id 'k1' is listed twice",
        f"k/1:{secret}": "entry 1 is not `id:base64-key`",
        f"k1:{secret},k2:{secret[:-2]}": "the key of 'k2' is not base64",
        f"k1:{secret[:24]}": "the key of 'k1' has 18 bytes, not 32",
        f"k1:{secret},:{secret}": "entry 2 is not `id:base64-key`",
    }
    for setting, problem in cases.items():
        with pytest.raises(KeysError) as error:
            parse_keys(setting)
        assert str(error.value).startswith(problem), setting
        assert secret[:8] not in str(error.value)


def test_the_keys_and_request_identity_are_checked_at_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What the service and the client do at start (both import codec.py; app.py checks
    IDENTITY_KEYS), run in this process."""
    monkeypatch.setenv("JOURNAL_KEYS", "k1:abc")
    with pytest.raises(SystemExit, match=r"^JOURNAL_KEYS: the key of 'k1' is not base64$"):
        from_environment()
    monkeypatch.delenv("JOURNAL_KEYS")
    assert from_environment().newest == "dev"
    assert "JOURNAL_KEYS is not set: using the development key 'dev', which is public" in (
        caplog.text
    )
    # the serving file builds the app anew (without the codec) when IDENTITY_KEYS is set
    monkeypatch.setenv("JOURNAL_KEYS", keys("k1"))
    monkeypatch.setenv("IDENTITY_KEYS", "publickeyv1_x")
    with pytest.raises(SystemExit, match="IDENTITY_KEYS is set"):
        runpy.run_module("encryptedjournal.app")


def test_the_client_reports_an_unreachable_restate(
    client_env: dict[str, str], unused_port_url: str
) -> None:
    env = {**client_env, "RESTATE_INGRESS_URL": unused_port_url, "JOURNAL_KEYS": keys("k1")}
    result = run_module("encryptedjournal.client", "get", "ada", env=env)
    assert result.returncode == 1
    assert f"cannot reach Restate at {unused_port_url}" in result.stderr
