"""Serving inside an existing web app: one port for the app's routes and Restate's calls, on
hypercorn (HTTP/2) and uvicorn (HTTP/1.1); crashes and stop signals in the middle of an
invocation; the error of a uvicorn endpoint that Restate calls over HTTP/2; bad input."""

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit import ROOT, binaries, identity
from devkit.processes import PatternService, RestateServer, free_port
from devkit.pytest_restate import attach_log, http
from tests.harness import (
    HTTP_TIMEOUT,
    Admin,
    Ingress,
    StartService,
    count_lines,
    eventually,
    restate_cli,
)

PATH = "/restate"  # where webapp/fastapi_app.py mounts the Restate endpoint
SERVINGS = {"hypercorn": ("webapp.on_hypercorn", False), "uvicorn": ("webapp.on_uvicorn", True)}
HTTP11_ONLY = "server possibly supports only HTTP1.1, consider discovery with --use-http1.1."


def serve(
    start_service: StartService, server: RestateServer, name: str, **settings: str
) -> PatternService:
    """The web app on `name`, registered at its mount path (over HTTP/1.1 for uvicorn)."""
    module, http11 = SERVINGS[name]
    env = {"RESTATE_INGRESS_URL": server.ingress_url, **settings}
    return start_service(module, env, use_http_11=http11, path=PATH)


def app_url(service: PatternService) -> str:
    return f"http://127.0.0.1:{service.port}"


def signup(service: PatternService, body: Any) -> httpx.Response:
    """POST /signup, the web app's own route."""
    return http().post(f"{app_url(service)}/signup", json=body, timeout=HTTP_TIMEOUT)


def user_of(user: str) -> dict[str, str]:
    return {"userId": user, "email": f"{user}@example.com"}


def start_signup(service: PatternService, user: str) -> str:
    """Sign a user up through the web app; the id of the invocation Restate accepted."""
    response = signup(service, user_of(user))
    assert response.status_code == 202, f"{response.status_code} {response.text}"
    assert response.json()["status"] == "Accepted"
    invocation: str = response.json()["invocationId"]
    return invocation


def emails(service: PatternService, kind: str, user: str) -> int:
    """How often the handler logged (inside its step) sending this email to the user."""
    return count_lines(service, f"{kind} email sent to {user}@example.com (user {user})")


def onboarded(user: str) -> str:
    return f"Onboarded {user}: welcome and follow-up emails sent to {user}@example.com"


def outcome(ingress: Ingress, user: str) -> httpx.Response:
    """The onboarding's answer, by its idempotency key (the user id), waiting for it."""

    def attached() -> httpx.Response | None:
        try:
            return ingress.get(f"/restate/invocation/Onboarding/onboard/{user}/attach")
        except httpx.TransportError:
            return None

    return eventually(attached, timeout=60, message=f"the onboarding of {user} finishes")


def timer_journaled(admin: Admin, invocation: str) -> bool:
    rows = admin.query(
        f"SELECT count(*) AS n FROM sys_journal WHERE id = '{invocation}' "
        "AND entry_type = 'Command: Sleep'"
    )
    return int(rows[0]["n"]) == 1


def invocation_row(admin: Admin, invocation: str) -> dict[str, Any]:
    rows = admin.query(
        "SELECT status, last_failure, last_failure_error_code FROM sys_invocation "
        f"WHERE id = '{invocation}'"
    )
    assert len(rows) == 1, rows
    return rows[0]


def each_email_once(service: PatternService, user: str) -> None:
    eventually(
        lambda: emails(service, "Follow-up", user) == 1,
        timeout=10,
        message=f"the follow-up email to {user} is logged",
    )
    assert emails(service, "Welcome", user) == 1
    assert emails(service, "Follow-up", user) == 1


def exits_cleanly(service: PatternService) -> None:
    eventually(lambda: not service.running(), timeout=15, message=f"{service.name} exits")
    assert service.exit_code() == 0, f"exit code {service.exit_code()}"


