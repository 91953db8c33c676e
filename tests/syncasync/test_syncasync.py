"""Convert sync tasks to async: fast and slow uploads, one upload per id, crashes, bad input."""

from collections.abc import Callable

from devkit.processes import PatternService, RestateServer
from syncasync.app import upload_is_slow
from tests.harness import Admin, Ingress, StartService, eventually, run_module

FAST = {"FAST_UPLOAD_SECONDS": "0.1"}


def user_id(unique: Callable[[str], str], slow: bool) -> str:
    """A fresh user id whose upload is slow (or fast), by the pattern's own rule."""
    while True:
        candidate = unique("someone")
        if upload_is_slow(candidate) == slow:
            return candidate


class Workflow:
    """One user's DataUploadService workflow, seen through the service log and admin API."""

    def __init__(self, service: PatternService, admin: Admin, user: str) -> None:
        self.service, self.admin, self.user = service, admin, user

    def ids(self, handler: str) -> list[str]:
        rows = self.admin.query(
            "SELECT id FROM sys_invocation WHERE target_service_name = 'DataUploadService' "
            f"AND target_service_key = '{self.user}' AND target_handler_name = '{handler}'"
        )
        return [row["id"] for row in rows]

    def lines(self, handler: str, text: str) -> list[str]:
        tags = [f"[DataUploadService/{handler}][{id_}]" for id_ in self.ids(handler)]
        return [
            line
            for line in self.service.log_lines()
            if text in line and any(tag in line for tag in tags)
        ]

    def bucket_url(self) -> str:
        """The URL of the one bucket created for this workflow."""
        created = self.lines("run", "Creating bucket with URL ")
        assert len(created) == 1, created
        return created[0].rsplit(" ", 1)[-1]

    def uploads(self) -> list[str]:
        return self.lines("run", "Uploading data to target ")

    def emails(self) -> list[str]:
        return self.lines("resultAsEmail", "Sending email to ")


def client(user: str, env: dict[str, str], wait: float) -> list[str]:
    """Run the UploadClient; its log lines without time stamp and level."""
    result = run_module(
        "syncasync.client", user, env=dict(env, UPLOAD_CLIENT_TIMEOUT_SECONDS=str(wait))
    )
    assert result.returncode == 0, result.stderr
    return [line.split(" INFO  ", 1)[1] for line in result.stdout.splitlines()]


def test_fast_upload_answers_the_client_with_the_url(
    start_service: StartService,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    service = start_service("syncasync", settings=FAST)
    user = user_id(unique, slow=False)
    lines = client(user, client_env, wait=20)

    workflow = Workflow(service, admin, user)
    url = workflow.bucket_url()
    assert url.startswith("https://s3-eu-central-1.amazonaws.com/")
    assert lines == [
        f"syncasync.client - Uploading data for user {user}",
        f"syncasync.client - Fast upload... URL was {url}",
    ]
    [upload] = workflow.uploads()
    assert upload.endswith(f"syncasync.app - Uploading data to target {url}. ETA: 100 ms")
    assert workflow.emails() == []


def test_slow_upload_mails_the_link_once_when_it_is_done(
    start_service: StartService,
    admin: Admin,
    ingress: Ingress,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    service = start_service("syncasync", settings={"SLOW_UPLOAD_SECONDS": "4"})
    user = user_id(unique, slow=True)
    assert client(user, client_env, wait=1) == [
        f"syncasync.client - Uploading data for user {user}",
        "syncasync.client - Slow upload... Mail the link later",
    ]
    workflow = Workflow(service, admin, user)
    emails = eventually(workflow.emails, timeout=60, message="the e-mail with the link is sent")
    url = workflow.bucket_url()
    assert len(emails) == 1
    assert emails[0].endswith(f"Sending email to {user}@example.com with url {url}")
    assert "ETA: 4000 ms" in workflow.uploads()[0]

    output = ingress.get(f"/restate/workflow/DataUploadService/{user}/output")
    assert output.status_code == 200, output.text
    assert output.json() == url


def test_one_upload_per_user_id_and_one_email_per_address(
    start_service: StartService,
    admin: Admin,
    ingress: Ingress,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    service = start_service("syncasync", settings={"SLOW_UPLOAD_SECONDS": "8"})
    user = user_id(unique, slow=True)
    slow = "syncasync.client - Slow upload... Mail the link later"
    assert client(user, client_env, wait=0.5)[-1] == slow
    assert client(user, client_env, wait=0.5)[-1] == slow  # the same upload, still running

    workflow = Workflow(service, admin, user)
    eventually(workflow.emails, timeout=60, message="the e-mail with the link is sent")
    url = workflow.bucket_url()
    # done now: the client gets the first upload's URL; no second bucket, upload or e-mail
    assert (
        client(user, client_env, wait=20)[-1] == f"syncasync.client - Fast upload... URL was {url}"
    )
    again = ingress.post(f"/DataUploadService/{user}/run")
    assert again.status_code == 409, again.text
    assert len(workflow.uploads()) == 1
    assert len(workflow.emails()) == 1


def test_crash_during_the_upload_creates_one_bucket_and_mails_it_once(
    start_service: StartService,
    server: RestateServer,
    admin: Admin,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    service = start_service("syncasync", settings={"SLOW_UPLOAD_SECONDS": "6"})
    user = user_id(unique, slow=True)
    workflow = Workflow(service, admin, user)
    ingress.post(f"/DataUploadService/{user}/run/send").raise_for_status()
    ingress.post(
        f"/DataUploadService/{user}/resultAsEmail/send", json=f"{user}@example.com"
    ).raise_for_status()
    eventually(workflow.uploads, timeout=60, message="the upload has started")

    service.kill()  # in the middle of the upload step
    server.kill()  # with resultAsEmail waiting on the promise
    server.start()
    service.start()

    def finished() -> str | None:
        response = ingress.get(f"/restate/workflow/DataUploadService/{user}/attach")
        return str(response.json()) if response.status_code == 200 else None

    url = eventually(finished, timeout=90, message="the upload completes after the crash")
    emails = eventually(workflow.emails, timeout=60, message="the e-mail is sent after the crash")
    assert url == workflow.bucket_url()  # the bucket was created once, before the crash
    # the interrupted upload step ran again from its start: the upload completed
    assert len(workflow.uploads()) == 2
    assert all(url in line for line in workflow.uploads())
    assert len(emails) == 1
    assert emails[0].endswith(f"with url {url}")


def test_bad_email_is_refused_with_400_and_sends_nothing(
    start_service: StartService,
    admin: Admin,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    service = start_service("syncasync", settings=FAST)
    user = user_id(unique, slow=False)
    for body in ['"someone21"', "42", '{"email": "a@b.c"}', "not json"]:
        response = ingress.post(
            f"/DataUploadService/{user}/resultAsEmail",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 400, response.text
        assert response.json()["message"].startswith("email: expected a JSON string")
    empty = ingress.post(
        f"/DataUploadService/{user}/resultAsEmail", headers={"content-type": "application/json"}
    )
    assert empty.status_code == 400
    # `run` takes no input: the ingress refuses a body before any handler runs
    with_body = ingress.post(f"/DataUploadService/{user}/run", json={"userId": user})
    assert with_body.status_code == 400
    assert Workflow(service, admin, user).ids("run") == []


def test_client_reports_an_unreachable_restate(unused_port_url: str) -> None:
    result = run_module(
        "syncasync.client",
        "someone21",
        env={"RESTATE_INGRESS_URL": unused_port_url, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert f"cannot reach Restate at {unused_port_url}" in result.stderr
    assert "syncasync.client - Uploading data for user someone21" in result.stdout
