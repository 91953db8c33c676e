"""Batching: full and undersized batches, keys kept apart, exactly once across crashes."""

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from devkit.processes import PatternService, RestateServer
from tests.harness import Admin, Ingress, StartService, assert_ingress_refuses, eventually

JSON = {"content-type": "application/json"}


def add(ingress: Ingress, key: str, item: Any, timeout: float = 30) -> None:
    """The seed's `curl localhost:8080/Batcher/<key>/receive -d <item>`."""
    response = ingress.post(
        f"/Batcher/{key}/receive", content=json.dumps(item), headers=JSON, timeout=timeout
    )
    assert response.status_code == 200, f"{response.status_code} {response.text}"


def batches(service: PatternService, key: str) -> list[list[Any]]:
    """The batches BatchReceiver logged for this key, in the order it received them."""
    marker = f" items for {key}: "
    found = []
    for line in service.log_lines():
        if "[BatchReceiver/receive][" in line and marker in line:
            found.append(json.loads(line.split(marker, 1)[1]))
    return found


def flat(found: list[list[Any]]) -> list[Any]:
    return [item for batch in found for item in batch]


def delivered(
    service: PatternService, key: str, count: int, timeout: float = 60
) -> list[list[Any]]:
    """Wait until the receiver has logged `count` items of this key; its batches."""

    def enough() -> list[list[Any]] | None:
        found = batches(service, key)
        return found if len(flat(found)) >= count else None

    return eventually(enough, timeout, f"{count} items of {key} are delivered")


def test_seed_walkthrough_gives_three_full_batches_and_one_undersized(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    """The seed's 32 curls, pasted at once, give batches of 10, 10, 10 and 2. Whether ten
    requests reach the object within the linger period (1 s) depends on the machine's
    speed; here they all do, whatever its speed: the service is down while they are sent,
    so Restate queues all 32 in the object's inbox, in the order sent, and an expiry timer
    that fires later is queued behind them."""
    service = start_service("batcher")  # the seed's linger period, 1 s
    key = unique("myKey")
    service.kill()
    items = [123, *range(1, 32)]

    def queued() -> int:
        rows = admin.query(
            "SELECT count(*) AS n FROM sys_invocation WHERE target_service_name = 'Batcher' "
            f"AND target_service_key = '{key}'"
        )
        return int(rows[0]["n"])

    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        answers = []
        for count, item in enumerate(items, start=1):  # each a curl of the seed, in order
            # each answers once the service is back: after all 32 are queued, which can take
            # longer than the usual 30 s on a busy machine
            answers.append(pool.submit(add, ingress, key, item, 240))
            eventually(lambda c=count: queued() >= c, 30, f"{count} items are queued")  # type: ignore[misc]
        service.start()
        for answer in answers:
            answer.result()

    found = delivered(service, key, 32)
    assert [len(batch) for batch in found] == [10, 10, 10, 2]
    assert flat(found) == items
    assert "items" not in admin.state("Batcher", key)
    lines = [line for line in service.log_lines() if f"for {key}: " in line]
    assert all("[BatchReceiver/receive][inv_" in line for line in lines)
    expired = [line for line in service.log_lines() if "Linger period over" in line]
    assert len(expired) == 1, expired  # the full batches were sent before their timers
    assert expired[0].endswith("sending a batch of 2 items")


def test_the_batch_being_built_is_the_objects_state(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    # a linger period no request sequence on a busy machine comes near (the state is read
    # before it ends)
    start_service("batcher", settings={"BATCH_LINGER_SECONDS": "600"})
    key = unique("myKey")
    for item in [123, *range(1, 12)]:
        add(ingress, key, item)
    assert json.loads(admin.state("Batcher", key)["items"]) == [10, 11]


def test_a_lone_item_is_sent_after_the_linger_period(
    start_service: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    service = start_service("batcher", settings={"BATCH_LINGER_SECONDS": "3"})
    key = unique("lonely")
    add(ingress, key, {"id": 1, "name": "anything JSON"})
    assert batches(service, key) == []  # lingering
    found = eventually(lambda: batches(service, key), timeout=60, message="the lone item is sent")
    assert found == [[{"id": 1, "name": "anything JSON"}]]


def test_concurrent_senders_on_several_keys_every_item_once_in_order(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    # a short linger period: full batches and expiring batches interleave
    service = start_service("batcher", settings={"BATCH_LINGER_SECONDS": "0.3"})
    keys = [unique(f"key{k}") for k in range(4)]

    def sender(key: str) -> None:  # one sender per key, in order
        for i in range(25):
            add(ingress, key, f"{key}/{i}")

    with ThreadPoolExecutor(max_workers=len(keys)) as pool:
        list(pool.map(sender, keys))

    for key in keys:
        expected = [f"{key}/{i}" for i in range(25)]
        found = eventually(
            lambda k=key, e=expected: (
                batches(service, k) if len(flat(batches(service, k))) >= len(e) else None
            ),  # type: ignore[misc]
            timeout=60,
            message=f"all items of {key} are delivered",
        )
        assert flat(found) == expected  # none lost, none twice, none of another key, in order
        assert all(1 <= len(batch) <= 10 for batch in found)
        assert "items" not in admin.state("Batcher", key)


def test_crash_of_service_and_server_mid_stream_loses_and_duplicates_nothing(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    service = start_service("batcher", settings={"BATCH_LINGER_SECONDS": "10"})
    key = unique("crashy")
    for i in range(15):
        add(ingress, key, i)

    def first_batch_done() -> bool:
        rows = admin.query(
            "SELECT status FROM sys_invocation WHERE target_service_name = 'BatchReceiver' "
            f"AND target_service_key = '{key}'"
        )
        return bool(rows) and all(row["status"] == "completed" for row in rows)

    eventually(first_batch_done, timeout=60, message="the first batch is delivered")
    service.kill()  # the next items wait in the batch, their expiry timer is pending
    for i in range(15, 25):  # Restate accepts the items while the service is down
        response = ingress.post(f"/Batcher/{key}/receive/send", content=json.dumps(i), headers=JSON)
        assert response.status_code == 202, response.text
    server.kill()
    server.start()
    service.start()

    found = delivered(service, key, 25, timeout=90)
    assert flat(found) == list(range(25))
    eventually(
        lambda: "items" not in admin.state("Batcher", key),
        timeout=30,
        message="the Batcher's state is empty",
    )
    assert flat(batches(service, key)) == list(range(25))


def test_bad_items_are_refused_with_400_and_change_nothing(
    start_service: StartService, ingress: Ingress, admin: Admin, unique: Callable[[str], str]
) -> None:
    service = start_service("batcher")
    key = unique("badKey")
    not_json = ingress.post(f"/Batcher/{key}/receive", content="one-two-three", headers=JSON)
    assert not_json.status_code == 400
    assert not_json.json()["message"].startswith("item: expected a JSON value")
    empty = ingress.post(f"/Batcher/{key}/receive", headers=JSON)
    assert empty.status_code == 400
    # expire is for the Batcher's own timer only, BatchReceiver for the Batcher only
    assert_ingress_refuses(ingress, f"/Batcher/{key}/expire")
    assert_ingress_refuses(ingress, f"/BatchReceiver/{key}/receive", [1, 2, 3])
    assert admin.state("Batcher", key) == {}
    assert batches(service, key) == []
