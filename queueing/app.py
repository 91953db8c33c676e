"""(Delayed) message queue: Restate as a durable task queue.

    Task Submitter --POST /AsyncTaskWorker/runTask/send?delay=10s------> Restate
                     idempotency-key: <task key>                          |  queue + durable timer
                   <--202 {"invocationId": "inv_..."}                     |  (per idempotency key:
                                                                          v   at most one task)
                   --GET /restate/invocation/<id>/attach--> ... <-- AsyncTaskWorker/runTask

- The submitter does not wait for the task: `/send` puts it in Restate's queue and answers
  with the invocation id at once. Anyone can attach to that id later to get the result.
- With `?delay=`, Restate keeps a durable timer and starts the task when it is due, even if
  the server restarted in between; if the worker is down then, Restate retries until it
  is back.
- The idempotency key (the task's key) deduplicates: submitting the same key again gives
  the same invocation, and the task runs once.
"""

from typing import TypeVar

import restate
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

logger = restate.getLogger(__name__)


class TaskOpts(BaseModel):
    """A task: `{"key": "task-1", "taskName": "resize", "payload": "image-17.png"}`."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    key: str
    task_name: str
    payload: str


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: bytes) -> M:
    """The request body as `model`, or a 400 that names each bad field by its JSON path."""
    try:
        return model.model_validate_json(body or b"null")
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}"
            for e in error.errors()
        )
        raise restate.TerminalError(
            f"invalid {model.__name__}: {problems}", status_code=400
        ) from None


async_task_worker = restate.Service("AsyncTaskWorker")


@async_task_worker.handler(name="runTask", input_serde=restate.serde.BytesSerde())
async def run_task(ctx: restate.Context, body: bytes) -> str:
    """Do the task's work once and return its result."""
    task = parse(TaskOpts, body)
    return await ctx.run_typed("heavy work", some_heavy_work, restate.RunOptions(), task)


def some_heavy_work(task: TaskOpts) -> str:
    logger.info("Running task %s (%s) with payload %s", task.key, task.task_name, task.payload)
    return f"Task {task.task_name} done: {task.payload}"


services = [async_task_worker]
app = restate.app(services)
