"""The load generator: `wrk`, fetched without root from Debian's packages, and one run of it.

wrk is one native process that keeps `concurrency` connections busy; a small Lua script
builds each request (`make(n)` returns the path and body of the n-th one, so that keys
vary per request) and prints the summary as one JSON line, which `drive` reads back.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from devkit import ROOT, DevError

WRK_DIR = ROOT / ".tools" / "wrk"
WRK_PACKAGES = ["wrk", "libluajit2-5.1-2"]  # Debian 12's wrk links LuaJIT 2.1


def wrk_command(install: bool = True) -> tuple[list[str], dict[str, str]]:
    """The wrk executable and the environment to run it in; unpacks it on first use."""
    given = os.environ.get("WRK_BIN") or shutil.which("wrk")
    if given:
        return [given], dict(os.environ)
    binary = WRK_DIR / "usr" / "bin" / "wrk"
    env = dict(os.environ, LD_LIBRARY_PATH=str(WRK_DIR / "usr" / "lib" / "x86_64-linux-gnu"))
    if not binary.exists():
        if not install:
            raise DevError(f"{binary} is missing")
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            raise DevError("wrk is missing: install it (e.g. apt install wrk) or set WRK_BIN")
        print(f"[bench] fetching {' '.join(WRK_PACKAGES)} (Debian) into {WRK_DIR} ...", flush=True)
        with tempfile.TemporaryDirectory() as download:
            fetched = subprocess.run(
                ["apt-get", "download", *WRK_PACKAGES],
                cwd=download, capture_output=True, text=True, check=False,
            )  # fmt: skip
            debs = list(Path(download).glob("*.deb"))
            if fetched.returncode != 0 or len(debs) < len(WRK_PACKAGES):
                raise DevError(
                    "apt-get download wrk failed (install wrk or set WRK_BIN):\n"
                    + fetched.stderr.strip()
                )
            for deb in debs:
                subprocess.run(["dpkg-deb", "-x", str(deb), str(WRK_DIR)], check=True)
    check = subprocess.run(
        [str(binary), "--version"], env=env, capture_output=True, text=True, check=False
    )
    if "wrk" not in check.stdout + check.stderr:
        raise DevError(f"{binary} does not run: {check.stderr.strip()}")
    return [str(binary)], env


# `prefix` is unique per measurement, so that every measurement uses keys of its own.
LUA = """
local prefix = "%(prefix)s"
local counter = 0
wrk.method = "POST"
local json = {["Content-Type"] = "application/json"}
local function make(n)
  %(make)s
end
request = function()
  counter = counter + 1
  local path, body = make(counter)
  if body == nil then return wrk.format(nil, path) end
  return wrk.format(nil, path, json, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %%d, "duration_us": %%d, "socket_errors": %%d, "non2xx": %%d, ' ..
    '"timeouts": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Load:
    """What one wrk run reported, and what the wrk process itself used."""

    ok: int  # answered with a 2xx
    errors: int  # socket errors, non-2xx answers, timeouts
    seconds: float
    p50_ms: float | None  # None when nothing was answered
    p90_ms: float | None
    p99_ms: float | None
    cpu_s: float
    peak_mb: float


def drive(
    wrk: list[str],
    env: dict[str, str],
    url: str,
    script: Path,
    make: str,
    prefix: str,
    concurrency: int,
    seconds: float,
) -> Load:
    """Run wrk against `url` for `seconds` (whole seconds, at least 1), one thread and
    `concurrency` connections, requests made by the Lua body `make` (see LUA)."""
    script.write_text(LUA % {"prefix": prefix, "make": make}, encoding="utf-8")
    argv = [*wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
            "--timeout", "30s", "-s", str(script), url]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert proc.stdout is not None
    with proc.stdout:
        output = proc.stdout.read()
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    found = re.search(r"^BENCH (\{.*\})$", output, re.M)
    if proc.returncode != 0 or found is None:
        raise DevError(f"wrk failed ({script.name}):\n{output}")
    result = json.loads(found.group(1))
    ok = result["requests"] - result["non2xx"]
    latency = {k: result[f"{k}_us"] / 1000 if ok else None for k in ("p50", "p90", "p99")}
    return Load(
        ok=ok,
        errors=result["socket_errors"] + result["non2xx"] + result["timeouts"],
        seconds=result["duration_us"] / 1e6,
        p50_ms=latency["p50"],
        p90_ms=latency["p90"],
        p99_ms=latency["p99"],
        cpu_s=rusage.ru_utime + rusage.ru_stime,
        peak_mb=rusage.ru_maxrss / 1024,
    )
