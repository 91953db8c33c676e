"""Call `Customer` through Restate with encrypted requests and answers.

    python -m encryptedjournal.client register <customerId> '{"name", "email", "cardNumber"}'
    python -m encryptedjournal.client charge <customerId> '{"amountCents", "description"}'
    python -m encryptedjournal.client get <customerId>

The service decrypts what it receives and encrypts what it answers (its journal value
codec), so a caller does the same with the same keys: it encrypts the JSON body with the
newest key of JOURNAL_KEYS, posts the ciphertext, and decrypts the answer with the key the
answer names. It prints the answer as JSON. Errors from the service (400 naming a field,
404 for an unknown customer) are not encrypted: Restate passes failures as they are.

RESTATE_INGRESS_URL selects the Restate ingress (default http://localhost:8080);
JOURNAL_KEYS the keys (the service's; default: the development key).
"""

import argparse
import json
import os
import sys

import httpx

from .codec import EncryptingCodec, TamperedValueError, UnknownKeyError, from_environment

INGRESS_URL = os.environ.get("RESTATE_INGRESS_URL", "http://localhost:8080")
ENCRYPTED = "application/octet-stream"
# what the SDK answers when the service cannot decrypt a request
UNDECRYPTABLE = "Failed to decode input using journal value codec"


class CallError(Exception):
    """The call failed; the message says why, for a person."""


def call(
    codec: EncryptingCodec,
    handler: str,
    customer_id: str,
    body: bytes | None = None,
    ingress_url: str = INGRESS_URL,
    timeout: float = 60.0,
) -> bytes:
    """Call `Customer/<customerId>/<handler>` with the body encrypted; the answer decrypted."""
    try:
        response = httpx.post(
            f"{ingress_url}/Customer/{customer_id}/{handler}",
            content=codec.encode(body) if body is not None else None,
            headers={"content-type": ENCRYPTED} if body is not None else None,
            timeout=timeout,
        )
    except httpx.HTTPError as error:
        raise CallError(f"cannot reach Restate at {ingress_url}: {error!r}") from None
    if response.status_code != 200:
        try:
            message = response.json()["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        if UNDECRYPTABLE in message:
            message += (
                f" (this request was encrypted with key id {codec.newest!r}: the service needs "
                "that key in its JOURNAL_KEYS, and its log says why it could not decrypt)"
            )
        raise CallError(f"{response.status_code} {message}")
    try:
        return codec.decrypt(response.content)
    except (UnknownKeyError, TamperedValueError) as error:
        raise CallError(f"cannot decrypt the answer: {error}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m encryptedjournal.client",
        description="Call Customer with encrypted requests and answers.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, what in (("register", "store a customer's profile"), ("charge", "charge a card")):
        command = commands.add_parser(name, help=what)
        command.add_argument("customer_id", metavar="customerId")
        command.add_argument("body", help="the request as JSON")
    get = commands.add_parser("get", help="show a customer's profile and payments")
    get.add_argument("customer_id", metavar="customerId")
    args = parser.parse_args(argv)

    codec = from_environment()
    body = args.body.encode() if args.command != "get" else None
    try:
        answer = call(codec, args.command, args.customer_id, body)
    except CallError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(json.loads(answer), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
