"""Chat agent: durable sessions, one Virtual Object per session holding the conversation.

`Chat/<session>/message` answers a user's message with an OpenAI Agents SDK agent, run by
`restate.ext.openai`'s `DurableRunner` with `use_restate_session=True`: the conversation
so far is read from the object's K/V state (`items`), sent to the model with the new
message, and written back with the answer when the turn ends.

    user --message("My name is Alice")--> Chat/session123 (one turn at a time)
                                             | state "items": the conversation
                                             +-> model call (step "call LLM"):
                                             |     earlier items + the new message
                                             <- answer; items += message, answer

- Durable memory: the conversation lives in Restate, not in the process: it survives
  crashes of the service and of Restate, and any instance of the service can serve the
  next message.
- Isolated sessions: one object per session key; sessions never see each other's items.
- In order: a Virtual Object runs one `message` per key at a time, so messages sent at
  once to one session are answered one after another, each seeing the ones before.
- `getHistory` is a shared handler: it reads the conversation while a turn runs.
"""

import functools
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import restate
from agents import Agent, set_default_openai_client
from openai import AsyncOpenAI
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from restate.ext.openai import DurableRunner

logger = restate.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    model: str = os.environ.get("OPENAI_MODEL", "gpt-4.1-mini")
    model_max_attempts: int = int(os.environ.get("MODEL_MAX_ATTEMPTS", "3"))
    model_retry_interval: timedelta = timedelta(
        seconds=float(os.environ.get("MODEL_RETRY_INTERVAL_SECONDS", "2"))
    )


SETTINGS = Settings()


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1)


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: bytes) -> M:
    """Validate a JSON body; a 400 naming each bad field if it is wrong."""
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
            for problem in error.errors()
        )
        raise restate.TerminalError(f"Invalid request: {problems}", status_code=400) from None


@functools.cache
def use_restate_for_model_retries() -> None:
    """Restate, not the OpenAI client, retries failed model calls (each one journaled,
    at most MODEL_MAX_ATTEMPTS). Made on first use: the client needs OPENAI_API_KEY."""
    set_default_openai_client(AsyncOpenAI(max_retries=0), use_for_tracing=False)


assistant = Agent(
    name="Assistant",
    instructions="You are a helpful assistant. Keep your answers short.",
    model=SETTINGS.model,
)

chat = restate.VirtualObject("Chat")


@chat.handler(name="message", input_serde=restate.serde.BytesSerde())
async def message(ctx: restate.ObjectContext, body: bytes) -> str:
    """Answer the next message of the session (the object key), with the session's memory."""
    request = parse(ChatMessage, body)
    use_restate_for_model_retries()
    model_retries = restate.RunOptions[None](
        max_attempts=SETTINGS.model_max_attempts,
        initial_retry_interval=SETTINGS.model_retry_interval,
    )
    try:
        result = await DurableRunner.run(
            assistant, request.message, use_restate_session=True, run_options=model_retries
        )
    except restate.TerminalError as error:
        if error.status_code == 409:  # cancelled
            raise
        raise restate.TerminalError(
            f"The model could not answer: {error.message}", status_code=502
        ) from None
    answer = str(result.final_output)
    logger.info("Session %s answered: %s", ctx.key(), answer)
    return answer


@chat.handler(name="getHistory", kind="shared")
async def get_history(ctx: restate.ObjectSharedContext) -> list[dict[str, Any]]:
    """The session's conversation: the user's messages and the model's answers, in order."""
    return await ctx.get("items", type_hint=list[dict[str, Any]]) or []


services = [chat]
app = restate.app(services)
