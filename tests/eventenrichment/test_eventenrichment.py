"""Event enrichment: RPC registration joined with Kafka location updates.

The seed's walkthrough, order and exactly-once over many records, crashes of the service
and of the server while records flow, and records that cannot be applied.
"""

import json
from collections.abc import Callable

from devkit.kafka import TansuBroker
from devkit.processes import PatternService, RestateServer
from tests.harness import Ingress, StartService, Topic, count_lines, eventually, restate_cli

SINK = "service://PackageTracker/updateLocation"


def location(n: int) -> str:
    return json.dumps({"timestamp": f"2024-10-10 {n:05d}", "location": f"Road {n}"})


def register(ingress: Ingress, package: str, destination: str = "Bridge 6, Amsterdam") -> None:
    response = ingress.post(
        f"/PackageTracker/{package}/registerPackage", json={"finalDestination": destination}
    )
    assert response.status_code == 200, response.text


def locations(ingress: Ingress, package: str) -> list[str]:
    response = ingress.get(f"/PackageTracker/{package}/getPackageInfo")
    assert response.status_code == 200, response.text
    return [entry["location"] for entry in response.json()["locations"]]


def wait_for_locations(ingress: Ingress, package: str, expected: list[str]) -> None:
    eventually(
        lambda: locations(ingress, package) == expected,
        timeout=120,
        message=f"{package} has its {len(expected)} locations, each once, in published order",
    )


def test_walkthrough_register_then_kafka_updates(
    start_service: StartService,
    server: RestateServer,
    kafka_broker: TansuBroker,
    ingress: Ingress,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    service = start_service("eventenrichment")
    topic = Topic(kafka_broker, server, unique("package-location-updates"), SINK)
    package = unique("package1")

    register(ingress, package)
    topic.produce(
        [
            (package, '{"timestamp": "2024-10-10 13:00", "location": "Pinetree Road 5, Paris"}'),
            (
                package,
                '{"timestamp": "2024-10-10 14:00", "location": "Mountain Road 155, Brussels"}',
            ),
        ]
    )

    eventually(
        lambda: len(locations(ingress, package)) == 2, timeout=60, message="both updates applied"
    )
    info = ingress.get(f"/PackageTracker/{package}/getPackageInfo").json()
    assert info == {
        "finalDestination": "Bridge 6, Amsterdam",
        "locations": [
            {"location": "Pinetree Road 5, Paris", "timestamp": "2024-10-10 13:00"},
            {"location": "Mountain Road 155, Brussels", "timestamp": "2024-10-10 14:00"},
        ],
    }
    assert count_lines(service, f"Package {package} is at Pinetree Road 5, Paris") == 1

    cli = restate_cli("kv", "get", "PackageTracker", package, env=client_env)
    for text in ("package-info", '"finalDestination": "Bridge 6, Amsterdam"',
                 '"location": "Mountain Road 155, Brussels"'):  # fmt: skip
        assert text in cli.stdout


def test_many_records_over_ten_keys_arrive_once_and_in_order(
    start_service: StartService,
    server: RestateServer,
    kafka_broker: TansuBroker,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    start_service("eventenrichment")
    topic = Topic(kafka_broker, server, unique("updates"), SINK)
    packages = [unique(f"pkg{i}") for i in range(10)]
    for package in packages:
        register(ingress, package)

    topic.produce([(packages[n % 10], location(n)) for n in range(1000)])

    for i, package in enumerate(packages):
        wait_for_locations(ingress, package, [f"Road {n}" for n in range(i, 1000, 10)])


def crash_while_records_flow(
    crash: Callable[[], None],
    restart: Callable[[], None],
    server: RestateServer,
    kafka_broker: TansuBroker,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    topic = Topic(kafka_broker, server, unique("updates"), SINK)
    packages = [unique(f"pkg{i}") for i in range(4)]
    for package in packages:
        register(ingress, package)
    topic.produce([(packages[n % 4], location(n)) for n in range(200)])
    eventually(lambda: len(locations(ingress, packages[0])) > 0, timeout=60, message="records flow")
    crash()
    topic.produce([(packages[n % 4], location(n)) for n in range(200, 400)])
    restart()
    for i, package in enumerate(packages):
        wait_for_locations(ingress, package, [f"Road {n}" for n in range(i, 400, 4)])


def test_service_crash_while_records_flow_loses_and_repeats_nothing(
    start_service: StartService,
    server: RestateServer,
    kafka_broker: TansuBroker,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    service: PatternService = start_service("eventenrichment")
    crash_while_records_flow(service.kill, service.start, server, kafka_broker, ingress, unique)


def test_server_crash_while_records_flow_loses_and_repeats_nothing(
    start_service: StartService,
    server: RestateServer,
    kafka_broker: TansuBroker,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    start_service("eventenrichment")
    crash_while_records_flow(server.kill, server.start, server, kafka_broker, ingress, unique)


def test_unknown_package_and_malformed_records_are_skipped_not_blocking(
    start_service: StartService,
    server: RestateServer,
    kafka_broker: TansuBroker,
    ingress: Ingress,
    unique: Callable[[str], str],
) -> None:
    service = start_service("eventenrichment")
    topic = Topic(kafka_broker, server, unique("updates"), SINK)
    known, unknown = unique("known"), unique("unknown")
    register(ingress, known)

    topic.produce(
        [
            (unknown, location(1)),
            (known, "not json"),
            (known, '{"timestamp": "2024-10-10 13:00"}'),
            (known, location(2)),
        ]
    )

    eventually(
        lambda: locations(ingress, known) == ["Road 2"],
        timeout=60,
        message="the good record behind the bad ones is applied",
    )
    assert count_lines(service, f"Skipping location update for package {unknown}: Package not")
    assert count_lines(service, f"Skipping location update for package {known}: invalid") == 2
    assert "location: Field required" in service.log_text()
    response = ingress.get(f"/PackageTracker/{unknown}/getPackageInfo")
    assert response.status_code == 404
    assert response.json()["message"] == "Package not found"


def test_register_without_destination_is_400_and_registers_nothing(
    start_service: StartService, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    start_service("eventenrichment")
    package = unique("package")
    response = ingress.post(f"/PackageTracker/{package}/registerPackage", json={"final": "x"})
    assert response.status_code == 400
    assert "finalDestination: Field required" in response.json()["message"]
    assert ingress.get(f"/PackageTracker/{package}/getPackageInfo").status_code == 404
