"""Concurrent async tasks: email verification with reminders and a deadline.

`EmailVerification/verifyEmail` sends a verification email, then waits for whichever of
three things happens first:

    send email (step) ---+
                         |   select (first one wins, recorded in the journal)
    user clicks link ----+--> awakeable resolved:  true -> "Email verified"
                         |                         false -> "Email rejected"
    verification timeout +--> TerminalError "Verification timed out"
    reminder timer ------+--> send reminder (step), start a new reminder timer, loop

The "link" resolves an awakeable: a durable future that anything outside the handler can
complete through Restate's ingress. The timers are durable too: if the service or Restate
crashes while waiting, the invocation resumes where it was, with the same awakeable and
the same deadline, and reminders that were already sent are not sent again. Restate
journals which future won each race, so a replay takes the same branch.
"""

import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import restate
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from . import email_client


@dataclass(frozen=True)
class Settings:
    reminder_interval: timedelta = timedelta(
        seconds=float(os.environ.get("REMINDER_INTERVAL_SECONDS", "10"))
    )
    verification_timeout: timedelta = timedelta(
        seconds=float(os.environ.get("VERIFICATION_TIMEOUT_SECONDS", str(24 * 3600)))
    )
    # Where the "verification link" in the email points: Restate's ingress.
    ingress_url: str = os.environ.get("RESTATE_INGRESS_URL", "http://localhost:8080")


SETTINGS = Settings()


class VerifyEmailRequest(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    user_id: str = Field(min_length=1)


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


def confirmed(answer: bytes) -> bool:
    """The answer given to the awakeable: JSON `true` or `false`, anything else is an error."""
    try:
        value = json.loads(answer)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        value = None
    if not isinstance(value, bool):
        raise restate.TerminalError(
            f"Invalid verification answer {answer.decode(errors='replace')!r}: "
            "expected true or false",
            status_code=400,
        )
    return value


email_verification = restate.Service("EmailVerification")


@email_verification.handler(name="verifyEmail", input_serde=restate.serde.BytesSerde())
async def verify_email(ctx: restate.Context, body: bytes) -> str:
    """Send a verification email and wait for the answer, reminding the user meanwhile."""
    request = parse(VerifyEmailRequest, body)
    # Raw bytes: a malformed answer must end the invocation, not make it retry forever.
    awakeable_id, answer = ctx.awakeable(serde=restate.serde.BytesSerde())
    await ctx.run_typed(
        "send verification email",
        email_client.send_verification_email,
        email=request.email,
        ingress_url=SETTINGS.ingress_url,
        awakeable_id=awakeable_id,
    )

    deadline = ctx.sleep(SETTINGS.verification_timeout, name="verification timeout")
    while True:
        reminder = ctx.sleep(SETTINGS.reminder_interval, name="reminder timer")
        # If several have happened by the time we look, the first listed wins: an answer
        # counts even if it came late, and no reminder goes out after the deadline.
        match await restate.select(answer=answer, deadline=deadline, reminder=reminder):
            case ["answer", value]:
                return "Email verified" if confirmed(value) else "Email rejected"
            case ["deadline", _]:
                raise restate.TerminalError("Verification timed out", status_code=410)
            case ["reminder", _]:
                await ctx.run_typed(
                    "send reminder",
                    email_client.send_reminder,
                    email=request.email,
                    ingress_url=SETTINGS.ingress_url,
                    awakeable_id=awakeable_id,
                )


services = [email_verification]
app = restate.app(services)
