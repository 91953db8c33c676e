"""Reading and writing a SQL database (PostgreSQL) from durable handlers.

A handler may use a database like any other service, but it runs again after a failure:
a retry can read different data, or write a second time what an attempt committed just
before it crashed. Four services show stronger and stronger techniques on one table,
`users (userid, name, address, credits, version)`:

    simple/read                select, not journaled: a retry may see another row
    simple/durableRead         select in a journaled step: every retry sees one value
    simple/insert              insert ... on conflict do nothing: repeating it is harmless
    simple/update              plain update: fine for rare, naturally idempotent changes
    keyed/<userid>/update      one writer per row (a Virtual Object key): no contention,
                               but a commit whose step result was lost applies twice
    keyed/<userid>/updateConditional
                               journaled read of (credits, version), then an update only
                               WHERE version = the journaled version: applies once
    keyed/<userid>/read        shared handler: reads run next to the writes
    idempotency/update         a key from ctx.uuid() inserted in the same transaction as
                               the update (table user_idempotency): applies once
    twoPhaseCommit/update      PREPARE TRANSACTION in one step, COMMIT PREPARED in the
                               next: applies once, no extra table

      attempt 1: [read] --> [update + COMMIT] --X crash (step result not journaled)
      attempt 2: [read]  (replayed)  --> [update again] --> applied twice?  keyed/update: yes
                                                              updateConditional: no (version)
                                                              idempotency: no (key exists)
                                                              twoPhaseCommit: no (2PC)

Every statement binds its parameters (psycopg 3), the DSN is the setting DATABASE_URL, and
a `numeric` column reaches the caller as a JSON number.
"""

import asyncio
import contextlib
import contextvars
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any, TypeVar

import psycopg
import restate
from psycopg import errors
from psycopg.rows import dict_row
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic.alias_generators import to_camel
from restate.serde import BytesSerde
from restate.server_types import Receive, RestateAppT, Scope, Send

logger = restate.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    # the original's database; ./dev run starts a PostgreSQL of its own and sets this
    database_url: str = os.environ.get(
        "DATABASE_URL", "postgresql://restatedb:restatedb@localhost:5432/exampledb"
    )
    connect_timeout: int = int(os.environ.get("DATABASE_CONNECT_TIMEOUT_SECONDS", "10"))
    # a statement that waits longer (e.g. on a row locked by a prepared transaction that a
    # crash left behind) fails, and Restate retries the step
    statement_timeout: timedelta = field(
        default_factory=lambda: timedelta(
            seconds=float(os.environ.get("DATABASE_STATEMENT_TIMEOUT_SECONDS", "30"))
        )
    )
    # idempotency/update deletes its key this long after the update
    idempotency_key_expiry: timedelta = field(
        default_factory=lambda: timedelta(
            seconds=float(os.environ.get("IDEMPOTENCY_KEY_EXPIRY_SECONDS", str(24 * 3600)))
        )
    )
    # For demonstrations and tests: the service process dies at this moment, before Restate
    # has journaled the step's result: "after-commit" (a transaction, or COMMIT PREPARED,
    # committed), "after-prepare" (PREPARE TRANSACTION done), "after-read" (a journaled
    # read, of durableRead or updateConditional, is in the journal, not used yet).
    crash_at: str = os.environ.get("DATABASE_CRASH_AT", "")


SETTINGS = Settings()
CRASH_POINTS = ("after-commit", "after-prepare", "after-read")
if SETTINGS.crash_at not in ("", *CRASH_POINTS):
    raise ValueError(f"DATABASE_CRASH_AT must be one of {', '.join(CRASH_POINTS)}")


def crash_point(moment: str) -> None:
    if SETTINGS.crash_at == moment:
        logger.warning("DATABASE_CRASH_AT=%s: the service process exits now", moment)
        os._exit(137)  # like kill -9: no cleanup, no answer to Restate


# --- input ----------------------------------------------------------------------------


def storable(text: str) -> str:
    """PostgreSQL text cannot hold NUL characters, and the driver sends UTF-8."""
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return text


