"""Racing agents, and interrupting an agent: cancellation of work in flight.

Racing: two agents answer the same question, each in an invocation of its own; the first
answer wins and the other invocation is cancelled, with the tool it is running:

    RacingAgent/run --+--> thinkLonger:    model --> deep_research tool (slow) --> model
                      '--> respondQuickly: model --> answer  ==> wins, thinkLonger cancelled

Interrupt and regenerate: a coding agent works on a task in the background; a new message
cancels the task in flight and starts it again with the conversation so far, the new
message included:

    CodingAgent/<session>/message --cancel running task, wait for its cleanup-->
                                  --send--> CodingTask/runTask: plan --> draft --> polish
                                                |  (cancelled: note it, re-raise)
    CodingAgent/<session>/appendMessage <-------'

Cancelling an invocation makes its next `await` raise `TerminalError` (409) and aborts the
step it is running; the handler may still do durable work (here: note the cancellation in
the history) before it ends as cancelled. Restate cancels the invocations it called, too.
"""

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import restate
from agents import Agent, AgentsException, RunResult, TResponseInputItem
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from restate.ext.openai import DurableRunner, durable_function_tool, restate_context

logger = restate.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    # the model every agent uses (the provider is OPENAI_BASE_URL, or OpenAI)
    model: str = os.environ.get("OPENAI_MODEL", "gpt-4.1-mini")
    # how long the deep_research tool waits for its search results
    research_duration: timedelta = timedelta(
        seconds=float(os.environ.get("RESEARCH_DURATION_SECONDS", "10"))
    )
    # how long a new message waits for the cancelled task to clean up before it goes on
    cancel_wait: timedelta = timedelta(seconds=float(os.environ.get("CANCEL_WAIT_SECONDS", "30")))


SETTINGS = Settings()
RAW = restate.serde.BytesSerde()  # handlers take raw bytes and validate them with `parse`


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",  # an unknown field is a 400 that names it
    )


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


async def run_agent(agent: Agent[Any], prompt: str | list[TResponseInputItem]) -> RunResult:
    """Run an agent with every model call journaled. A tool's TerminalError (a cancellation,
    409, included) ends the run as it is: the Agents SDK wraps it in a UserError, which
    Restate would retry. An answer the agent cannot use is terminal too: it is in the
    journal, so a retry would fail the same way, forever."""
    try:
        return await DurableRunner.run(agent, prompt)
    except AgentsException as error:
        if isinstance(error, restate.TerminalError):
            raise
        if isinstance(error.__cause__, restate.TerminalError):
            raise error.__cause__ from None
        raise restate.TerminalError(f"{agent.name}: {error}", status_code=502) from None


# --- racing agents ----------------------------------------------------------------------------


class Question(Model):
    message: str = Field(min_length=1)


class Answer(Model):
    agent: str
    answer: str


def submit_search(topic: str) -> str:
    """Starts a search job at a (simulated) slow search service; its results come later."""
    logger.info("Deep research started: %s", topic)
    return f"search job on {topic}"


def collect_results(job: str) -> str:
    logger.info("Deep research finished: %s", job)
    return f"Results of the {job}: three surveys and a textbook chapter."


@durable_function_tool
async def deep_research(topic: str) -> str:
    """Search the literature on a topic, thoroughly (this takes a while).

    Args:
        topic: what to research.
    """
    ctx = restate_context()
    job = await ctx.run_typed("submit search", submit_search, topic=topic)
    # a durable timer: nothing runs meanwhile, and a cancellation ends the wait at once
    await ctx.sleep(SETTINGS.research_duration, name="wait for the search results")
    return await ctx.run_typed("collect results", collect_results, job=job)


deep_thinker = Agent(
    name="DeepThinker",
    instructions="Answer thoroughly. Research the question with deep_research first.",
    tools=[deep_research],
    model=SETTINGS.model,
)
quick_responder = Agent(
    name="QuickResponder",
    instructions="Answer briefly, from what you know.",
    model=SETTINGS.model,
)

racing_agent = restate.Service("RacingAgent")


@racing_agent.handler(name="thinkLonger", input_serde=RAW, ingress_private=True)
async def think_longer(ctx: restate.Context, body: bytes) -> str:
    question = parse(Question, body)
    result = await run_agent(deep_thinker, f"Analyze this thoroughly: {question.message}")
    return str(result.final_output)


@racing_agent.handler(name="respondQuickly", input_serde=RAW, ingress_private=True)
async def respond_quickly(ctx: restate.Context, body: bytes) -> str:
    question = parse(Question, body)
    result = await run_agent(quick_responder, f"Quick answer: {question.message}")
    return str(result.final_output)


