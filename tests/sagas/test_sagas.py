"""Sagas: the seed's walkthrough, the happy path, transient failures, crashes, bad input."""

import copy
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from devkit.processes import PatternService, RestateServer
from tests.harness import Ingress, StartService, count_lines, eventually

SEED_REQUEST: dict[str, Any] = {
    "customerId": "12345",
    "flight": {"flightId": "12345", "passengerName": "John Doe"},
    "car": {"pickupLocation": "Airport", "rentalDate": "2024-12-16"},
    "hotel": {"arrivalDate": "2024-12-16", "departureDate": "2024-12-20"},
}
FULLY_BOOKED = "[👻 SIMULATED] This hotel is fully booked!"


def booking(customer_id: str) -> dict[str, Any]:
    request = copy.deepcopy(SEED_REQUEST)
    request["customerId"] = customer_id
    return request


def created(customer: str) -> list[str]:
    return [
        f"Flight reservation created for customer: {customer}",
        f"Car rental reservation created for customer: {customer}",
        f"Hotel reservation created for customer: {customer}",
    ]


def cancelled(customer: str) -> list[str]:
    return [
        f"Hotel reservation cancelled for customer id: {customer}",
        f"Car rental reservation cancelled with id: {customer}",
        f"Flight reservation cancelled for customer id: {customer}",
    ]


def saga_lines(service: PatternService, customer: str) -> list[str]:
    """The customer's booking and cancellation messages, in the order they were logged."""
    messages = [*created(customer), *cancelled(customer)]
    return [
        next(message for message in messages if line.endswith(message))
        for line in service.log_lines()
        if any(line.endswith(message) for message in messages)
    ]


def assert_logged(service: PatternService, customer: str, expected: list[str]) -> None:
    """The service logged exactly these booking messages for the customer, in this order.

    Waits a little: the service's output reaches its log file through a pipe, possibly
    after the answer reached the test.
    """

    def check() -> bool:
        assert saga_lines(service, customer) == expected
        return True

    eventually(check, timeout=10, message=f"the service logs {expected}")


def assert_compensated_once(service: PatternService, customer: str) -> None:
    """Flight and car booked once, hotel refused, then hotel, car, flight cancelled once."""
    booked_flight, booked_car, _ = created(customer)
    assert_logged(service, customer, [booked_flight, booked_car, *cancelled(customer)])