UserId = Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(storable)]
Text = Annotated[str, StringConstraints(max_length=255), AfterValidator(storable)]
# whole credits; bounded so that no sum ever gets near numeric's limits
Credits = Annotated[int, Field(strict=True, ge=-(10**15), le=10**15)]


class Request(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", strict=True
    )


class NewUser(Request):
    user_id: UserId
    name: Text
    address: Text
    credits: Credits


class NameChange(Request):
    user_id: UserId
    new_name: Text


class AddCredits(Request):
    user_id: UserId
    add_credits: Credits


T = TypeVar("T")
USER_ID: TypeAdapter[str] = TypeAdapter(UserId)
CREDITS: TypeAdapter[int] = TypeAdapter(Credits)


def parse(adapter: TypeAdapter[T], raw: bytes) -> T:
    """The body, validated; a 400 naming the field otherwise (never a retry loop)."""
    try:
        return adapter.validate_json(raw or b"null")
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}"
            for e in error.errors()
        )
        raise restate.TerminalError(f"invalid request: {problems}", status_code=400) from None


def object_key(ctx: restate.ObjectContext | restate.ObjectSharedContext) -> str:
    """The object key is the userid: the same rules as a userid in a body."""
    try:
        return USER_ID.validate_python(ctx.key())
    except ValidationError as error:
        message = error.errors()[0]["msg"]
        raise restate.TerminalError(
            f"invalid request: userid (the key): {message}", status_code=400
        ) from None


# --- output ---------------------------------------------------------------------------


def number(value: Decimal) -> int | float:
    """A `numeric` value as a JSON number (the driver gives Decimal, which is not JSON)."""
    return int(value) if value == value.to_integral_value() else float(value)


class Row(BaseModel):
    """A row of `users`, with the column names."""

    userid: str
    name: str
    address: str
    credits: int | float
    version: int | float

    @staticmethod
    def of(row: dict[str, Any]) -> "Row":
        return Row(userid=row["userid"], name=row["name"], address=row["address"],
                   credits=number(row["credits"]), version=number(row["version"]))  # fmt: skip


class Balance(BaseModel):
    """What updateConditional journals: exact decimals (as JSON strings)."""

    credits: Decimal
    version: Decimal


def not_found(userid: str) -> restate.TerminalError:
    return restate.TerminalError(f"No row with userid = '{userid}'", status_code=404)


# --- the database ---------------------------------------------------------------------


async def open_connection(**options: Any) -> psycopg.AsyncConnection[dict[str, Any]]:
    timeout_ms = int(SETTINGS.statement_timeout.total_seconds() * 1000)
    return await psycopg.AsyncConnection.connect(
        SETTINGS.database_url,
        connect_timeout=SETTINGS.connect_timeout,
        options=f"-c statement_timeout={timeout_ms}",
        row_factory=dict_row,
        **options,
    )


@asynccontextmanager
async def connect(**options: Any) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
    """One connection per step: commits when the block ends normally, rolls back when it
    raises, and is closed either way."""
    async with await open_connection(**options) as conn:
        yield conn


async def select_row(userid: str) -> Row:
    async with connect() as conn:
        cursor = await conn.execute(
            "SELECT userid, name, address, credits, version FROM users WHERE userid = %s",
            (userid,),
        )
        row = await cursor.fetchone()
    if row is None:
        raise not_found(userid)
    return Row.of(row)


# --- simple: plain reads and writes -----------------------------------------------------

simple = restate.Service("simple")


@simple.handler(name="read", input_serde=BytesSerde())
async def simple_read(ctx: restate.Context, body: bytes) -> Row:
    """The row of a userid. Not journaled: a retry of this invocation may see another row."""
    return await select_row(parse(USER_ID, body))


async def read_credits(userid: str) -> str:
    async with connect() as conn:
        cursor = await conn.execute("SELECT credits FROM users WHERE userid = %s", (userid,))
        row = await cursor.fetchone()
    if row is None:
        raise not_found(userid)
    return str(row["credits"])  # the exact decimal, as the journal keeps it


