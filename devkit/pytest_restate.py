"""pytest_restate: test a Restate service against a real `restate-server`, without Docker.

A pytest plugin in one file that depends only on pytest and httpx: copy it into your tests
folder and load it from that folder's `conftest.py` with `pytest_plugins = ["pytest_restate"]`
(or with `addopts = "-p pytest_restate"` and `pythonpath = ["tests"]` in your pytest
configuration).
It finds `restate-server` in RESTATE_SERVER_BIN or on PATH (override the fixture
`restate_server_binary` to find it elsewhere).

Fixtures:
- `restate_server`: one real server per test process (per pytest-xdist worker), on free
  loopback ports, state in a temporary folder; started on first use, stopped at the end.
  Each test process takes its ports from a block of its own (10000-19999, below the
  kernel's ephemeral range), so parallel workers and runs are never handed the same port.
- `server`: that server, lent to one test; a test marked `@pytest.mark.kills_server` gets
  a fresh server of its own instead, which it may `kill()` (kill -9) and `start()` again on
  the same ports and state. A shared server the test left down is started again.
- `start_service(module, settings, use_http_11, path)`: serves your app as a real process
  (`python -m module`, with PORT and HOST set and the settings in its environment), waits
  until it answers on `<path>/health` from a socket of its own process, and registers it
  with `server` (its URI ends in `path`, where a web app mounts the Restate endpoint;
  `use_http_11` for a server that speaks only HTTP/1.1), returning once the server's
  ingress routes its services; `.kill()` and `.start()` crash and restart it. Stopped
  when the test ends.
- `ingress`, `admin`: the server's ingress and admin API, every call with a timeout.
- `unique("order")`: "order-1f2e3d4c", a key of this test's own.
Helpers: `eventually(check, timeout, message)` polls with a bound; `RestateServer`,
`ServiceProcess`, `register`, `free_port` for tests that need more.

Override `restate_server_settings` to configure the server (environment variables such as
RESTATE_DEFAULT_NUM_PARTITIONS); `--restate-always-replay` makes it suspend every
invocation at every await and replay it from its journal, which shakes out
non-deterministic handlers. When a test fails, the logs of the processes it used are
shown with its report.
"""

import atexit
import contextlib
import ctypes
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import httpx
import pytest

T = TypeVar("T")
Echo = Callable[[str], None]

HTTP_TIMEOUT = 30.0
ALWAYS_REPLAY = {"RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT": "0s"}


class ProcessError(RuntimeError):
    """A process did not start, or did not become ready in time."""


# --- HTTP ------------------------------------------------------------------------------


class _ThreadClient:
    """A thread's HTTP client, closed when the thread ends and drops it (an unclosed
    client's sockets would be reported as a ResourceWarning)."""

    def __init__(self) -> None:
        self.client = httpx.Client(timeout=HTTP_TIMEOUT)

    def __del__(self) -> None:
        self.client.close()


_per_thread = threading.local()


def http() -> httpx.Client:
    """This thread's client, kept for all its calls: a new httpx client costs ~20 ms of CPU
    (its TLS context), which polling loops would pay at every call. One per thread: a
    client shared by threads whose requests time out was seen to fail with EBADF."""
    holder: _ThreadClient | None = getattr(_per_thread, "holder", None)
    if holder is None:
        holder = _per_thread.holder = _ThreadClient()
    return holder.client