@racing_agent.handler(name="run", input_serde=RAW)
async def race(ctx: restate.Context, body: bytes) -> Answer:
    """Ask both agents at once; the first answer wins, the other agent is cancelled."""
    parse(Question, body)
    racers = {
        "thinkLonger": ctx.service_call(think_longer, arg=body),
        "respondQuickly": ctx.service_call(respond_quickly, arg=body),
    }
    running = dict(racers)
    async for finished in restate.as_completed(*racers.values()):
        winner = next(name for name, call in racers.items() if call is finished)
        del running[winner]
        try:
            answer = str(await finished)
        except restate.TerminalError as error:  # that agent failed: wait for the other
            logger.info("%s failed: %s", winner, error.message)
            continue
        for name, call in running.items():  # the racers still running: not a failed one
            loser = await call.invocation_id()
            ctx.cancel_invocation(loser)
            logger.info("%s answered first; cancelled %s (%s)", winner, name, loser)
        return Answer(agent=winner, answer=answer)
    raise restate.TerminalError("no agent answered", status_code=502)


# --- interrupt and regenerate -------------------------------------------------------------------


class ChatMessage(Model):
    content: str = Field(min_length=1)


class Message(Model):
    role: str
    content: str


class TaskInput(Model):
    agent_id: str
    messages: list[Message]


class TaskOutput(Model):
    task_id: str
    content: str


coder = Agent(
    name="Coder",
    instructions="You are a coding agent. Follow the user's requests; the latest one wins.",
    model=SETTINGS.model,
)
STEPS = [
    ("plan", "Outline a high-level plan."),
    ("draft", "Write a draft implementation."),
    ("polish", "Polish it into a final version."),
]

coding_agent = restate.VirtualObject("CodingAgent")
coding_task = restate.Service("CodingTask")


@coding_task.handler(name="runTask", input_serde=RAW, ingress_private=True)
async def run_task(ctx: restate.Context, body: bytes) -> None:
    """Plan, draft, polish: three model calls. A cancellation lands at the next await."""
    task = parse(TaskInput, body)
    task_id = ctx.request().id
    conversation: list[TResponseInputItem] = [
        {"role": "user", "content": m.content}
        if m.role == "user"
        else {"role": "assistant", "content": m.content}
        for m in task.messages
    ]
    try:
        for step, prompt in STEPS:
            result = await run_agent(coder, [*conversation, {"role": "user", "content": prompt}])
            logger.info("Task %s: %s done", task_id, step)
            conversation.append({"role": "assistant", "content": str(result.final_output)})
        content = str(result.final_output)
    except restate.TerminalError as error:
        # cancelled (409) or failed: note it in the history, then end as cancelled/failed
        what = "cancellation" if error.status_code == 409 else "error"
        content = f"[task cleanup ran after {what}]"
        ctx.object_send(append_message, key=task.agent_id, arg=reply(task_id, content))
        raise
    ctx.object_send(append_message, key=task.agent_id, arg=reply(task_id, content))


def reply(task_id: str, content: str) -> bytes:
    return TaskOutput(task_id=task_id, content=content).model_dump_json().encode()


@coding_agent.handler(name="message", input_serde=RAW)
async def message(ctx: restate.ObjectContext, body: bytes) -> None:
    """A user message: interrupt the task in flight, start a new one with this context."""
    new = parse(ChatMessage, body)
    messages = await ctx.get("messages", type_hint=list[dict[str, str]]) or []
    messages.append({"role": "user", "content": new.content})

    running = await ctx.get("currentTask", type_hint=str)
    if running:
        ctx.cancel_invocation(running)
        # wait for its cleanup, bounded: it ends with a TerminalError (cancelled)
        with contextlib.suppress(restate.TerminalError):
            await restate.select(
                done=ctx.attach_invocation(running), timeout=ctx.sleep(SETTINGS.cancel_wait)
            )
        logger.info("Interrupted task %s", running)

    handle = ctx.service_send(
        run_task,
        arg=TaskInput.model_validate({"agentId": ctx.key(), "messages": messages})
        .model_dump_json()
        .encode(),
    )
    ctx.set("currentTask", await handle.invocation_id())
    ctx.set("messages", messages)


@coding_agent.handler(name="appendMessage", input_serde=RAW, ingress_private=True)
async def append_message(ctx: restate.ObjectContext, body: bytes) -> None:
    """A task's answer (or its cleanup note) joins the history."""
    output = parse(TaskOutput, body)
    messages = await ctx.get("messages", type_hint=list[dict[str, str]]) or []
    messages.append({"role": "assistant", "content": output.content})
    ctx.set("messages", messages)
    # only the task that is current is done: a cancelled one reports after its successor began
    if await ctx.get("currentTask", type_hint=str) == output.task_id:
        ctx.clear("currentTask")


@coding_agent.handler(name="getHistory", kind="shared")
async def get_history(ctx: restate.ObjectSharedContext) -> list[dict[str, str]]:
    """The conversation: the user's messages and the tasks' answers (or cleanup notes)."""
    return await ctx.get("messages", type_hint=list[dict[str, str]]) or []


services: list[restate.Service | restate.VirtualObject] = [racing_agent, coding_agent, coding_task]
app = restate.app(services)
