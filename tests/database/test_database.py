"""Database patterns against a real PostgreSQL: the original's walkthrough, then what each
technique prevents (a crash between the commit and the journal entry, an interleaved
writer, row locks), the HTTP/1.1 refusal of two-phase commit, bad input. Every check of
the data reads the rows in PostgreSQL itself."""

import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from devkit.postgres import EmbeddedPostgres
from devkit.processes import PatternService, RestateServer, register
from tests.harness import Ingress, StartService, count_lines, eventually
from tests.test_loopback_only import listening

JSON = {"content-type": "application/json"}


# --- helpers (of this module only) ---------------------------------------------------------


def query(
    postgres: EmbeddedPostgres, sql: str, params: tuple[Any, ...] = ()
) -> list[dict[str, Any]]:
    with psycopg.connect(postgres.dsn, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


def user_row(postgres: EmbeddedPostgres, userid: str) -> dict[str, Any] | None:
    rows = query(postgres, "SELECT * FROM users WHERE userid = %s", (userid,))
    return rows[0] if rows else None


def credits_of(postgres: EmbeddedPostgres, userid: str) -> Decimal:
    row = user_row(postgres, userid)
    assert row is not None, f"no row for {userid}"
    credits: Decimal = row["credits"]
    return credits


def new_user(postgres: EmbeddedPostgres, userid: str, credits: int = 1000) -> str:
    with psycopg.connect(postgres.dsn) as conn:
        conn.execute(
            "INSERT INTO users (userid, name, address, credits, version) "
            "VALUES (%s, %s, %s, %s, 0)",
            (userid, "Test", "Street 1", credits),
        )
    return userid


def prepared_transactions(postgres: EmbeddedPostgres) -> list[str]:
    return [row["gid"] for row in query(postgres, "SELECT gid FROM pg_prepared_xacts")]


def idempotency_keys(postgres: EmbeddedPostgres) -> set[str]:
    return {row["id"] for row in query(postgres, "SELECT id FROM user_idempotency")}


@pytest.fixture
def database(
    start_service: StartService, postgres: EmbeddedPostgres
) -> Callable[..., PatternService]:
    """Start the pattern's service on the test database, with extra settings."""

    def start(**settings: str) -> PatternService:
        return start_service("database", {"DATABASE_URL": postgres.dsn, **settings})

    return start


@pytest.fixture
def service(database: Callable[..., PatternService]) -> PatternService:
    return database()


def restart_without_crash(service: PatternService) -> None:
    """Start the crashed service again on its port (where Restate retries the invocation),
    this time without the crash setting."""
    assert service.env is not None
    service.env = {k: v for k, v in service.env.items() if k != "DATABASE_CRASH_AT"}
    service.start()


def crash_then_recover(
    ingress: Ingress, service: PatternService, path: str, body: Any, key: str
) -> httpx.Response:
    """Send the call to a service started with DATABASE_CRASH_AT, wait for it to die at that
    moment, restart it without the setting, and return the invocation's answer."""
    ingress.send(path, json=body, headers={"idempotency-key": key})
    eventually(lambda: not service.running(), timeout=60, message="the service to crash")
    return recover(ingress, service, path, key)


def recover(ingress: Ingress, service: PatternService, path: str, key: str) -> httpx.Response:
    restart_without_crash(service)
    return ingress.get(f"/restate/invocation{path}/{key}/attach", timeout=60)


def test_postgres_listens_on_no_tcp_port(postgres: EmbeddedPostgres) -> None:
    """Closed doors: the database answers on its Unix socket only."""
    assert listening(postgres) == []
    assert query(postgres, "SHOW listen_addresses") == [{"listen_addresses": ""}]
    assert query(postgres, "SHOW max_prepared_transactions") == [
        {"max_prepared_transactions": "100"}
    ], "db/init-config.sh ran, and the server restarted with its setting"


# --- the original's walkthrough ------------------------------------------------------------


def test_walkthrough(service: PatternService, ingress: Ingress, postgres: EmbeddedPostgres) -> None:
    before = idempotency_keys(postgres)
    # curl -i localhost:8080/keyed/A/updateConditional --json '12' -H 'idempotency-key: abcdef'
    json_and_key = {**JSON, "accept": "application/json", "idempotency-key": "abcdef"}
    first = ingress.post("/keyed/A/updateConditional", content="12", headers=json_and_key)
    assert (first.status_code, first.content) == (200, b""), first.text
    again = ingress.post("/keyed/A/updateConditional", content="12", headers=json_and_key)
    assert (again.status_code, again.content) == (200, b""), again.text
    row = user_row(postgres, "A")
    assert row is not None
    assert (row["credits"], row["version"]) == (1012, 1), "the same idempotency key: once"

    read = ingress.post("/simple/read", content='"A"', headers=JSON)
    assert read.status_code == 200, read.text
    assert read.json() == {
        "userid": "A", "name": "Don",
        "address": "1600 Pennsylvania Avenue NW, Washington, DC 20500, USA",
        "credits": 1012, "version": 1,
    }  # fmt: skip

    durable = ingress.post("/simple/durableRead", content='"B"', headers=JSON)
    assert (durable.status_code, durable.json()) == (200, 1000)
    assert count_lines(service, "Found an account without balance") == 0

    emm = ('{ "userId": "C", "name": "Emm", "address": "55, Rue du Faubourg Saint-Honoré, '
           '75008 Paris, France", "credits": 1337 }')  # fmt: skip
    inserted = ingress.post("/simple/insert", content=emm.encode(), headers=JSON)
    assert (inserted.status_code, inserted.json()) == (200, True)
    assert ingress.post("/simple/insert", content=emm.encode(), headers=JSON).json() is False
    row = user_row(postgres, "C")
    assert row is not None
    assert (row["name"], row["address"], row["credits"], row["version"]) == (
        "Emm", "55, Rue du Faubourg Saint-Honoré, 75008 Paris, France", 1337, 0
    )  # fmt: skip

    renamed = ingress.post(
        "/simple/update", content='{ "userId": "A", "newName": "Donald" }', headers=JSON
    )
    assert (renamed.status_code, renamed.json()) == (200, True)

    for path in ("/keyed/B/update", "/keyed/B/updateConditional"):
        response = ingress.post(path, content="12", headers=JSON)
        assert (response.status_code, response.content) == (200, b""), f"{path}: {response.text}"
    row = user_row(postgres, "B")
    assert row is not None
    assert (row["credits"], row["version"]) == (1024, 1), "+12 twice; only the second bumps"

    body = '{ "userId": "A", "addCredits": 100 }'
    for path in ("/idempotency/update", "/twoPhaseCommit/update"):
        response = ingress.post(path, content=body, headers=JSON)
        assert (response.status_code, response.content) == (200, b""), f"{path}: {response.text}"
    row = user_row(postgres, "A")
    assert row is not None
    assert (row["name"], row["credits"], row["version"]) == ("Donald", 1212, 1)
    assert len(idempotency_keys(postgres) - before) == 1, "one key, kept for a day"
    assert prepared_transactions(postgres) == []


def test_durable_read_reaches_the_zero_balance_branch(
    service: PatternService, ingress: Ingress, postgres: EmbeddedPostgres,
    unique: Callable[[str], str],
) -> None:  # fmt: skip
    userid = new_user(postgres, unique("broke"), credits=0)
    response = ingress.post("/simple/durableRead", json=userid)
    assert (response.status_code, response.json()) == (200, 0)
    assert count_lines(service, "Found an account without balance, doing something about it") == 1


def test_a_retry_of_durable_read_sees_what_the_first_attempt_read(
    database: Callable[..., PatternService], ingress: Ingress, postgres: EmbeddedPostgres,
    unique: Callable[[str], str],
) -> None:  # fmt: skip
    """The service dies after the journaled read; meanwhile the balance drops to 0. The
    retry answers the credits the first attempt read, and takes that attempt's branch."""
    userid = new_user(postgres, unique("journaled"))
    service = database(DATABASE_CRASH_AT="after-read")
    key = unique("k")
    ingress.send("/simple/durableRead", json=userid, headers={"idempotency-key": key})
    eventually(lambda: not service.running(), timeout=60, message="the service to crash")
    with psycopg.connect(postgres.dsn) as conn:
        conn.execute("UPDATE users SET credits = 0 WHERE userid = %s", (userid,))
    response = recover(ingress, service, "/simple/durableRead", key)
    assert (response.status_code, response.json()) == (200, 1000)
    assert count_lines(service, "Found an account without balance") == 0
    fresh = ingress.post("/simple/durableRead", json=userid)  # a new invocation reads anew
    assert (fresh.status_code, fresh.json()) == (200, 0)
    assert count_lines(service, "Found an account without balance") == 1


def test_a_retried_insert_inserts_nothing(
    database: Callable[..., PatternService], ingress: Ingress, postgres: EmbeddedPostgres,
    unique: Callable[[str], str],
) -> None:  # fmt: skip
    """The insert committed, the service died before the step was journaled: the retry's
    insert hits the primary key and inserts nothing (it answers false: it cannot tell that
    its own earlier attempt inserted the row)."""
    userid = unique("inserted")
    service = database(DATABASE_CRASH_AT="after-commit")
    body = {"userId": userid, "name": "Emm", "address": "Paris", "credits": 1337}
    response = crash_then_recover(ingress, service, "/simple/insert", body, unique("k"))
    assert (response.status_code, response.json()) == (200, False)
    assert query(postgres, "SELECT name, credits, version FROM users WHERE userid = %s",
                 (userid,)) == [{"name": "Emm", "credits": 1337, "version": 0}]  # fmt: skip


def test_values_are_bound_parameters_never_sql(
    service: PatternService, ingress: Ingress, postgres: EmbeddedPostgres,
    unique: Callable[[str], str],
) -> None:  # fmt: skip
    userid = unique("O'Brien")
    name = "Robert'); DROP TABLE users; --"
    body = {"userId": userid, "name": name, "address": "1 O'Connell St", "credits": 5}
    assert ingress.post("/simple/insert", json=body).json() is True
    response = ingress.post("/simple/read", json=userid)
    assert response.status_code == 200, response.text
    assert response.json()["name"] == name
    assert ingress.post("/keyed/" + userid + "/updateConditional", json=1).status_code == 200
    assert credits_of(postgres, userid) == 6


def test_a_shared_read_is_not_queued_behind_a_write_of_its_key(
    service: PatternService, ingress: Ingress, postgres: EmbeddedPostgres,
    unique: Callable[[str], str],
) -> None:  # fmt: skip
    userid = new_user(postgres, unique("busy"))
    with psycopg.connect(postgres.dsn) as locker:
        locker.execute("SELECT 1 FROM users WHERE userid = %s FOR UPDATE", (userid,))
        # the update waits on the row lock, in its step, while holding the key
        update = ingress.send(f"/keyed/{userid}/update", json=5)
        eventually(
            lambda: query(postgres, "SELECT 1 FROM pg_locks WHERE NOT granted"),
            message="the update to wait for the row lock",
        )
        read = ingress.post(f"/keyed/{userid}/read", timeout=10)
        assert read.status_code == 200, read.text
        assert read.json()["credits"] == 1000
        locker.rollback()
    done = ingress.get(f"/restate/invocation/{update}/attach")
    assert done.status_code == 200, done.text
    assert credits_of(postgres, userid) == 1005


# --- what each technique prevents ------------------------------------------------------------


def test_crash_after_commit_applies_a_keyed_update_twice(
    database: Callable[..., PatternService], ingress: Ingress, postgres: EmbeddedPostgres,
    unique: Callable[[str], str],
) -> None:  # fmt: skip
    """The problem the next techniques solve: the update committed, the service died before
    Restate journaled the step, the retry ran the step again."""
    userid = new_user(postgres, unique("twice"))
    service = database(DATABASE_CRASH_AT="after-commit")
    response = crash_then_recover(ingress, service, f"/keyed/{userid}/update", 12, unique("k"))
    assert response.status_code == 200, response.text
    assert credits_of(postgres, userid) == 1024


def test_crash_after_commit_applies_update_conditional_once(
    database: Callable[..., PatternService], ingress: Ingress, postgres: EmbeddedPostgres,
    unique: Callable[[str], str],
) -> None:  # fmt: skip
    userid = new_user(postgres, unique("once"))
    service = database(DATABASE_CRASH_AT="after-commit")
    path = f"/keyed/{userid}/updateConditional"
    ingress.send(path, json=12, headers={"idempotency-key": (key := unique("k"))})
    eventually(lambda: not service.running(), timeout=60, message="the service to crash")
    row = user_row(postgres, userid)
    assert row is not None
    assert (row["credits"], row["version"]) == (1012, 1), "committed before the crash"
    response = recover(ingress, service, path, key)
    assert response.status_code == 200, response.text
    row = user_row(postgres, userid)
    assert row is not None
    assert (row["credits"], row["version"]) == (1012, 1)
    assert count_lines(service, "Update was not applied - version no longer matches.") == 1


def test_update_conditional_keeps_credits_another_writer_added_meanwhile(
    database: Callable[..., PatternService], ingress: Ingress, postgres: EmbeddedPostgres,
    unique: Callable[[str], str],
) -> None:  # fmt: skip
    """Between the journaled read and the update, another service adds credits: the update
    adds to the row as it is, instead of writing `<read> + 12` over the other's change."""
    userid = new_user(postgres, unique("interleaved"))
    service = database(DATABASE_CRASH_AT="after-read")
    path = f"/keyed/{userid}/updateConditional"
    ingress.send(path, json=12, headers={"idempotency-key": (key := unique("k"))})
    eventually(lambda: not service.running(), timeout=60, message="the service to crash")
    with psycopg.connect(postgres.dsn) as conn:  # what idempotency/update would do
        conn.execute("UPDATE users SET credits = credits + 100 WHERE userid = %s", (userid,))
    response = recover(ingress, service, path, key)
    assert response.status_code == 200, response.text
    row = user_row(postgres, userid)
    assert row is not None
    assert (row["credits"], row["version"]) == (1112, 1)


def test_crash_after_commit_applies_idempotency_update_once(
    database: Callable[..., PatternService], ingress: Ingress, postgres: EmbeddedPostgres,
    unique: Callable[[str], str],
) -> None:  # fmt: skip
    userid = new_user(postgres, unique("idem"))
    before = idempotency_keys(postgres)
    service = database(DATABASE_CRASH_AT="after-commit")
    body = {"userId": userid, "addCredits": 100}
    ingress.send(
        "/idempotency/update", json=body, headers={"idempotency-key": (key := unique("k"))}
    )
    eventually(lambda: not service.running(), timeout=60, message="the service to crash")
    assert credits_of(postgres, userid) == 1100, "committed before the crash"
    response = recover(ingress, service, "/idempotency/update", key)
    assert response.status_code == 200, response.text
    assert credits_of(postgres, userid) == 1100
    assert len(idempotency_keys(postgres) - before) == 1
    assert count_lines(service, "Credits already added by an earlier attempt") == 1


def test_idempotency_key_expires(
    database: Callable[..., PatternService], ingress: Ingress, postgres: EmbeddedPostgres,
    unique: Callable[[str], str],
) -> None:  # fmt: skip
    userid = new_user(postgres, unique("expiry"))
    database(IDEMPOTENCY_KEY_EXPIRY_SECONDS="2")
    before = idempotency_keys(postgres)
    response = ingress.post("/idempotency/update", json={"userId": userid, "addCredits": 1})
    assert response.status_code == 200, response.text
    [key] = idempotency_keys(postgres) - before
    eventually(lambda: key not in idempotency_keys(postgres), timeout=30,
               message="the delayed expireIdempotencyKey to delete the key")  # fmt: skip
    assert credits_of(postgres, userid) == 1001


@pytest.mark.parametrize("moment", ["after-prepare", "after-commit"])
def test_crash_in_two_phase_commit_applies_once(
    moment: str, database: Callable[..., PatternService], ingress: Ingress,
    postgres: EmbeddedPostgres, unique: Callable[[str], str],
) -> None:  # fmt: skip
    """after-prepare: the prepared transaction (holding the row lock) is rolled back by the
    retry, which prepares a new one; after-commit: COMMIT PREPARED ran, the retry's
    COMMIT PREPARED finds no such transaction, which means done."""
    userid = new_user(postgres, unique("2pc"))
    service = database(DATABASE_CRASH_AT=moment)
    body = {"userId": userid, "addCredits": 100}
    key = unique("k")
    ingress.send("/twoPhaseCommit/update", json=body, headers={"idempotency-key": key})
    eventually(lambda: not service.running(), timeout=60, message="the service to crash")
    if moment == "after-prepare":
        assert len(prepared_transactions(postgres)) == 1
        assert credits_of(postgres, userid) == 1000, "prepared, not committed"
    else:
        assert prepared_transactions(postgres) == []
        assert credits_of(postgres, userid) == 1100
    response = recover(ingress, service, "/twoPhaseCommit/update", key)
    assert response.status_code == 200, response.text
    assert credits_of(postgres, userid) == 1100
    assert prepared_transactions(postgres) == []


@pytest.mark.parametrize(
    "path", ["/keyed/{}/updateConditional", "/idempotency/update", "/twoPhaseCommit/update"]
)
def test_kill_9_of_the_service_while_its_update_waits_on_the_row(
    path: str, service: PatternService, ingress: Ingress, postgres: EmbeddedPostgres,
    unique: Callable[[str], str],
) -> None:  # fmt: skip
    """kill -9 in the middle of the update's step (its statement waits on a row lock that the
    test holds): the open transaction dies with the connection, the retry applies once."""
    userid = new_user(postgres, unique("killed"))
    path = path.format(userid)
    body: Any = 12 if path.startswith("/keyed/") else {"userId": userid, "addCredits": 12}
    key = unique("k")
    with psycopg.connect(postgres.dsn) as locker:
        locker.execute("SELECT 1 FROM users WHERE userid = %s FOR UPDATE", (userid,))
        ingress.send(path, json=body, headers={"idempotency-key": key})
        eventually(
            lambda: query(postgres, "SELECT 1 FROM pg_locks WHERE NOT granted"),
            message="the update to wait for the row lock",
        )
        service.kill()
        locker.rollback()
    service.start()
    response = ingress.get(f"/restate/invocation{path}/{key}/attach", timeout=60)
    assert response.status_code == 200, response.text
    assert credits_of(postgres, userid) == 1012


@pytest.mark.kills_server
def test_service_and_server_killed_mid_two_phase_commit(
    database: Callable[..., PatternService], server: RestateServer, ingress: Ingress,
    postgres: EmbeddedPostgres, unique: Callable[[str], str],
) -> None:  # fmt: skip
    userid = new_user(postgres, unique("2pc-kill"))
    service = database(DATABASE_CRASH_AT="after-prepare")
    body = {"userId": userid, "addCredits": 100}
    key = unique("k")
    ingress.send("/twoPhaseCommit/update", json=body, headers={"idempotency-key": key})
    eventually(lambda: not service.running(), timeout=60, message="the service to crash")
    server.kill()
    server.start()
    response = recover(ingress, service, "/twoPhaseCommit/update", key)
    assert response.status_code == 200, response.text
    assert credits_of(postgres, userid) == 1100
    assert prepared_transactions(postgres) == []


def test_two_phase_commit_refuses_a_request_response_deployment(
    service: PatternService, server: RestateServer, ingress: Ingress,
    postgres: EmbeddedPostgres, unique: Callable[[str], str],
) -> None:  # fmt: skip
    register(server.admin_url, service.url, use_http_11=True)
    userid = new_user(postgres, unique("http11"))
    response = ingress.post("/twoPhaseCommit/update", json={"userId": userid, "addCredits": 1})
    assert response.status_code == 500, response.text
    assert "needs a bidirectional stream (HTTP/2)" in response.json()["message"]
    assert "use_http_11" in response.json()["message"]
    assert credits_of(postgres, userid) == 1000
    assert prepared_transactions(postgres) == []
    # the other techniques work in request/response mode
    response = ingress.post(f"/keyed/{userid}/updateConditional", json=1)
    assert response.status_code == 200, response.text
    assert credits_of(postgres, userid) == 1001
    register(server.admin_url, service.url)


# --- bad input -----------------------------------------------------------------------------

BAD_BODIES = [
    ("/simple/read", b"42", "body"),
    ("/simple/read", b'""', "at least 1 character"),
    ("/simple/read", json.dumps("x" * 256).encode(), "at most 255"),
    ("/simple/read", b'"a\\u0000b"', "NUL"),
    ("/simple/durableRead", b"", "body"),
    ("/simple/insert", b'{"userId": "X", "name": "N", "address": "A"}', "credits"),
    ("/simple/insert", b'{"userId": "X", "name": "N", "address": "A", "credits": "5"}', "credits"),
    ("/simple/insert", b'{"userId": "X", "name": 7, "address": "A", "credits": 5}', "name"),
    ("/simple/insert", b'{"userId": "X", "name": "N", "address": "A", "credits": 1.5}', "credits"),
    ("/simple/update", b'{"userId": "A", "newName": "x", "extra": 1}', "extra"),
    ("/simple/update", b'{"userId": "A"}', "newName"),
    ("/keyed/A/update", b'"12"', "body"),
    ("/keyed/A/updateConditional", b"12.5", "body"),
    ("/keyed/A/updateConditional", b"10000000000000000", "body"),
    ("/idempotency/update", b'{"userId": "A"}', "addCredits"),
    ("/idempotency/update", b'{"userId": "A", "addCredits": true}', "addCredits"),
    ("/twoPhaseCommit/update", b'{"userId": "", "addCredits": 1}', "userId"),
    ("/twoPhaseCommit/update", b"not json", "body"),
]


def test_bad_input_is_400_naming_the_field_and_changes_nothing(
    service: PatternService, ingress: Ingress, postgres: EmbeddedPostgres
) -> None:
    before = query(postgres, "SELECT * FROM users ORDER BY userid")
    problems = []
    for path, body, named in BAD_BODIES:
        response = ingress.post(path, content=body, headers=JSON, timeout=15)
        if response.status_code != 400 or named not in response.json().get("message", ""):
            problems.append(f"{path} <- {body[:60]!r}: {response.status_code} {response.text}")
    # the object key is the userid: the same rules
    for path in ("/keyed/a%00b/read", "/keyed/a%00b/update"):
        response = ingress.post(path, json=1 if path.endswith("update") else None, timeout=15)
        if response.status_code != 400 or "userid (the key)" not in response.text:
            problems.append(f"{path}: {response.status_code} {response.text}")
    assert not problems, "\n".join(problems)
    assert query(postgres, "SELECT * FROM users ORDER BY userid") == before


def test_unknown_userid_is_404_and_changes_nothing(
    service: PatternService, ingress: Ingress, postgres: EmbeddedPostgres,
    unique: Callable[[str], str],
) -> None:  # fmt: skip
    nobody = unique("nobody")
    body = {"userId": nobody, "addCredits": 1}
    for path, payload, message in [
        ("/simple/read", nobody, f"No row with userid = '{nobody}'"),
        ("/simple/durableRead", nobody, f"No row with userid = '{nobody}'"),
        (f"/keyed/{nobody}/update", 1, f"No row with userid = '{nobody}'"),
        (f"/keyed/{nobody}/updateConditional", 1, f"No single row with userid = '{nobody}'"),
        ("/idempotency/update", body, f"No row with userid = '{nobody}'"),
        ("/twoPhaseCommit/update", body, f"No row with userid = '{nobody}'"),
    ]:
        response = ingress.post(path, json=payload, timeout=15)
        assert response.status_code == 404, f"{path}: {response.text}"
        assert response.json()["message"] == message
    read = ingress.post(f"/keyed/{nobody}/read", timeout=15)
    assert (read.status_code, read.json()["message"]) == (404, f"No row with userid = '{nobody}'")
    renamed = ingress.post("/simple/update", json={"userId": nobody, "newName": "x"})
    assert (renamed.status_code, renamed.json()) == (200, False)
    assert user_row(postgres, nobody) is None
    assert prepared_transactions(postgres) == []


@pytest.fixture(autouse=True)
def _no_prepared_transaction_left(postgres: EmbeddedPostgres) -> Iterator[None]:
    yield
    assert prepared_transactions(postgres) == [], "a prepared transaction was left behind"