def http_ok(url: str) -> bool:
    try:
        return http().get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def eventually(check: Callable[[], T | None], timeout: float = 30.0, message: str = "") -> T:
    """Call `check` until it returns a truthy value without raising AssertionError.

    Returns that value; fails the test with `message` (and the last assertion, if any)
    after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error: AssertionError | None = None
    pause = 0.05  # grows to 0.25 s: most checks are HTTP calls that cost the server CPU
    while True:
        try:
            result = check()
            if result:
                return result
        except AssertionError as error:
            last_error = error
        if time.monotonic() > deadline:
            detail = f": {last_error}" if last_error else ""
            raise AssertionError(f"not true after {timeout:g} s: {message}{detail}")
        time.sleep(pause)
        pause = min(pause * 1.5, 0.25)


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll `check` until it is true; ProcessError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ProcessError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --- processes ---------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
# util-linux's setpriv execs the command with the parent-death signal set. Preferred to a
# preexec_fn, which runs Python in the forked child: with other threads busy (HTTP polls),
# such a child was seen to hang before its exec, and the test with it.
_SETPRIV = shutil.which("setpriv") if sys.platform == "linux" else None


def die_with_parent() -> None:
    """In a child, before exec: the kernel kills it when the process that started it dies
    (Linux), so that nothing outlives a crashed test run."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _dying_with_parent(argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """The command line and preexec_fn that make a child die with its parent."""
    if _SETPRIV is not None:
        return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv], None
    return argv, die_with_parent if _libc is not None else None


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# Ports are handed out from a block of this process's own, below the kernel's ephemeral
# range (32768-60999 by default). A port the kernel picked for one pytest worker's bind(0)
# was seen picked for another's a moment later, whose service then answered in place of
# the first's (a test registered the wrong services). A block is claimed with a lock on a
# file that this process holds until it ends: the two passes of `./dev test` run at once,
# each with its workers, and a benchmark may run beside them.
_PORT_BLOCKS, _BLOCK_SIZE = range(10000, 20000, 500), 500  # ./dev run --cluster: 25122 and up
_port_block: tuple[int, Any] | None = None  # (first port, the open lock file)
_port_cursor = 0


def _claim_port_block() -> int | None:
    global _port_block
    if _port_block is None:
        folder = Path(tempfile.gettempdir()) / f"restate-harness-ports-{os.getuid()}"
        folder.mkdir(exist_ok=True)
        for first in _PORT_BLOCKS:
            lock = (folder / f"{first}.lock").open("w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # another process's
                lock.close()
                continue
            _port_block = (first, lock)
            break
        else:
            return None
    return _port_block[0]


def free_port() -> int:
    """A loopback port that nothing listens on right now, from this process's block (none
    is handed out twice before the block has been gone through); the kernel's choice
    where every block is taken."""
    global _port_cursor
    first = _claim_port_block()
    if first is not None:
        for _ in range(_BLOCK_SIZE):
            port = first + _port_cursor
            _port_cursor = (_port_cursor + 1) % _BLOCK_SIZE
            if port_is_free(port):
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        kernels: int = s.getsockname()[1]
        return kernels


def listening_pids(port: int, among: set[int] | None = None) -> set[int] | None:
    """The processes (of `among`, or all) holding a socket that listens on TCP `port`, from
    /proc; None where there is no /proc to read (not Linux)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            return None
        for line in lines:
            fields = line.split()  # sl local remote state ... inode
            if fields[3] == "0A" and fields[1].endswith(f":{port:04X}"):
                inodes.add(f"socket:[{fields[9]}]")
    if among is None:
        among = {int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()}
    pids = set()
    for pid in among:
        with contextlib.suppress(OSError):  # gone, or not ours to read
            if any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir()):
                pids.add(pid)
    return pids


_live: list["ManagedProcess"] = []


def descendants(pid: int | None) -> set[int]:
    """The children of `pid`, theirs, and so on (from /proc; empty where there is none)."""
    found: set[int] = set()
    todo = [pid] if pid else []
    while todo:
        for children in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                new = {int(child) for child in children.read_text().split()} - found
                found |= new
                todo.extend(new)
    return found


def port_taken(process: "ManagedProcess") -> bool:
    """Whether the process's log tail says it could not bind its port."""
    return re.search(r"address (already )?in use", process.log_tail(200), re.I) is not None