def test_walkthrough_hotel_fully_booked_compensates_in_reverse_order(
    start_service: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    service = start_service("sagas")
    customer = unique("12345")

    response = ingress.post("/BookingWorkflow/run", json=booking(customer))

    assert response.status_code == 409, response.text
    assert response.json()["message"] == FULLY_BOOKED
    assert_compensated_once(service, customer)
    refused = [line for line in service.log_lines() if FULLY_BOOKED in line]
    assert len(refused) == 1
    assert " ERROR " in refused[0]
    assert "[BookingWorkflow/run][inv_" in refused[0]
    assert "sagas.clients.hotel_client" in refused[0]


def test_the_seed_curl_body_verbatim(start_service: StartService, ingress: Ingress) -> None:
    """The seed's exact body, customer 12345 (this test's service logs only this run)."""
    service = start_service("sagas")
    body = json.dumps(SEED_REQUEST, indent=2)
    response = ingress.post(
        "/BookingWorkflow/run", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 409, response.text
    assert response.json()["code"] == 409
    assert response.json()["message"] == FULLY_BOOKED
    assert_compensated_once(service, "12345")  # this service process logs only this run


def test_when_the_hotel_has_a_room_everything_is_booked_and_nothing_cancelled(
    start_service: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    service = start_service("sagas", {"HOTEL_FULLY_BOOKED": "false"})
    customer = unique("customer")

    response = ingress.post("/BookingWorkflow/run", json=booking(customer))

    assert response.status_code == 200, response.text
    assert response.content == b""  # like the original's `void` handler
    assert_logged(service, customer, created(customer))


def test_a_transient_failure_is_retried_not_compensated(
    start_service: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    service = start_service(
        "sagas", {"HOTEL_FULLY_BOOKED": "false", "CAR_RENTAL_TRANSIENT_FAILURES": "3"}
    )
    customer = unique("customer")

    response = ingress.post("/BookingWorkflow/run", json=booking(customer))

    assert response.status_code == 200, response.text
    # retried until it worked; the flight was booked once and nothing was cancelled
    assert_logged(service, customer, created(customer))
    assert count_lines(service, "Car rental system unavailable (attempt") == 3


@pytest.mark.parametrize("crash", ["service", "server"])
def test_a_crash_between_two_bookings_books_nothing_twice(
    crash: str,
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    # The car rental system is down: the saga has booked the flight and keeps retrying the car.
    service = start_service("sagas", {"CAR_RENTAL_TRANSIENT_FAILURES": "1000000"})
    customer = unique("customer")
    invocation = ingress.send("/BookingWorkflow/run", json=booking(customer))
    eventually(
        lambda: count_lines(service, "Car rental system unavailable") >= 1,
        message="the car booking failed at least once",
    )
    booked_flight = created(customer)[0]
    assert saga_lines(service, customer) == [booked_flight]

    # kill -9 between the flight and the car booking, of the service or of the server (with
    # the journal); the car system comes back meanwhile (a restart of the service sets it)
    if crash == "server":
        server.kill()
    service.kill()
    assert service.env is not None
    service.env["CAR_RENTAL_TRANSIENT_FAILURES"] = "0"
    if crash == "server":
        server.start()
    service.start()

    def outcome() -> httpx.Response | None:
        response = ingress.get(f"/restate/invocation/{invocation}/attach")
        return response if response.status_code != 503 else None

    response = eventually(outcome, timeout=60, message="the saga finishes after the restart")
    assert response.status_code == 409, response.text
    assert response.json()["message"] == FULLY_BOOKED
    assert_compensated_once(service, customer)  # the flight was not booked again


BAD_INPUT: list[tuple[Callable[[dict[str, Any]], object], str]] = [
    (lambda r: r.pop("customerId"), "customerId: Field required"),
    (lambda r: r.update(customerId=""), "customerId: String should have at least 1"),
    (lambda r: r["flight"].pop("flightId"), "flight.flightId: Field required"),
    (lambda r: r["flight"].pop("passengerName"), "flight.passengerName: Field required"),
    (lambda r: r.pop("car"), "car: Field required"),
    (lambda r: r["car"].update(rentalDate="16/12/2024"), "car.rentalDate: Input should be"),
    (lambda r: r["hotel"].pop("departureDate"), "hotel.departureDate: Field required"),
    (
        lambda r: r["hotel"].update(departureDate="2024-12-15"),
        "hotel: Value error, departureDate must be after arrivalDate",
    ),
]


def test_bad_input_is_400_naming_the_field_and_books_nothing(
    start_service: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    service = start_service("sagas", {"HOTEL_FULLY_BOOKED": "false"})
    for change, field in BAD_INPUT:
        request = booking(unique("customer"))
        change(request)
        response = ingress.post("/BookingWorkflow/run", json=request)
        assert response.status_code == 400, f"{field}: {response.status_code} {response.text}"
        assert field in response.json()["message"]

    # the README's example
    response = ingress.post(
        "/BookingWorkflow/run", json={"customerId": "12345", "flight": {"flightId": "12345"}}
    )
    assert response.status_code == 400, response.text
    assert response.json()["message"] == (
        "Invalid request: flight.passengerName: Field required; car: Field required; "
        "hotel: Field required"
    )

    response = ingress.post(
        "/BookingWorkflow/run", content="{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert "body: Invalid JSON" in response.json()["message"]
    assert count_lines(service, "reservation") == 0
