"""Helpers of the pattern tests: those of the harness plugin (`devkit/pytest_restate.py`:
bounded waits, the ingress and admin API with timeouts), and the collection's own."""

import subprocess
import sys
from typing import Any

import httpx

from devkit import ROOT, binaries, kafka
from devkit.kafka import TansuBroker
from devkit.processes import PatternService, RestateServer
from devkit.pytest_restate import (
    HTTP_TIMEOUT,
    Admin,
    Ingress,
    StartService,
    eventually,
)

__all__ = ["HTTP_TIMEOUT", "NOT_PUBLIC", "Admin", "Ingress", "StartService", "Topic",
           "assert_ingress_refuses", "count_lines", "eventually", "logged", "restate_cli",
           "run_module"]  # fmt: skip


# What restate-server 1.7's ingress answers to a call of an ingress-private handler.
NOT_PUBLIC = {"code": 400, "message": "the invoked service is not public", "source": "ingress"}


def assert_ingress_refuses(ingress: Ingress, path: str, body: Any = None) -> None:
    """A call of `path` ("/Service[/key]/handler") through the ingress is refused, both
    as a request-response call and as a one-way `/send` (also a delayed one)."""
    for suffix in ("", "/send", "/send?delay=1s"):
        try:
            response = ingress.post(path + suffix, json=body)
        except httpx.RemoteProtocolError:
            # a kept-alive connection closed as it was reused ("Server disconnected without
            # sending a response": seen once in a full run); a refused call may be sent again
            response = ingress.post(path + suffix, json=body)
        assert response.status_code == 400, (
            f"{path}{suffix}: {response.status_code} {response.text}"
        )
        assert response.json() == NOT_PUBLIC, f"{path}{suffix}: {response.text}"


def count_lines(service: PatternService, text: str) -> int:
    """How many lines of the service's log contain `text` (across restarts)."""
    return sum(text in line for line in service.log_lines())


def logged(service: PatternService, text: str, times: int = 1) -> None:
    """`text` is in the service's log exactly `times` times. The log reaches its file
    through a pipe: wait for the lines to land, then check there are no more."""
    eventually(
        lambda: count_lines(service, text) >= times,
        timeout=15,
        message=f"{text!r} logged {times} times",
    )
    assert count_lines(service, text) == times, text


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
