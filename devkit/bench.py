"""`./dev bench`: what each pattern costs next to a no-op handler, and which serving wins.

One fresh `restate-server` (throw-away base dir, free ports, the settings of `./dev run`),
every pattern served as users serve it (`python -m <pattern>`, registered like `./dev run`
registers it), and the baseline `bench/noop` served by the same `__main__.py`. The load
comes from `wrk` (Debian's package, unpacked into `.tools/wrk/` on first use, no root
needed): one native process varying keys per request from a small Lua script, so the load
generator is not the bottleneck; its CPU is reported next to the server's.

For every scenario, after a warm-up: completed invocations/s, latency p50/p90/p99 and the
CPU seconds and peak memory of server, service and load generator, medians with min-max.
Each scenario is measured in rounds, each round one measurement of the scenario and one of
the baseline back to back, and reported as the median of those paired ratios: on a machine
whose speed drifts (this one is a throttled VM) two measurements seconds apart are
comparable where absolute figures are not. Serving choices are paired with the default the
same way. A service runs only from its scenario on, and no invocation is left in flight
between measurements. Results: bench/results/latest.{md,png,json}.
"""

import contextlib
import importlib.util
import itertools
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from devkit import ROOT, DevError, binaries, kafka
from devkit.processes import (
    ManagedProcess,
    PatternService,
    RestateServer,
    ServerPorts,
    free_port,
    register,
)

RESULTS_DIR = ROOT / "bench" / "results"
WRK_DIR = ROOT / ".tools" / "wrk"
WRK_PACKAGES = ["wrk", "libluajit2-5.1-2"]  # Debian 12's wrk links LuaJIT 2.1
BASELINE = "baseline"
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


_BEGIN: float | None = None  # when run() began


def say(line: str) -> None:
    """A progress line; during a run, with the seconds since it began after its tag."""
    if _BEGIN is not None and line.startswith("[bench] "):
        line = f"[bench] {time.monotonic() - _BEGIN:4.0f} s " + line.removeprefix("[bench] ")
    print(line, flush=True)


# --------------------------------------------------------------------------------------
# wrk, installed without root from Debian's packages


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
        say(f"[bench] fetching {' '.join(WRK_PACKAGES)} (Debian) into {WRK_DIR} ...")
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


