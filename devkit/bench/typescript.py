"""The TypeScript side: Node >= 22 and the SDK, installed on first use, and the twins served.

`@restatedev/restate-sdk` 1.17 needs Node 22 or newer. Order of preference: BENCH_NODE_BIN;
a `node` on PATH that is new enough; else npm's `node` package (pinned) installed into
`.tools/node-24/`. The SDK itself goes into `bench/ts/node_modules/` from the lock file
(`npm ci`). `node bench/ts/serve.mjs` then serves TsNoop and TsProductService over HTTP/2
on 127.0.0.1:$PORT.
"""

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

from devkit import ROOT, DevError
from devkit.processes import ManagedProcess

NODE_VERSION = "24.9.0"
NODE_DIR = ROOT / ".tools" / "node-24"
TS_DIR = ROOT / "bench" / "ts"
MIN_MAJOR = 22


def _major(node: Path | str) -> int:
    try:
        out = subprocess.run(
            [str(node), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()  # "v24.9.0"
        return int(out.lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise DevError("npm is missing: it installs Node 24 and the TypeScript SDK")
    return npm


def _run_npm(argv: list[str], what: str, env: dict[str, str] | None = None) -> None:
    print(f"[bench] {what} ...", flush=True)
    result = subprocess.run(
        [_npm(), *argv, "--no-audit", "--no-fund", "--loglevel=error"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise DevError(f"npm {' '.join(argv)} failed:\n{result.stderr.strip()}")


def node(install: bool = True) -> Path:
    """A Node executable new enough for the SDK; installs the pinned one if needed."""
    given = os.environ.get("BENCH_NODE_BIN")
    if given:
        if _major(given) < MIN_MAJOR:
            raise DevError(f"BENCH_NODE_BIN={given} is not Node {MIN_MAJOR} or newer")
        return Path(given)
    on_path = shutil.which("node")
    if on_path and _major(on_path) >= MIN_MAJOR:
        return Path(on_path)
    installed = NODE_DIR / "node_modules" / ".bin" / "node"
    if not installed.exists() and install:
        _run_npm(["install", "--prefix", str(NODE_DIR), "--no-save", f"node@{NODE_VERSION}"],
                 f"installing Node {NODE_VERSION} from npm into {NODE_DIR}")  # fmt: skip
    if _major(installed) < MIN_MAJOR:
        raise DevError(f"Node {NODE_VERSION} is not installed (expected {installed})")
    return installed


def node_version(executable: Path) -> str:
    return subprocess.run(
        [str(executable), "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()


def sdk_version() -> str:
    package = TS_DIR / "node_modules" / "@restatedev" / "restate-sdk" / "package.json"
    version: str = json.loads(package.read_text())["version"]
    return version


def _sdk_installed() -> bool:
    wanted = json.loads((TS_DIR / "package.json").read_text())["dependencies"]
    for name, version in wanted.items():
        package = TS_DIR / "node_modules" / name / "package.json"
        if not package.exists() or json.loads(package.read_text())["version"] != version:
            return False
    return True


def ensure(install: bool = True) -> Path:
    """Node, with bench/ts's packages installed; the node executable."""
    executable = node(install)
    if not _sdk_installed():
        if not install:
            raise DevError(f"the TypeScript SDK is not installed in {TS_DIR}/node_modules")
        # npm ci runs with the chosen node first on PATH (the SDK's engines field)
        env = dict(os.environ, PATH=f"{executable.parent}{os.pathsep}{os.environ['PATH']}")
        _run_npm(["ci", "--prefix", str(TS_DIR)], f"installing {TS_DIR}'s packages", env)
    return executable


class TsService(ManagedProcess):
    """`node bench/ts/serve.mjs` on a given port: the twins, over HTTP/2 cleartext."""

    def __init__(self, node_bin: Path, port: int, log_path: Path) -> None:
        env = dict(os.environ, HOST="127.0.0.1", PORT=str(port))
        super().__init__("bench/ts", [str(node_bin), "serve.mjs"], log_path, env=env, cwd=TS_DIR)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 30.0) -> None:
        super().start()
        # it speaks HTTP/2 only (prior knowledge): wait until it accepts connections
        self.wait_ready(self.ready, timeout, f"node serve.mjs to listen on {self.port}")

    def ready(self) -> bool:
        """Accepting connections."""
        with socket.socket() as s:
            s.settimeout(1.0)
            return s.connect_ex(("127.0.0.1", self.port)) == 0
