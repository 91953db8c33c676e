"""The README's "Test your own service": a user's test of their own handler, written
against the harness plugin's fixtures only (devkit/pytest_restate.py), no Docker."""

from collections.abc import Callable

import pytest

from devkit.pytest_restate import Ingress, RestateServer, StartService


def test_greet_counts_per_name(
    start_service: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    start_service("tests.example.greeter")  # python -m tests.example.greeter, registered
    name = unique("Ann")
    first = ingress.post(f"/Greeter/{name}/greet", json="Hello")
    assert first.json() == f"Hello {name}, greeting number 1"
    again = ingress.post(f"/Greeter/{name}/greet", json="Hi")
    assert again.json() == f"Hi {name}, greeting number 2"


@pytest.mark.kills_server  # a server of its own, which the test may kill
def test_the_count_survives_a_crash_of_server_and_service(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    service = start_service("tests.example.greeter")
    name = unique("Bob")
    assert ingress.post(f"/Greeter/{name}/greet", json="Hello").status_code == 200
    server.kill()  # kill -9, then restart on the same ports and state
    service.kill()
    server.start()
    service.start()
    answer = ingress.post(f"/Greeter/{name}/greet", json="Hello")
    assert answer.json() == f"Hello {name}, greeting number 2"
