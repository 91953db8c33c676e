"""The car rental system, which can be briefly unavailable."""

from datetime import date

import restate
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

logger = restate.getLogger(__name__)


class CarRequest(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    pickup_location: str = Field(min_length=1)
    rental_date: date


class CarRentalUnavailable(Exception):
    """A transient failure: not a TerminalError, so Restate retries the step."""


# Failed attempts per customer, in this process: the simulated outage lasts for the first
# `transient_failures` attempts of each customer's booking.
_failed_attempts: dict[str, int] = {}


def reserve(customer_id: str, car: CarRequest, transient_failures: int = 0) -> None:
    failed = _failed_attempts.get(customer_id, 0)
    if failed < transient_failures:
        _failed_attempts[customer_id] = failed + 1
        logger.warning(
            "[👻 SIMULATED] Car rental system unavailable (attempt %d), retrying", failed + 1
        )
        raise CarRentalUnavailable("[👻 SIMULATED] Car rental system unavailable")
    logger.info("Car rental reservation created for customer: %s", customer_id)


def cancel(customer_id: str) -> None:
    logger.info("Car rental reservation cancelled with id: %s", customer_id)
