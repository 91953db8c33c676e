"""What the claim agents (app.py) and the remote agents (remote/app.py) share: the claim,
request validation, and running an agent durably."""

import datetime
from typing import Any, TypeVar

import restate
from agents import Agent, AgentsException, RunResult, TResponseInputItem
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from restate.ext.openai import DurableRunner

RAW = restate.serde.BytesSerde()  # handlers take raw bytes and validate them with `parse`


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",  # an unknown field is a 400 that names it
    )


class InsuranceClaim(Model):
    date: datetime.date
    amount: float = Field(gt=0, strict=True, allow_inf_nan=False)
    category: str
    place_of_service: str
    reason: str


class ClaimReview(Model):
    """What a remote agent is asked to review: a claim and its id."""

    claim_id: str
    claim: InsuranceClaim


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: bytes) -> M:
    """Validate a request body; a 400 naming each bad field (by its JSON name) if invalid."""
    try:
        return model.model_validate_json(body or b"null")
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}"
            for e in error.errors()
        )
        raise restate.TerminalError(problems, status_code=400) from None


async def run_agent(
    agent: Agent[Any], prompt: str | list[TResponseInputItem], **options: Any
) -> RunResult:
    """Run an agent with every model call journaled (`DurableRunner`).

    A tool's TerminalError (a cancellation, 409, included) ends the run as it is: the Agents
    SDK wraps it in a UserError, which Restate would retry. An answer the agent cannot use
    (too many turns, invalid output) is terminal too: the answer is in the journal, so a
    retry would read it back and fail the same way, forever."""
    try:
        return await DurableRunner.run(agent, prompt, **options)
    except AgentsException as error:
        if isinstance(error, restate.TerminalError):
            raise
        if isinstance(error.__cause__, restate.TerminalError):
            raise error.__cause__ from None
        raise restate.TerminalError(f"{agent.name}: {error}", status_code=502) from None
