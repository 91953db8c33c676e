"""Real processes for the launcher and the tests: a Restate server and a pattern's service.

Each child runs in its own session (Ctrl-C in the terminal reaches only the launcher,
which then stops the children in order) and, on Linux, is killed by the kernel if the
process that started it dies, so that nothing outlives a crashed launcher or test run.
Every line a child prints goes to its log file and, optionally, to a callback.
"""

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from devkit import ROOT, DevError, binaries

Echo = Callable[[str], None]

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with_parent() -> None:
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll `check` until it is true; DevError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise DevError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


class ManagedProcess:
    """A child process whose output is kept in a log file (appended across restarts)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
        echo: Echo | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self.echo = echo
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running():
            raise DevError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Without a callback the child writes straight into its log file, so a line it
        # logged before answering a request is in the file when the answer arrives.
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.echo else log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if _libc is not None else None,
            )
        if self.echo is not None:
            self._reader = threading.Thread(
                target=self._pump, args=(self._proc,), name=f"log-{self.name}", daemon=True
            )
            self._reader.start()

    def _pump(self, proc: "subprocess.Popen[bytes]") -> None:
        assert proc.stdout is not None
        with proc.stdout, self.log_path.open("a", encoding="utf-8") as log:
            for raw in proc.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                if self.echo is not None:
                    self.echo(line)

    def _finish(self, timeout: float) -> None:
        assert self._proc is not None
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the process to stop (SIGINT), kill it if it has not after `timeout` s."""
        if self.request_stop():
            self._finish(timeout)

    def request_stop(self) -> bool:
        """Send SIGINT without waiting (see `finish_stop`); False if it was not running."""
        if not self.running():
            return False
        assert self._proc is not None
        self._proc.send_signal(signal.SIGINT)
        return True

    def finish_stop(self, timeout: float = 10.0) -> None:
        """Wait for a process asked to stop; kill it if it has not after `timeout` s."""
        if self._proc is not None:
            self._finish(timeout)

    def kill(self) -> None:
        """Crash it: SIGKILL, no chance to clean up."""
        if self.running():
            assert self._proc is not None
            self._proc.kill()
            self._finish(10.0)

    def wait_ready(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `ready` until true; DevError with the log's tail if the process exits."""

        def check() -> bool:
            if not self.running():
                raise DevError(
                    f"{self.name} exited with code {self.exit_code()}:\n{self.log_tail(30)}"
                )
            return ready()

        wait_until(check, timeout, what)

    def exit_code(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8") if self.log_path.exists() else ""

    def log_lines(self) -> list[str]:
        return self.log_text().splitlines()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_lines()[-lines:])


@dataclass(frozen=True)
class ServerPorts:
    ingress: int = 8080
    admin: int = 9070
    node: int = 5122

    @staticmethod
    def free() -> "ServerPorts":
        return ServerPorts(free_port(), free_port(), free_port())


# Variables of this tooling that restate-server would otherwise read as configuration.
_NOT_SERVER_CONFIG = ("RESTATE_ADMIN_URL", "RESTATE_INGRESS_URL", "RESTATE_SERVER_BIN",
                      "RESTATE_CLI_BIN")  # fmt: skip


class RestateServer(ManagedProcess):
    """`restate-server` on 127.0.0.1 with its state in `base_dir` (kept across restarts)."""

    def __init__(
        self,
        binary: Path,
        base_dir: Path,
        ports: ServerPorts,
        log_path: Path,
        settings: dict[str, str] | None = None,
        config_file: Path | None = None,
        echo: Echo | None = None,
        node_name: str = "dev",
    ) -> None:
        env = {k: v for k, v in os.environ.items() if k not in _NOT_SERVER_CONFIG}
        env.update(
            RESTATE_BIND_PORT=str(ports.node),
            RESTATE_ADMIN__BIND_PORT=str(ports.admin),
            RESTATE_INGRESS__BIND_PORT=str(ports.ingress),
            RESTATE_DISABLE_TELEMETRY="true",
            RESTATE_LOG_FORMAT="compact",
            RESTATE_LOG_DISABLE_ANSI_CODES="true",
        )
        env.update(settings or {})
        argv = [str(binary), "--no-logo", "--listen-mode", "tcp", "--bind-ip", "127.0.0.1",
                "--node-name", node_name, "--base-dir", str(base_dir)]  # fmt: skip
        if config_file is not None:
            argv += ["--config-file", str(config_file)]
        super().__init__("restate-server", argv, log_path, env=env, echo=echo)
        self.ports = ports
        self.base_dir = base_dir
        self.ingress_url = f"http://127.0.0.1:{ports.ingress}"
        self.admin_url = f"http://127.0.0.1:{ports.admin}"

    @classmethod
    def on_free_ports(
        cls,
        base_dir: Path,
        settings: dict[str, str] | None = None,
        config_file: Path | None = None,
    ) -> "RestateServer":
        """A server (not yet started) on free loopback ports, its state in `base_dir` and
        its log in `base_dir/server.log`: the throw-away server of a test or a benchmark."""
        return cls(
            binaries.find(binaries.SERVER),
            base_dir,
            ServerPorts.free(),
            base_dir / "server.log",
            settings=settings,
            config_file=config_file,
        )

    def start(self, timeout: float = 60.0) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        super().start()
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float) -> None:
        self.wait_ready(
            lambda: (
                http_ok(f"{self.admin_url}/health")
                and http_ok(f"{self.ingress_url}/restate/health")
            ),
            timeout,
            f"restate-server to be healthy on {self.admin_url}",
        )

    def restart(self) -> None:
        self.stop()
        self.start()


