"""A fork server for the suite's Python services: import the libraries once, fork per start.

The tests start their services as `python -m <module>` about 800 times a run (both passes),
and each of those processes spent most of its start-up CPU importing the same libraries:
the Restate SDK, hypercorn and pydantic, and for the agent patterns the OpenAI Agents SDK.
The suite is bound by CPU, so each test process (pytest worker) keeps one fork server,
`python -m devkit.forkserver`, that has imported them (`PRELOAD`), and asks it for a child
per start.

Measured on the 2-core machine (2026-12-05, busy-loop share 100%), CPU of a service from
its start until it answers its health check, median of 5 starts, spawned -> forked:
durablerpc 0.27 -> 0.01 CPU-s, webapp 0.31 -> 0.01, durableagent 1.96 -> 0.02; the fork
server itself spends 2.2 CPU-s once. The whole `./dev test` (both passes, 398 tests each),
one run each way in the same checkout: 725 s and 1,390 CPU-s spawned, 351 s and 638 CPU-s
forked.

The child becomes what `python -m <module>` would have been: a session of its own, stdin
from /dev/null, stdout and stderr appended to its log, the environment and working folder
asked for, SIGKILL when the fork server dies (as the spawned services get when their test
process dies), then the module run as `__main__` (runpy), the interpreter's exit steps
(non-daemon threads joined, atexit handlers run) and its exit code. It is a real process
with a PID of its own; the tests kill and stop it as they kill and stop any other (`ps`
shows the fork server's command line for it, and the module as its name, `ps -o comm`). Its
parent is the fork server, so the test process follows it through a pidfd (`ForkedChild`,
the part of `subprocess.Popen` that ManagedProcess uses) and asks the fork server for the
exit code once the pidfd says it has ended.

What a child cannot inherit it is not given: a start whose command is not `python -m
<module>`, which is echoed (stdout piped), or whose environment differs from the fork
server's in a variable Python reads at start-up (PYTHON*, but PYTHONUNBUFFERED, which the
child applies itself) is spawned as before.
`PATTERNS_FORK_SERVER=0` turns the fork server off (every start spawned).

Protocol: one JSON object per line on the fork server's stdin and stdout. The first line
it writes says it is ready; then {"start": {...}} answers {"pid": n}, and {"wait": pid}
answers {"code": n} (the child's exit code, negative for a signal, as Popen has it).
"""

import atexit
import contextlib
import ctypes
import io
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

# What the services import, imported once per fork server (an import it cannot do is
# skipped: the child imports it itself, as a spawned process would).
PRELOAD = (
    "asyncio",
    "restate",
    "restate.server",
    "restate.ext.openai",  # the Agents SDK and the openai client: ~2.9 CPU-s
    "hypercorn.asyncio",
    "hypercorn.config",
    "pydantic",
    "httpx",
    "cryptography.hazmat.primitives.ciphers.aead",
    "fastapi",
    "opentelemetry.sdk.trace",
)
# Linux only: the test process follows a child of the fork server through a pidfd
ENABLED = os.environ.get("PATTERNS_FORK_SERVER", "1") != "0" and hasattr(os, "pidfd_open")
_PR_SET_NAME = 15
# Variables Python reads at start-up that a child applies itself: its stdout and stderr are
# made anew, unbuffered or not as its own PYTHONUNBUFFERED says (the harness sets it for
# every service, whether the test process has it or not).
PER_CHILD = {"PYTHONUNBUFFERED"}


# --- the fork server -----------------------------------------------------------------------


