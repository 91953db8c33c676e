"""Convert sync tasks to async: a data upload that turns into "we'll mail you the link".

    UploadClient                         Restate                 DataUploadService/<userId>
      |--submit run------------------------>|----------------------> run: create bucket (step)
      |--attach, wait up to 5 s------------>|                            upload data (step)
      |                                     |                            resolve promise "url"
      |<--------- URL (fast upload) --------|<---------------------- return URL
      |
      |   ...or, after 5 s without an answer (slow upload):
      |--resultAsEmail("<userId>@example.com")---------------------> wait for promise "url"
                                                                     send email (step)

The workflow runs once per user id, whatever the client does: attaching, timing out and
asking for an email instead only changes how the client receives the URL. The durable
promise `url` connects the two handlers: `run` resolves it when the upload is done,
`resultAsEmail` waits for it (also if it is called long after `run` finished).

Some uploads are fast (1.5 s) and some slow (10 s), as in the original; which one is
derived from the user id (see `upload_eta`), so that a given user id always takes the
same path.
"""

import asyncio
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import timedelta

import restate

logger = restate.getLogger(__name__)


def _seconds(name: str, default: str) -> timedelta:
    return timedelta(seconds=float(os.environ.get(name, default)))


@dataclass(frozen=True)
class Settings:
    fast_upload: timedelta = field(default_factory=lambda: _seconds("FAST_UPLOAD_SECONDS", "1.5"))
    slow_upload: timedelta = field(default_factory=lambda: _seconds("SLOW_UPLOAD_SECONDS", "10"))


SETTINGS = Settings()


def upload_is_slow(user_id: str) -> bool:
    """Half of the user ids upload slowly: someone212 is fast, someone2122 is slow."""
    return hashlib.sha256(user_id.encode()).digest()[0] % 2 == 0


def upload_eta(user_id: str) -> timedelta:
    return SETTINGS.slow_upload if upload_is_slow(user_id) else SETTINGS.fast_upload


data_upload_service = restate.Workflow("DataUploadService")


@data_upload_service.main(name="run")
async def run(ctx: restate.WorkflowContext) -> str:
    """Create a bucket, upload the user's data to it, and return the bucket's URL."""
    bucket_id = ctx.random().randint(0, 10**9)  # the same on every replay
    url = await ctx.run_typed("create bucket", create_s3_bucket, bucket_id=bucket_id)
    eta = upload_eta(ctx.key())
    await ctx.run_typed("upload data", upload_data, restate.RunOptions(), url, eta)
    await ctx.promise("url", type_hint=str).resolve(url)
    return url


@data_upload_service.handler(name="resultAsEmail", input_serde=restate.serde.BytesSerde())
async def result_as_email(ctx: restate.WorkflowSharedContext, body: bytes) -> None:
    """Wait for the upload of this workflow, then mail its URL to the given address."""
    email = parse_email(body)
    url = await ctx.promise("url", type_hint=str).value()
    await ctx.run_typed("send email", send_email, restate.RunOptions(), url, email)


def parse_email(body: bytes) -> str:
    """The body is a JSON string holding an e-mail address, or the call is a 400."""
    try:
        email = json.loads(body) if body else None
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        email = None
    if not isinstance(email, str) or "@" not in email:
        raise restate.TerminalError(
            'email: expected a JSON string with an e-mail address, e.g. "someone21@example.com"',
            status_code=400,
        )
    return email


# Stand-ins for the real data operations and e-mail client.


def create_s3_bucket(bucket_id: int) -> str:
    url = f"https://s3-eu-central-1.amazonaws.com/{bucket_id}/"
    logger.info("Creating bucket with URL %s", url)
    return url


async def upload_data(url: str, eta: timedelta) -> None:
    logger.info("Uploading data to target %s. ETA: %d ms", url, eta / timedelta(milliseconds=1))
    await asyncio.sleep(eta.total_seconds())


def send_email(url: str, email: str) -> None:
    logger.info("Sending email to %s with url %s", email, url)


services = [data_upload_service]
app = restate.app(services)
