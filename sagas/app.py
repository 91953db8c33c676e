"""Sagas: keep flight, car and hotel bookings consistent when a step fails halfway.

`BookingWorkflow/run` books a trip through three systems. Before each booking it records
the action that undoes it; if a booking fails for good (a `TerminalError`), it runs the
recorded undo actions in reverse order and fails with that error:

    register cancel flight -> reserve flight      ok
    register cancel car    -> reserve car         ok
    register cancel hotel  -> reserve hotel       TerminalError: fully booked
                                  |
                 cancel hotel <- cancel car <- cancel flight      (reverse order)
                                  |
                 the caller gets the hotel's error (409)

Each booking and each cancellation is a durable step (`ctx.run_typed`): after a crash
Restate replays the journal, so a booking that was made is not made again, and the
compensations run to completion. An undo action is registered *before* its booking,
because the booking may have taken effect even if the step failed; so compensations must
be idempotent (cancelling a booking that does not exist does nothing).

Failures that are not terminal (the car rental system is down for a moment) are retried
by Restate and do not trigger compensations.
"""

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import restate
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from .clients import car_rental_client, flight_client, hotel_client
from .clients.car_rental_client import CarRequest
from .clients.flight_client import FlightRequest
from .clients.hotel_client import HotelRequest


@dataclass(frozen=True)
class Settings:
    # The seed's hotel is always fully booked; set HOTEL_FULLY_BOOKED=false for a happy trip.
    hotel_fully_booked: bool = os.environ.get("HOTEL_FULLY_BOOKED", "true").lower() != "false"
    # How many attempts of each customer's car booking fail with a transient error.
    car_rental_transient_failures: int = int(os.environ.get("CAR_RENTAL_TRANSIENT_FAILURES", "0"))


SETTINGS = Settings()


class BookingRequest(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    customer_id: str = Field(min_length=1)
    flight: FlightRequest
    car: CarRequest
    hotel: HotelRequest


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: bytes) -> M:
    """Validate a JSON body; a 400 naming each bad field (camelCase path) if it is wrong."""
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
            for problem in error.errors()
        )
        raise restate.TerminalError(f"Invalid request: {problems}", status_code=400) from None


booking_workflow = restate.Service("BookingWorkflow")


@booking_workflow.handler(name="run", input_serde=restate.serde.BytesSerde())
async def run(ctx: restate.Context, body: bytes) -> None:
    """Book flight, car and hotel for a customer, or none of them."""
    request = parse(BookingRequest, body)
    customer_id = request.customer_id
    compensations: list[Callable[[], Awaitable[None]]] = []
    try:
        compensations.append(
            lambda: ctx.run_typed("cancel flight", flight_client.cancel, customer_id=customer_id)
        )
        await ctx.run_typed(
            "reserve flight", flight_client.reserve, customer_id=customer_id, flight=request.flight
        )

        compensations.append(
            lambda: ctx.run_typed("cancel car", car_rental_client.cancel, customer_id=customer_id)
        )
        await ctx.run_typed(
            "reserve car",
            car_rental_client.reserve,
            customer_id=customer_id,
            car=request.car,
            transient_failures=SETTINGS.car_rental_transient_failures,
        )

        compensations.append(
            lambda: ctx.run_typed("cancel hotel", hotel_client.cancel, customer_id=customer_id)
        )
        await ctx.run_typed(
            "reserve hotel",
            hotel_client.reserve,
            customer_id=customer_id,
            hotel=request.hotel,
            fully_booked=SETTINGS.hotel_fully_booked,
        )
    except restate.TerminalError:
        # Undo in reverse order: the last booking first.
        for compensation in reversed(compensations):
            await compensation()
        raise


services = [booking_workflow]
app = restate.app(services)
