"""Closed doors: every process `./dev run` starts listens on loopback only.

The test starts the same processes, through the same classes, that the launcher starts
(restate-server plain and with the Kafka configuration, a pattern's service, the Tansu
broker, the localstripe and model stand-ins) and reads each one's listening TCP sockets from /proc:
the socket inodes among its open files, matched against /proc/<pid>/net/tcp and tcp6.
"""

import ipaddress
import os
import sys
from pathlib import Path

import pytest

from devkit import binaries
from devkit.kafka import TansuBroker
from devkit.model_standin import ModelStandin
from devkit.processes import ManagedProcess, PatternService, RestateServer, ServerPorts
from devkit.stripe_standin import LocalStripe
from tests.harness import StartService

TCP_LISTEN = "0A"
LOOPBACK = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads Linux's /proc")


def _address(hex_address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """'0100007F:1F90' -> (127.0.0.1, 8080); IPv6 likewise (/proc prints 32-bit words in
    host byte order)."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words), int(port, 16)


def _family_tree(pid: int) -> list[int]:
    """The process and its descendants (a launcher-started process could fork a helper)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").iterdir():
            children = (task / "children").read_text().split()
            todo.extend(int(child) for child in children)
    return pids


def listening(process: ManagedProcess) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket that the process (or a child) listens on."""
    assert process.pid is not None, f"{process.name} was not started"
    assert process.running(), f"{process.name} is not running"
    found = []
    for pid in _family_tree(process.pid):
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
        for table in ("tcp", "tcp6"):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == TCP_LISTEN and fields[9] in inodes:
                    address, port = _address(fields[1])
                    found.append((str(address), port))
    return sorted(set(found))


def assert_loopback_only(process: ManagedProcess, expected_ports: set[int]) -> None:
    sockets = listening(process)
    print(f"{process.name} (pid {process.pid}) listens on: {sockets}")
    outside = [(a, p) for a, p in sockets if ipaddress.ip_address(a) not in LOOPBACK]
    assert not outside, f"{process.name} listens beyond loopback: {outside}"
    assert expected_ports <= {port for _, port in sockets}, (process.name, sockets)


def test_servers_listen_on_loopback_only(
    restate_server: RestateServer, kafka_server: RestateServer
) -> None:
    """The plain server and the one with restate.toml's Kafka cluster: ingress, admin and
    node port, and nothing else beyond loopback."""
    for server in (restate_server, kafka_server):
        ports = {server.ports.ingress, server.ports.admin, server.ports.node}
        assert_loopback_only(server, ports)


def test_a_pattern_service_listens_on_loopback_only(start_service: StartService) -> None:
    service = start_service("durablerpc")
    assert_loopback_only(service, {service.port})


def test_broker_and_stand_ins_listen_on_loopback_only(
    kafka_broker: TansuBroker, stripe_standin: LocalStripe, model_standin: ModelStandin
) -> None:
    assert_loopback_only(kafka_broker, {kafka_broker.port})
    assert_loopback_only(stripe_standin, {stripe_standin.port})
    assert_loopback_only(model_standin, {model_standin.port})


def test_the_launchers_fixed_ports_use_the_same_loopback_binding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`./dev run` builds its processes from the same classes, on the fixed ports (which a
    test must not bind): the binding is in what those classes run, whatever the port."""
    server = RestateServer(binaries.find(binaries.SERVER), tmp_path, ServerPorts(), tmp_path / "s")
    assert server.argv[server.argv.index("--bind-ip") + 1] == "127.0.0.1"
    assert server.argv[server.argv.index("--listen-mode") + 1] == "tcp"
    assert server.ingress_url == "http://127.0.0.1:8080"
    broker = TansuBroker(9092, tmp_path / "t")
    assert broker.argv[broker.argv.index("--listener-url") + 1] == "tcp://127.0.0.1:9092"
    monkeypatch.setenv("HOST", "0.0.0.0")  # as if the user's shell exported one
    service = PatternService("durablerpc", 9080, tmp_path / "p")
    assert service.env is not None
    assert service.env["HOST"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("proc_net", "address"),
    [
        ("0100007F:1F90", "127.0.0.1"),
        ("00000000:1F90", "0.0.0.0"),
        ("00000000000000000000000001000000:1F90", "::1"),
        ("00000000000000000000000000000000:1F90", "::"),
    ],
)
def test_the_proc_reader_tells_loopback_from_any(proc_net: str, address: str) -> None:
    """So that a wildcard listener would fail the tests above."""
    parsed, port = _address(proc_net)
    assert (str(parsed), port) == (address, 8080)
    assert (parsed in LOOPBACK) == (address in ("127.0.0.1", "::1"))
