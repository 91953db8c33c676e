"""The promise client: use a durable promise from a handler or from any other process.

    promise = durable_promise("my-promise")                          # through the ingress
    promise = durable_promise("my-promise", "http://localhost:8080")  # another ingress
    promise = durable_promise("my-promise", ctx)                     # inside a handler

    await promise.peek()           # the Outcome, or None while not completed
    await promise.get()            # wait for the value (raises PromiseRejectedError)
    await promise.resolve(value)   # the value that holds: the first completion wins
    await promise.reject("why")    # the same; raises if the outcome that holds is an error
    await promise.dispose()        # forget it; parked awaiters fail with 410

Inside a handler every call is a durable call of the `promises` object (waiting is an
awakeable the object resolves), so a handler that waits for a promise survives crashes and
suspends meanwhile. Outside, the client calls `durablePromiseServer` through the ingress.
Errors are terminal (`restate.TerminalError`), so a handler does not retry a rejection.

    python -m promiseasaservice.client [promise-id] [restateUri]

runs a small demo: peek, await, resolve, and a reject that comes too late. The ingress
defaults to RESTATE_INGRESS_URL or http://localhost:8080.
"""

import abc
import asyncio
import functools
import json
import os
import ssl
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import restate

INGRESS_URL = os.environ.get("RESTATE_INGRESS_URL", "http://localhost:8080")
DISPOSED_MESSAGE = "promise was disposed"
DISPOSED_CODE = 410  # Gone: what a parked awaiter gets when the promise is disposed
BYTES = restate.serde.BytesSerde()


class PromiseRejectedError(restate.TerminalError):
    """The promise's outcome is an error (terminal: a handler does not retry it)."""

    def __init__(self, promise_id: str, message: str) -> None:
        super().__init__(message, status_code=500)
        self.promise_id = promise_id


@dataclass(frozen=True)
class Outcome:
    """How a promise was completed: resolved with `value`, or rejected with `error`."""

    value: Any = None
    error: str | None = None

    @property
    def resolved(self) -> bool:
        return self.error is None

    @classmethod
    def from_json(cls, data: Any) -> "Outcome":
        if isinstance(data, dict) and isinstance(data.get("error"), str) and len(data) == 1:
            return cls(error=data["error"])
        if isinstance(data, dict) and "value" in data and len(data) == 1:
            return cls(value=data["value"])
        raise ValueError(f"not an outcome: {data!r}")

    def unwrap(self, promise_id: str) -> Any:
        """The value; raises PromiseRejectedError if the promise was rejected."""
        if self.error is not None:
            raise PromiseRejectedError(promise_id, self.error)
        return self.value


def outcome_of(answer: bytes) -> Outcome | None:
    data = json.loads(answer) if answer.strip() else None
    return None if data is None else Outcome.from_json(data)


class DurablePromise(abc.ABC):
    """A named durable promise; `promise_id` names it for everyone who uses it."""

    def __init__(self, promise_id: str) -> None:
        self.promise_id = promise_id

    async def get(self) -> Any:
        """Wait until the promise is completed; its value (raises if it was rejected)."""
        return (await self.outcome()).unwrap(self.promise_id)

    async def resolve(self, value: Any = None) -> Any:
        """Resolve it; the value that holds (the first completion's)."""
        return (await self._complete("resolve", value)).unwrap(self.promise_id)

    async def reject(self, message: str) -> Any:
        """Reject it; the value that holds if it was resolved first, else raises."""
        return (await self._complete("reject", message)).unwrap(self.promise_id)

    @abc.abstractmethod
    async def peek(self) -> Outcome | None:
        """The outcome if the promise is completed, else None. Never waits."""

    @abc.abstractmethod
    async def outcome(self) -> Outcome:
        """Wait until the promise is completed; its outcome."""

    @abc.abstractmethod
    async def dispose(self) -> None:
        """Forget the promise: parked awaiters fail, the id can be used again."""

    @abc.abstractmethod
    async def _complete(self, verb: str, payload: Any) -> Outcome: ...