@simple.handler(name="durableRead", input_serde=BytesSerde())
async def durable_read(ctx: restate.Context, body: bytes) -> int | float:
    """The credits of a userid, read in a journaled step: every retry of this invocation
    sees the same value, and so takes the same branch below."""
    userid = parse(USER_ID, body)
    credits = Decimal(await ctx.run_typed("read credits", read_credits, userid=userid))
    crash_point("after-read")
    if credits == 0:
        logger.info("Found an account without balance, doing something about it...")
    return number(credits)


async def insert_user(user: NewUser) -> bool:
    async with connect() as conn:
        cursor = await conn.execute(
            "INSERT INTO users (userid, name, address, credits, version) "
            "VALUES (%s, %s, %s, %s, 0) ON CONFLICT (userid) DO NOTHING",
            (user.user_id, user.name, user.address, user.credits),
        )
        await conn.commit()
        crash_point("after-commit")
        return cursor.rowcount == 1


@simple.handler(name="insert", input_serde=BytesSerde())
async def simple_insert(ctx: restate.Context, body: bytes) -> bool:
    """Insert a user; `true` if this call inserted the row. The primary key makes a
    repeated or retried insert harmless: it inserts nothing and answers `false`."""
    user = parse(TypeAdapter(NewUser), body)
    return await ctx.run_typed("insert user", insert_user, user=user)


async def set_name(change: NameChange) -> bool:
    async with connect() as conn:
        cursor = await conn.execute(
            "UPDATE users SET name = %s WHERE userid = %s", (change.new_name, change.user_id)
        )
        await conn.commit()
        crash_point("after-commit")
        return cursor.rowcount == 1


@simple.handler(name="update", input_serde=BytesSerde())
async def simple_update(ctx: restate.Context, body: bytes) -> bool:
    """Rename a user; `true` if a row changed. No guard against repeats: setting a name
    twice is harmless (naturally idempotent), adding credits twice would not be."""
    change = parse(TypeAdapter(NameChange), body)
    return await ctx.run_typed("update name", set_name, change=change)


# --- keyed: one writer per row ----------------------------------------------------------

keyed = restate.VirtualObject("keyed")


async def add_credits(userid: str, amount: int) -> None:
    async with connect() as conn:
        cursor = await conn.execute(
            "UPDATE users SET credits = credits + %s WHERE userid = %s", (amount, userid)
        )
        if cursor.rowcount != 1:
            raise not_found(userid)
        await conn.commit()
        crash_point("after-commit")


@keyed.handler(name="update", input_serde=BytesSerde())
async def keyed_update(ctx: restate.ObjectContext, body: bytes) -> None:
    """Add credits to the row of the key. Calls for one key run one at a time, so they never
    contend for the row; but if the service dies after the commit and before Restate has
    journaled the step, the retry adds the credits a second time."""
    amount = parse(CREDITS, body)
    await ctx.run_typed("add credits", add_credits, userid=object_key(ctx), amount=amount)


async def read_balance(userid: str) -> Balance:
    async with connect() as conn:
        cursor = await conn.execute(
            "SELECT credits, version FROM users WHERE userid = %s", (userid,)
        )
        rows = await cursor.fetchall()
    if len(rows) != 1:
        raise restate.TerminalError(f"No single row with userid = '{userid}'", status_code=404)
    return Balance(credits=rows[0]["credits"], version=rows[0]["version"])


async def add_credits_if_unchanged(userid: str, amount: int, read: Balance) -> bool:
    async with connect() as conn:
        # Relative to the row as it is (another service may have added credits since the
        # read), but only while the version is the one journaled with the read.
        cursor = await conn.execute(
            "UPDATE users SET credits = credits + %s, version = version + 1 "
            "WHERE userid = %s AND version = %s",
            (amount, userid, read.version),
        )
        await conn.commit()
        crash_point("after-commit")
        return cursor.rowcount == 1


