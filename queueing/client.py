"""The Task Submitter: queue a task in Restate, now or later, and get its result.

    python -m queueing.client submit <key> <taskName> <payload> [--delay 10s] [--no-wait]
    python -m queueing.client attach <key>

`submit` sends `AsyncTaskWorker/runTask` with `/send` (Restate queues the task and answers
at once), using the task's key as idempotency key, and `?delay=` when `--delay` is given.
It prints the invocation id straight away, then attaches to the task and prints its result
when the task has run. Submitting the same key again gives the same invocation: the task
runs once. `attach` waits for the result of a task submitted earlier, from any process.

RESTATE_INGRESS_URL selects the Restate ingress (default http://localhost:8080).
"""

import argparse
import os
import sys
from dataclasses import dataclass

import httpx

INGRESS_URL = os.environ.get("RESTATE_INGRESS_URL", "http://localhost:8080")


@dataclass(frozen=True)
class Submitted:
    invocation_id: str
    status: str  # "Accepted", or "PreviouslyAccepted" for a key submitted before


def submit_task(
    key: str,
    task_name: str,
    payload: str,
    delay: str | None = None,
    ingress_url: str = INGRESS_URL,
    timeout: float = 30.0,
) -> Submitted:
    """Queue the task; Restate answers as soon as it has stored it."""
    response = httpx.post(
        f"{ingress_url}/AsyncTaskWorker/runTask/send",
        params={"delay": delay} if delay else None,
        json={"key": key, "taskName": task_name, "payload": payload},
        headers={"idempotency-key": key},
        timeout=timeout,
    )
    response.raise_for_status()
    answer = response.json()
    return Submitted(answer["invocationId"], answer["status"])


def attach(key: str, ingress_url: str = INGRESS_URL, timeout: float = 300.0) -> str:
    """Wait for the result of the task submitted with this key."""
    response = httpx.get(
        f"{ingress_url}/restate/invocation/AsyncTaskWorker/runTask/{key}/attach",
        timeout=timeout,
    )
    response.raise_for_status()
    result = response.json()
    if not isinstance(result, str):
        raise ValueError(f"unexpected result from AsyncTaskWorker/runTask: {result!r}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m queueing.client", description="Queue tasks in Restate."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    submit = commands.add_parser("submit", help="queue a task, then wait for its result")
    submit.add_argument("key", help="the task's key, also its idempotency key")
    submit.add_argument("task_name", metavar="taskName")
    submit.add_argument("payload")
    submit.add_argument("--delay", help="run the task later, e.g. 10s, 500ms, 5m, 1h 30m")
    submit.add_argument("--no-wait", action="store_true", help="do not wait for the result")
    submit.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (300)")
    attach_cmd = commands.add_parser("attach", help="wait for the result of a submitted task")
    attach_cmd.add_argument("key")
    attach_cmd.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (300)")
    args = parser.parse_args(argv)

    try:
        if args.command == "submit":
            submitted = submit_task(args.key, args.task_name, args.payload, args.delay)
            again = " (submitted before: same task)" if submitted.status != "Accepted" else ""
            print(f"Task {args.key} queued as {submitted.invocation_id}{again}", flush=True)
            if args.no_wait:
                return 0
        print(f"Result: {attach(args.key, timeout=args.timeout)}")
    except httpx.HTTPStatusError as error:
        if error.response.status_code == 404 and args.command == "attach":
            print(f"error: no task with key {args.key}", file=sys.stderr)
            return 1
        print(f"error: {error.response.status_code} {error.response.text}", file=sys.stderr)
        return 1
    except httpx.TimeoutException:
        print(
            f"no result after {args.timeout:g} s; the task is still queued. "
            f"Wait for it with: python -m queueing.client attach {args.key}",
            file=sys.stderr,
        )
        return 1
    except httpx.HTTPError as error:
        print(f"error: cannot reach Restate at {INGRESS_URL}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
