"""Durable agent: an agent loop with tools, where every model call and tool step is journaled.

`WeatherAgent/run` runs an OpenAI Agents SDK agent through `restate.ext.openai`'s
`DurableRunner`. The agent loop asks the model what to do, runs the tools it asks for, and
asks again with their results, until the model answers in text:

    run("What is the weather in Paris?")
      |
      +-> model call 1 (step "call LLM")      -> "call get_weather(city=Paris)"
      +-> tool get_weather
      |      +-> step "get weather"            -> weather API: "sunny, 23 degrees Celsius"
      +-> model call 2 (step "call LLM")      -> "The weather in Paris: sunny, 23 degrees Celsius."
      |
      <- "The weather in Paris: sunny, 23 degrees Celsius."

Each model call and each tool step is a Restate step: its result is in the journal. If the
service or Restate crashes halfway, the invocation is replayed from the journal: answered
model calls are not sent to the model again (they cost money and may answer differently),
finished tool steps do not run again, and the loop goes on where it stopped.

Errors, three kinds:
- the model API fails (429 rate limit, 500): the "call LLM" step is retried by Restate,
  at most `MODEL_MAX_ATTEMPTS` times, then the run gives up with a clear answer;
- a tool fails transiently (the weather API is down for Denver): its step is retried, at
  most `TOOL_MAX_ATTEMPTS` times;
- a tool fails for good (`TerminalError`: Atlantis is not a city): no retry; the run stops
  and the caller gets a clear answer.
"""

import functools
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import restate
from agents import Agent, set_default_openai_client
from openai import AsyncOpenAI
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from restate.ext.openai import DurableRunner, durable_function_tool, restate_context

from .weather_api import fetch_weather

logger = restate.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    model: str = os.environ.get("OPENAI_MODEL", "gpt-4.1-mini")
    model_max_attempts: int = int(os.environ.get("MODEL_MAX_ATTEMPTS", "3"))
    model_retry_interval: timedelta = timedelta(
        seconds=float(os.environ.get("MODEL_RETRY_INTERVAL_SECONDS", "2"))
    )
    tool_max_attempts: int = int(os.environ.get("TOOL_MAX_ATTEMPTS", "5"))
    tool_retry_interval: timedelta = timedelta(
        seconds=float(os.environ.get("TOOL_RETRY_INTERVAL_SECONDS", "1"))
    )
    weather_api_delay: float = float(os.environ.get("WEATHER_API_DELAY_SECONDS", "0"))
    weather_api_failures: int = int(os.environ.get("WEATHER_API_FAILURES", "2"))


SETTINGS = Settings()


class WeatherPrompt(BaseModel):
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
    """The OpenAI client retries failed calls on its own (twice by default) before an error
    reaches Restate; leave retries to Restate, so that each one is in the journal and the
    limit is `MODEL_MAX_ATTEMPTS`. (Made on first use: the client needs OPENAI_API_KEY.)"""
    set_default_openai_client(AsyncOpenAI(max_retries=0), use_for_tracing=False)


@durable_function_tool
async def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    ctx = restate_context()
    retries: restate.RunOptions[str] = restate.RunOptions(
        max_attempts=SETTINGS.tool_max_attempts,
        initial_retry_interval=SETTINGS.tool_retry_interval,
    )
    return await ctx.run_typed(
        "get weather",
        fetch_weather,
        retries,
        city=city,
        run_id=ctx.request().id,
        delay=SETTINGS.weather_api_delay,
        failures=SETTINGS.weather_api_failures,
    )


agent = Agent(
    name="WeatherAgent",
    instructions="You are a helpful agent that provides weather updates. "
    "Use the get_weather tool to look up the weather.",
    tools=[get_weather],
    model=SETTINGS.model,
)

weather_agent = restate.Service("WeatherAgent")


@weather_agent.handler(name="run", input_serde=restate.serde.BytesSerde())
async def run(ctx: restate.Context, body: bytes) -> str:
    """Answer the user's message with the agent; a clear answer if it has to give up."""
    prompt = parse(WeatherPrompt, body)
    use_restate_for_model_retries()
    model_retries = restate.RunOptions[None](
        max_attempts=SETTINGS.model_max_attempts,
        initial_retry_interval=SETTINGS.model_retry_interval,
    )
    try:
        result = await DurableRunner.run(agent, prompt.message, run_options=model_retries)
    except restate.TerminalError as error:
        if error.status_code == 409:  # cancelled: let Restate end the invocation
            raise
        logger.info("The agent gave up: %s", error.message)
        return f"The agent couldn't complete the request: {error.message}"
    answer = str(result.final_output)
    logger.info("The agent answered: %s", answer)
    return answer


services = [weather_agent]
app = restate.app(services)
