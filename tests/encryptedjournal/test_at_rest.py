"""Encrypted journal: the walkthrough, then what Restate keeps of it: `restate sql`, `restate kv
get`, the ingress's answer and every file of the server's data folder hold only ciphertext.

Each test here has a server of its own whose storage does not compress. RocksDB compresses
its files by default (LZ4 and ZSTD blocks, a ZSTD write-ahead log), and a compressed
plaintext would not be found by a search of the files: a search that finds nothing would
prove nothing. With compression off, the search finds what Restate stores in clear (an
error message, the request path, step names) and must not find the encrypted values.
"""

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devkit.processes import RestateServer
from devkit.pytest_restate import StartServer, attach_log
from tests.encryptedjournal.helpers import (
    card_number,
    codec,
    invocation_of,
    journal,
    key_id,
    payloads,
    settings,
)
from tests.harness import (
    Admin,
    Ingress,
    StartService,
    count_lines,
    eventually,
    restate_cli,
    run_module,
)

# each RocksDB database of the server: partition store, log server, local log, metadata
DATABASES = ("WORKER__STORAGE", "LOG_SERVER", "BIFROST__LOCAL", "METADATA_SERVER")
# compression off in the write-ahead log and in the files a flush writes (level 0), and no
# compaction, which would write deeper levels (compressed whatever the settings above)
OPTIONS = ("DISABLE_WAL_COMPRESSION", "DISABLE_L0_L1_COMPRESSION", "DISABLE_AUTO_COMPACTIONS")
UNCOMPRESSED = {f"RESTATE_{db}__ROCKSDB_{option}": "true" for db in DATABASES for option in OPTIONS}


@pytest.fixture
def server(
    start_server: StartServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[RestateServer]:
    """A server of this test's own that stores its data uncompressed (see above)."""
    own = start_server(tmp_path / "restate", settings=UNCOMPRESSED)
    attach_log(request, own)
    yield own
    own.stop()


def files_containing(folder: Path, text: str) -> list[str]:
    needle = text.encode()
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and needle in path.read_bytes()
    )


def test_walkthrough_and_restate_keeps_only_ciphertext(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    service = start_service("encryptedjournal", settings("k1"))
    customer = unique("ada")
    name, email = f"Ada Lovelace {customer}", f"{customer}@example.com"
    card, description = card_number(customer), f"Blood test {customer}"
    env = {**client_env, "JOURNAL_KEYS": settings("k1")["JOURNAL_KEYS"]}

    def client(*args: str) -> dict[str, object]:
        result = run_module("encryptedjournal.client", *args, env=env)
        assert result.returncode == 0, result.stderr
        answer: dict[str, object] = json.loads(result.stdout)
        return answer

    profile = {"name": name, "email": email, "cardNumber": card}
    registered = client("register", customer, json.dumps(profile))
    assert registered == {"name": name, "email": email, "cardEnding": card[-4:], "payments": []}
    receipt = client(
        "charge", customer, json.dumps({"amountCents": 1999, "description": description})
    )
    payment_id = receipt["paymentId"]
    assert isinstance(payment_id, str)
    assert payment_id.startswith("pay_")
    assert receipt == {"paymentId": payment_id, "amountCents": 1999, "description": description,
                       "customerId": customer, "cardEnding": card[-4:]}  # fmt: skip
    payment = {"paymentId": payment_id, "amountCents": 1999, "description": description}
    shown = client("get", customer)
    assert shown == {"name": name, "email": email, "cardEnding": card[-4:], "payments": [payment]}

    # the side effects ran once each, logged with handler and invocation id
    charged = f"Charged 19.99 to card ending {card[-4:]} for {description!r} (payment {payment_id})"
    emailed = f"Receipt for payment {payment_id} sent to customer {customer}"
    eventually(lambda: count_lines(service, emailed) == 1, 10, "the receipt line")
    assert count_lines(service, charged) == 1
    line = next(line for line in service.log_lines() if charged in line)
    assert "[Customer/charge][inv_" in line

    secrets = [name, email, card, description, payment_id]

    # `restate sql` on the state: each value is ciphertext under k1 that decrypts to the value
    table = restate_cli(
        "sql", "--json",
        "SELECT key, value_utf8, encode(value, 'hex') AS value FROM state "
        f"WHERE service_name = 'Customer' AND service_key = '{customer}'",
        env=client_env,
    ).stdout  # fmt: skip
    assert not [secret for secret in secrets if secret in table]
    rows = json.loads(table[: table.rindex("]") + 1])
    values = {row["key"]: bytes.fromhex(row["value"]) for row in rows}
    assert sorted(values) == ["payments", "profile"]
    assert {key: key_id(value) for key, value in values.items()} == {
        "payments": "k1",
        "profile": "k1",
    }
    assert json.loads(codec("k1").decrypt(values["profile"])) == profile
    assert json.loads(codec("k1").decrypt(values["payments"])) == {"payments": [payment]}

    # `restate sql` on the journal of the charge: every value in it is ciphertext under k1
    charge = invocation_of(admin, f"Customer/{customer}/charge")
    entries = restate_cli(
        "sql", "--jsonl",
        f"SELECT index, entry_type, entry_json FROM sys_journal WHERE id = '{charge}'",
        env=client_env,
    ).stdout  # fmt: skip
    assert not [secret for secret in secrets if secret in entries]
    with_values: dict[str, int] = {}
    for line in entries.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            for value in payloads(entry["entry_json"]):
                assert key_id(value) == "k1", entry
                codec("k1").decrypt(value)  # authentic
                with_values[entry["entry_type"]] = with_values.get(entry["entry_type"], 0) + 1
    assert with_values == {"Command: Input": 1, "Command: GetEagerState": 1,
                           "Notification: Run": 2, "Command: SetState": 1,
                           "Command: Output": 1}  # fmt: skip
    assert [kind for kind, _, _ in journal(admin, charge)].count("Command: Run") == 2

    # `restate kv get` shows the values base64-encoded: ciphertext too
    kv = restate_cli("kv", "get", "--binary", "Customer", customer, env=client_env).stdout
    assert "YWVzZ2NtOmsxO" in kv  # base64 of "aesgcm:k1:"
    assert not [secret for secret in secrets if secret in kv]

    # what the ingress answers a caller without the key
    raw = ingress.post(f"/Customer/{customer}/get")
    assert raw.status_code == 200
    assert raw.headers["content-type"] == "application/octet-stream"
    assert key_id(raw.content) == "k1"
    assert not [secret for secret in secrets if secret.encode() in raw.content]

    # an error message is not encrypted: it is what Restate stores in clear (the control)
    unknown = unique("nobody")
    missing = ingress.post(f"/Customer/{unknown}/get")
    assert missing.status_code == 404
    assert missing.json()["message"] == f"unknown customer {unknown}"

    # the data folder: stopped, so that RocksDB has written everything to its files
    service.stop()
    server.stop()
    folder = server.base_dir
    for secret in secrets:
        assert files_containing(folder, secret) == [], f"{secret!r} is stored in clear"
    for clear in (f"unknown customer {unknown}", f"/Customer/{customer}/charge", "charge card",
                  "aesgcm:k1:"):  # fmt: skip
        where = files_containing(folder, clear)
        assert any(path.startswith("dev/db/") for path in where), f"{clear!r} not found: {where}"
        assert any(path.startswith("dev/log-store/") for path in where), f"{clear!r}: {where}"
