"""The flight booking system."""

import restate
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

logger = restate.getLogger(__name__)


class FlightRequest(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    flight_id: str = Field(min_length=1)
    passenger_name: str = Field(min_length=1)


def reserve(customer_id: str, flight: FlightRequest) -> None:
    logger.info("Flight reservation created for customer: %s", customer_id)


def cancel(customer_id: str) -> None:
    logger.info("Flight reservation cancelled for customer id: %s", customer_id)