class PatternService(ManagedProcess):
    """A pattern served as users serve it: `python -m <pattern>` on a given port."""

    def __init__(
        self,
        pattern: str,
        port: int,
        log_path: Path,
        settings: dict[str, str] | None = None,
        echo: Echo | None = None,
    ) -> None:
        env = dict(os.environ)
        env.update(settings or {})
        # HOST too: a HOST exported in the user's shell (some set it to the host name) would
        # otherwise make the service listen beyond loopback
        env.update(HOST="127.0.0.1", PORT=str(port), PYTHONUNBUFFERED="1")
        super().__init__(pattern, [sys.executable, "-m", pattern], log_path, env=env, echo=echo)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 30.0) -> None:
        super().start()
        self.wait_ready(self.ready, timeout, f"python -m {self.name} to listen on port {self.port}")

    def ready(self) -> bool:
        """Answering its health check."""
        return http_ok(f"{self.url}/health")

    def restart(self) -> None:
        self.stop()
        self.start()


def register(
    admin_url: str,
    service_uri: str,
    timeout: float = 30.0,
    retry_for: float = 0.0,
    use_http_11: bool = False,
) -> list[str]:
    """Register (or re-register, `force`) a deployment; the names of its services.

    `retry_for` seconds: keep trying while the server answers 5xx or not at all (a
    cluster whose metadata store is electing a leader answers 500 for a moment).
    `use_http_11`: the server calls the service with one HTTP/1.1 request/response per
    invocation step instead of a bidirectional HTTP/2 stream.
    """
    body: dict[str, object] = {"uri": service_uri, "force": True}
    if use_http_11:
        body["use_http_11"] = True
    deadline = time.monotonic() + retry_for
    while True:
        try:
            response = httpx.post(f"{admin_url}/deployments", json=body, timeout=timeout)
            problem = f"{response.status_code} {response.text}"
            if response.status_code < 300:
                return [service["name"] for service in response.json()["services"]]
            if response.status_code < 500:
                break
        except httpx.HTTPError as error:
            problem = repr(error)
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    raise DevError(f"registering {service_uri} at {admin_url} failed: {problem}")


def admin_query(admin_url: str, sql: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Rows of a SQL query on the admin API (`sys_invocation`, `state`, `sys_journal` ...).

    Right after a server (re)start the query engine may still see the old node and answer
    5xx, or drop the connection, for a few seconds: such answers are retried until
    `timeout` seconds have passed, then DevError. A 4xx (a malformed query) fails at once.
    """
    deadline = time.monotonic() + timeout
    pause = 0.05  # grows to 0.25 s, as tests.harness.eventually does
    while True:
        try:
            response = httpx.post(
                f"{admin_url}/query",
                json={"query": sql},
                headers={"accept": "application/json"},
                timeout=max(1.0, min(30.0, timeout)),
            )
            if response.status_code == 200:
                rows: list[dict[str, Any]] = response.json()["rows"]
                return rows
            problem = f"{response.status_code} {response.text}"
            if response.status_code < 500:
                break
        except httpx.TransportError as error:
            problem = f"no answer: {error!r}"
        if time.monotonic() > deadline:
            break
        time.sleep(pause)
        pause = min(pause * 1.5, 0.25)
    raise DevError(f"the admin API at {admin_url} did not answer {sql!r}: {problem}")
