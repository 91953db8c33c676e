"""Cron jobs on Restate: run any handler on a cron schedule.

Restate has no built-in cron, but its durable timers and K/V state make one short:

    CronJobInitiator/create(request)
        job id := ctx.uuid()  ------------>  CronJob/<job id>/initiate(request)
                                               check expression, time zone and target
                                               state "job" := request, next time, next id
                                               send execute() to itself, delayed until then
                      +-------------------------------+
                      v
    CronJob/<job id>/execute()   when due (Restate keeps the timer across crashes)
        call <service>[/<key>]/<method>(payload) and wait for it
        send execute() to itself, delayed until the next time of the schedule

    CronJob/<job id>/cancel()    cancel the scheduled execute(), clear the state
    CronJob/<job id>/getInfo()   the request, next execution time and invocation id

Beyond the original (see README.md, "Behaviour beyond the original"):
- `timezone` (IANA name, default UTC) is honoured by the schedule;
- 6-field expressions have a seconds field first: `*/10 * * * * *` runs every 10 s;
- never two runs of one job at a time, and every due time gets one run: `execute` waits
  for the task and only then schedules the next run; runs that fell behind (slow or
  retrying task, Restate or this service down) run one after another right away, at
  most CRON_CATCH_UP_LIMIT of them;
- `initiate` checks the target against the services registered in Restate (admin API
  at RESTATE_ADMIN_URL): an unknown service or handler is a 400, not a failing job; so
  is an ingress-private handler (a job runs only what a client could call itself).
"""

import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import restate
from croniter import croniter
from croniter.croniter import CroniterError
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

logger = restate.getLogger(__name__)
# httpx logs each admin API lookup at INFO; keep the jobs' own lines visible.
logging.getLogger("httpx").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Settings:
    # where `initiate` looks up the target service and handler; empty: no check
    admin_url: str = os.environ.get("RESTATE_ADMIN_URL", "http://localhost:9070")
    # how many missed due times of a job are made up, at most (older ones are skipped)
    catch_up_limit: int = int(os.environ.get("CRON_CATCH_UP_LIMIT", "10"))


SETTINGS = Settings()


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",  # an unknown field is a 400 that names it
    )


class JobRequest(Model):
    cron_expression: str
    service: str
    method: str
    key: str | None = None
    payload: str | None = None
    timezone: str = "UTC"


class JobInfo(Model):
    request: JobRequest
    next_execution_time: str
    next_execution_id: str


class CreatedJob(Model):
    job_id: str
    next_execution_time: str


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


def bad_request(message: str) -> restate.TerminalError:
    return restate.TerminalError(message, status_code=400)


# --- the schedule -------------------------------------------------------------------


def schedule(expression: str, start: datetime) -> croniter:
    """Cron times around `start`: 5 fields, 6 with seconds first, or @hourly and such."""
    return croniter(expression, start, second_at_beginning=len(expression.split()) == 6)