@atexit.register
def _kill_leftovers() -> None:  # e.g. after Ctrl-C in the middle of a fixture
    for process in list(_live):
        process.kill()


class Child(Protocol):
    """What ManagedProcess uses of a `subprocess.Popen`."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, signal: int) -> None: ...
    def kill(self) -> None: ...


# Starts a process (argv, env, cwd, log path) some other way than subprocess.Popen, or
# returns None to have it spawned: a suite can set one (see ManagedProcess.launcher).
Launcher = Callable[[list[str], dict[str, str] | None, Path | None, Path], Child | None]


class ManagedProcess:
    """A child process in a session of its own (Ctrl-C in a terminal reaches only its
    parent), its output appended to a log file across restarts and optionally passed,
    line by line, to `echo`."""

    # How processes without `echo` are started when not spawned with subprocess.Popen: a
    # suite may set a launcher here (this repository's: a fork server, devkit/forkserver.py).
    launcher: ClassVar[Launcher | None] = None

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        echo: Echo | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self.echo = echo
        self._proc: Child | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running():
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        launcher = ManagedProcess.launcher
        launched = None
        if self.echo is None and launcher is not None:
            launched = launcher(self.argv, self.env, self.cwd, self.log_path)
        self._proc = launched if launched is not None else self._spawn()
        if self not in _live:
            _live.append(self)

    def _spawn(self) -> "subprocess.Popen[bytes]":
        # Without a callback the child writes straight into its log file, so a line it
        # logged before answering a request is in the file when the answer arrives.
        argv, preexec = _dying_with_parent(self.argv)
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.echo else log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec,
            )
        if self.echo is not None:
            self._reader = threading.Thread(
                target=self._pump, args=(process,), name=f"log-{self.name}", daemon=True
            )
            self._reader.start()
        return process

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
        if self in _live:
            _live.remove(self)

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
        """Poll `ready` until true; ProcessError with the log's tail if the process exits."""

        def check() -> bool:
            if not self.running():
                raise ProcessError(
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


# Variables of test tooling that restate-server would otherwise read as configuration.
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


class ServiceProcess(ManagedProcess):
    """A Restate service as a real process (`python -m <module>` unless `argv` is given),
    told its port by PORT and HOST, ready when it answers 200 on `<path>/health`; `url`
    (what Restate registers) is `http://127.0.0.1:<port><path>`, `path` being where the
    process serves the Restate endpoint ("" for the root; "/restate" for one mounted
    there inside a web app)."""

    def __init__(
        self,
        module: str,
        port: int,
        log_path: Path,
        settings: dict[str, str] | None = None,
        echo: Echo | None = None,
        argv: list[str] | None = None,
        cwd: Path | None = None,
        move_if_taken: bool = False,
        path: str = "",
    ) -> None:
        env = dict(os.environ)
        env.update(settings or {})
        # HOST too: a HOST exported in the user's shell (some set it to the host name) would
        # otherwise make the service listen beyond loopback
        env.update(HOST="127.0.0.1", PORT=str(port), PYTHONUNBUFFERED="1")
        argv = argv or [sys.executable, "-m", module]
        super().__init__(module, argv, log_path, env=env, cwd=cwd, echo=echo)
        self.port = port
        self.path = path
        self.url = f"http://127.0.0.1:{port}{path}"
        self.move_if_taken = move_if_taken
        self._started = False

    def start(self, timeout: float = 120.0) -> None:
        """Start it and wait for its health check (up to `timeout` seconds: a service that
        imports the OpenAI Agents SDK spends seconds of CPU on it before it listens, many
        more when other processes share the cores). A port that free_port() handed out can
        be taken by another process (a server of a test running beside) before the service
        binds it: with `move_if_taken`, the first start then moves to another free port,
        twice at most (a restart keeps its port, which Restate knows it by)."""
        for attempt in range(3):
            super().start()
            try:
                self.wait_ready(self._healthy, timeout, f"{self.name} to listen on {self.port}")
                self._started = True
                return
            except ProcessError:
                self.finish_stop(1.0)
                if not self.move_if_taken or self._started or not port_taken(self) or attempt == 2:
                    raise
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}{self.path}"
                assert self.env is not None
                self.env["PORT"] = str(self.port)

    def _healthy(self) -> bool:
        """Its own health check answers, a Restate SDK's: the port may have been taken by
        something else that answers 200 on /health too (restate-server's admin API)."""
        try:
            response = http().get(f"{self.url}/health", timeout=1.0)
        except httpx.HTTPError:
            return False
        sdk = response.headers.get("x-restate-server", "").startswith("restate-sdk")
        return response.status_code == 200 and sdk and self.running() and self._listens()

    def _listens(self) -> bool:
        """Whether the socket on its port is its own (or a child's): another test's service
        can hold that port and answer the same health check."""
        ours = {self.pid, *descendants(self.pid)} if self.pid else set()
        holders = listening_pids(self.port, among=ours)
        return holders is None or bool(holders)

    def restart(self) -> None:
        self.stop()
        self.start()


