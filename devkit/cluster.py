"""A 3-node Restate cluster on loopback, from the same `restate-server` binary.

Every node runs every role (metadata server, admin, worker, log server, HTTP ingress), as
a small production cluster does. Fixed ports of `./dev run <pattern> --cluster`:

    node n1  ingress :8080   admin :9070   node-to-node :5122   (provisions the cluster)
    node n2  ingress :28080  admin :29070  node-to-node :25122
    node n3  ingress :38080  admin :39070  node-to-node :35122

- Metadata (members, partitions, logs, deployments) lives in a replicated metadata store
  that all three nodes run; it needs a majority (2 of 3) up.
- The log (bifrost) and so every accepted request and journal entry is stored on 2
  nodes (`default-replication = 2`): any one node can die without losing anything, and
  each partition it led gets a new leader on another node.
- Every node's ingress takes every request. A client (or the load balancer in front)
  that loses one node retries on another with the same idempotency key.

Node n1 provisions the cluster on its first start (`auto-provision`); the others wait for
it and join. Each node reads a config file that is (re)written into the state folder
before each start (`<state>/nN.toml`) and keeps its data in `<state>/nN/`, so a node
restarted on the same state rejoins as the same node.
"""

import subprocess
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from devkit import DevError
from devkit.processes import (
    Echo,
    ManagedProcess,
    RestateServer,
    ServerPorts,
    register,
    wait_until,
)

CLUSTER_NAME = "patterns-cluster"
REPLICATION = 2
ROLES = ("metadata-server", "admin", "worker", "log-server", "http-ingress")
FIXED_PORTS = (
    ServerPorts(ingress=8080, admin=9070, node=5122),
    ServerPorts(ingress=28080, admin=29070, node=25122),
    ServerPorts(ingress=38080, admin=39070, node=35122),
)


@dataclass(frozen=True)
class NodeSpec:
    node_id: int  # 1, 2, 3
    ports: ServerPorts

    @property
    def name(self) -> str:
        return f"n{self.node_id}"

    @property
    def address(self) -> str:
        """Where the other nodes reach this one."""
        return f"http://127.0.0.1:{self.ports.node}/"


