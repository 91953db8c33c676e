"""Load without loss: thousands of invocations through four patterns at once, with a
`kill -9` of the server in the middle, then every count checked.

Clients send each request with an idempotency key and retry it with the same key when
the connection fails (as it does while the server is down), and a share of the requests
is sent twice on purpose, as a client that lost the answer would. Kafka records flow at
the same time. Afterwards: every reservation, item, payment and record took effect once:
nothing lost, nothing doubled.

Run it alone with `./dev exec python -m pytest -m load` (the figures are printed with -s).
"""

import asyncio
import json
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from devkit.kafka import TansuBroker
from devkit.processes import PatternService, RestateServer
from tests.harness import Admin, StartService, Topic, eventually

pytestmark = [pytest.mark.load, pytest.mark.timeout(900)]

PRODUCTS = 300  # durablerpc: 3 reservations per product, one of them sent twice
BATCH_KEYS, ITEMS_PER_KEY = 40, 25  # batcher: items sent in order per key
ACCOUNTS, PAYMENTS = 20, 200  # statemachinepayments: pay + cancel for every payment
PACKAGES, UPDATES_PER_PACKAGE = 20, 50  # eventenrichment: Kafka records per package
LANES = ("reservations", "items", "payments")  # each with its own share of the slots
CONCURRENCY = 30  # requests in flight at once (the Python client's sweet spot)
KILL_AFTER = 0.4  # share of the HTTP requests answered before the server is killed
CLIENT_DEADLINE = 180.0  # a request that has no answer after this long fails the test


@pytest.fixture
def server(server_with_kafka: RestateServer) -> RestateServer:
    """The Kafka records need the server that has a Kafka cluster."""
    return server_with_kafka


@dataclass
class Client:
    """Ingress calls with an idempotency key, retried with the same key while the server
    cannot be reached; counts what it did."""

    http: httpx.AsyncClient
    lanes: dict[str, asyncio.Semaphore]
    answered: int = 0
    retries: int = 0
    duplicates: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    threshold: int = 0

    async def call(
        self, lane: str, path: str, key: str, body: Any = None, resend: bool = False
    ) -> Any:
        headers = {"idempotency-key": key}
        sends = 2 if resend else 1
        answers = []
        for _ in range(sends):
            answers.append(await self._with_retries(lane, path, body, headers))
        self.duplicates += sends - 1
        assert all(answer == answers[0] for answer in answers), (
            f"{path} with key {key} answered {answers}"
        )
        return answers[0]

    async def _with_retries(self, lane: str, path: str, body: Any, headers: dict[str, str]) -> Any:
        async with self.lanes[lane]:  # a request holds its slot until answered, retries included
            deadline = time.monotonic() + CLIENT_DEADLINE
            delay = 0.1
            while True:
                try:
                    response = await self.http.post(path, json=body, headers=headers)
                    if response.status_code not in (502, 503, 504):
                        assert response.status_code == 200, f"{path}: {response.text}"
                        self.answered += 1
                        if self.answered == self.threshold:
                            self.progress.set()
                        return response.json() if response.content else None
                except httpx.TransportError:
                    pass  # the server is down or dropped the connection: same key again
                assert time.monotonic() < deadline, f"{path}: no answer in {CLIENT_DEADLINE} s"
                self.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)


async def reservations(client: Client, prefix: str) -> dict[str, list[bool]]:
    """Three reservation ids race for each product; the first id is also sent twice."""

    async def reserve(product: str, reservation: str, resend: bool) -> tuple[str, bool]:
        path = f"/ProductService/{product}/reserve"
        return product, await client.call("reservations", path, reservation, resend=resend)

    calls = [
        reserve(f"{prefix}-product{p}", f"{prefix}-reservation{p}-{r}", resend=r == 0)
        for p in range(PRODUCTS)
        for r in range(3)
    ]
    answers: dict[str, list[bool]] = defaultdict(list)
    for product, reserved in await asyncio.gather(*calls):
        answers[product].append(reserved)
    return answers


