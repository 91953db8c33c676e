"""Durable promises as a service: named, write-once promises any process can await over HTTP.

A promise is a Virtual Object `promises/<id>`. Its state holds the outcome once there is one
(`{"value": ...}` or `{"error": "..."}`) and the awakeable ids of the callers waiting for it.
The object runs one call per key at a time, so the first completion wins without locks:

    caller A --await------> durablePromiseServer/await --+-- awakeable --------------------+
                                                         |                                 |
                            promises/<id>/await <--------+ (parks the awakeable id)        |
                                                                                           |
    caller B --resolve----> durablePromiseServer/resolve --> promises/<id>/resolve         |
                                                  stores {"value": ...} first time only,   |
                                                  resolves every parked awakeable ---------+
                                                                                           v
                                                                   caller A gets {"value": ...}

Either side may come first and they never need to run at the same time: an awaiter that
arrives after the completion gets the stored outcome at once, and a parked awaiter survives
restarts of this service and of Restate (the awakeable and the parked id are durable).
A later resolve or reject changes nothing and answers with the stored outcome. `peek`
answers `null` while the promise is not completed: "resolved with null" is `{"value": null}`.
`dispose` rejects the parked awaiters and forgets the promise, so its id can be used again.

`durablePromiseServer` takes the request envelope of the original README
(`{"request": {"promiseName": ...}}`); `promise` offers the same with the flat body of the
original's code (`{"promiseId": ...}`).

`qna` shows the promise client used inside a handler (client.py): `ask` waits for the answer
to a question, `answer` gives it, in any order.
"""

import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import restate
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from .client import DISPOSED_CODE, DISPOSED_MESSAGE, DurablePromise, durable_promise

logger = restate.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    # How long durablePromiseServer/await waits before it answers 408; 0 waits for ever, as
    # the original does (a caller can also use /send and attach to the invocation later).
    await_timeout: timedelta = timedelta(
        seconds=float(os.environ.get("PROMISE_AWAIT_TIMEOUT_SECONDS", "0"))
    )


SETTINGS = Settings()

BYTES = restate.serde.BytesSerde()
NULL = b"null"  # the answer for "not completed"

# --- input validation ----------------------------------------------------------------------


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Named(Model):
    promise_name: str = Field(min_length=1)


class ToResolve(Named):
    value: Any  # required, any JSON value, null too


class ToReject(Named):
    error_message: str = Field(min_length=1)


class NamedRequest(Model):
    request: Named


class ResolveRequest(Model):
    request: ToResolve


class RejectRequest(Model):
    request: ToReject


M = TypeVar("M", bound=BaseModel)


def bad_input(message: str) -> restate.TerminalError:
    return restate.TerminalError(f"Invalid request: {message}", status_code=400)


def parse(model: type[M], body: bytes) -> M:
    """Validate a JSON body; a 400 naming each bad field (camelCase path) if it is wrong."""
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
            for problem in error.errors()
        )
        raise bad_input(problems) from None


def to_json(value: Any, where: str) -> bytes:
    """Canonical JSON of a value read from a request; 400 if JSON cannot carry it (1e400)."""
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
    except (ValueError, RecursionError):
        raise bad_input(f"{where}: not a value JSON can carry (a number too large?)") from None


def json_body(body: bytes, what: str) -> Any:
    """The JSON value of a body; 400 if it is empty or not JSON."""
    if not body.strip():
        raise bad_input(f"body: expected {what}, got an empty body")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        raise bad_input(f"body: expected {what}, got invalid JSON") from None


def text_body(body: bytes, what: str) -> str:
    value = json_body(body, what)
    if not isinstance(value, str) or not value:
        raise bad_input(f"body: expected {what}")
    return value


# --- the promise: one Virtual Object per promise id ----------------------------------------

promises = restate.VirtualObject("promises")


async def complete(ctx: restate.ObjectContext, outcome: bytes, verb: str) -> bytes:
    """Store the outcome unless there is one already; wake the parked awaiters."""
    stored = await ctx.get("value", serde=BYTES)
    if stored is not None:
        logger.info("Promise %s is already completed: %s ignored", ctx.key(), verb)
        return stored
    ctx.set("value", outcome, serde=BYTES)
    listeners = await ctx.get("listeners", type_hint=list[str]) or []
    for awakeable_id in listeners:
        ctx.resolve_awakeable(awakeable_id, outcome, serde=BYTES)
    ctx.clear("listeners")
    logger.info("Promise %s %s, %d awaiter(s) notified", ctx.key(), verb, len(listeners))
    return outcome