def node_config(
    node: NodeSpec, members: list[NodeSpec], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One node's configuration (written as TOML), plus `extra` keys (tables merged).
    Every key is checked against `restate-server --dump-config` before start: a
    misspelled key would be silently ignored."""
    config: dict[str, Any] = {
        "node-name": node.name,
        "force-node-id": node.node_id,
        "cluster-name": CLUSTER_NAME,
        "roles": list(ROLES),
        # only the first node creates the cluster; the others wait for it and join
        "auto-provision": node.node_id == 1,
        "default-replication": REPLICATION,
        "listen-mode": "tcp",
        "bind-address": f"127.0.0.1:{node.ports.node}",
        "advertised-address": node.address,
        "disable-telemetry": True,
        # a node that comes back is trusted again after 1 s, not 5 s: faster start-up
        # and rejoin
        "gossip-suspect-interval": "1s",
        # All three nodes share one machine's CPU: a node starved for a second (a busy
        # laptop, a test run) must not be declared dead, or partition leaders and the
        # metadata leader move back and forth and calls stall for minutes. Defaults:
        # 10 ticks of 100 ms for both. A killed node is still noticed within seconds.
        "gossip-failure-threshold": 30,
        "metadata-server": {"raft-election-tick": 30},
        "metadata-client": {"type": "replicated", "addresses": [m.address for m in members]},
        "bifrost": {"default-provider": "replicated"},
        "admin": {"bind-address": f"127.0.0.1:{node.ports.admin}"},
        "ingress": {"bind-address": f"127.0.0.1:{node.ports.ingress}"},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict):
            config[key] = {**config.get(key, {}), **value}
        else:
            config[key] = value
    return config


def to_toml(config: dict[str, Any]) -> str:
    """TOML for the flat values and one-level tables that `node_config` produces."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(item) for item in v) + "]"
        raise TypeError(f"no TOML for {v!r}")

    lines = ["# written by devkit/cluster.py before each start of this node"]
    tables = {k: v for k, v in config.items() if isinstance(v, dict)}
    lines += [f"{k} = {value(v)}" for k, v in config.items() if k not in tables]
    for name, table in tables.items():
        lines += ["", f"[{name}]", *(f"{k} = {value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def _canonical(value: Any) -> Any:
    return sorted(value) if isinstance(value, list) else value  # roles: a set, any order


def _differences(wanted: dict[str, Any], read: dict[str, Any], prefix: str = "") -> list[str]:
    problems = []
    for key, value in wanted.items():
        path = prefix + key
        if isinstance(value, dict):
            problems += _differences(value, read.get(key) or {}, path + ".")
        elif _canonical(read.get(key)) != _canonical(value):
            problems.append(f"{path}: set {value!r}, the server read {read.get(key)!r}")
    return problems


class ClusterNode(RestateServer):
    """One node: a RestateServer with its cluster config file."""

    def __init__(
        self,
        binary: Path,
        state_dir: Path,
        spec: NodeSpec,
        members: list[NodeSpec],
        settings: dict[str, str] | None = None,
        echo: Echo | None = None,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.config = node_config(spec, members, extra_config)
        self.config_path = state_dir / f"{spec.name}.toml"
        super().__init__(
            binary,
            state_dir,
            spec.ports,
            state_dir / "logs" / f"{spec.name}.log",
            settings=settings,
            config_file=self.config_path,
            echo=echo,
            node_name=spec.name,
        )
        self.name = f"restate-server {spec.name}"

    def write_config(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(to_toml(self.config), encoding="utf-8")

    def unread_settings(self) -> list[str]:
        """The keys of the config file whose value `--dump-config` does not show (with the
        environment the node runs with, which may override the file); [] if all read."""
        self.write_config()
        dumped = subprocess.run(
            [self.argv[0], "--config-file", str(self.config_path), "--dump-config"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if dumped.returncode != 0:
            raise DevError(f"{self.argv[0]} --dump-config failed: {dumped.stderr.strip()}")
        return _differences(self.config, tomllib.loads(dumped.stdout))

    def launch(self) -> None:
        """Start the process without waiting for it to become healthy."""
        self.write_config()
        ManagedProcess.start(self)

    def start(self, timeout: float = 90.0) -> None:
        self.launch()
        self.wait_healthy(timeout)

    def rss_mib(self) -> float | None:
        """Resident memory (Linux), None if unknown or not running."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text(encoding="utf-8")
        except (OSError, TypeError):
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return None


class Cluster:
    """Three nodes from one binary, state in `state_dir`, on the given loopback ports."""

    def __init__(
        self,
        binary: Path,
        state_dir: Path,
        ports: tuple[ServerPorts, ...] = FIXED_PORTS,
        settings: dict[str, str] | None = None,
        echo: Callable[[str], Echo | None] = lambda node_name: None,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        """`settings`: environment of every node (RESTATE_...); `extra_config`: more
        config file keys for every node (checked like the others)."""
        specs = [NodeSpec(i + 1, p) for i, p in enumerate(ports)]
        self.state_dir = state_dir
        self.nodes = [
            ClusterNode(binary, state_dir, spec, specs, settings, echo(spec.name), extra_config)
            for spec in specs
        ]

    @property
    def admin_url(self) -> str:
        return self.nodes[0].admin_url

    def check_config(self) -> None:
        """DevError if a node would ignore any of its settings."""
        problems = [f"{n.name}: {p}" for n in self.nodes for p in n.unread_settings()]
        if problems:
            raise DevError("restate-server ignores settings:\n" + "\n".join(problems))

    def start(self, timeout: float = 120.0) -> None:
        """Start the nodes together (n1 provisions, the others join); return once every
        node is healthy and every node is a member of the metadata store."""
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_healthy(timeout)
        everyone = sorted(node.spec.node_id for node in self.nodes)
        wait_until(
            lambda: metadata_members(self.nodes[0].admin_url) == everyone,
            timeout,
            "all three nodes to join the cluster's metadata store",
            interval=0.2,
        )

    def register(
        self, service_uri: str, timeout: float = 120.0, use_http_11: bool = False
    ) -> list[str]:
        """Register a deployment through the first running node's admin API; retried while
        the metadata store elects a leader; returns once every running node's ingress
        knows the services."""
        running = self.running_nodes()
        ingresses = [node.ingress_url for node in running]
        return register(
            running[0].admin_url,
            service_uri,
            retry_for=timeout,
            use_http_11=use_http_11,
            ingress_urls=ingresses,
        )

    def running_nodes(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.running()]

    def stop(self) -> None:
        """Stop all nodes at once (one after the other takes three times as long)."""
        stopping = [node for node in self.nodes if node.request_stop()]
        for node in stopping:
            node.finish_stop()


def metadata_members(admin_url: str) -> list[int] | None:
    """The node ids in the metadata store's cluster, as a node's admin API reports them."""
    try:
        response = httpx.get(f"{admin_url}/cluster-health", timeout=2.0)
        if response.status_code != 200:
            return None
        members = response.json()["metadata_cluster_health"]["members"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return sorted(int(m) for m in members)