def check_schedule(request: JobRequest) -> None:
    """A 400 naming the field for an unknown time zone or an invalid expression."""
    try:
        zone = ZoneInfo(request.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise bad_request(f"timezone: unknown time zone {request.timezone!r}") from None
    fields = request.cron_expression.split()
    if not (len(fields) in (5, 6) or (len(fields) == 1 and fields[0].startswith("@"))):
        raise bad_request(
            "cronExpression: expected 5 fields (minute hour day month weekday) or 6 with "
            f"seconds first, got {request.cron_expression!r}"
        )
    try:
        schedule(request.cron_expression, datetime(2000, 1, 1, tzinfo=zone)).get_next(datetime)
    except (CroniterError, ValueError) as error:
        raise bad_request(f"cronExpression: {error}") from None


def next_due(
    request: JobRequest, previous: datetime | None, now: datetime
) -> tuple[datetime, datetime | None]:
    """The next due time, and the first skipped due time if runs were skipped.

    The first run is due at the first time after `now`; later ones at the first time
    after the previous due time, even if that is past already (the run then starts at
    once), unless more than the catch-up limit of due times are past.
    """
    upcoming: datetime = schedule(request.cron_expression, now).get_next(datetime)
    if previous is None:
        return upcoming, None
    due: datetime = schedule(request.cron_expression, previous).get_next(datetime)
    if due > now:
        return due, None
    past = schedule(request.cron_expression, upcoming)
    oldest_kept = upcoming
    for _ in range(SETTINGS.catch_up_limit):
        oldest_kept = past.get_prev(datetime)
    return (due, None) if due >= oldest_kept else (oldest_kept, due)


# --- the target -----------------------------------------------------------------------


def check_target(request: JobRequest) -> str:
    """What is wrong with the target according to Restate's admin API ("" if nothing)."""
    if not SETTINGS.admin_url:
        return ""
    service, method = request.service, request.method
    url = f"{SETTINGS.admin_url}/services/{quote(service, safe='')}"
    try:
        response = httpx.get(url, timeout=10)
    except httpx.HTTPError as error:
        logger.warning("Cannot check the target %s/%s at %s: %s", service, method, url, error)
        return ""
    if response.status_code == 404:
        return f"service: no service {service!r} is registered in Restate"
    if response.status_code != 200:
        logger.warning("Cannot check the target %s/%s: %s", service, method, response.text)
        return ""
    description = response.json()
    public = {
        handler["name"]: handler.get("public", True) for handler in description.get("handlers", [])
    }
    if method not in public:
        return f"method: {service} has no handler {method!r} (its handlers: {sorted(public)})"
    if not public[method] or not description.get("public", True):
        # a job must not open a door that the ingress keeps closed
        return f"method: {service}/{method} is ingress-private: a cron job cannot call it"
    kind = description.get("ty")
    if kind in ("VirtualObject", "Workflow") and request.key is None:
        return f"key: {service} is a {kind}: give the key of the one to call"
    if kind == "Service" and request.key is not None:
        return f"key: {service} is a Service: it takes no key"
    return ""


# --- the services ---------------------------------------------------------------------

cron_job_initiator = restate.Service("CronJobInitiator")
cron_job = restate.VirtualObject("CronJob")

JOB = "job"


@cron_job_initiator.handler(name="create", input_serde=restate.serde.BytesSerde())
async def create(ctx: restate.Context, body: bytes) -> CreatedJob:
    """Create a cron job; answers its id and next execution time."""
    parse(JobRequest, body)
    # a deterministic id: a retry of this invocation creates the same job
    job_id = str(ctx.uuid())
    info = await ctx.object_call(initiate, key=job_id, arg=body)
    return CreatedJob(job_id=job_id, next_execution_time=info.next_execution_time)


@cron_job.handler(name="initiate", input_serde=restate.serde.BytesSerde(), ingress_private=True)
async def initiate(ctx: restate.ObjectContext, body: bytes) -> JobInfo:
    """Start the job with this id: check the request, schedule the first run."""
    if await ctx.get(JOB, type_hint=JobInfo) is not None:
        raise restate.TerminalError(f"job {ctx.key()} exists already", status_code=409)
    request = parse(JobRequest, body)
    check_schedule(request)
    problem = await ctx.run_typed("check target", check_target, request=request)
    if problem:
        raise bad_request(problem)
    return await schedule_next_run(ctx, request, previous=None)


@cron_job.handler(name="execute", ingress_private=True)
async def execute(ctx: restate.ObjectContext) -> None:
    """Run the task that is due, then schedule the next run."""
    info = await ctx.get(JOB, type_hint=JobInfo)
    if info is None or info.next_execution_id != ctx.request().id:
        return  # the job was cancelled (or this is not its scheduled run)
    request = info.request
    # in the job's zone (not just its UTC offset), so that the schedule follows DST
    due = datetime.fromisoformat(info.next_execution_time).astimezone(ZoneInfo(request.timezone))

    def log_start() -> None:
        started = datetime.fromtimestamp(time.time(), due.tzinfo)
        logger.info(
            "Job %s: run due %s started %s", ctx.key(), due.isoformat(), started.isoformat()
        )

    await ctx.run_typed("start run", log_start)
    payload = b"" if request.payload is None else json.dumps(request.payload).encode()
    try:
        # Wait for the task: the next run is scheduled only when this one is done.
        await ctx.generic_call(request.service, request.method, arg=payload, key=request.key)
    except restate.TerminalError as error:
        logger.warning("Job %s: run due %s failed: %s", ctx.key(), due.isoformat(), error)
    await schedule_next_run(ctx, request, previous=due)


async def schedule_next_run(
    ctx: restate.ObjectContext, request: JobRequest, previous: datetime | None
) -> JobInfo:
    now = datetime.fromtimestamp(await ctx.time(), ZoneInfo(request.timezone))
    due, skipped_from = next_due(request, previous, now)
    if skipped_from is not None:
        logger.warning(
            "Job %s: skipping the runs due from %s to before %s (catch-up limit %d)",
            ctx.key(), skipped_from.isoformat(), due.isoformat(), SETTINGS.catch_up_limit,
        )  # fmt: skip
    delay = max(due - now, timedelta(0))
    next_run = ctx.object_send(execute, key=ctx.key(), arg=None, send_delay=delay)
    info = JobInfo(
        request=request,
        next_execution_time=due.isoformat(),
        next_execution_id=await next_run.invocation_id(),
    )
    ctx.set(JOB, info)
    return info


@cron_job.handler(name="cancel")
async def cancel(ctx: restate.ObjectContext) -> None:
    """Cancel the job: its scheduled run does not happen, its state is cleared."""
    info = await ctx.get(JOB, type_hint=JobInfo)
    if info is None:
        raise restate.TerminalError(f"job {ctx.key()} not found", status_code=404)
    ctx.cancel_invocation(info.next_execution_id)
    ctx.clear_all()
    logger.info("Job %s cancelled", ctx.key())


@cron_job.handler(name="getInfo", kind="shared")
async def get_info(ctx: restate.ObjectSharedContext) -> JobInfo:
    """The job's request, next execution time and the id of that scheduled invocation."""
    info = await ctx.get(JOB, type_hint=JobInfo)
    if info is None:
        raise restate.TerminalError(f"job {ctx.key()} not found", status_code=404)
    return info


# --- targets for the examples -----------------------------------------------------------

task_service = restate.Service("TaskService")


def parse_payload(body: bytes) -> str | None:
    """A task's payload: a JSON string, or nothing (no body or `null`); else a 400."""
    try:
        payload = json.loads(body) if body else None
    except (ValueError, RecursionError):
        payload = 0  # not a string: refused below
    if payload is not None and not isinstance(payload, str):
        raise bad_request('payload: expected a JSON string, e.g. "Hello new minute!"')
    return payload


@task_service.handler(name="executeTask", input_serde=restate.serde.BytesSerde())
async def execute_task(ctx: restate.Context, body: bytes) -> None:
    payload = parse_payload(body)

    def run_task() -> None:
        logger.info("Executing task: %s", payload)

    await ctx.run_typed("execute task", run_task)


task_object = restate.VirtualObject("TaskObject")


@task_object.handler(name="executeTask", input_serde=restate.serde.BytesSerde())
async def execute_object_task(ctx: restate.ObjectContext, body: bytes) -> int:
    """The same task on a Virtual Object: counts its runs per key (state `runs`)."""
    payload = parse_payload(body)
    runs = (await ctx.get("runs", type_hint=int) or 0) + 1
    ctx.set("runs", runs)

    def run_task() -> None:
        logger.info("Executing task for %s (run %d): %s", ctx.key(), runs, payload)

    await ctx.run_typed("execute task", run_task)
    return runs


services: list[restate.Service | restate.VirtualObject] = [
    cron_job_initiator,
    cron_job,
    task_service,
    task_object,
]
app = restate.app(services)
