"""Durable RPC, idempotency and concurrency: the seed's walkthrough, crashes, bad input."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from devkit.processes import PatternService, RestateServer
from tests.harness import (
    Admin,
    Ingress,
    StartService,
    count_lines,
    eventually,
    restate_cli,
    run_module,
)


def reserve(ingress: Ingress, product: str, reservation: str) -> bool:
    response = ingress.post(
        f"/ProductService/{product}/reserve", headers={"idempotency-key": reservation}
    )
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    answer = response.json()
    assert isinstance(answer, bool)
    return answer


def handler_runs(service: PatternService, product: str) -> int:
    return count_lines(service, f"Product {product} reserved") + count_lines(
        service, f"Product {product} was already reserved"
    )


def wait_for_runs(service: PatternService, product: str, runs: int) -> None:
    """The service's log reaches its file through a pipe: wait for the lines to land."""
    eventually(
        lambda: handler_runs(service, product) == runs,
        timeout=10,
        message=f"the handler ran {runs} times for {product} (its log lines)",
    )


def test_walkthrough_with_the_client_and_the_cli(
    start_service: StartService,
    client_env: dict[str, str],
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    service = start_service("durablerpc")
    product = unique("product132")

    def client(reservation: str) -> str:
        result = run_module("durablerpc.client", product, reservation, env=client_env)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert client("reservation123") == "true"
    assert client("reservation456") == "false"
    assert client("reservation123") == "true"  # deduplicated: the first answer again

    # the third call did not run the handler: one run reserved, one found it reserved
    wait_for_runs(service, product, 2)
    assert count_lines(service, f"Product {product} reserved") == 1
    assert count_lines(service, f"Product {product} was already reserved") == 1
    log_line = next(line for line in service.log_lines() if f"Product {product} " in line)
    assert "[ProductService/reserve][inv_" in log_line

    assert admin.state("ProductService", product) == {"reserved": "true"}
    cli = restate_cli("kv", "get", "ProductService", product, env=client_env)
    assert "reserved" in cli.stdout
    assert "true" in cli.stdout


def test_concurrent_reservations_of_one_product_reserve_it_once(
    start_service: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    service = start_service("durablerpc")
    product = unique("hot-product")
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda i: reserve(ingress, product, f"r{i}"), range(20)))
    assert answers.count(True) == 1
    assert answers.count(False) == 19
    wait_for_runs(service, product, 20)


def test_concurrent_duplicates_run_the_handler_once(
    start_service: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    service = start_service("durablerpc")
    product = unique("product")
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda _: reserve(ingress, product, "same-reservation"), range(10)))
    assert answers == [True] * 10
    wait_for_runs(service, product, 1)


def test_request_accepted_while_the_service_is_down_runs_when_it_is_back(
    start_service: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    service = start_service("durablerpc")
    product = unique("product")
    service.kill()

    ingress.send(f"/ProductService/{product}/reserve", headers={"idempotency-key": "r1"})
    attach = f"/restate/invocation/ProductService/{product}/reserve/r1"
    assert ingress.get(f"{attach}/output").status_code == 470  # accepted, not done yet

    service.start()
    response = ingress.get(f"{attach}/attach")
    assert response.status_code == 200, response.text
    assert response.json() is True
    wait_for_runs(service, product, 1)


def test_accepted_request_survives_a_server_crash(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    service = start_service("durablerpc")
    product = unique("product")
    service.kill()
    ingress.send(f"/ProductService/{product}/reserve", headers={"idempotency-key": "r1"})

    server.kill()
    server.start()
    service.start()

    def attached() -> httpx.Response | None:
        response = ingress.get(f"/restate/invocation/ProductService/{product}/reserve/r1/attach")
        return response if response.status_code == 200 else None

    response = eventually(
        attached, timeout=60, message="attach to the reservation accepted before the crash"
    )
    assert response.json() is True
    assert reserve(ingress, product, "r2") is False
    wait_for_runs(service, product, 2)


def test_a_body_sent_to_reserve_is_refused_and_reserves_nothing(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    start_service("durablerpc")
    product = unique("product")
    # `reserve` declares no input, so Restate's ingress refuses a body before any handler runs
    response = ingress.post(f"/ProductService/{product}/reserve", json={"unexpected": 1})
    assert response.status_code == 400
    assert "Expected body and content-type to be empty" in response.json()["message"]
    assert admin.state("ProductService", product) == {}


def test_unknown_handler_is_404_and_reserves_nothing(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    start_service("durablerpc")
    product = unique("product")
    response = ingress.post(f"/ProductService/{product}/reserv")
    assert response.status_code == 404
    assert admin.state("ProductService", product) == {}


def test_client_without_arguments_prints_usage_and_exits_2(client_env: dict[str, str]) -> None:
    result = run_module("durablerpc.client", "product132", env=client_env)
    assert result.returncode == 2
    assert "usage: python -m durablerpc.client [-h] productId reservationId" in result.stderr
    assert "required: reservationId" in result.stderr


def test_client_reports_an_unreachable_restate(unused_port_url: str) -> None:
    result = run_module(
        "durablerpc.client",
        "product132",
        "reservation123",
        env={"RESTATE_INGRESS_URL": unused_port_url, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert f"cannot reach Restate at {unused_port_url}" in result.stderr