def register(
    admin_url: str,
    service_uri: str,
    timeout: float = 30.0,
    retry_for: float = 0.0,
    use_http_11: bool = False,
    ingress_urls: Sequence[str] = (),
) -> list[str]:
    """Register (or re-register, `force`) a deployment; the names of its services.

    `retry_for` seconds: keep trying while the server answers 5xx or not at all (a
    cluster whose metadata store is electing a leader answers 500 for a moment).
    `use_http_11`: the server calls the service with one HTTP/1.1 request/response per
    invocation step instead of a bidirectional HTTP/2 stream.
    `ingress_urls`: return only once each of these ingresses knows the services. The admin
    API answers when the new schema is stored; an ingress learns it from there, and until
    then would answer 404 "service not found" (not seen here: a guard, it costs one call).
    """
    body: dict[str, object] = {"uri": service_uri, "force": True}
    if use_http_11:
        body["use_http_11"] = True
    deadline = time.monotonic() + retry_for
    while True:
        try:
            response = http().post(f"{admin_url}/deployments", json=body, timeout=timeout)
            problem = f"{response.status_code} {response.text}"
            if response.status_code < 300:
                names = [service["name"] for service in response.json()["services"]]
                for ingress_url in ingress_urls:
                    wait_until_known(ingress_url, names, timeout)
                return names
            if response.status_code < 500:
                break
        except httpx.HTTPError as error:
            problem = repr(error)
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    raise ProcessError(f"registering {service_uri} at {admin_url} failed: {problem}")


def wait_until_known(ingress_url: str, names: list[str], timeout: float = 30.0) -> None:
    """Wait until the ingress routes these services: a call of a handler that cannot exist
    ("~probe") answers 404 "service 'X' not found" until then, and 400 (bad path) or 404
    (no such handler) after; nothing is invoked either way."""

    def unknown(name: str) -> bool:
        try:
            response = http().post(f"{ingress_url}/{name}/~probe", timeout=5.0)
        except httpx.TransportError:
            return True
        return response.status_code == 404 and f"service '{name}' not found" in response.text

    wanted = ", ".join(names)
    wait_until(
        lambda: not any(unknown(name) for name in names),
        timeout,
        f"the ingress {ingress_url} to know {wanted}",
    )