# --------------------------------------------------------------------------------------
# CPU and memory of process trees, from /proc


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (hypercorn workers, multiprocessing helpers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:  # utime, stime (fields 14, 15 of /proc/<pid>/stat)
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    return total


class Usage:
    """CPU seconds and peak resident memory of some process trees while it runs."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = {
            name: [p for pid in pids for p in process_tree(pid)] for name, pids in groups.items()
        }
        self.peak = dict.fromkeys(self.groups, 0)
        self._start = {name: cpu_seconds(pids) for name, pids in self.groups.items()}
        self.cpu: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            for name, pids in self.groups.items():
                self.peak[name] = max(self.peak[name], rss_bytes(pids))

    def finish(self) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu = {
            name: cpu_seconds(pids) - self._start[name] for name, pids in self.groups.items()
        }

    @property
    def peak_mb(self) -> dict[str, float]:
        return {name: peak / 2**20 for name, peak in self.peak.items()}


# --------------------------------------------------------------------------------------
# Scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str  # one line for the table
    module: str  # the served module: a pattern, or bench.noop for the baseline
    lua: str = ""  # body of `make(n)`: returns path, body for the n-th request
    settings: dict[str, str] = field(default_factory=dict)
    concurrency: int | None = None  # None: the run's concurrency
    unit: str = "invocations/s"
    per_call: int = 1  # units of work per completed call (subtasks of a fan-out)
    min_seconds: float = 0  # measure at least this long (calls that take seconds each)


# Lua helpers: `prefix` is unique per run, so that every run uses keys of its own.
SCENARIOS = [
    Scenario(BASELINE, "no-op handler (Service)", "bench.noop",
             'return "/Noop/call", nil'),
    Scenario("durablerpc-distinct", "ProductService/reserve, a new product each call",
             "durablerpc", 'return "/ProductService/" .. prefix .. "-" .. n .. "/reserve", nil',
),
    Scenario("durablerpc-hot", "ProductService/reserve, all calls on one product",
             "durablerpc", 'return "/ProductService/" .. prefix .. "-hot/reserve", nil',
),
    Scenario("batcher", "Batcher/receive on 32 keys; items/s delivered to BatchReceiver",
             "batcher",
             'return "/Batcher/" .. prefix .. "-" .. (n % 32) .. "/receive", tostring(n)',
             settings={"BATCH_LINGER_SECONDS": "0.5"}, unit="items/s delivered"),
    Scenario("sagas", "BookingWorkflow/run, happy path (flight, car, hotel booked)", "sagas",
             'return "/BookingWorkflow/run", string.format(\'{"customerId": "%s-%d", '
             '"flight": {"flightId": "1", "passengerName": "J"}, "car": {"pickupLocation": '
             '"A", "rentalDate": "2024-12-16"}, "hotel": {"arrivalDate": "2024-12-16", '
             '"departureDate": "2024-12-20"}}\', prefix, n)',
             settings={"HOTEL_FULLY_BOOKED": "false"}),
    Scenario("parallelizework-10", "FanOutWorker/run, 10 subtasks each (time to aggregate)",
             "parallelizework",
             'return "/FanOutWorker/run", \'{"description": "' + ",".join(
                 f"t{i}" for i in range(10)) + '"}\'',
             settings={"SUBTASK_MIN_DURATION_SECONDS": "0", "SUBTASK_MAX_DURATION_SECONDS": "0"},
             concurrency=4, unit="subtasks/s", per_call=10),
    Scenario("parallelizework-100", "FanOutWorker/run, 100 subtasks each (time to aggregate)",
             "parallelizework",
             'return "/FanOutWorker/run", \'{"description": "' + ",".join(
                 f"t{i}" for i in range(100)) + '"}\'',
             settings={"SUBTASK_MIN_DURATION_SECONDS": "0", "SUBTASK_MAX_DURATION_SECONDS": "0"},
             concurrency=2, unit="subtasks/s", per_call=100, min_seconds=6),
    Scenario("statemachinepayments", "PaymentProcessor makePayment, then cancelPayment "
             "(refund), 50 accounts", "statemachinepayments",
             'local id = prefix .. "-" .. math.floor((n + 1) / 2)\n'
             '  if n % 2 == 1 then return "/PaymentProcessor/" .. id .. "/makePayment", '
             'string.format(\'{"accountId": "%s-a%d", "amountCents": 1}\', prefix, n % 50) end\n'
             '  return "/PaymentProcessor/" .. id .. "/cancelPayment", nil'),
    Scenario("eventenrichment-kafka", "Kafka records -> subscription -> "
             "PackageTracker/updateLocation (state updated), 20 keys", "eventenrichment",
             unit="records/s"),
]  # fmt: skip
KAFKA_SCENARIO = "eventenrichment-kafka"
KAFKA_TOPIC = kafka_topic = "package-location-updates"
KAFKA_KEYS = 20

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
class Serving:
    """How a service is served and registered."""

    http11: bool = False  # registered with "use_http_11": request/response over HTTP/1.1
    loop: str = "asyncio"
    workers: int = 1

    @property
    def name(self) -> str:
        return (
            f"{'HTTP/1.1' if self.http11 else 'HTTP/2'}, {self.loop}, "
            f"{self.workers} worker{'s' if self.workers > 1 else ''}"
        )

    @property
    def default(self) -> bool:
        return self == Serving()


SERVINGS = [
    Serving(),
    Serving(http11=True),
    Serving(loop="uvloop"),
    Serving(workers=2),
]
# a short handler, and one with many steps: HTTP/1.1 request/response ends the request at
# every step that waits for the server (a call's result, an acknowledged step) and resumes
# by replay, so the two can rank the choices differently
SERVING_SCENARIOS = [BASELINE, "sagas"]


@dataclass
class Sample:
    throughput: float
    completed: int
    errors: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    cpu: dict[str, float]
    peak_mb: dict[str, float]
    extra: dict[str, float] = field(default_factory=dict)


class LogCounter:
    """Counts (or sums a number captured by) a regex in a growing log file."""

    def __init__(self, path: Path, pattern: str) -> None:
        self.path = path
        self.regex = re.compile(pattern)
        self.offset = 0
        self.total = 0

    def read(self) -> int:
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            self.offset += end
            for match in self.regex.finditer(data[:end].decode("utf-8", "replace")):
                self.total += int(match.group(1)) if match.groups() else 1
        return self.total

    def wait_for(self, total: int, deadline: float) -> int:
        """Read until the count reaches `total` or the clock reaches `deadline`."""
        while self.read() < total and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.total


# --------------------------------------------------------------------------------------
# The benchmark


class Bench:
    """One throw-away server; each service is started the first time a scenario needs it."""

    def __init__(self, work: Path, args: "Options") -> None:
        self.work = work
        self.opts = args
        self.started: list[ManagedProcess] = []
        self.services: dict[tuple[str, Serving], PatternService] = {}
        self.active: dict[str, Serving] = {}  # module -> the serving registered last
        self.wrk, self.wrk_env = wrk_command()
        self.server: RestateServer
        self.broker: kafka.TansuBroker | None = None
        self.unsettled = 0  # measurements after which invocations were still in flight
        self._numbers = itertools.count()

    def start(self, with_kafka: bool) -> None:
        config_file = None
        if with_kafka:
            self.broker = kafka.TansuBroker(free_port(), self.work / "tansu.log")
            self.started.append(self.broker)
            self.broker.start()
            config_file = self.work / "restate.toml"
            config_file.write_text(kafka.server_config(self.broker.bootstrap), encoding="utf-8")
        self.server = RestateServer(
            binaries.find(binaries.SERVER),
            self.work / "restate",
            ServerPorts.free(),
            self.work / "server.log",
            config_file=config_file,
        )
        self.started.append(self.server)
        self.server.start()
        self.service(SCENARIOS[0], Serving())
        # A fresh server elects its partition leaders after it reports healthy: wait for a
        # first invocation to go through before measuring anything.
        with httpx.Client(timeout=120) as client:
            client.post(f"{self.server.ingress_url}/Noop/call").raise_for_status()
        if self.broker is not None:
            kafka.create_topic(self.broker.bootstrap, KAFKA_TOPIC)

    def service(self, scenario: Scenario, serving: Serving) -> PatternService:
        """The scenario's module served this way and registered: new invocations go to it.
        Started on first use, so that services not being measured do not run meanwhile."""
        key = (scenario.module, serving)
        if key not in self.services:
            self.services[key] = self._launch(scenario, serving)
            self.active.pop(scenario.module, None)
        service = self.services[key]
        if self.active.get(scenario.module) != serving:
            register(self.server.admin_url, service.url, use_http_11=serving.http11)
            self.active[scenario.module] = serving
            if scenario.name == KAFKA_SCENARIO:
                kafka.ensure_subscription(
                    self.server.admin_url, KAFKA_TOPIC, "service://PackageTracker/updateLocation"
                )
        return service

    def _launch(self, scenario: Scenario, serving: Serving) -> PatternService:
        number = next(self._numbers)  # a log file of its own
        service = PatternService(
            scenario.module, free_port(), self.work / f"service-{number}.log", scenario.settings
        )
        if not serving.default:
            service.argv = [sys.executable, "-m", "devkit.bench_serve", scenario.module,
                            serving.loop, str(serving.workers)]  # fmt: skip
        self.started.append(service)
        service.start(timeout=60)
        return service

    def retire(self, scenario: Scenario, serving: Serving) -> None:
        """Stop a service served another way once its comparison is done."""
        service = self.services.pop((scenario.module, serving), None)
        if service is not None:
            service.stop()
            self.started.remove(service)
            if self.active.get(scenario.module) == serving:
                del self.active[scenario.module]

    def stop(self) -> None:
        for process in reversed(self.started):
            process.stop()

    def _query(self, sql: str) -> list[dict[str, Any]]:
        """Rows of a SQL query on the admin API (invocations, state)."""
        response = httpx.post(
            f"{self.server.admin_url}/query", json={"query": sql},
            headers={"accept": "application/json"}, timeout=30,
        )  # fmt: skip
        response.raise_for_status()
        rows: list[dict[str, Any]] = response.json()["rows"]
        return rows

    def settle(self, timeout: float = 30) -> None:
        """Wait until no invocation is in flight (fan-out subtasks, batches, Kafka records
        left over), so that one measurement's tail does not load the next one."""
        in_flight = "FROM sys_invocation WHERE status NOT IN ('completed', 'scheduled')"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                if self._query(f"SELECT count(*) AS n {in_flight}")[0]["n"] == 0:
                    return
            time.sleep(0.2)
        self.unsettled += 1
        say(f"[bench] invocations still in flight after {timeout:g} s; measuring on")
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            for row in self._query(
                f"SELECT target, status, count(*) AS n {in_flight} GROUP BY target, status"
            ):
                say(f"[bench]   {row['n']} x {row['target']} {row['status']}")

    # one measurement -------------------------------------------------------------------

    def run_wrk(
        self, scenario: Scenario, service: PatternService, seconds: float, prefix: str
    ) -> Sample:
        script = self.work / f"{scenario.name}.lua"
        script.write_text(LUA % {"prefix": prefix, "make": scenario.lua})
        concurrency = scenario.concurrency or self.opts.concurrency
        argv = [*self.wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
                "--timeout", "30s", "-s", str(script), self.server.ingress_url]  # fmt: skip
        usage = Usage({"server": [self.server.pid or 0], "service": [service.pid or 0]})
        proc = subprocess.Popen(argv, env=self.wrk_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
        assert proc.stdout is not None
        with proc.stdout:
            output = proc.stdout.read()
        _, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        usage.finish()
        found = re.search(r"^BENCH (\{.*\})$", output, re.M)
        if proc.returncode != 0 or found is None:
            raise DevError(f"wrk failed for {scenario.name}:\n{output}")
        result = json.loads(found.group(1))
        errors = result["socket_errors"] + result["non2xx"] + result["timeouts"]
        ok = result["requests"] - result["non2xx"]
        latency = {k: result[f"{k}_us"] / 1000 if ok else None for k in ("p50", "p90", "p99")}
        return Sample(
            throughput=ok * scenario.per_call / (result["duration_us"] / 1e6),
            completed=ok,
            errors=errors,
            p50_ms=latency["p50"],
            p90_ms=latency["p90"],
            p99_ms=latency["p99"],
            cpu={**usage.cpu, "load": rusage.ru_utime + rusage.ru_stime},
            peak_mb={
                **usage.peak_mb,
                "load": rusage.ru_maxrss / 1024,
            },
        )

    def warm(self, scenario: Scenario, serving: Serving) -> None:
        """Start (if needed) and warm up a scenario's service; not measured."""
        service = self.service(scenario, serving)
        if scenario.name == KAFKA_SCENARIO:
            # the first records also wait for the consumer to join its group
            if self._kafka_round(service, 50, timeout=90).completed == 0:
                raise DevError("no Kafka record reached the service within 90 s")
        elif self.opts.warmup > 0:
            self.run_wrk(scenario, service, self.opts.warmup, f"w{uuid.uuid4().hex[:8]}")
        self.settle()

    def measure(self, scenario: Scenario, serving: Serving) -> Sample:
        service = self.service(scenario, serving)
        if scenario.name == KAFKA_SCENARIO:
            records = max(100, int(self.opts.duration * 100))
            sample = self._kafka_round(service, records, timeout=max(20, self.opts.duration * 5))
        elif scenario.name != "batcher":
            seconds = max(self.opts.duration, scenario.min_seconds)
            sample = self.run_wrk(scenario, service, seconds, self._prefix())
        else:
            sample = self._batcher_round(scenario, service)
        self.settle()
        return sample

    @staticmethod
    def _prefix() -> str:
        return f"b{uuid.uuid4().hex[:8]}"

    def _batcher_round(self, scenario: Scenario, service: PatternService) -> Sample:
        """Items/s delivered to BatchReceiver, from the start of the load until the last
        item sent has been delivered (or 15 s after the load ended)."""
        prefix = self._prefix()
        delivered = LogCounter(service.log_path, rf"Received batch of (\d+) items for {prefix}-")
        began = time.monotonic()
        sample = self.run_wrk(scenario, service, self.opts.duration, prefix)
        delivered.wait_for(sample.completed, time.monotonic() + 15)
        sample.extra = {"receive_calls_per_s": sample.throughput}
        sample.throughput = delivered.total / (time.monotonic() - began)
        return sample

    def _kafka_round(self, service: PatternService, records: int, timeout: float) -> Sample:
        """Produce `records`; records/s from the first one sent until the last one is in
        the objects' state, or until `timeout` s have passed (the rest count as errors)."""
        assert self.broker is not None
        prefix = f"k{uuid.uuid4().hex[:8]}"
        with httpx.Client(base_url=self.server.ingress_url, timeout=60) as client:
            for key in range(KAFKA_KEYS):
                response = client.post(
                    f"/PackageTracker/{prefix}-{key}/registerPackage",
                    json={"finalDestination": "Bridge 6, Amsterdam"},
                )
                response.raise_for_status()
        updated = LogCounter(service.log_path, rf"Package {prefix}-\d+ is at ")
        usage = Usage({"server": [self.server.pid or 0], "service": [service.pid or 0]})
        before = resource.getrusage(resource.RUSAGE_SELF)
        began = time.monotonic()
        kafka.produce(
            self.broker.bootstrap,
            KAFKA_TOPIC,
            (
                (f"{prefix}-{n % KAFKA_KEYS}", json.dumps({"location": f"Road {n}",
                                                           "timestamp": str(n)}))
                for n in range(records)
            ),
        )  # fmt: skip
        after = resource.getrusage(resource.RUSAGE_SELF)
        updated.wait_for(records, began + timeout)
        elapsed = time.monotonic() - began
        usage.finish()
        cpu_used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return Sample(
            throughput=updated.total / elapsed,
            completed=updated.total,
            errors=records - updated.total,
            p50_ms=None,
            p90_ms=None,
            p99_ms=None,
            cpu={**usage.cpu, "load": cpu_used},
            peak_mb={
                **usage.peak_mb,
                "load": after.ru_maxrss / 1024,
            },
        )


def availability(seconds: float = 1.5) -> float:
    """Share of wall time a busy loop gets: below 1 when the machine (a VM whose host
    throttles it, or other work) takes the CPU away. Stated with the results."""
    lost = 0.0
    began = last = time.monotonic()
    while (now := time.monotonic()) - began < seconds:
        if now - last > 0.002:
            lost += now - last
        last = now
    return 1 - lost / (now - began)


@dataclass
class Options:
    runs: int = 3
    duration: float = 2.0
    warmup: float = 1.0
    concurrency: int = 16
    serving: bool = True
    results: Path = RESULTS_DIR


def _median_range(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(samples: list[Sample]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "throughput": _median_range([s.throughput for s in samples]),
        "errors": sum(s.errors for s in samples),
        "completed": sum(s.completed for s in samples),
        "runs": len(samples),
    }
    for key in ("p50_ms", "p90_ms", "p99_ms"):
        values = [v for s in samples if (v := getattr(s, key)) is not None]
        out[key] = _median_range(values) if values else None
    out["cpu_s"] = {k: statistics.median(s.cpu[k] for s in samples) for k in samples[0].cpu}
    out["peak_mb"] = {k: max(s.peak_mb[k] for s in samples) for k in samples[0].peak_mb}
    extras = {k for s in samples for k in s.extra}
    out["extra"] = {k: statistics.median(s.extra[k] for s in samples) for k in extras}
    return out


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    server = subprocess.run(
        [str(binaries.find(binaries.SERVER)), "--version"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kb / 2**20:.0f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "restate-server": server,
        "restate-sdk": metadata.version("restate-sdk"),
        "hypercorn": metadata.version("hypercorn"),
        "uvloop": _version("uvloop"),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _ratios(pairs: list[tuple[Sample, Sample]]) -> dict[str, Any]:
    """Median (min-max) of the ratios of paired samples (measured one right after the
    other), for throughput and p99: robust where a machine's speed drifts."""
    out: dict[str, Any] = {}
    for key in ("throughput", "p99_ms"):
        values = []
        for sample, reference in pairs:
            a, b = getattr(sample, key), getattr(reference, key)
            if a is not None and b:
                values.append(a / b)
        out[key] = _median_range(values) if values else None
    return out


def _line(label: str, unit: str, sample: Sample) -> str:
    p99 = f"{sample.p99_ms:7.1f} ms" if sample.p99_ms is not None else "      - ms"
    cpu = " / ".join(f"{sample.cpu[k]:.1f}" for k in ("server", "service", "load"))
    return (f"{label:<56} {sample.throughput:8.1f} {unit:<18} p99 {p99}  "
            f"CPU s server/service/load {cpu}")  # fmt: skip


def run(names: list[str], opts: Options) -> Path:
    """Benchmark the given patterns (all if none) against the baseline.

    Each scenario is measured in `opts.runs` rounds, each round one baseline measurement
    and one of the scenario back to back (the order alternating), so that every ratio to
    the baseline compares two measurements a few seconds apart. Serving choices are
    compared with the default serving the same way."""
    global _BEGIN
    begin = _BEGIN = time.monotonic()
    unknown = set(names) - {s.module for s in SCENARIOS} - {s.name for s in SCENARIOS}
    if unknown:
        modules = sorted({s.module for s in SCENARIOS} - {"bench.noop"})
        raise DevError(f"no benchmark for {', '.join(sorted(unknown))}; there are: "
                       + ", ".join(modules))  # fmt: skip
    chosen = [
        s for s in SCENARIOS if not names or s.name == BASELINE or {s.module, s.name} & set(names)
    ]
    by_name = {s.name: s for s in chosen}
    baseline = by_name[BASELINE]
    serving_scenarios = [s for s in chosen if s.name in SERVING_SCENARIOS]
    servings = [s for s in SERVINGS if not s.default] if opts.serving else []
    info = machine()
    info["busy loop's share of wall time at start"] = f"{availability():.0%}"
    say(f"[bench] {len(chosen)} scenarios, {len(servings)} other ways of serving "
        f"{' and '.join(s.name for s in serving_scenarios)}; {opts.runs} rounds of "
        f"{opts.duration:g} s measurements, concurrency {opts.concurrency}")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="restate-bench-"))
    bench = Bench(work, opts)
    samples: dict[str, list[Sample]] = {s.name: [] for s in chosen}
    pairs: dict[str, list[tuple[Sample, Sample]]] = {}
    serving_samples: dict[tuple[str, str], list[Sample]] = {}
    serving_pairs: dict[tuple[str, str], list[tuple[Sample, Sample]]] = {}

    def paired(
        first: tuple[Scenario, Serving], second: tuple[Scenario, Serving], rounds: int
    ) -> list[tuple[Sample, Sample]]:
        """`rounds` pairs (first, second), measured back to back in alternating order."""
        out = []
        for number in range(rounds):
            order = [first, second] if number % 2 == 0 else [second, first]
            measured = {}
            for scenario, serving in order:
                sample = bench.measure(scenario, serving)
                label = scenario.name + ("" if serving.default else f" ({serving.name})")
                say(f"[bench] round {number + 1}/{rounds} " + _line(label, scenario.unit, sample))
                measured[(scenario.name, serving)] = sample
            out.append((measured[(first[0].name, first[1])],
                        measured[(second[0].name, second[1])]))  # fmt: skip
        return out

    try:
        bench.start(with_kafka=KAFKA_SCENARIO in by_name)
        bench.warm(baseline, Serving())
        say(f"[bench] server up ({time.monotonic() - begin:.0f} s); measuring")
        if len(chosen) == 1:  # the baseline alone
            for _ in range(opts.runs):
                samples[BASELINE].append(bench.measure(baseline, Serving()))
        # Kafka last: records it leaves unprocessed would load the other scenarios.
        ordered = sorted(chosen[1:], key=lambda s: s.name == KAFKA_SCENARIO)
        for scenario in ordered:
            bench.warm(scenario, Serving())
            rounds = paired((scenario, Serving()), (baseline, Serving()), opts.runs)
            pairs[scenario.name] = rounds
            samples[scenario.name] += [a for a, _ in rounds]
            samples[BASELINE] += [b for _, b in rounds]
        for serving in servings:
            for scenario in serving_scenarios:
                bench.warm(scenario, serving)
                rounds = paired((scenario, serving), (scenario, Serving()), opts.runs)
                serving_pairs[(scenario.name, serving.name)] = rounds
                serving_samples[(scenario.name, serving.name)] = [a for a, _ in rounds]
                default = serving_samples.setdefault((scenario.name, Serving().name), [])
                default += [b for _, b in rounds]
                bench.retire(scenario, serving)
        info["busy loop's share of wall time at end"] = f"{availability():.0%}"
    finally:
        bench.stop()
        shutil.rmtree(work, ignore_errors=True)
    info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    info["wall time"] = f"{time.monotonic() - begin:.0f} s"
    if bench.unsettled:
        info["measurements followed by invocations in flight after 30 s"] = str(bench.unsettled)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": info,
        "options": {k: v for k, v in asdict(opts).items() if k != "results"},
        "scenarios": [
            {
                "name": s.name,
                "what": s.what,
                "unit": s.unit,
                "settings": s.settings,
                "concurrency": s.concurrency or opts.concurrency,
                **summarise(samples[s.name]),
                "x_baseline": _ratios(pairs.get(s.name, [])),
            }
            for s in chosen
        ],
        "serving": [
            {
                "scenario": scenario,
                "serving": serving,
                **summarise(values),
                "x_default": _ratios(serving_pairs.get((scenario, serving), [])),
            }
            for (scenario, serving), values in sorted(serving_samples.items())
        ],
    }
    return write_results(result, opts.results)


# --------------------------------------------------------------------------------------
# Output


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _cell(stat: dict[str, float] | None) -> str:
    if stat is None:
        return "-"
    return f"{_fmt(stat['median'])} ({_fmt(stat['min'])}-{_fmt(stat['max'])})"


def _ratio_cell(stat: dict[str, float] | None) -> str:
    if stat is None:
        return "-"
    return f"{stat['median']:.2f} ({stat['min']:.2f}-{stat['max']:.2f})"


def markdown(result: dict[str, Any]) -> str:
    scenarios = result["scenarios"]
    opts = result["options"]
    lines = [
        "# Benchmark results",
        "",
        f"`./dev bench`, {result['date']}. Each scenario: {opts['runs']} rounds, each one "
        f"measurement of {opts['duration']:g} s of the scenario and one of the no-op baseline "
        "back to back (order alternating), after a warm-up; load from `wrk` (1 thread, "
        f"{opts['concurrency']} connections unless stated). Medians, (min-max) over the "
        "measurements. **x baseline**: the median (min-max) of the ratios scenario / "
        "baseline within each round, so that the machine's drift cancels out; it is the "
        "figure to compare across machines. CPU: seconds used during one measurement "
        "(median), by restate-server, by the scenario's service process(es), by the load "
        "generator. Peak: highest resident memory seen.",
        "",
        "| scenario | throughput | x baseline | p50 ms | p90 ms | p99 ms | p99 x baseline "
        "| CPU s server / service / load | peak MB server / service / load | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scenarios:
        cpu = " / ".join(f"{s['cpu_s'][k]:.1f}" for k in ("server", "service", "load"))
        mem = " / ".join(f"{s['peak_mb'][k]:.0f}" for k in ("server", "service", "load"))
        conc = "" if s["concurrency"] == opts["concurrency"] else f", {s['concurrency']} conn."
        base = s["name"] == BASELINE
        ratio = "1" if base else _ratio_cell(s["x_baseline"]["throughput"])
        p99_ratio = "1" if base else _ratio_cell(s["x_baseline"]["p99_ms"])
        lines.append(
            f"| **{s['name']}** | {_cell(s['throughput'])} {s['unit']}{conc} | {ratio} | "
            f"{_cell(s['p50_ms'])} | {_cell(s['p90_ms'])} | {_cell(s['p99_ms'])} | {p99_ratio} "
            f"| {cpu} | {mem} | {s['errors']} |"
        )
    lines += ["", "What each scenario does, and the settings its service ran with:", ""]
    for s in scenarios:
        settings = ", ".join(f"`{k}={v}`" for k, v in s["settings"].items()) or "defaults"
        lines.append(f"- **{s['name']}**: {s['what']}; {settings}.")
    lines += [
        "",
        "Kafka: records are produced by the benchmark process (librdkafka) as fast as the "
        "broker takes them; the rate counts from the first record sent until the last one "
        "is in the object's state (the service's log line of each update), or until a "
        "timeout (then the records not yet processed count as errors); no per-record "
        "latency is measured. batcher: items delivered to BatchReceiver per second, from the "
        "start of the load until the last item sent has been delivered. parallelizework: "
        "subtasks aggregated per second; its latency is the time to aggregate one run. "
        "After every measurement the benchmark waits until no invocation is in flight.",
    ]
    if result["serving"]:
        lines += [
            "",
            "## Serving choices",
            "",
            "The same two handlers served in other ways. Each way is measured in rounds "
            "against the default (HTTP/2, asyncio, 1 worker) back to back; **x default** is "
            "the median (min-max) of those paired ratios. CPU ms per invocation = CPU "
            "seconds of the measurements / invocations completed in them.",
            "",
            "| scenario | serving | throughput/s | x default | p50 ms | p99 ms "
            "| p99 x default | CPU ms/invocation server / service |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in result["serving"]:
            per_run = max(1.0, row["completed"] / max(1, row["runs"]))
            cpu = " / ".join(
                f"{row['cpu_s'][k] * 1000 / per_run:.2f}" for k in ("server", "service")
            )
            default = row["serving"] == Serving().name
            ratio = "1" if default else _ratio_cell(row["x_default"]["throughput"])
            p99_ratio = "1" if default else _ratio_cell(row["x_default"]["p99_ms"])
            lines.append(
                f"| {row['scenario']} | {row['serving']} | {_cell(row['throughput'])} | "
                f"{ratio} | {_cell(row['p50_ms'])} | {_cell(row['p99_ms'])} | {p99_ratio} "
                f"| {cpu} |"
            )
    lines += ["", "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in result["machine"].items()]
    lines += ["", "![throughput and p99 per scenario](latest.png)", ""]
    return "\n".join(lines)


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(reversed(result["scenarios"]))
    names = [s["name"] for s in scenarios]
    colors = ["#888888" if s["name"] == BASELINE else "#3b6ea8" for s in scenarios]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 1.8), sharey=True)

    def bars(axis: Any, key: str, title: str) -> None:
        stats = [s[key] for s in scenarios]
        medians = [st["median"] if st else 0 for st in stats]
        low = [st["median"] - st["min"] if st else 0 for st in stats]
        high = [st["max"] - st["median"] if st else 0 for st in stats]
        axis.barh(names, medians, xerr=[low, high], color=colors, capsize=3)
        axis.set_title(title)
        axis.grid(axis="x", alpha=0.3)
        for y, (scenario, st) in enumerate(zip(scenarios, stats, strict=True)):
            label = " n/a"
            if st:  # right of the whisker, with the paired ratio to the baseline
                ratio = scenario["x_baseline"][key]
                label = f" {_fmt(st['median'])}" + (f"  ({ratio['median']:.2f}x)" if ratio else "")
            axis.text(st["max"] if st else 0, y, label, va="center", fontsize=8)
        axis.set_xlim(right=max((st["max"] for st in stats if st), default=1) * 1.3)

    bars(left, "throughput", "throughput per second (median, min-max; x baseline)")
    bars(right, "p99_ms", "p99 latency, ms (median, min-max; x baseline)")
    fig.suptitle(
        f"./dev bench {result['date']}: {result['machine']['cpu']}, "
        f"{result['machine']['cores']} cores (grey: no-op baseline)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(result: dict[str, Any], directory: Path = RESULTS_DIR) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "latest.json").write_text(json.dumps(result, indent=1) + "\n")
    (directory / "latest.md").write_text(markdown(result))
    if importlib.util.find_spec("matplotlib") is not None:  # ./dev bench installs it
        chart(result, directory / "latest.png")
    return directory / "latest.md"
