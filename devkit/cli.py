"""`./dev`: run a pattern, test the collection, or run a command in its environment."""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from devkit import ROOT, DevError, binaries, patterns
from devkit.processes import (
    Echo,
    PatternService,
    RestateServer,
    ServerPorts,
    http_ok,
    port_is_free,
    register,
)

STATE_DIR = ROOT / ".restate"  # the local server's data and the logs of `./dev run`
ADMIN_URL = "http://localhost:9070"
INGRESS_URL = "http://localhost:8080"
SERVICE_PORT = 9080
# Spelled as the seed's `restate deployments register localhost:9080` spells it, so that
# registering by hand later replaces this deployment instead of adding a second one.
SERVICE_URI = f"http://localhost:{SERVICE_PORT}/"

_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        print(line, flush=True)


def prefixed(name: str, width: int) -> Echo:
    label = f"{name:<{width}} | "
    return lambda line: say(label + line)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_run(pattern: str) -> int:
    started = time.monotonic()
    patterns.check(pattern)
    server_bin, _ = binaries.ensure_all()
    admin_url = os.environ.get("RESTATE_ADMIN_URL", ADMIN_URL)
    width = max(len(pattern), len("restate-server"))
    server: RestateServer | None = None
    service: PatternService | None = None
    # Stop cleanly on SIGTERM and on SIGINT, even where SIGINT was ignored at start-up
    # (a background job of a non-interactive shell).
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if http_ok(f"{admin_url}/health"):
            say(f"[dev] using the Restate server that answers at {admin_url}")
        else:
            ports = ServerPorts()
            for port in (ports.ingress, ports.admin, ports.node, SERVICE_PORT):
                if not port_is_free(port):
                    raise DevError(
                        f"port {port} is taken: stop what listens there "
                        f"(see `ss -ltnp 'sport = :{port}'`) and try again"
                    )
            say(f"[dev] starting restate-server ({server_bin}), state in {STATE_DIR}")
            server = RestateServer(
                server_bin,
                STATE_DIR,
                ports,
                STATE_DIR / "logs" / "server.log",
                echo=prefixed("restate-server", width),
            )
            server.start()
            admin_url = ADMIN_URL
        if not port_is_free(SERVICE_PORT):
            raise DevError(f"port {SERVICE_PORT} is taken: stop what listens there and try again")
        service = PatternService(
            pattern,
            SERVICE_PORT,
            STATE_DIR / "logs" / f"{pattern}.log",
            echo=prefixed(pattern, width),
        )
        service.start()
        names = register(admin_url, SERVICE_URI)
        say(
            f"\n[dev] {pattern} is ready ({time.monotonic() - started:.1f} s): "
            f"services {', '.join(names)} registered from {SERVICE_URI}\n"
            f"[dev] UI: {admin_url.rstrip('/')}/ui   ingress: {INGRESS_URL}\n"
            f"[dev] try it (CLI and clients in another terminal: prefix with ./dev exec):\n\n"
            f"{patterns.try_it(pattern)}\n\n"
            "[dev] logs follow; Ctrl-C stops what ./dev started\n"
        )
        while service.running() and (server is None or server.running()):
            time.sleep(0.2)
        stopped = service if not service.running() else server
        assert stopped is not None
        raise DevError(f"{stopped.name} exited with code {stopped.exit_code()}")
    except KeyboardInterrupt:
        say("\n[dev] stopping ...")
        return 0
    finally:
        for process in (service, server):
            if process is not None:
                process.stop()


def project_env() -> dict[str, str]:
    """The environment of `./dev exec` and of the tests' subprocesses."""
    _, cli_bin = binaries.ensure_all()
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, str(cli_bin.parent), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(Path(sys.executable).parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("RESTATE_ADMIN_URL", ADMIN_URL)
    env.setdefault("RESTATE_INGRESS_URL", INGRESS_URL)
    return env


def cmd_exec(command: list[str]) -> int:
    if not command:
        raise DevError("usage: ./dev exec <command> [args ...]")
    env = project_env()
    if shutil.which(command[0], path=env["PATH"]) is None:
        raise DevError(f"command not found: {command[0]}")
    os.execvpe(command[0], command, env)


def _step(title: str, argv: list[str], env: dict[str, str] | None = None) -> bool:
    say(f"\n[dev] {title}: {' '.join(argv)}")
    started = time.monotonic()
    ok = subprocess.run(argv, cwd=ROOT, env=env, check=False).returncode == 0
    say(f"[dev] {title}: {'passed' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s")
    return ok


def cmd_test(pytest_args: list[str], replay_pass: bool) -> int:
    binaries.ensure_all()  # install before pytest starts, so its timeouts do not include npm
    python = sys.executable
    code = ["devkit", "tests", *patterns.known()]
    results = [
        _step("lint", [python, "-m", "ruff", "check", *code]),
        _step("format", [python, "-m", "ruff", "format", "--check", *code]),
        _step("types", [python, "-m", "mypy", *code]),
        _step("tests", [python, "-m", "pytest", *pytest_args]),
    ]
    if replay_pass:
        replay_env = dict(os.environ, PATTERNS_ALWAYS_REPLAY="1")
        results.append(
            _step("tests, replaying at every await", [python, "-m", "pytest", *pytest_args],
                  env=replay_env)
        )  # fmt: skip
    return 0 if all(results) else 1


def cmd_list() -> int:
    for name in patterns.known():
        say(f"{name:<22} {patterns.summary(name)}")
    return 0


def cmd_clean(everything: bool) -> int:
    targets = [STATE_DIR] + ([ROOT / ".tools", ROOT / ".venv"] if everything else [])
    for target in targets:
        if target.exists():
            shutil.rmtree(target)
            say(f"[dev] removed {target.relative_to(ROOT)}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    run = commands.add_parser("run", help="start Restate (if needed) and serve one pattern")
    run.add_argument("pattern")
    test = commands.add_parser("test", help="lint, type-check and run the whole test suite")
    test.add_argument("--no-replay", action="store_true", help="skip the always-replay pass")
    test.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed on to pytest")
    exe = commands.add_parser("exec", help="run a command with the venv and restate CLI")
    exe.add_argument("cmd", nargs=argparse.REMAINDER)
    commands.add_parser("list", help="list the patterns")
    clean = commands.add_parser("clean", help="wipe the local Restate state (.restate/)")
    clean.add_argument("--all", action="store_true", help="also remove .venv/ and .tools/")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args.pattern)
        if args.command == "test":
            return cmd_test(args.pytest_args, replay_pass=not args.no_replay)
        if args.command == "exec":
            return cmd_exec(args.cmd)
        if args.command == "list":
            return cmd_list()
        return cmd_clean(args.all)
    except DevError as error:
        print(f"dev: {error}", file=sys.stderr)
        return 1
