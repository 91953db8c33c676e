"""Concurrent async tasks: the seed's walkthrough, the timeout, crashes, bad input."""

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from devkit.processes import PatternService, RestateServer
from tests.harness import HTTP_TIMEOUT, Admin, Ingress, StartService, count_lines, eventually

SEED_REQUEST = {"email": "me@mail.com", "userId": "luke"}
VERIFY_LINE = re.compile(r"Verify by clicking: curl (\S+) --json 'true'$")


def settings(server: RestateServer, **values: str) -> dict[str, str]:
    """The pattern's settings; the link in the emails points at the test server."""
    return {"RESTATE_INGRESS_URL": server.ingress_url, **values}


def start(ingress: Ingress) -> str:
    """Start the seed's verification (as its curl does, but without waiting); the invocation id."""
    return ingress.send("/EmailVerification/verifyEmail", json=SEED_REQUEST)


def links(service: PatternService, invocation: str) -> list[str]:
    """The verification links this invocation logged (one per email and reminder)."""
    return [
        match.group(1)
        for line in service.log_lines()
        if invocation in line and (match := VERIFY_LINE.search(line))
    ]


def logged(service: PatternService, invocation: str, message: str) -> int:
    """How many lines this invocation logged that end with `message`."""
    return sum(invocation in line and line.endswith(message) for line in service.log_lines())


def reminders(service: PatternService, invocation: str) -> int:
    return logged(service, invocation, "Sending reminder to me@mail.com")


def verification_link(service: PatternService, invocation: str) -> str:
    def first_link() -> str | None:
        found = links(service, invocation)
        return found[0] if found else None

    return eventually(first_link, message="the verification email")


