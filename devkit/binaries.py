"""Find or install the `restate-server` and `restate` CLI executables.

Order of preference for each executable:
1. the path in RESTATE_SERVER_BIN / RESTATE_CLI_BIN;
2. an executable of that name on PATH (skipped if it is a script, such as npm's Node
   wrapper: stopping a wrapper leaves the real server running);
3. the pinned version, installed on first use from the npm registry into `.tools/`
   (the native binaries of the platform packages, not the Node wrappers).
"""

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devkit import ROOT, DevError

RESTATE_VERSION = "1.7.12"
TOOLS_DIR = ROOT / ".tools" / f"restate-{RESTATE_VERSION}"


@dataclass(frozen=True)
class Executable:
    env_var: str
    name: str  # name on PATH and inside the npm package's bin/
    npm_package: str  # platform package, e.g. @restatedev/restate-server-linux-x64


SERVER = Executable("RESTATE_SERVER_BIN", "restate-server", "@restatedev/restate-server")
CLI = Executable("RESTATE_CLI_BIN", "restate", "@restatedev/restate")


def _platform_suffix() -> str:
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system())
    machine = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower()
    )
    if system is None or machine is None:
        raise DevError(
            f"no prebuilt Restate binaries for {platform.system()} {platform.machine()}; "
            "set RESTATE_SERVER_BIN and RESTATE_CLI_BIN"
        )
    return f"{system}-{machine}"


def _installed_path(exe: Executable) -> Path:
    package = f"{exe.npm_package}-{_platform_suffix()}"
    return TOOLS_DIR / "node_modules" / package / "bin" / exe.name


def _is_native(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) != b"#!"


def _install() -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise DevError(
            "npm is missing: install Node.js/npm, or set RESTATE_SERVER_BIN and "
            "RESTATE_CLI_BIN to the restate-server and restate executables"
        )
    packages = [
        f"{exe.npm_package}-{_platform_suffix()}@{RESTATE_VERSION}" for exe in (SERVER, CLI)
    ]
    print(f"[dev] installing Restate {RESTATE_VERSION} from npm into {TOOLS_DIR} ...", flush=True)
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [npm, "install", "--prefix", str(TOOLS_DIR), "--no-save", "--no-audit", "--no-fund",
         "--ignore-scripts", "--loglevel=error", *packages],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise DevError(f"npm install {' '.join(packages)} failed:\n{result.stderr.strip()}")


def find(exe: Executable, install: bool = True) -> Path:
    """The executable to use; installs the pinned version if nothing else is given."""
    given = os.environ.get(exe.env_var)
    if given:
        path = Path(given)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise DevError(f"{exe.env_var}={given} is not an executable file")
        return path
    on_path = shutil.which(exe.name)
    if on_path and _is_native(Path(on_path)):
        return Path(on_path)
    installed = _installed_path(exe)
    if not installed.exists() and install:
        _install()
    if not installed.exists():
        raise DevError(f"{exe.name} {RESTATE_VERSION} is not installed (expected {installed})")
    return installed


def ensure_all() -> tuple[Path, Path]:
    """Both executables (server, CLI), installing them together if needed."""
    return find(SERVER), find(CLI)
