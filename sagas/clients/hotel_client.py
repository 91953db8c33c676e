"""The hotel booking system, which is fully booked unless told otherwise."""

from datetime import date

import restate
from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel

logger = restate.getLogger(__name__)


class HotelRequest(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    arrival_date: date
    departure_date: date

    @model_validator(mode="after")
    def departure_after_arrival(self) -> "HotelRequest":
        if self.departure_date <= self.arrival_date:
            raise ValueError("departureDate must be after arrivalDate")
        return self


FULLY_BOOKED = "[👻 SIMULATED] This hotel is fully booked!"


def reserve(customer_id: str, hotel: HotelRequest, fully_booked: bool = True) -> None:
    if fully_booked:
        logger.error(FULLY_BOOKED)
        # 409 Conflict: the request is valid, but the hotel has no room left for it.
        raise restate.TerminalError(FULLY_BOOKED, status_code=409)
    logger.info("Hotel reservation created for customer: %s", customer_id)


def cancel(customer_id: str) -> None:
    logger.info("Hotel reservation cancelled for customer id: %s", customer_id)