@promises.handler(input_serde=BYTES, output_serde=BYTES)
async def resolve(ctx: restate.ObjectContext, body: bytes) -> bytes:
    """Resolve with the body (any JSON value); the outcome that holds. No body resolves with
    `null`, as the original's `resolve()` without a value does (JSON has no `undefined`)."""
    value = json_body(body, "a JSON value") if body else None
    return await complete(ctx, b'{"value":' + to_json(value, "body") + b"}", "resolved")


@promises.handler(input_serde=BYTES, output_serde=BYTES)
async def reject(ctx: restate.ObjectContext, body: bytes) -> bytes:
    """Reject with the body (a JSON string: the error message); the outcome that holds."""
    message = text_body(body, "the error message as a JSON string")
    return await complete(ctx, to_json({"error": message}, "body"), "rejected")


@promises.handler(kind="shared", output_serde=BYTES)
async def peek(ctx: restate.ObjectSharedContext) -> bytes:
    """The outcome, or `null` while there is none. Never waits, never changes anything."""
    return await ctx.get("value", serde=BYTES) or NULL


@promises.handler(name="await", input_serde=BYTES, output_serde=BYTES, ingress_private=True)
async def await_(ctx: restate.ObjectContext, body: bytes) -> bytes:
    """Internal: deliver the outcome to this awakeable now, or park it until there is one."""
    awakeable_id = text_body(body, "an awakeable id as a JSON string")
    stored = await ctx.get("value", serde=BYTES)
    if stored is not None:
        ctx.resolve_awakeable(awakeable_id, stored, serde=BYTES)
        return stored
    listeners = await ctx.get("listeners", type_hint=list[str]) or []
    ctx.set("listeners", [*listeners, awakeable_id])
    logger.info("Promise %s is not completed yet: awaiter parked", ctx.key())
    return NULL


@promises.handler(input_serde=BYTES, ingress_private=True)
async def forget(ctx: restate.ObjectContext, body: bytes) -> None:
    """Internal: an awaiter gave up (cancelled or timed out): stop tracking its awakeable."""
    awakeable_id = text_body(body, "an awakeable id as a JSON string")
    listeners = await ctx.get("listeners", type_hint=list[str]) or []
    if awakeable_id in listeners:
        remaining = [other for other in listeners if other != awakeable_id]
        if remaining:
            ctx.set("listeners", remaining)
        else:
            ctx.clear("listeners")


@promises.handler()
async def dispose(ctx: restate.ObjectContext) -> None:
    """Reject the parked awaiters and forget the promise; its id can be used again."""
    listeners = await ctx.get("listeners", type_hint=list[str]) or []
    for awakeable_id in listeners:
        ctx.reject_awakeable(awakeable_id, DISPOSED_MESSAGE, failure_code=DISPOSED_CODE)
    ctx.clear_all()
    logger.info("Promise %s disposed, %d awaiter(s) rejected", ctx.key(), len(listeners))


# --- the HTTP face: the envelope of the original README, and the original code's flat body --


async def resolve_promise(ctx: restate.Context, name: str, value: Any, field: str) -> bytes:
    return await ctx.generic_call("promises", "resolve", to_json(value, field), key=name)


async def reject_promise(ctx: restate.Context, name: str, message: str) -> bytes:
    return await ctx.generic_call("promises", "reject", json.dumps(message).encode(), key=name)


async def peek_promise(ctx: restate.Context, name: str) -> bytes:
    return await ctx.generic_call("promises", "peek", b"", key=name)


async def await_promise(ctx: restate.Context, name: str) -> bytes:
    """Park an awakeable on the promise and wait for it (a rejection is an outcome too)."""
    awakeable_id, outcome = ctx.awakeable(serde=BYTES)
    parked = json.dumps(awakeable_id).encode()
    now = await ctx.generic_call("promises", "await", parked, key=name)
    if now != NULL:
        return now  # completed already (the object resolved the awakeable as well)
    try:
        if not SETTINGS.await_timeout:
            return await outcome
        match await restate.select(outcome=outcome, timeout=ctx.sleep(SETTINGS.await_timeout)):
            case ["outcome", delivered]:
                return bytes(delivered)
            case _:
                raise restate.TerminalError(
                    f"Promise {name} was not completed within "
                    f"{SETTINGS.await_timeout.total_seconds():g} s",
                    status_code=408,
                )
    except restate.TerminalError as error:
        if error.status_code != DISPOSED_CODE:  # cancelled or timed out: stop listening
            await ctx.generic_call("promises", "forget", parked, key=name)
        raise


async def dispose_promise(ctx: restate.Context, name: str) -> None:
    await ctx.generic_call("promises", "dispose", b"", key=name)


server = restate.Service("durablePromiseServer")


