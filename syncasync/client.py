"""The UploadClient: wait for an upload for a while, then ask for the link by e-mail.

    python -m syncasync.client <userId>

Submits the `DataUploadService` workflow for this user id and waits for its result (the
upload's URL) for at most UPLOAD_CLIENT_TIMEOUT_SECONDS (default 5). If the upload is done
in time it logs "Fast upload... URL was <url>"; otherwise it logs "Slow upload... Mail
the link later" and asks the workflow to mail the URL to <userId>@example.com when the
upload is done (`resultAsEmail`), without waiting for that.

The workflow runs once per user id: a second run with the same id gets the first upload's
URL (or the same e-mail), never a second upload.
RESTATE_INGRESS_URL selects the Restate ingress (default http://localhost:8080).
"""

import argparse
import logging
import os
import sys

import httpx

INGRESS_URL = os.environ.get("RESTATE_INGRESS_URL", "http://localhost:8080")
CLIENT_TIMEOUT = float(os.environ.get("UPLOAD_CLIENT_TIMEOUT_SECONDS", "5"))
HTTP_TIMEOUT = 30.0

logger = logging.getLogger("syncasync.client")


def upload_data(
    user_id: str, email: str, ingress_url: str = INGRESS_URL, wait: float = CLIENT_TIMEOUT
) -> str | None:
    """The upload's URL if it finished within `wait` seconds, else None (URL sent by mail)."""
    logger.info("Uploading data for user %s", user_id)
    workflow = f"{ingress_url}/DataUploadService/{user_id}"
    # submit the workflow; submitting an id that was submitted before is fine
    httpx.post(f"{workflow}/run/send", timeout=HTTP_TIMEOUT).raise_for_status()
    try:
        response = httpx.get(
            f"{ingress_url}/restate/workflow/DataUploadService/{user_id}/attach",
            timeout=httpx.Timeout(HTTP_TIMEOUT, read=wait),
        )
    except httpx.ReadTimeout:
        logger.info("Slow upload... Mail the link later")
        httpx.post(
            f"{workflow}/resultAsEmail/send",
            json=email,
            # one e-mail per address, however often the client is run
            headers={"idempotency-key": f"email-{email}"},
            timeout=HTTP_TIMEOUT,
        ).raise_for_status()
        return None
    response.raise_for_status()
    url = response.json()
    if not isinstance(url, str):
        raise ValueError(f"unexpected result from DataUploadService/run: {url!r}")
    logger.info("Fast upload... URL was %s", url)
    return url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m syncasync.client",
        description="Upload data for a user; get the URL now, or by e-mail if it is slow.",
    )
    parser.add_argument("user_id", metavar="userId")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-5s %(name)s - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stdout,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per HTTP request
    try:
        upload_data(args.user_id, f"{args.user_id}@example.com")
    except httpx.HTTPStatusError as error:
        print(f"error: {error.response.status_code} {error.response.text}", file=sys.stderr)
        return 1
    except httpx.HTTPError as error:
        print(f"error: cannot reach Restate at {INGRESS_URL}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