class HandlerPromise(DurablePromise):
    """A promise used inside a handler: durable calls of the `promises` object."""

    def __init__(self, promise_id: str, ctx: restate.Context) -> None:
        super().__init__(promise_id)
        self.ctx = ctx

    async def _call(self, handler: str, payload: bytes = b"") -> bytes:
        return await self.ctx.generic_call("promises", handler, payload, key=self.promise_id)

    async def peek(self) -> Outcome | None:
        return outcome_of(await self._call("peek"))

    async def outcome(self) -> Outcome:
        awakeable_id, delivered = self.ctx.awakeable(serde=BYTES)
        await self._call("await", json.dumps(awakeable_id).encode())
        found = outcome_of(await delivered)  # a disposed promise raises TerminalError here
        assert found is not None  # the object delivers outcomes only
        return found

    async def dispose(self) -> None:
        await self._call("dispose")

    async def _complete(self, verb: str, payload: Any) -> Outcome:
        found = outcome_of(await self._call(verb, json.dumps(payload).encode()))
        assert found is not None
        return found


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context per process: building one (loading the CA certificates) for every
    client costs far more than the call itself."""
    return ssl.create_default_context()


class IngressPromise(DurablePromise):
    """A promise used from any process: `durablePromiseServer` through Restate's ingress."""

    def __init__(
        self,
        promise_id: str,
        ingress_url: str = INGRESS_URL,
        timeout: float = 30.0,
        await_timeout: float = 300.0,
    ) -> None:
        super().__init__(promise_id)
        if "://" not in ingress_url:  # "localhost:8080", as the original README writes it
            ingress_url = f"http://{ingress_url}"
        self.ingress_url = ingress_url.rstrip("/")
        self.timeout = timeout
        self.await_timeout = await_timeout

    async def _call(self, handler: str, waits: bool = False, **fields: Any) -> bytes:
        body = {"request": {"promiseName": self.promise_id, **fields}}
        timeout = self.await_timeout if waits else self.timeout
        async with httpx.AsyncClient(timeout=timeout, verify=tls_context()) as client:
            response = await client.post(
                f"{self.ingress_url}/durablePromiseServer/{handler}", json=body
            )
        if response.status_code >= 400:
            try:
                message = str(response.json()["message"])
            except (ValueError, KeyError, TypeError):
                message = response.text
            raise restate.TerminalError(message, status_code=response.status_code)
        return response.content

    async def peek(self) -> Outcome | None:
        return outcome_of(await self._call("peek"))

    async def outcome(self) -> Outcome:
        found = outcome_of(await self._call("await", waits=True))
        if found is None:
            raise ValueError("durablePromiseServer/await answered without an outcome")
        return found

    async def dispose(self) -> None:
        await self._call("dispose")

    async def _complete(self, verb: str, payload: Any) -> Outcome:
        field = "value" if verb == "resolve" else "errorMessage"
        found = outcome_of(await self._call(verb, **{field: payload}))
        if found is None:
            raise ValueError(f"durablePromiseServer/{verb} answered without an outcome")
        return found


def durable_promise(promise_id: str, where: restate.Context | str | None = None) -> DurablePromise:
    """The promise `promise_id`: inside a handler pass its context, else an ingress URL."""
    if isinstance(where, restate.Context):
        return HandlerPromise(promise_id, where)
    return IngressPromise(promise_id, where or INGRESS_URL)


async def demo(promise_id: str, ingress_url: str) -> None:
    """Peek, wait, resolve and reject one promise, printing what each answers."""
    promise = durable_promise(promise_id, ingress_url)
    peeked = await promise.peek()
    print(f"Peeked value: {json.dumps(None if peeked is None else peeked.value)}")
    waiting = asyncio.create_task(promise.get())  # parks until the resolve below
    print(await promise.resolve("This promise will notify everyone"))
    print(await waiting)
    # Too late: the promise is resolved, so the reject answers the first value.
    print(await promise.reject("Oh dear, rejected"))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 2 or any(arg.startswith("-") for arg in args):
        print(
            "usage: python -m promiseasaservice.client [promise-id] [restateUri]", file=sys.stderr
        )
        return 2
    promise_id = args[0] if args else f"promise-{uuid.uuid4().hex[:8]}"
    ingress_url = args[1] if len(args) > 1 else INGRESS_URL
    try:
        asyncio.run(demo(promise_id, ingress_url))
    except restate.TerminalError as error:
        print(f"error: {error.status_code} {error.message}", file=sys.stderr)
        return 1
    except httpx.HTTPError as error:
        print(f"error: cannot reach Restate at {ingress_url}: {error!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