@pytest.mark.parametrize("name", SERVINGS)
def test_the_apps_routes_and_the_restate_handlers_answer_on_one_port(
    name: str,
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    service = serve(start_service, server, name, FOLLOW_UP_DELAY_SECONDS="0.2")
    home = http().get(f"{app_url(service)}/", timeout=HTTP_TIMEOUT)
    assert home.status_code == 200
    assert home.json() == {"app": "webapp", "signup": "POST /signup", "restate": PATH}

    # the route hands the work to Restate, which calls the handler on the same port
    user = unique("alice")
    invocation = start_signup(service, user)
    again = signup(service, user_of(user))  # the user id is the idempotency key
    assert again.status_code == 202
    assert again.json() == {"invocationId": invocation, "status": "PreviouslyAccepted"}
    response = outcome(ingress, user)
    assert response.status_code == 200, response.text
    assert response.json() == onboarded(user)
    each_email_once(service, user)
    line = next(line for line in service.log_lines() if f"Welcome email sent to {user}@" in line)
    assert f"[Onboarding/onboard][{invocation}] webapp.app - " in line

    # the handler is Restate's like any other: callable through the ingress alone
    bob = unique("bob")
    direct = ingress.post("/Onboarding/onboard", json=user_of(bob))
    assert direct.status_code == 200, direct.text
    assert direct.json() == onboarded(bob)
    each_email_once(service, bob)

    # one deployment: the app's port and the mount path, HTTP/2 streaming or HTTP/1.1
    listed = http().get(f"{server.admin_url}/deployments", timeout=HTTP_TIMEOUT).json()
    ours = [d for d in listed["deployments"] if d["uri"] == service.url]
    assert service.url == f"{app_url(service)}{PATH}"
    assert len(ours) == 1, listed
    expected = ("RequestResponse", "HTTP/1.1") if name == "uvicorn" else ("BidiStream", "HTTP/2.0")
    assert (ours[0]["protocol_type"], ours[0]["http_version"]) == expected

    assert service.request_stop()  # Ctrl-C
    exits_cleanly(service)


@pytest.mark.parametrize("name", SERVINGS)
def test_kill_9_or_sigterm_mid_invocation_loses_nothing_and_repeats_nothing(
    name: str,
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    """Between the welcome and the follow-up (a durable timer) the process dies: Restate
    retries while it is down, and the invocation completes once it is back. Told to stop
    (SIGTERM) at the same point, the process ends by itself; the invocation completes in
    its 3 s of grace or after the restart. Each email is sent once."""
    service = serve(start_service, server, name, FOLLOW_UP_DELAY_SECONDS="1.5")
    crashed = unique("carol")
    invocation = start_signup(service, crashed)
    # the timer in the journal: the welcome step's result is stored (killed between its log
    # line and that, the step would rightly run again, and the email go twice)
    eventually(lambda: timer_journaled(admin, invocation), message="the follow-up timer")
    assert emails(service, "Welcome", crashed) == 1
    service.kill()
    # Restate keeps trying to go on with it (at once on HTTP/2, whose stream broke; when
    # the timer fires on HTTP/1.1, where the invocation was suspended meanwhile)
    eventually(
        lambda: invocation_row(admin, invocation)["status"] == "backing-off",
        timeout=30,
        message="Restate retries the invocation while the process is down",
    )
    service.start()
    response = outcome(ingress, crashed)
    assert response.status_code == 200, response.text
    assert response.json() == onboarded(crashed)
    each_email_once(service, crashed)

    # SIGTERM at the same point (the SDK takes SIGTERM over at its first request: the
    # serving modules hook into it, else uvicorn would not stop); on HTTP/2 the timer may
    # fire on the open stream within the grace period, and the follow-up is sent then
    stopped = unique("dave")
    stopping = start_signup(service, stopped)
    eventually(lambda: timer_journaled(admin, stopping), message="the follow-up timer")
    assert emails(service, "Welcome", stopped) == 1
    assert service.pid is not None
    os.kill(service.pid, signal.SIGTERM)
    exits_cleanly(service)
    service.start()
    response = outcome(ingress, stopped)
    assert response.status_code == 200, response.text
    assert response.json() == onboarded(stopped)
    each_email_once(service, stopped)


def delivered(pid: int, signum: int) -> bool:
    """The kernel has delivered the signal: it is pending for no thread of the process (its
    C-level handler has run; Python runs the Python-level one on the main thread before
    the event loop handles anything else)."""
    bit = 1 << (signum - 1)
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        for line in status.read_text().splitlines():
            if line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split()[1], 16) & bit:
                return False
    return True


def test_a_plain_uvicorn_run_no_longer_stops_on_sigterm_once_restate_has_called_it(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The README's reason for on_uvicorn.py: the SDK's app takes SIGTERM over at its first
    request (the health check that tells the service is up), so a plain `uvicorn.run(web)`
    (tests/webapp/plain_uvicorn.py) is not told to exit by SIGTERM. No Restate server needed."""
    plain = PatternService(
        "tests.webapp.plain_uvicorn", free_port(), tmp_path / "plain_uvicorn.log",
        cwd=ROOT, move_if_taken=True, path=PATH,
    )  # fmt: skip
    attach_log(request, plain)
    plain.start()  # ready once the SDK's health check at /restate/health answered
    try:

        def probe() -> Any:
            response = http().get(f"{app_url(plain)}/test/sigterm", timeout=HTTP_TIMEOUT)
            assert response.status_code == 200, response.text
            return response.json()

        # the event loop's handler (uvloop's, where installed; the SDK's hook behind it), no
        # longer uvicorn's Server.handle_exit
        before = probe()
        assert before["handler"] != "Server.handle_exit", before
        assert before["shouldExit"] is False
        assert plain.pid is not None
        os.kill(plain.pid, signal.SIGTERM)
        eventually(lambda: delivered(plain.pid or 0, signal.SIGTERM), 10, "SIGTERM delivered")
        assert probe() == before  # uvicorn not told to exit: it would serve on and on
        assert plain.running()
    finally:
        plain.kill()


def test_uvicorn_called_over_http2_fails_with_a_clear_error_until_registered_with_http11(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """The app was registered while hypercorn served it, then moved to uvicorn on the same
    port. What the user sees: the invocation's status (and the server's log) says why; the
    CLI refuses a registration without `--use-http1.1`, with the same words; uvicorn logs
    each HTTP/2 attempt as an invalid request; with the flag the invocation completes."""
    hypercorn = serve(start_service, server, "hypercorn", FOLLOW_UP_DELAY_SECONDS="0.2")
    hypercorn.stop()
    settings = {"RESTATE_INGRESS_URL": server.ingress_url, "FOLLOW_UP_DELAY_SECONDS": "0.2"}
    uvicorn = PatternService(
        "webapp.on_uvicorn", hypercorn.port, tmp_path / "uvicorn.log", settings, cwd=ROOT, path=PATH
    )
    attach_log(request, uvicorn)
    request.addfinalizer(uvicorn.stop)
    uvicorn.start()
    url = uvicorn.url
    assert url == hypercorn.url

    user = unique("erin")
    invocation = start_signup(uvicorn, user)

    def failing() -> dict[str, Any] | None:
        row = invocation_row(admin, invocation)
        return row if row["status"] == "backing-off" and row["last_failure"] else None

    row = eventually(failing, timeout=30, message="the invocation fails and is retried")
    assert row["last_failure"] == f"[500 Internal] error when calling '{url}': {HTTP11_ONLY}"
    assert row["last_failure_error_code"] == "RT0010"
    described = restate_cli("invocations", "describe", invocation, env=client_env).stdout
    assert "backing-off" in described
    assert HTTP11_ONLY in described
    server_lines = [line for line in server.log_lines() if invocation in line]
    assert any(
        " WARN " in line and HTTP11_ONLY in line and "RT0010" in line for line in server_lines
    )
    assert count_lines(uvicorn, "WARNING uvicorn.error - Invalid HTTP request received.") >= 1
    assert emails(uvicorn, "Welcome", user) == 0

    # registering it again without the flag is refused, and changes nothing
    cli = str(binaries.find(binaries.CLI))
    refused = subprocess.run(
        [cli, "-y", "deployments", "register", "--force", url],
        env=client_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"META0014 [META0014] [META0014] error when calling '{url}': {HTTP11_ONLY}" in (
        refused.stderr
    )
    assert "Http status code 500 Internal Server Error" in refused.stderr
    assert any("META0014" in line and HTTP11_ONLY in line for line in server.log_lines())
    by_api = http().post(
        f"{server.admin_url}/deployments", json={"uri": url, "force": True}, timeout=HTTP_TIMEOUT
    )
    assert by_api.status_code == 500
    assert by_api.json()["restate_code"] == "META0014"
    assert HTTP11_ONLY in by_api.json()["message"]
    listed = http().get(f"{server.admin_url}/deployments", timeout=HTTP_TIMEOUT).json()
    assert [d["protocol_type"] for d in listed["deployments"] if d["uri"] == url] == ["BidiStream"]
    assert invocation_row(admin, invocation)["status"] == "backing-off"

    # with the flag: request/response over HTTP/1.1, and the invocation goes on
    restate_cli("-y", "deployments", "register", "--force", "--use-http1.1", url, env=client_env)
    response = outcome(ingress, user)
    assert response.status_code == 200, response.text
    assert response.json() == onboarded(user)
    each_email_once(uvicorn, user)


def test_bad_signups_are_refused_with_400_naming_the_field_and_reach_no_handler(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    service = serve(start_service, server, "hypercorn")
    user = unique("frank")
    cases = {
        "email": {"userId": user},
        "userId": {"email": f"{user}@example.com"},
        "email: String should match pattern": {"userId": user, "email": "not an email"},
        "userId: String should have at least 1 character": {"userId": "", "email": "a@b.c"},
        "nickname: Extra inputs are not permitted": {**user_of(user), "nickname": "f"},
    }
    for names, body in cases.items():
        for answer in (signup(service, body), ingress.post("/Onboarding/onboard", json=body)):
            assert answer.status_code == 400, f"{body}: {answer.status_code} {answer.text}"
            assert answer.json()["code"] == 400
            assert answer.json()["message"].startswith("Invalid request: ")
            assert names in answer.json()["message"], answer.text
    not_json = http().post(
        f"{app_url(service)}/signup",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=HTTP_TIMEOUT,
    )
    assert not_json.status_code == 400, not_json.text
    assert not_json.json()["message"] == "Invalid request: body: JSON decode error"

    # the route sent nothing to Restate; the handler refused before its first step
    sent = admin.query(
        f"SELECT count(*) AS n FROM sys_invocation WHERE idempotency_key = '{user}' "
        "AND target = 'Onboarding/onboard'"
    )
    assert sent[0]["n"] == 0
    assert emails(service, "Welcome", user) == 0
    assert http().get(f"{app_url(service)}/nope", timeout=HTTP_TIMEOUT).status_code == 404


def test_the_app_alone_serves_its_routes_and_with_identity_keys_only_signed_restate_calls(
    request: pytest.FixtureRequest, tmp_path: Path, unused_port_url: str
) -> None:
    """The web app with no Restate to talk to: its routes answer, and `/signup` says that
    Restate cannot be reached. Its port is public where the app is: IDENTITY_KEYS closes the
    mounted endpoint to anyone but a Restate server holding the private key, while the
    app's routes (and the health check) stay open."""
    keys = identity.generate(tmp_path / "identity")
    settings = {**keys.service_settings(), "RESTATE_INGRESS_URL": unused_port_url}
    service = PatternService(
        "webapp.on_hypercorn", free_port(), tmp_path / "webapp.log", settings, cwd=ROOT, path=PATH
    )
    attach_log(request, service)
    request.addfinalizer(service.stop)
    service.start()  # waits for <path>/health
    assert http().get(f"{app_url(service)}/", timeout=HTTP_TIMEOUT).status_code == 200
    refused = signup(service, user_of("grace"))
    assert refused.status_code == 503, refused.text
    assert refused.json()["message"].startswith(f"cannot reach Restate at {unused_port_url}: ")

    discover = {"accept": "application/vnd.restate.endpointmanifest.v3+json"}
    unsigned = http().get(f"{service.url}/discover", headers=discover, timeout=HTTP_TIMEOUT)
    assert unsigned.status_code == 401