def admin_query(admin_url: str, sql: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Rows of a SQL query on the admin API (`/query`). Right after a server restart the
    query engine may still see the old node and answer 500, or drop the connection, for a
    few seconds: such answers are retried until `timeout`."""

    def attempt() -> httpx.Response | None:
        try:
            response = http().post(
                f"{admin_url}/query", json={"query": sql}, headers={"accept": "application/json"}
            )
        except httpx.TransportError as error:
            raise AssertionError(f"no answer: {error!r}") from None
        assert response.status_code == 200, f"{response.status_code} {response.text}"
        return response

    response = eventually(attempt, timeout, message=f"the admin API answers {sql!r}")
    rows: list[dict[str, Any]] = response.json()["rows"]
    return rows


# --- clients of a server -----------------------------------------------------------------


class Ingress:
    """The server's HTTP ingress, with a timeout on every call."""

    def __init__(self, server: RestateServer) -> None:
        self.server = server

    @property
    def url(self) -> str:
        return self.server.ingress_url

    def post(
        self,
        path: str,
        json: Any = None,
        headers: dict[str, str] | None = None,
        content: bytes | str | None = None,
        timeout: float = HTTP_TIMEOUT,
    ) -> httpx.Response:
        return http().post(
            self.url + path, json=json, content=content, headers=headers, timeout=timeout
        )

    def get(self, path: str, timeout: float = HTTP_TIMEOUT) -> httpx.Response:
        return http().get(self.url + path, timeout=timeout)

    def send(self, path: str, json: Any = None, headers: dict[str, str] | None = None) -> str:
        """Fire-and-forget `<path>/send`; the invocation id Restate accepted."""
        response = self.post(f"{path}/send", json=json, headers=headers)
        assert response.status_code == 202, f"{response.status_code} {response.text}"
        invocation_id: str = response.json()["invocationId"]
        return invocation_id


class Admin:
    """The server's admin API."""

    def __init__(self, server: RestateServer) -> None:
        self.server = server

    def query(self, sql: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        return admin_query(self.server.admin_url, sql, timeout)

    def state(self, service: str, key: str) -> dict[str, str]:
        """The K/V state of one object: state key -> value as text (JSON for most values)."""
        rows = self.query(
            f"SELECT key, value_utf8 FROM state WHERE service_name = '{service}' "
            f"AND service_key = '{key}'"
        )
        return {row["key"]: row["value_utf8"] for row in rows}

    def journal_count(
        self,
        entry_type: str,
        name: str = "",
        target: str | None = None,
        invoked_by: str | None = None,
    ) -> int:
        """How many journal entries of this type ("Command: Sleep", "Command: Run", ...) and
        name (a step's or timer's name) the invocations of `target` ("Service/handler")
        and/or those called by invocation `invoked_by` hold (completed ones only while the
        server retains their journal)."""
        where = [f"j.entry_type = '{entry_type}'", f"j.name = '{name}'"]
        if target is not None:
            where.append(f"i.target = '{target}'")
        if invoked_by is not None:
            where.append(f"i.invoked_by_id = '{invoked_by}'")
        rows = self.query(
            "SELECT count(*) AS n FROM sys_journal j JOIN sys_invocation i ON j.id = i.id "
            f"WHERE {' AND '.join(where)}"
        )
        return int(rows[0]["n"])


# --- the plugin --------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--restate-always-replay",
        action="store_true",
        help="the server suspends every invocation at every await and replays it",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kills_server: the test kills or restarts the server: it gets its own"
    )


_PROCESSES = pytest.StashKey[list[ManagedProcess]]()


def attach_log(request: pytest.FixtureRequest, process: ManagedProcess) -> None:
    """Show this process's log with the test's report if it fails."""
    request.node.stash.setdefault(_PROCESSES, []).append(process)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for process in item.stash.get(_PROCESSES, []):
            report.sections.append(
                (f"log of {process.name} (pid {process.pid})", process.log_tail(80))
            )
    return report


@pytest.fixture(scope="session")
def restate_server_binary() -> Path:
    """The `restate-server` executable: RESTATE_SERVER_BIN, or the one on PATH."""
    found = os.environ.get("RESTATE_SERVER_BIN") or shutil.which("restate-server")
    if not found:
        pytest.fail("restate-server not found: set RESTATE_SERVER_BIN or put it on PATH")
    return Path(found)


@pytest.fixture(scope="session")
def restate_server_settings() -> dict[str, str]:
    """Environment settings of the test servers (override to configure them)."""
    return {}


@pytest.fixture(scope="session")
def restate_settings(
    restate_server_settings: dict[str, str], pytestconfig: pytest.Config
) -> dict[str, str]:
    """`restate_server_settings`, plus always-replay when the option asks for it."""
    settings = dict(restate_server_settings)
    if pytestconfig.getoption("restate_always_replay"):
        settings.update(ALWAYS_REPLAY)
    return settings


StartServer = Callable[..., RestateServer]


@pytest.fixture(scope="session")
def start_server(
    restate_server_binary: Path, restate_settings: dict[str, str]
) -> Iterator[StartServer]:
    """`start_server(base_dir, config_file=None, settings=None)`: a started server (with the
    session's settings, then `settings`) that is stopped at the end of the session at the
    latest."""
    started: list[RestateServer] = []

    def start(
        base_dir: Path, config_file: Path | None = None, settings: dict[str, str] | None = None
    ) -> RestateServer:
        for attempt in range(3):
            # a port that ServerPorts.free() handed out can be taken before the server binds
            # it (by a process of a test running beside): then again, on new ports and in a
            # new folder (the old one holds the node's old addresses)
            folder = base_dir if attempt == 0 else base_dir.with_name(f"{base_dir.name}-{attempt}")
            server = RestateServer(
                restate_server_binary,
                folder,
                ServerPorts.free(),
                folder / "server.log",
                settings={**restate_settings, **(settings or {})},
                config_file=config_file,
            )
            started.append(server)
            try:
                server.start()
                return server
            except ProcessError:
                server.stop()
                if attempt == 2 or not port_taken(server):
                    raise
        raise AssertionError("unreachable")

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def restate_server(
    start_server: StartServer, tmp_path_factory: pytest.TempPathFactory
) -> RestateServer:
    """One server for the tests of this process (stopped by `start_server` at the end)."""
    return start_server(tmp_path_factory.mktemp("restate"))


def lend(server: RestateServer, request: pytest.FixtureRequest) -> Iterator[RestateServer]:
    """Lend a shared server to a test, which may kill and restart it (same ports and
    state); start it again if the test left it down."""
    attach_log(request, server)
    yield server
    if not server.running():
        server.start()


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RestateServer]:
    """The server the test's services register with; one of its own if the test is
    marked `kills_server`."""
    if request.node.get_closest_marker("kills_server") is None:
        yield from lend(request.getfixturevalue("restate_server"), request)
        return
    own = request.getfixturevalue("start_server")(tmp_path / "restate")
    attach_log(request, own)
    yield own
    own.stop()


@pytest.fixture
def ingress(server: RestateServer) -> Ingress:
    return Ingress(server)


@pytest.fixture
def admin(server: RestateServer) -> Admin:
    return Admin(server)


StartService = Callable[..., ServiceProcess]


@pytest.fixture
def start_service(
    server: RestateServer, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[StartService]:
    """`start_service(module, settings=None, use_http_11=False, path="")`: serve `python -m
    module` on a free port with these settings in its environment, and register it with
    `server` at `<its address><path>` (see `ServiceProcess`)."""
    started: list[ServiceProcess] = []

    def start(
        module: str,
        settings: dict[str, str] | None = None,
        use_http_11: bool = False,
        path: str = "",
    ) -> ServiceProcess:
        log = tmp_path / f"{module.replace('.', '-')}-{len(started)}.log"
        service = ServiceProcess(
            module,
            free_port(),
            log,
            settings,
            cwd=request.config.rootpath,
            move_if_taken=True,
            path=path,
        )
        started.append(service)
        attach_log(request, service)
        service.start()
        register(
            server.admin_url,
            service.url,
            use_http_11=use_http_11,
            ingress_urls=[server.ingress_url],
        )
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Make a key or id unique to this test: unique("product") -> "product-1f2e3d4c"."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}"
