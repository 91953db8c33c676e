"""Helpers every pattern test uses: real processes, bounded waits, HTTP with timeouts."""

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from devkit import ROOT, binaries, kafka
from devkit.kafka import TansuBroker
from devkit.processes import PatternService, RestateServer

T = TypeVar("T")

HTTP_TIMEOUT = 30.0


def eventually(check: Callable[[], T | None], timeout: float = 30.0, message: str = "") -> T:
    """Call `check` until it returns a truthy value without raising AssertionError.

    Returns that value; fails the test with `message` (and the last assertion, if any)
    after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error: AssertionError | None = None
    pause = 0.05  # grows to 0.25 s: most checks are HTTP calls that cost the server CPU
    while True:
        try:
            result = check()
            if result:
                return result
        except AssertionError as error:
            last_error = error
        if time.monotonic() > deadline:
            detail = f": {last_error}" if last_error else ""
            raise AssertionError(f"not true after {timeout:g} s: {message}{detail}")
        time.sleep(pause)
        pause = min(pause * 1.5, 0.25)


class Ingress:
    """The server's HTTP ingress, with a timeout on every call."""

    def __init__(self, server: RestateServer) -> None:
        self.server = server

    @property
    def url(self) -> str:
        return self.server.ingress_url

    def post(
        self,
        path: str,
        json: Any = None,
        headers: dict[str, str] | None = None,
        content: bytes | str | None = None,
        timeout: float = HTTP_TIMEOUT,
    ) -> httpx.Response:
        return httpx.post(
            self.url + path, json=json, content=content, headers=headers, timeout=timeout
        )

    def get(self, path: str, timeout: float = HTTP_TIMEOUT) -> httpx.Response:
        return httpx.get(self.url + path, timeout=timeout)

    def send(self, path: str, json: Any = None, headers: dict[str, str] | None = None) -> str:
        """Fire-and-forget `<path>/send`; the invocation id Restate accepted."""
        response = self.post(f"{path}/send", json=json, headers=headers)
        assert response.status_code == 202, f"{response.status_code} {response.text}"
        invocation_id: str = response.json()["invocationId"]
        return invocation_id


class Admin:
    """The server's admin API."""

    def __init__(self, server: RestateServer) -> None:
        self.server = server

    def query(self, sql: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Rows of a SQL query. Right after a server restart the query engine may still
        see the old node and answer 500, or drop the connection, for a few seconds: such
        answers are retried."""

        def attempt() -> httpx.Response | None:
            try:
                response = httpx.post(
                    f"{self.server.admin_url}/query",
                    json={"query": sql},
                    headers={"accept": "application/json"},
                    timeout=HTTP_TIMEOUT,
                )
            except httpx.TransportError as error:
                raise AssertionError(f"no answer: {error!r}") from None
            assert response.status_code == 200, f"{response.status_code} {response.text}"
            return response

        response = eventually(attempt, timeout, message=f"the admin API answers {sql!r}")
        rows: list[dict[str, Any]] = response.json()["rows"]
        return rows

    def state(self, service: str, key: str) -> dict[str, str]:
        """The K/V state of one object: state key -> value as text (JSON for most values)."""
        rows = self.query(
            f"SELECT key, value_utf8 FROM state WHERE service_name = '{service}' "
            f"AND service_key = '{key}'"
        )
        return {row["key"]: row["value_utf8"] for row in rows}

    def journal_count(
        self,
        entry_type: str,
        name: str = "",
        target: str | None = None,
        invoked_by: str | None = None,
    ) -> int:
        """How many journal entries of this type ("Command: Sleep", "Command: Run", ...) and
        name (a step's or timer's name) the invocations of `target` ("Service/handler")
        and/or those called by invocation `invoked_by` hold (completed ones only while the
        server retains their journal)."""
        where = [f"j.entry_type = '{entry_type}'", f"j.name = '{name}'"]
        if target is not None:
            where.append(f"i.target = '{target}'")
        if invoked_by is not None:
            where.append(f"i.invoked_by_id = '{invoked_by}'")
        rows = self.query(
            "SELECT count(*) AS n FROM sys_journal j JOIN sys_invocation i ON j.id = i.id "
            f"WHERE {' AND '.join(where)}"
        )
        return int(rows[0]["n"])


# What restate-server 1.7's ingress answers to a call of an ingress-private handler.
NOT_PUBLIC = {"code": 400, "message": "the invoked service is not public", "source": "ingress"}


def assert_ingress_refuses(ingress: Ingress, path: str, body: Any = None) -> None:
    """A call of `path` ("/Service[/key]/handler") through the ingress is refused, both
    as a request-response call and as a one-way `/send` (also a delayed one)."""
    for suffix in ("", "/send", "/send?delay=1s"):
        response = ingress.post(path + suffix, json=body)
        assert response.status_code == 400, (
            f"{path}{suffix}: {response.status_code} {response.text}"
        )
        assert response.json() == NOT_PUBLIC, f"{path}{suffix}: {response.text}"


def count_lines(service: PatternService, text: str) -> int:
    """How many lines of the service's log contain `text` (across restarts)."""
    return sum(text in line for line in service.log_lines())


def restate_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the installed `restate` CLI (RESTATE_ADMIN_URL in `env` picks the server);
    fails the test if it exits non-zero."""
    result = subprocess.run(
        [str(binaries.find(binaries.CLI)), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"restate {' '.join(args)}: {result.stderr}"
    return result


def run_module(
    module: str, *args: str, env: dict[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run `python -m module args...` from the repository root, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Topic:
    """A fresh topic on the test broker, subscribed to a handler like the seed's curl does."""

    def __init__(self, broker: TansuBroker, server: RestateServer, name: str, sink: str) -> None:
        self.broker = broker
        self.name = name
        broker.create_topic(name)
        kafka.ensure_subscription(server.admin_url, name, sink)

    def produce(self, records: list[tuple[str, str]]) -> None:
        kafka.produce(self.broker.bootstrap, self.name, records)
