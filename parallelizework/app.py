"""Parallelizing work (fan-out, fan-in).

`FanOutWorker/run` takes a task, splits it into subtasks, runs every subtask as its own
invocation of `FanOutWorker/runSubtask` at the same time, waits for all of them and
answers with the aggregated result:

                         +--> runSubtask("get out of bed") --+
    run("get out of bed, |--> runSubtask("shower") ----------|--> "get out of bed: DONE,
         shower, ...") --+--> runSubtask("make coffee") -----|     shower: DONE, ..."
                         +--> runSubtask("have breakfast") --+

Restate keeps track of every subtask: if this service or Restate itself crashes in the
middle, the subtasks that finished are not run again, the others resume where they were,
and `run` answers with the same aggregate. Each subtask takes a random time (the seed's
0-10 s); the random number comes from the invocation's deterministic `ctx.random()`, so a
replay waits for the same duration.
"""

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import restate
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

logger = restate.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    # a subtask takes a random time between these two bounds
    subtask_min_duration: timedelta = timedelta(
        seconds=float(os.environ.get("SUBTASK_MIN_DURATION_SECONDS", "0"))
    )
    subtask_max_duration: timedelta = timedelta(
        seconds=float(os.environ.get("SUBTASK_MAX_DURATION_SECONDS", "10"))
    )


SETTINGS = Settings()


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",  # an unknown field is a 400 that names it
    )


class Task(Model):
    description: str


class SubTask(Model):
    description: str


class SubTaskResult(Model):
    description: str
    result: str


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


def split(task: Task) -> list[str]:
    """The subtasks of a task: the parts of its description between commas."""
    parts = (part.strip() for part in task.description.split(","))
    return [part for part in parts if part]


def aggregate(results: list[SubTaskResult]) -> str:
    return ", ".join(f"{r.description}: {r.result}" for r in results)


fan_out_worker = restate.Service("FanOutWorker")


@fan_out_worker.handler(name="run", input_serde=restate.serde.BytesSerde())
async def run(ctx: restate.Context, body: bytes) -> str:
    """Split the task, run all subtasks in parallel, answer with the aggregated result."""
    task = parse(Task, body)
    if not split(task):
        raise restate.TerminalError(
            "description: names no subtask (give comma-separated subtasks)", status_code=400
        )

    # Durable step: on a retry or replay the split is read from the journal.
    subtasks = await ctx.run_typed("split task", split, task=task)

    # Fan out: start every subtask before waiting for any of them.
    calls = [
        ctx.service_call(run_subtask, arg=SubTask(description=subtask).model_dump_json().encode())
        for subtask in subtasks
    ]
    # Fan in: wait for all of them (in the order of the subtasks, whichever ends first).
    results = [await call for call in calls]

    answer = aggregate(results)
    logger.info("Aggregated result: %s", answer)
    return answer


@fan_out_worker.handler(
    name="runSubtask", input_serde=restate.serde.BytesSerde(), ingress_private=True
)
async def run_subtask(ctx: restate.Context, body: bytes) -> SubTaskResult:
    """Execute one subtask: it takes a random time, then it is DONE."""
    subtask = parse(SubTask, body)
    # ctx.random() is seeded by the invocation id: a replay draws the same duration.
    low, high = SETTINGS.subtask_min_duration, SETTINGS.subtask_max_duration
    duration = low + (high - low) * ctx.random().random()

    def start() -> None:
        logger.info("Started executing subtask: %s", subtask.description)

    def finish() -> None:
        logger.info("Execution subtask finished: %s", subtask.description)

    await ctx.run_typed("start subtask", start)
    await ctx.sleep(duration, name="work on subtask")
    await ctx.run_typed("finish subtask", finish)
    return SubTaskResult(description=subtask.description, result="DONE")


services = [fan_out_worker]
app = restate.app(services)