def _serve() -> None:
    from devkit.pytest_restate import die_with_parent  # imported before any fork

    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            __import__(name)
    if threading.active_count() != 1:  # forking a process with threads is not safe
        _reply({"ready": False, "why": f"{threading.active_count()} threads after preloading"})
        return
    _reply({"ready": True, "env": dict(os.environ)})
    parent = os.getpid()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        try:
            if "start" in request:
                pid = os.fork()
                if pid == 0:
                    die_with_parent()
                    if os.getppid() != parent:  # the fork server died meanwhile
                        os._exit(1)
                    _become(request["start"])  # never returns
                _reply({"pid": pid})
            elif "wait" in request:
                _, status = os.waitpid(request["wait"], 0)
                _reply({"code": os.waitstatus_to_exitcode(status)})
        except OSError as error:  # fork refused (EAGAIN), or no such child
            _reply({"error": repr(error)})


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _become(start: dict[str, Any]) -> None:
    """In the child: become `python -m <module>`; exit with its code."""
    code: int = 1
    try:
        os.setsid()
        _name(start["module"])
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(start["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        os.environ.clear()
        os.environ.update(start["env"])
        os.chdir(start["cwd"])
        unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = _stream(1, unbuffered, "strict")
        sys.stderr = _stream(2, True, "backslashreplace")
        sys.path[0] = start["cwd"]  # what `python -m` puts first
        sys.argv = ["-m"]  # runpy puts the module's file there, as `python -m` does
        code = _run(start["module"])
    finally:
        os._exit(code)


def _run(module: str) -> int:
    """Run the module as `__main__`, then what the interpreter does at its exit."""
    interrupted = False
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        code, interrupted = 1, True
    except BaseException:
        traceback.print_exc()
        code = 1
    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]  # non-daemon threads joined
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in sys.stdout, sys.stderr:
        with contextlib.suppress(BaseException):
            stream.flush()
    if interrupted:  # as Python ends on an uncaught KeyboardInterrupt: killed by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)
    return 1


def _stream(fd: int, unbuffered: bool, errors: str) -> io.TextIOWrapper:
    raw = io.FileIO(fd, "w", closefd=False)
    buffered = raw if unbuffered else io.BufferedWriter(raw)
    return io.TextIOWrapper(buffered, errors=errors, write_through=unbuffered)


def _name(module: str) -> None:
    """The name `ps` and `top` show (comm, 15 bytes), instead of the fork server's."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, module.encode()[:15], 0, 0, 0)


# --- the test process's side ---------------------------------------------------------------


class ForkedChild:
    """A child of the fork server, seen from the test process as much of a
    `subprocess.Popen` as ManagedProcess uses: pid, poll, wait, send_signal, kill, terminate."""

    stdout = None

    def __init__(self, server: "ForkServer", pid: int) -> None:
        self.server = server
        self.pid = pid
        self.returncode: int | None = None
        self._reaping = threading.Lock()
        self._pidfd = os.pidfd_open(pid)  # the fork server reaps it only when asked: no reuse

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._pidfd], [], [], 0)[0]:
            self._reap()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._pidfd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            self._reap()
        assert self.returncode is not None
        return self.returncode

    def _reap(self) -> None:
        with self._reaping:  # once, whichever thread sees the end first
            if self.returncode is None:
                self.returncode = self.server.exit_code(self.pid)
                os.close(self._pidfd)

    def send_signal(self, signum: int) -> None:
        with self._reaping:
            if self.returncode is None:  # once reaped, its pidfd is closed
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self._pidfd, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class ForkServer:
    """One fork server of this test process (`launcher` is what ManagedProcess calls)."""

    def __init__(self, log_path: Path, cwd: Path) -> None:
        from devkit.pytest_restate import _dying_with_parent

        argv, preexec = _dying_with_parent([sys.executable, "-m", "devkit.forkserver"])
        self._lock = threading.Lock()
        with log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                preexec_fn=preexec,
            )
        hello = self._receive()
        self.env: dict[str, str] | None = hello.get("env") if hello.get("ready") else None

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _receive(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server exited with code {self._proc.wait()}")
        message: dict[str, Any] = json.loads(line)
        return message

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._proc.stdin is not None
        with self._lock:
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            self._proc.stdin.flush()
            return self._receive()

    def launcher(
        self, argv: list[str], env: dict[str, str] | None, cwd: Path | None, log_path: Path
    ) -> ForkedChild | None:
        """A forked `python -m <module>`, or None where a child would differ from a spawned
        process (then the caller spawns it)."""
        if self.env is None or self._proc.poll() is not None:
            return None
        if len(argv) != 3 or argv[:2] != [sys.executable, "-m"]:
            return None
        env = dict(os.environ if env is None else env)
        startup = {k for k in {*env, *self.env} if k.startswith("PYTHON")} - PER_CHILD
        if any(env.get(k) != self.env.get(k) for k in startup):
            return None
        start = {"module": argv[2], "env": env, "cwd": str(cwd or os.getcwd()),
                 "log": str(log_path)}  # fmt: skip
        answer = self._ask({"start": start})
        return ForkedChild(self, answer["pid"]) if "pid" in answer else None

    def exit_code(self, pid: int) -> int:
        try:
            code: int = self._ask({"wait": pid}).get("code", -signal.SIGKILL)
        except (OSError, RuntimeError, ValueError):
            return -signal.SIGKILL  # the fork server is gone, and its children with it
        return code

    def stop(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()  # it ends when its stdin does
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


if __name__ == "__main__":
    _serve()