@keyed.handler(name="updateConditional", input_serde=BytesSerde())
async def update_conditional(ctx: restate.ObjectContext, body: bytes) -> None:
    """Add credits exactly once: the read of (credits, version) is journaled, and the update
    applies only while the row still has that version, which the update bumps. A retry
    after a committed update replays the old version, matches no row, changes nothing.
    Only this handler writes `version`, one call per key at a time (a Virtual Object), so
    nothing else can move the version between the read and the update."""
    amount = parse(CREDITS, body)
    userid = object_key(ctx)
    read = await ctx.run_typed("read credits, version", read_balance, userid=userid)
    crash_point("after-read")
    applied = await ctx.run_typed(
        "update credits, version", add_credits_if_unchanged, userid=userid, amount=amount,
        read=read,
    )  # fmt: skip
    if not applied:
        logger.info("Update was not applied - version no longer matches.")


@keyed.handler(name="read", kind="shared")
async def keyed_read(ctx: restate.ObjectSharedContext) -> Row:
    """The row of the key. Shared: runs at once, also while an update of the key runs."""
    return await select_row(object_key(ctx))


# --- idempotency: a key table written in the same transaction ----------------------------

idempotency = restate.Service("idempotency")


async def add_credits_once(key: str, request: AddCredits) -> bool:
    """In one serializable transaction: record the key, add the credits. False if the key
    was there already (an earlier attempt of this invocation committed)."""
    async with connect() as conn:
        await conn.set_isolation_level(psycopg.IsolationLevel.SERIALIZABLE)
        cursor = await conn.execute(
            "INSERT INTO user_idempotency (id) VALUES (%s) ON CONFLICT (id) DO NOTHING", (key,)
        )
        if cursor.rowcount == 0:
            await conn.rollback()
            return False
        cursor = await conn.execute(
            "UPDATE users SET credits = credits + %s WHERE userid = %s",
            (request.add_credits, request.user_id),
        )
        if cursor.rowcount != 1:
            raise not_found(request.user_id)  # the block rolls back the key too
        await conn.commit()
        crash_point("after-commit")
        return True


@idempotency.handler(name="update", input_serde=BytesSerde())
async def idempotency_update(ctx: restate.Context, body: bytes) -> None:
    """Add credits exactly once per invocation, with a key from the context's deterministic
    random source (the same on every retry), kept for a day."""
    request = parse(TypeAdapter(AddCredits), body)
    key = str(ctx.uuid())
    ctx.service_send(
        expire_idempotency_key, json.dumps(key).encode(), send_delay=SETTINGS.idempotency_key_expiry
    )
    applied = await ctx.run_typed("add credits once", add_credits_once, key=key, request=request)
    if not applied:
        logger.info("Credits already added by an earlier attempt (key %s)", key)


async def delete_key(key: str) -> None:
    async with connect() as conn:
        await conn.execute("DELETE FROM user_idempotency WHERE id = %s", (key,))


@idempotency.handler(name="expireIdempotencyKey", input_serde=BytesSerde(), ingress_private=True)
async def expire_idempotency_key(ctx: restate.Context, body: bytes) -> None:
    """Internal: idempotency/update sends this to itself, delayed."""
    key = parse(TypeAdapter(Text), body)
    await ctx.run_typed("delete idempotency key", delete_key, key=key)


# --- twoPhaseCommit: PREPARE in one step, COMMIT PREPARED in the next --------------------

two_phase_commit = restate.Service("twoPhaseCommit")

# The HTTP version of the request that runs the current invocation attempt (see `app`).
http_version: contextvars.ContextVar[str] = contextvars.ContextVar("http_version", default="2")


def require_bidirectional_stream() -> None:
    """The technique below tells a step that ran now from one replayed from the journal.
    In request/response mode (an HTTP/1.1 registration, `use_http_11`, or Lambda) Restate
    acknowledges each step only by invoking the handler again, which replays it: the
    handler would loop forever. Refuse instead."""
    if http_version.get() == "1.1":
        raise restate.TerminalError(
            "twoPhaseCommit/update needs a bidirectional stream (HTTP/2) between Restate "
            "and this service, but this deployment is registered request/response "
            "(HTTP/1.1, use_http_11): register it again without use_http_11",
            status_code=500,
        )


