"""Serving inside an existing web app: the Restate side, a signup's onboarding emails.

A web app you already run (here FastAPI, `fastapi_app.py`) keeps its routes and serves
Restate's endpoint too, mounted at `/restate`, from the same process and port:

    curl --POST /signup--> web app :9080 ---/Onboarding/onboard/send----> Restate :8080
                           |  /, /signup          (idempotency key: userId)     |
                           |  /restate  <----POST /restate/invoke/Onboarding/onboard
                           v
         Onboarding/onboard:  send welcome email (step)
                              sleep FOLLOW_UP_DELAY (durable timer)
                              send follow-up email (step)

The route answers at once (Restate has accepted the work); the handler runs durably: if
the process dies in the middle, Restate calls it again once it is back, and the steps that
were done are not done again. Nothing here knows how it is served: `python -m webapp`
serves `app` alone, `python -m webapp.on_hypercorn` and `python -m webapp.on_uvicorn`
serve the web app with `app` mounted in it.
"""

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import restate
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel


@dataclass(frozen=True)
class Settings:
    # A real onboarding would wait days; 10 s lets you watch it happen.
    follow_up_delay: timedelta = timedelta(
        seconds=float(os.environ.get("FOLLOW_UP_DELAY_SECONDS", "10"))
    )


SETTINGS = Settings()

logger = restate.getLogger(__name__)


class Signup(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    user_id: str = Field(min_length=1)
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")


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


def send_email(kind: str, signup: Signup) -> None:
    """Stands in for an email provider's API."""
    logger.info("%s email sent to %s (user %s)", kind, signup.email, signup.user_id)


onboarding = restate.Service("Onboarding")


@onboarding.handler(name="onboard", input_serde=restate.serde.BytesSerde())
async def onboard(ctx: restate.Context, body: bytes) -> str:
    """Welcome a new user now and follow up after FOLLOW_UP_DELAY."""
    signup = parse(Signup, body)
    await ctx.run_typed("send welcome email", send_email, kind="Welcome", signup=signup)
    await ctx.sleep(SETTINGS.follow_up_delay, name="wait before the follow-up")
    await ctx.run_typed("send follow-up email", send_email, kind="Follow-up", signup=signup)
    return f"Onboarded {signup.user_id}: welcome and follow-up emails sent to {signup.email}"


services = [onboarding]
app = restate.app(services)
