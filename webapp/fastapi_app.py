"""The existing web app: FastAPI with routes of its own, and Restate's endpoint mounted.

`web` answers its own routes (`/`, `/signup`) and, under `/restate`, Restate's calls of
`app.py`'s services (`/restate/discover`, `/restate/invoke/<Service>/<handler>`,
`/restate/health`): one process, one port. Register it with that path:
`restate -y deployments register --force http://localhost:9080/restate` (on uvicorn add
`--use-http1.1`). `on_hypercorn.py` and `on_uvicorn.py` serve it.

Settings: RESTATE_INGRESS_URL (where `/signup` hands work to Restate), IDENTITY_KEYS (serve
only the calls a Restate server signed, as `__main__.py` does), LOG_LEVEL.
"""

import contextlib
import contextvars
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import restate
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from restate import extensions

from .app import Signup, app, services

RESTATE_PATH = "/restate"
INGRESS_URL = os.environ.get("RESTATE_INGRESS_URL", "http://localhost:8080")
keys = [key for key in os.environ.get("IDENTITY_KEYS", "").replace(" ", "").split(",") if key]
endpoint = restate.app(services, identity_keys=keys) if keys else app
handler_path = contextvars.ContextVar("handler_path", default="")


async def restate_endpoint(scope: Any, receive: Any, send: Any) -> None:
    """Restate's endpoint, remembering `<Service>/<handler>` for the handlers' log lines."""
    handler_path.set("/".join(scope["path"].split("/")[-2:]))
    await endpoint(scope, receive, send)


@contextlib.asynccontextmanager
async def lifespan(web: FastAPI) -> AsyncIterator[None]:
    async with httpx.AsyncClient(base_url=INGRESS_URL, timeout=10.0) as ingress:
        web.state.ingress = ingress
        yield


web = FastAPI(title="webapp", lifespan=lifespan)
web.mount(RESTATE_PATH, restate_endpoint)


@web.get("/")
async def home() -> dict[str, str]:
    """A route of the web app itself; Restate plays no part in it."""
    return {"app": "webapp", "signup": "POST /signup", "restate": RESTATE_PATH}


@web.post("/signup", status_code=202)
async def signup(signup: Signup, request: Request) -> Response:
    """Hand the onboarding to Restate and answer as soon as Restate has accepted it. The
    user id is the idempotency key: signing up twice onboards once."""
    ingress: httpx.AsyncClient = request.app.state.ingress
    try:
        accepted = await ingress.post(
            "/Onboarding/onboard/send",
            content=signup.model_dump_json(by_alias=True),
            headers={"content-type": "application/json", "idempotency-key": signup.user_id},
        )
    except httpx.HTTPError as error:
        message = f"cannot reach Restate at {INGRESS_URL}: {error!r}"
        return JSONResponse({"code": 503, "message": message}, status_code=503)
    # Restate's answer as it is: 202 {"invocationId", "status"}, or its error
    return Response(accepted.content, accepted.status_code, media_type="application/json")


@web.exception_handler(RequestValidationError)
async def bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
    """400 naming each bad field, as the Restate handlers answer (FastAPI's default: 422)."""
    problems = "; ".join(f"{field(problem)}: {problem['msg']}" for problem in error.errors())
    return JSONResponse({"code": 400, "message": f"Invalid request: {problems}"}, status_code=400)


def field(problem: dict[str, Any]) -> str:
    """The camelCase path of the field a validation problem is about, from its location
    `("body", field, ...)`; "body" for the body as a whole (the location of a JSON syntax
    error holds a character position, not a field)."""
    if problem["type"] == "json_invalid":
        return "body"
    return ".".join(str(part) for part in problem["loc"][1:]) or "body"


def tag(record: logging.LogRecord) -> bool:
    """Start the lines logged inside a handler with `[Service/handler][invocation id] `."""
    record.invocation = ""
    with contextlib.suppress(LookupError):  # not inside a handler
        ctx = extensions.current_context()
        record.invocation = f"[{handler_path.get()}][{ctx.request().id}] " if ctx else ""
    return True


def log_to_stderr() -> None:
    """One format for the lines of the web server, the app and the handlers (tagged)."""
    fmt = "%(asctime)s %(levelname)-5s %(invocation)s%(name)s - %(message)s"
    level = os.environ.get("LOG_LEVEL", "INFO")
    logging.basicConfig(level=level, format=fmt, datefmt="%Y-%m-%d %H:%M:%S")
    logging.root.handlers[0].addFilter(tag)