async def rollback_prepared(txn_id: str) -> None:
    """ROLLBACK PREPARED, if a transaction with this id is prepared."""
    async with connect(autocommit=True) as conn:
        with contextlib.suppress(errors.UndefinedObject):  # 42704: no such prepared txn
            await conn.tpc_rollback(txn_id)


async def prepare(txn_id: str, request: AddCredits) -> None:
    conn = await open_connection()
    try:
        await conn.tpc_begin(txn_id)  # psycopg quotes the id: no SQL built from strings
        cursor = await conn.execute(
            "UPDATE users SET credits = credits + %s WHERE userid = %s",
            (request.add_credits, request.user_id),
        )
        if cursor.rowcount != 1:
            raise not_found(request.user_id)  # closing the connection rolls back
        await conn.tpc_prepare()  # PREPARE TRANSACTION: it outlives this connection
    finally:
        await conn.close()
    crash_point("after-prepare")


async def attempt_transaction(txn_id: str, generated_now: bool, request: AddCredits) -> bool:
    """Prepare the update under `txn_id`; True once prepared. An id replayed from the
    journal came from an earlier attempt that may have prepared it before it died: roll
    that back, and answer False (the caller draws a new id)."""
    if not generated_now:
        await rollback_prepared(txn_id)
        return False
    try:
        await prepare(txn_id, request)
    except BaseException:
        # whatever failed: no prepared transaction may stay behind holding the row lock
        await asyncio.shield(rollback_prepared(txn_id))
        raise
    return True


async def commit_prepared(txn_id: str) -> None:
    async with connect(autocommit=True) as conn:
        try:
            await conn.tpc_commit(txn_id)  # COMMIT PREPARED
        except errors.UndefinedObject:
            # 42704: an earlier attempt committed it and died before the step was journaled
            # (only this invocation could have rolled it back, and it never does after the
            # prepare step answered true)
            logger.info("Transaction %s was committed by an earlier attempt", txn_id)
            return
        crash_point("after-commit")


# Between its steps the handler must stay on one connection (see above): Restate suspends
# an invocation only after it has been inactive this long. (A server configured to suspend
# at every await, as the tests' replay pass does, would otherwise make it loop like
# request/response mode does.)
STAY_CONNECTED = timedelta(minutes=1)  # restate-server's default inactivity timeout


@two_phase_commit.handler(
    name="update", input_serde=BytesSerde(), inactivity_timeout=STAY_CONNECTED
)
async def two_phase_update(ctx: restate.Context, body: bytes) -> None:
    """Add credits exactly once, with PostgreSQL's two-phase commit."""
    request = parse(TypeAdapter(AddCredits), body)
    require_bidirectional_stream()
    while True:
        generated_now = False

        def new_transaction_id() -> str:
            nonlocal generated_now
            generated_now = True  # not set when the step is replayed from the journal
            return str(uuid.uuid4())

        txn_id = await ctx.run_typed("generate transaction id", new_transaction_id)
        prepared = await ctx.run_typed(
            "run txn attempt (or cleanup old txn)", attempt_transaction, txn_id=txn_id,
            generated_now=generated_now, request=request,
        )  # fmt: skip
        if prepared:
            break
    await ctx.run_typed("commit prepared transaction", commit_prepared, txn_id=txn_id)


def remember_http_version(asgi_app: RestateAppT) -> RestateAppT:
    """Note each request's HTTP version for require_bidirectional_stream (the SDK's app
    does not pass it to handlers)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            http_version.set(scope["http_version"])
        await asgi_app(scope, receive, send)

    return app


services: list[restate.Service | restate.VirtualObject] = [
    simple,
    keyed,
    idempotency,
    two_phase_commit,
]
# With IDENTITY_KEYS the serving file serves restate.app(services, identity_keys=...) instead
# of this app, without the HTTP-version note: the request/response refusal then does not apply.
app = remember_http_version(restate.app(services))