def click(link: str, answer: str = "true") -> None:
    """What `curl <link> --json 'true'` does."""
    response = httpx.post(
        link,
        content=answer,
        headers={"content-type": "application/json", "accept": "application/json"},
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code < 300, f"{response.status_code} {response.text}"


def outcome(ingress: Ingress, invocation: str) -> httpx.Response:
    """The invocation's answer, waiting for it (and for the server, if it is restarting)."""

    def attached() -> httpx.Response | None:
        try:
            response = ingress.get(f"/restate/invocation/{invocation}/attach")
        except httpx.TransportError:
            return None
        return None if response.status_code in (502, 503, 504) else response

    return eventually(attached, timeout=60, message="the verification finishes")


def journaled_reminders(admin: Admin, invocation: str) -> int:
    rows = admin.query(
        "SELECT count(*) AS n FROM sys_journal WHERE id = "
        f"'{invocation}' AND entry_type = 'Command: Run' AND name = 'send reminder'"
    )
    count: int = rows[0]["n"]
    return count


def assert_each_email_sent_once(
    service: PatternService, admin: Admin, invocation: str, link: str
) -> int:
    """One verification email, one reminder per reminder step in the journal, one link.

    Returns the number of reminders. Waits a little: the service's output reaches its log
    file through a pipe, possibly after the answer reached the test.
    """

    def check() -> int:
        sent = reminders(service, invocation)
        assert logged(service, invocation, "Sending email to me@mail.com") == 1
        assert sent == journaled_reminders(admin, invocation)
        assert links(service, invocation) == [link] * (1 + sent)
        return sent + 1  # truthy even when no reminder was sent

    return eventually(check, timeout=10, message="each email logged once") - 1


def test_walkthrough_reminders_until_the_user_clicks_the_link(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
) -> None:
    service = start_service("concurrenttasks", settings(server, REMINDER_INTERVAL_SECONDS="0.5"))
    invocation = start(ingress)
    link = verification_link(service, invocation)
    assert link.startswith(f"{server.ingress_url}/restate/awakeables/sign_")
    assert link.endswith("/resolve")
    first = next(line for line in service.log_lines() if "Sending email to me@mail.com" in line)
    assert f"[EmailVerification/verifyEmail][{invocation}]" in first

    eventually(lambda: reminders(service, invocation) >= 3, message="three reminders")
    click(link)

    response = outcome(ingress, invocation)
    assert response.status_code == 200, response.text
    assert response.json() == "Email verified"
    assert assert_each_email_sent_once(service, admin, invocation, link) >= 3


def test_the_seed_request_verbatim_answers_when_the_link_is_clicked(
    start_service: StartService, server: RestateServer, ingress: Ingress
) -> None:
    """The seed's curl waits for the answer: here in a thread, clicked meanwhile."""
    service = start_service("concurrenttasks", settings(server))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(
            ingress.post,
            "/EmailVerification/verifyEmail",
            content='{\n  "email": "me@mail.com",\n  "userId": "luke"\n}',
            headers={"content-type": "application/json"},
            timeout=60,
        )
        link = eventually(
            lambda: next(
                (m.group(1) for line in service.log_lines() if (m := VERIFY_LINE.search(line))),
                None,
            ),
            message="the verification email",
        )
        click(link)
        response = pending.result()
    assert response.status_code == 200, response.text
    assert response.json() == "Email verified"


def test_clicking_false_rejects_the_email(
    start_service: StartService, server: RestateServer, ingress: Ingress, admin: Admin
) -> None:
    service = start_service("concurrenttasks", settings(server))  # reminders every 10 s
    invocation = start(ingress)
    link = verification_link(service, invocation)
    click(link, "false")

    response = outcome(ingress, invocation)
    assert response.status_code == 200, response.text
    assert response.json() == "Email rejected"
    assert assert_each_email_sent_once(service, admin, invocation, link) == 0


def test_an_answer_other_than_true_or_false_ends_the_verification_with_400(
    start_service: StartService, server: RestateServer, ingress: Ingress
) -> None:
    service = start_service("concurrenttasks", settings(server))
    invocation = start(ingress)
    click(verification_link(service, invocation), '"yes"')

    response = outcome(ingress, invocation)
    assert response.status_code == 400, response.text
    assert response.json()["message"] == (
        "Invalid verification answer '\"yes\"': expected true or false"
    )


def test_without_an_answer_the_verification_times_out(
    start_service: StartService, server: RestateServer, ingress: Ingress, admin: Admin
) -> None:
    service = start_service(
        "concurrenttasks",
        settings(server, REMINDER_INTERVAL_SECONDS="1", VERIFICATION_TIMEOUT_SECONDS="3.5"),
    )
    invocation = start(ingress)
    link = verification_link(service, invocation)

    response = outcome(ingress, invocation)
    assert response.status_code == 410, response.text
    assert response.json()["message"] == "Verification timed out"
    # Each reminder waits a full interval after the previous one, so at most 3 fit before
    # the deadline (fewer on a slow machine); none is sent after it.
    assert assert_each_email_sent_once(service, admin, invocation, link) <= 3


def waiting_for_the_next_reminder(admin: Admin, invocation: str) -> bool:
    """A reminder was sent and recorded, and the invocation now waits on the next timer."""
    entries = admin.query(
        f"SELECT entry_type, name FROM sys_journal WHERE id = '{invocation}' ORDER BY index"
    )
    return journaled_reminders(admin, invocation) >= 1 and (
        entries[-1]["entry_type"] == "Command: Sleep" and entries[-1]["name"] == "reminder timer"
    )


def crash_while_waiting(
    crash: Callable[[], None],
    service: PatternService,
    ingress: Ingress,
    admin: Admin,
) -> None:
    """Kill something while the verification waits; the link sent before still works.

    The crash lands between two steps, while the invocation waits on its timers and the
    awakeable. (A crash in the middle of a step, after its side effect but before Restate
    recorded its result, runs that step again: at-least-once, as for any durable step.)
    """
    invocation = start(ingress)
    link = verification_link(service, invocation)
    eventually(
        lambda: waiting_for_the_next_reminder(admin, invocation),
        message="a first reminder, recorded in the journal",
    )

    crash()
    before = reminders(service, invocation)
    eventually(
        lambda: reminders(service, invocation) > before, message="a reminder after the restart"
    )
    click(link)  # the awakeable created before the crash

    response = outcome(ingress, invocation)
    assert response.status_code == 200, response.text
    assert response.json() == "Email verified"
    assert assert_each_email_sent_once(service, admin, invocation, link) >= 2


def test_a_service_crash_while_waiting_loses_nothing_and_repeats_nothing(
    start_service: StartService, server: RestateServer, ingress: Ingress, admin: Admin
) -> None:
    service = start_service("concurrenttasks", settings(server, REMINDER_INTERVAL_SECONDS="2"))

    def crash() -> None:
        service.kill()
        service.start()

    crash_while_waiting(crash, service, ingress, admin)


def test_a_server_crash_while_waiting_loses_nothing_and_repeats_nothing(
    start_service: StartService, server: RestateServer, ingress: Ingress, admin: Admin
) -> None:
    service = start_service("concurrenttasks", settings(server, REMINDER_INTERVAL_SECONDS="2"))

    def crash() -> None:
        server.kill()
        server.start()

    crash_while_waiting(crash, service, ingress, admin)


BAD_INPUT = [
    ({"userId": "luke"}, "email: Field required"),
    ({"email": "me@mail.com"}, "userId: Field required"),
    ({"email": "me@mail.com", "userId": ""}, "userId: String should have at least 1"),
    ({"email": "not-an-email", "userId": "luke"}, "email: String should match pattern"),
    ({"email": 42, "userId": "luke"}, "email: Input should be a valid string"),
]


def test_bad_input_is_400_naming_the_field_and_sends_nothing(
    start_service: StartService, server: RestateServer, ingress: Ingress
) -> None:
    service = start_service("concurrenttasks", settings(server))
    for body, problem in BAD_INPUT:
        response = ingress.post("/EmailVerification/verifyEmail", json=body)
        assert response.status_code == 400, f"{body}: {response.status_code} {response.text}"
        assert problem in response.json()["message"]
    # the README's example
    response = ingress.post("/EmailVerification/verifyEmail", json={"email": "not-an-email"})
    assert response.status_code == 400, response.text
    assert response.json()["message"] == (
        "Invalid request: email: String should match pattern '^[^@\\s]+@[^@\\s]+$'; "
        "userId: Field required"
    )
    response = ingress.post(
        "/EmailVerification/verifyEmail",
        content="me@mail.com",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert "body: Invalid JSON" in response.json()["message"]
    assert count_lines(service, "Sending email") == 0