async def batch_items(client: Client, prefix: str) -> None:
    """Items are sent one after the other per key (so their order is defined), the keys
    in parallel; every fifth item is sent twice."""

    async def one_key(k: int) -> None:
        for i in range(ITEMS_PER_KEY):
            item = k * 1000 + i
            path = f"/Batcher/{prefix}-key{k}/receive"
            await client.call("items", path, f"{prefix}-item{item}", item, resend=i % 5 == 0)

    await asyncio.gather(*(one_key(k) for k in range(BATCH_KEYS)))


async def payments(client: Client, prefix: str) -> None:
    """makePayment and cancelPayment of each payment race each other."""
    rng = random.Random(7)

    async def pay_and_cancel(p: int) -> None:
        payment = f"{prefix}-payment{p}"
        body = {"accountId": f"{prefix}-account{p % ACCOUNTS}", "amountCents": 1 + p % 9}
        path = f"/PaymentProcessor/{payment}"
        make = client.call("payments", f"{path}/makePayment", f"{payment}-pay", body)
        cancel = client.call("payments", f"{path}/cancelPayment", f"{payment}-cancel")
        first, second = (make, cancel) if rng.random() < 0.5 else (cancel, make)
        await asyncio.gather(first, second)

    await asyncio.gather(*(pay_and_cancel(p) for p in range(PAYMENTS)))


def location(package: int, n: int) -> str:
    return json.dumps({"timestamp": f"2026-11-28 {n:05d}", "location": f"Depot {package}-{n}"})


async def kill_and_restart(server: RestateServer, client: Client) -> float:
    """Kill -9 the server once enough requests were answered; restart it (same state)."""
    await client.progress.wait()
    server.kill()
    began = time.monotonic()
    # Started from this (the main) thread on purpose, blocking the loop for a few seconds:
    # the server dies with the thread that started it (PDEATHSIG), and a worker thread of
    # asyncio.to_thread ends with the loop.
    server.start()
    return time.monotonic() - began


