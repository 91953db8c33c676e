"""Keys, encrypted calls and journal reading for the encryptedjournal tests."""

import base64
import hashlib
import json
import re
from typing import Any

import httpx

from encryptedjournal.codec import PREFIX, EncryptingCodec
from tests.harness import Admin, Ingress

ENCRYPTED = {"content-type": "application/octet-stream"}


def keys(*ids: str) -> str:
    """A JOURNAL_KEYS setting with these key ids, newest first; each id always gets the
    same (test-only) key, so that processes started apart agree on them."""
    return ",".join(
        f"{key_id}:{base64.b64encode(hashlib.sha256(key_id.encode()).digest()).decode()}"
        for key_id in ids
    )


def codec(*ids: str) -> EncryptingCodec:
    return EncryptingCodec.from_setting(keys(*ids))


def settings(*ids: str, delay: str = "0.2") -> dict[str, str]:
    """The service's settings: these keys, a short settlement delay."""
    return {"JOURNAL_KEYS": keys(*ids), "SETTLEMENT_DELAY_SECONDS": delay}


def post(
    ingress: Ingress,
    path: str,
    body: Any = None,
    with_codec: EncryptingCodec | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST `path` with `body` as JSON encrypted by the codec (no body if None)."""
    if body is None:
        return ingress.post(path, headers=headers)
    assert with_codec is not None
    content = with_codec.encode(json.dumps(body).encode())
    return ingress.post(path, content=content, headers={**ENCRYPTED, **(headers or {})})


def answer(response: httpx.Response, with_codec: EncryptingCodec) -> Any:
    """The decrypted JSON answer of a successful call."""
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    assert response.headers["content-type"] == ENCRYPTED["content-type"]
    return json.loads(with_codec.decrypt(response.content))


def key_id(value: bytes) -> str:
    """The key id in an encrypted value's header (fails if the value has none)."""
    assert value.startswith(PREFIX), f"not encrypted: {value[:40]!r}"
    return EncryptingCodec.key_id_of(value)


def payloads(entry_json: str) -> list[bytes]:
    """The values in a journal entry as `sys_journal.entry_json` shows them: byte arrays."""
    found: list[bytes] = []

    def walk(node: Any) -> None:
        if isinstance(node, list) and node and all(isinstance(b, int) for b in node):
            found.append(bytes(node))
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for item in node.values():
                walk(item)

    walk(json.loads(entry_json))
    return found


def journal(admin: Admin, invocation_id: str) -> list[tuple[str, str, list[bytes]]]:
    """(entry type, name, values) of each entry of an invocation's journal, in order."""
    rows = admin.query(
        "SELECT index, entry_type, name, entry_json FROM sys_journal "
        f"WHERE id = '{invocation_id}' ORDER BY index"
    )
    return [(r["entry_type"], r.get("name") or "", payloads(r["entry_json"])) for r in rows]


def state_values(admin: Admin, customer_id: str) -> dict[str, bytes]:
    """The raw state values of a customer (`value` is binary: the query answers hex)."""
    rows = admin.query(
        "SELECT key, encode(value, 'hex') AS value FROM state "
        f"WHERE service_name = 'Customer' AND service_key = '{customer_id}'"
    )
    return {row["key"]: bytes.fromhex(row["value"]) for row in rows}


def invocation_of(admin: Admin, target: str) -> str:
    """The id of the one invocation of `target` ("Customer/<id>/<handler>")."""
    rows = admin.query(f"SELECT id FROM sys_invocation WHERE target = '{target}'")
    assert len(rows) == 1, f"{target}: {rows}"
    invocation_id: str = rows[0]["id"]
    return invocation_id


def card_number(seed: str) -> str:
    """16 digits of this test's own, so that a search in the server's files finds only it."""
    digits = re.sub(r"\D", "", str(int(hashlib.sha256(seed.encode()).hexdigest(), 16)))
    return "4" + digits[:15]
