"""The journal value codec: AES-GCM with a key id in every value, so that keys can rotate.

Restate's Python SDK passes every value it journals through a `restate.JournalValueCodec`
(handler input and output, `ctx.run_typed` results, state values, call and send parameters
and results, awakeable and promise results), after serialising it and before deserialising
it. This one encrypts each value with the newest key and decrypts it with the key its
header names:

    value = b"aesgcm:" + key id + b":" + nonce (12 bytes) + ciphertext and tag (16 bytes)

The header is authenticated too (AES-GCM associated data). JOURNAL_KEYS lists the keys
newest first, `id:base64,id:base64`: new values use the first, older values still decrypt
with theirs. A value that names a key not in the list raises `UnknownKeyError`; one whose
bytes were changed (or that is not encrypted at all) raises `TamperedValueError`. Neither
ever yields a wrong value.
"""

import base64
import binascii
import logging
import os
import re
from collections.abc import Mapping

import restate
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = b"aesgcm:"
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZE = 32  # AES-256
KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")
# Used when JOURNAL_KEYS is not set, so that the walkthrough runs as is. It is in this
# file, so it protects nothing: set JOURNAL_KEYS anywhere but on your own machine.
DEVELOPMENT_KEYS = "dev:cmVzdGF0ZS1wYXR0ZXJucy1kZXZlbG9wbWVudC1rZXk="

logger = restate.getLogger(__name__)
errors = logging.getLogger(__name__)


class UnknownKeyError(Exception):
    """A value encrypted with a key this process does not have. Not terminal: in a handler
    it fails the attempt, and Restate retries the invocation until the key is configured
    again (`restate invocations describe` shows this message meanwhile)."""

    def __init__(self, key_id: str, known: list[str]) -> None:
        super().__init__(
            f"journal value encrypted with key id {key_id!r}, which is not in JOURNAL_KEYS "
            f"({', '.join(known)}): add that key to JOURNAL_KEYS to read it"
        )
        self.key_id = key_id


class TamperedValueError(restate.TerminalError):
    """A value that fails authentication, or is not an encrypted value at all. Terminal: no
    retry can make it readable, so the invocation fails with this message (status 500)."""

    def __init__(self, message: str, key_id: str | None = None) -> None:
        super().__init__(message, status_code=500)
        self.key_id = key_id


class KeysError(ValueError):
    """JOURNAL_KEYS is malformed (the message never contains key material)."""


def parse_keys(setting: str) -> dict[str, AESGCM]:
    """`id:base64,id:base64` (newest first) -> ciphers by key id, in that order."""
    keys: dict[str, AESGCM] = {}
    for position, item in enumerate(setting.replace(" ", "").split(","), start=1):
        key_id, colon, encoded = item.partition(":")
        if not colon or not KEY_ID.fullmatch(key_id):
            raise KeysError(
                f"entry {position} is not `id:base64-key` with an id of 1-32 letters, "
                "digits, '_', '.' or '-'"
            )
        if key_id in keys:
            raise KeysError(f"key id {key_id!r} is listed twice")
        try:
            secret = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise KeysError(f"the key of {key_id!r} is not base64") from None
        if len(secret) != KEY_SIZE:
            raise KeysError(f"the key of {key_id!r} has {len(secret)} bytes, not {KEY_SIZE}")
        keys[key_id] = AESGCM(secret)
    return keys


def new_key() -> str:
    """A fresh random key, base64 (what the README's `openssl rand -base64 32` prints)."""
    return base64.b64encode(os.urandom(KEY_SIZE)).decode()


class EncryptingCodec(restate.JournalValueCodec):
    """AES-GCM over every journal value: encrypts with the first key, decrypts by key id."""

    def __init__(self, keys: Mapping[str, AESGCM]) -> None:
        if not keys:
            raise KeysError("no key given")
        self.keys = dict(keys)
        self.newest = next(iter(self.keys))

    @classmethod
    def from_setting(cls, setting: str) -> "EncryptingCodec":
        return cls(parse_keys(setting))

    def encode(self, buf: bytes) -> bytes:
        # an empty value (the serialised None) is encrypted too: empty bytes read back are
        # then an error, not a silent None
        header = PREFIX + self.newest.encode() + b":"
        nonce = os.urandom(NONCE_SIZE)  # random: at most ~2**32 values per key (NIST)
        return header + nonce + self.keys[self.newest].encrypt(nonce, bytes(buf), header)

    async def decode(self, buf: bytes) -> bytes:
        try:
            return self.decrypt(bytes(buf))
        except (UnknownKeyError, TamperedValueError) as error:
            # the SDK answers an undecryptable request with a message of its own: say why here
            # (each attempt: a plain logger, not dropped when the invocation replays)
            errors.error("cannot decrypt a journal value: %s", error)
            raise

    def decrypt(self, value: bytes) -> bytes:
        key_id = self.key_id_of(value)
        cipher = self.keys.get(key_id)
        if cipher is None:
            raise UnknownKeyError(key_id, list(self.keys))
        header = PREFIX + key_id.encode() + b":"
        sealed = value[len(header) :]
        try:
            return cipher.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], header)
        except InvalidTag:
            raise TamperedValueError(
                f"journal value under key id {key_id!r} failed authentication: its bytes "
                "were changed, or it was encrypted with another key of that id",
                key_id,
            ) from None

    @staticmethod
    def key_id_of(value: bytes) -> str:
        """The key id in a value's header; TamperedValueError if it has no valid header."""
        key_id, colon, rest = value[len(PREFIX) :].partition(b":")
        if (
            not value.startswith(PREFIX)
            or not colon
            or not KEY_ID.fullmatch(key_id.decode("ascii", "replace"))
            or len(rest) < NONCE_SIZE + TAG_SIZE
        ):
            raise TamperedValueError(
                f"journal value is not encrypted (no valid {PREFIX.decode()!r} header): "
                "it was written without this codec, or altered"
            )
        return key_id.decode("ascii")


def from_environment() -> EncryptingCodec:
    """The codec of JOURNAL_KEYS (newest first), or of the development key with a warning;
    SystemExit naming the problem if JOURNAL_KEYS is malformed."""
    setting = os.environ.get("JOURNAL_KEYS", "").strip()
    if not setting:
        logger.warning("JOURNAL_KEYS is not set: using the development key 'dev', which is public")
        setting = DEVELOPMENT_KEYS
    try:
        return EncryptingCodec.from_setting(setting)
    except KeysError as error:
        raise SystemExit(f"JOURNAL_KEYS: {error}") from None