async def drive(
    server: RestateServer, topic: Topic, prefix: str, total_requests: int
) -> tuple[Client, dict[str, list[bool]], float, float]:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=server.ingress_url, timeout=CLIENT_DEADLINE, limits=limits
    ) as http:
        client = Client(
            http, {lane: asyncio.Semaphore(CONCURRENCY // len(LANES)) for lane in LANES}
        )
        client.threshold = int(total_requests * KILL_AFTER)
        records = [
            (f"{prefix}-package{p}", location(p, n))
            for n in range(UPDATES_PER_PACKAGE)
            for p in range(PACKAGES)
        ]
        began = time.monotonic()
        produced = asyncio.to_thread(topic.produce, records)
        work: list[Awaitable[Any]] = [
            reservations(client, prefix),
            batch_items(client, prefix),
            payments(client, prefix),
            produced,
            kill_and_restart(server, client),
        ]
        answers, _, _, _, restart_seconds = await asyncio.gather(*work)
        return client, answers, restart_seconds, time.monotonic() - began


def delivered_batches(batcher: PatternService) -> dict[str, list[list[int]]]:
    """The batches the receiver logged, per key, in order; a batch logged twice by a
    step that was retried after the crash is one delivery (the same batch)."""
    found: dict[str, list[list[int]]] = defaultdict(list)
    seen: set[str] = set()
    for line in batcher.log_lines():
        match = re.search(r"Received batch of \d+ items for (\S+): (\[.*\])", line)
        if match and match.group(0) not in seen:
            seen.add(match.group(0))
            found[match.group(1)].append(json.loads(match.group(2)))
    return found


def opening_balances(payments_service: PatternService, prefix: str) -> dict[str, set[int]]:
    balances: dict[str, set[int]] = defaultdict(set)
    for line in payments_service.log_lines():
        match = re.search(rf"Account ({re.escape(prefix)}-account\d+) opened with (\d+)", line)
        if match:
            balances[match.group(1)].add(int(match.group(2)))
    return balances


def state_values(admin: Admin, service: str, key: str, prefix: str) -> dict[str, Any]:
    rows = admin.query(
        f"SELECT service_key, value_utf8 FROM state WHERE service_name = '{service}' "
        f"AND key = '{key}' AND service_key LIKE '{prefix}-%'",
        timeout=120,  # right after the restart and the load, the query engine may lag
    )
    return {row["service_key"]: json.loads(row["value_utf8"]) for row in rows}


def test_thousands_of_invocations_and_records_across_a_server_crash_lose_nothing(
    server: RestateServer,
    kafka_broker: TansuBroker,
    start_service: StartService,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    prefix = unique("load")
    start_service("durablerpc")
    batcher = start_service("batcher", {"BATCH_LINGER_SECONDS": "0.5"})
    payments_service = start_service("statemachinepayments")
    start_service("eventenrichment")
    topic = Topic(
        kafka_broker, server, f"{prefix}-locations", "service://PackageTracker/updateLocation"
    )
    for p in range(PACKAGES):
        response = httpx.post(
            f"{server.ingress_url}/PackageTracker/{prefix}-package{p}/registerPackage",
            json={"finalDestination": f"Destination {p}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text

    total_requests = PRODUCTS * 4 + BATCH_KEYS * ITEMS_PER_KEY * 6 // 5 + PAYMENTS * 2
    client, answers, restart_seconds, seconds = asyncio.run(
        drive(server, topic, prefix, total_requests)
    )
    assert client.answered == total_requests, f"{client.answered} of {total_requests} answered"

    # durablerpc: per product exactly one reservation won, and the state says reserved
    winners = Counter(answer.count(True) for answer in answers.values())
    assert winners == {1: PRODUCTS}, f"products by number of winning reservations: {winners}"
    reserved = state_values(admin, "ProductService", "reserved", prefix)
    assert len(reserved) == PRODUCTS
    assert all(reserved.values())

    # batcher: every item received once, in the order sent, each batch at most 10 items
    expected_items = {f"{prefix}-key{k}": [k * 1000 + i for i in range(ITEMS_PER_KEY)]
                      for k in range(BATCH_KEYS)}  # fmt: skip

    def all_items_received() -> dict[str, list[list[int]]]:
        batches = delivered_batches(batcher)
        received = {key: [item for batch in batches[key] for item in batch] for key in batches}
        assert received == expected_items, "items per key differ from the items sent"
        return batches

    batches = eventually(all_items_received, timeout=120, message="every item delivered once")
    assert max(len(batch) for key in batches for batch in batches[key]) <= 10

    # statemachinepayments: every payment ends cancelled and every account holds what it
    # opened with: each withdrawal was given back once, nothing more
    statuses = state_values(admin, "PaymentProcessor", "status", prefix)
    assert Counter(statuses.values()) == {"CANCELLED": PAYMENTS}
    opened = opening_balances(payments_service, prefix)
    balances = state_values(admin, "Account", "balance", prefix)
    assert set(balances) == set(opened), "an account without an opening line, or vice versa"
    for account, balance in balances.items():
        assert opened[account] == {balance}, (
            f"{account}: opened with {opened[account]}, now {balance}"
        )

    # eventenrichment: every record applied once, in the order published per package
    def all_records_applied() -> bool:
        infos = state_values(admin, "PackageTracker", "package-info", prefix)
        for p in range(PACKAGES):
            got = [entry["location"] for entry in infos[f"{prefix}-package{p}"]["locations"]]
            want = [f"Depot {p}-{n}" for n in range(UPDATES_PER_PACKAGE)]
            assert got == want, f"package{p}: {len(got)} locations, expected {len(want)} in order"
        return True

    eventually(all_records_applied, timeout=180, message="every Kafka record applied once")

    records = PACKAGES * UPDATES_PER_PACKAGE
    print(
        f"\nload: {client.answered} HTTP invocations ({client.duplicates} sent twice on "
        f"purpose, {client.retries} retries after the crash) and {records} Kafka records "
        f"in {seconds:.1f} s; server down and back in {restart_seconds:.1f} s; "
        f"{PRODUCTS} products reserved once, {BATCH_KEYS * ITEMS_PER_KEY} items in "
        f"{sum(len(b) for b in batches.values())} batches, {PAYMENTS} payments cancelled "
        f"over {len(balances)} balanced accounts, {records} locations applied"
    )