@server.handler(name="resolve", input_serde=BYTES, output_serde=BYTES)
async def server_resolve(ctx: restate.Context, body: bytes) -> bytes:
    """`{"request": {"promiseName", "value"}}`: resolve; the outcome that holds."""
    request = parse(ResolveRequest, body).request
    return await resolve_promise(ctx, request.promise_name, request.value, "request.value")


@server.handler(name="reject", input_serde=BYTES, output_serde=BYTES)
async def server_reject(ctx: restate.Context, body: bytes) -> bytes:
    """`{"request": {"promiseName", "errorMessage"}}`: reject; the outcome that holds."""
    request = parse(RejectRequest, body).request
    return await reject_promise(ctx, request.promise_name, request.error_message)


@server.handler(name="peek", input_serde=BYTES, output_serde=BYTES)
async def server_peek(ctx: restate.Context, body: bytes) -> bytes:
    """`{"request": {"promiseName"}}`: the outcome, or `null` if not completed."""
    return await peek_promise(ctx, parse(NamedRequest, body).request.promise_name)


@server.handler(name="await", input_serde=BYTES, output_serde=BYTES)
async def server_await(ctx: restate.Context, body: bytes) -> bytes:
    """`{"request": {"promiseName"}}`: wait for the outcome (a rejection is a 200 too)."""
    return await await_promise(ctx, parse(NamedRequest, body).request.promise_name)


@server.handler(name="dispose", input_serde=BYTES)
async def server_dispose(ctx: restate.Context, body: bytes) -> None:
    """`{"request": {"promiseName"}}`: reject the awaiters and forget the promise."""
    await dispose_promise(ctx, parse(NamedRequest, body).request.promise_name)


class PromiseId(Model):
    promise_id: str = Field(min_length=1)


class FlatResolve(PromiseId):
    # any JSON value, null too; absent (the original's client resolving with `undefined`,
    # which JSON drops) resolves with null
    value: Any = None


class FlatReject(PromiseId):
    error_message: str = Field(min_length=1)


# The same with the flat body of the original's code: {"promiseId": ..., "value": ...}.
flat = restate.Service("promise")


@flat.handler(name="resolve", input_serde=BYTES, output_serde=BYTES)
async def flat_resolve(ctx: restate.Context, body: bytes) -> bytes:
    """`{"promiseId", "value"}`: resolve; the outcome that holds."""
    request = parse(FlatResolve, body)
    return await resolve_promise(ctx, request.promise_id, request.value, "value")


@flat.handler(name="reject", input_serde=BYTES, output_serde=BYTES)
async def flat_reject(ctx: restate.Context, body: bytes) -> bytes:
    """`{"promiseId", "errorMessage"}`: reject; the outcome that holds."""
    request = parse(FlatReject, body)
    return await reject_promise(ctx, request.promise_id, request.error_message)


@flat.handler(name="peek", input_serde=BYTES, output_serde=BYTES)
async def flat_peek(ctx: restate.Context, body: bytes) -> bytes:
    """`{"promiseId"}`: the outcome, or `null` if not completed."""
    return await peek_promise(ctx, parse(PromiseId, body).promise_id)


@flat.handler(name="await", input_serde=BYTES, output_serde=BYTES)
async def flat_await(ctx: restate.Context, body: bytes) -> bytes:
    """`{"promiseId"}`: wait for the outcome (a rejection is a 200 too)."""
    return await await_promise(ctx, parse(PromiseId, body).promise_id)


@flat.handler(name="dispose", input_serde=BYTES)
async def flat_dispose(ctx: restate.Context, body: bytes) -> None:
    """`{"promiseId"}`: reject the awaiters and forget the promise."""
    await dispose_promise(ctx, parse(PromiseId, body).promise_id)


# --- the client inside a handler: questions and answers ------------------------------------


class Answer(Model):
    question_id: str = Field(min_length=1)
    answer: str


qna = restate.Service("qna")


def question_promise(ctx: restate.Context, question_id: str) -> DurablePromise:
    return durable_promise(f"question-{question_id}", ctx)


@qna.handler(input_serde=BYTES)
async def ask(ctx: restate.Context, body: bytes) -> dict[str, Any]:
    """A question id (JSON string): wait until someone answers it; `{"answer": ...}`."""
    question_id = text_body(body, "the question id as a JSON string")
    answer = await question_promise(ctx, question_id).get()
    return {"answer": answer}


@qna.handler(name="answer", input_serde=BYTES)
async def give_answer(ctx: restate.Context, body: bytes) -> dict[str, Any]:
    """`{"questionId", "answer"}`: answer the question (the first answer counts)."""
    request = parse(Answer, body)
    answer = await question_promise(ctx, request.question_id).resolve(request.answer)
    return {"answer": answer}


services: list[restate.Service | restate.VirtualObject] = [promises, server, flat, qna]
app = restate.app(services)
