"""The measurements: one throw-away server, the services, and the rounds.

Every Python scenario is measured in a block of `runs` rounds. A round measures, one
after the other, each *arm* compared with the scenario: the scenario served the default
way, the no-op baseline, the scenario served each other way (SERVINGS), and its
TypeScript twin, in alternating order (forwards, then backwards). Every ratio (x
baseline, x default, x TypeScript) is taken within a round, between measurements seconds
apart, and reported as the median over the rounds. A service runs only while its block
(or, for the baseline, the run) lasts; each measurement registers the deployment it
measures (when another one of the same services was registered last), and waits until no
invocation is in flight afterwards.
"""

import contextlib
import itertools
import os
import re
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from devkit import DevError, binaries, kafka
from devkit.bench import meter, report, typescript, wrk
from devkit.bench.report import Sample
from devkit.bench.scenarios import (
    BASELINE,
    DEFAULT,
    SCENARIOS,
    SERVINGS,
    TWIN_SERVINGS,
    TWINS,
    Kind,
    Runtime,
    Scenario,
    Serving,
)
from devkit.model_standin import SCRIPTS_DIR, ModelStandin, uses_model
from devkit.processes import (
    ManagedProcess,
    PatternService,
    RestateServer,
    ServerPorts,
    admin_query,
    free_port,
    http_ok,
    register,
)

Served = PatternService | typescript.TsService
Arm = tuple[Scenario, Serving]
ServiceKey = tuple[str, tuple[tuple[str, str], ...], Serving]  # module, settings, serving

_BEGIN: float | None = None  # when run() began


def say(line: str) -> None:
    """A progress line; during a run, with the seconds since it began after its tag."""
    if _BEGIN is not None and line.startswith("[bench] "):
        line = f"[bench] {time.monotonic() - _BEGIN:4.0f} s " + line.removeprefix("[bench] ")
    print(line, flush=True)


@dataclass
class Options:
    runs: int = 3
    duration: float = 2.0
    warmup: float = 1.0
    concurrency: int = 16
    serving: bool = True  # compare the ways of serving (SERVINGS)
    servings: tuple[str, ...] = ()  # only these of them (Serving.key); all if empty
    typescript: bool = True  # measure the TypeScript twins side by side
    results: Path = report.RESULTS_DIR


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


class Bench:
    """One throw-away server; each service is started the first time an arm needs it."""

    def __init__(self, work: Path, opts: Options) -> None:
        self.work = work
        self.opts = opts
        self.started: list[ManagedProcess] = []
        self.services: dict[ServiceKey, Served] = {}
        self.active: dict[str, ServiceKey] = {}  # module -> the service registered last
        self.wrk, self.wrk_env = wrk.wrk_command()
        self.node: Path | None = None  # set once the TypeScript side is installed
        self.server: RestateServer
        self.broker: kafka.TansuBroker | None = None
        self.models: dict[str, ModelStandin] = {}  # agent pattern -> its model stand-in
        self.unsettled = 0  # measurements after which invocations were still in flight
        self._numbers = itertools.count()

    def start(self, with_kafka: bool) -> None:
        """The server (with a Kafka broker if a scenario is fed from Kafka), and the
        baseline's service, through which a first invocation must go."""
        config_file = None
        if with_kafka:
            self.broker = kafka.TansuBroker(free_port(), self.work / "tansu.log")
            self.started.append(self.broker)
            self.broker.start()
            config_file = self.work / "restate.toml"
            config_file.write_text(kafka.server_config(self.broker.bootstrap), encoding="utf-8")
        base_dir = self.work / "restate"
        self.server = RestateServer(
            binaries.find(binaries.SERVER),
            base_dir,
            ServerPorts.free(),
            base_dir / "server.log",
            config_file=config_file,
        )
        self.started.append(self.server)
        self.server.start()
        self.service(SCENARIOS[0], DEFAULT)
        # A fresh server elects its partition leaders after it reports healthy: wait for a
        # first invocation to go through before measuring anything.
        with httpx.Client(timeout=120) as client:
            client.post(f"{self.server.ingress_url}/Noop/call").raise_for_status()

    # services ---------------------------------------------------------------------------

    @staticmethod
    def _key(scenario: Scenario, serving: Serving) -> ServiceKey:
        return (scenario.module, tuple(sorted(scenario.settings.items())), serving)

    def service(self, scenario: Scenario, serving: Serving) -> Served:
        """The scenario's module served this way and registered: new invocations go to it.
        Started on first use, so that services not being measured do not run meanwhile."""
        key = self._key(scenario, serving)
        if key not in self.services:
            self.prepare([(scenario, serving)])
        service = self.services[key]
        if self.active.get(scenario.module) != key:
            self._register(service, serving)
            self.active[scenario.module] = key
            for path, body in scenario.setup:
                headers = {"content-type": "application/json"}
                url = f"{self.server.ingress_url}{path}"
                httpx.post(url, content=body, headers=headers, timeout=30).raise_for_status()
            if scenario.feed is not None:
                assert self.broker is not None
                kafka.create_topic(self.broker.bootstrap, scenario.feed.topic)
                kafka.ensure_subscription(
                    self.server.admin_url, scenario.feed.topic, scenario.feed.sink
                )
        return service

    def _register(self, service: Served, serving: Serving) -> None:
        """Register (force) and check that the server now routes its services to it."""
        admin = self.server.admin_url
        names = register(
            admin,
            service.url,
            use_http_11=serving.use_http_11,
            ingress_urls=[self.server.ingress_url],
        )
        with httpx.Client(base_url=admin, timeout=30) as client:
            for name in names:
                deployment = client.get(f"/services/{name}").raise_for_status().json()
                uri = client.get(f"/deployments/{deployment['deployment_id']}")
                if uri.raise_for_status().json().get("uri", "").rstrip("/") != service.url:
                    raise DevError(f"{name} is not routed to {service.url} after registering")

    def prepare(self, arms: list[Arm]) -> None:
        """Start the services of these arms that are not running, side by side (a Python
        service takes seconds to start on a busy machine); not registered yet."""
        new = {}
        for scenario, serving in arms:
            key = self._key(scenario, serving)
            if key not in self.services and key not in new:
                new[key] = self._service_for(scenario, serving)
        self.started += new.values()
        # Spawned here, not in threads: a child is killed when the thread that started it
        # ends (PR_SET_PDEATHSIG, see devkit.processes). They start while we wait.
        for service in new.values():
            ManagedProcess.start(service)
        for service in new.values():
            ready = service.ready if isinstance(service, typescript.TsService) else _health(service)
            service.wait_ready(ready, 60, f"{service.name} to listen on {service.url}")
        self.services.update(new)

    def _service_for(self, scenario: Scenario, serving: Serving) -> Served:
        log = self.work / f"service-{next(self._numbers)}.log"  # a log file of its own
        if scenario.runtime is Runtime.TYPESCRIPT:
            if self.node is None:
                self.node = typescript.ensure()
            return typescript.TsService(self.node, free_port(), log)
        env = {**scenario.settings, **dict(serving.env)}
        if uses_model(scenario.module):  # an agent pattern: its model is the local stand-in
            env.update(self._model_for(scenario.module).service_settings())
        argv = [sys.executable, "-m", "devkit.bench_serve", scenario.module]
        return PatternService(
            scenario.module, free_port(), log, env, argv=argv if serving.wrapped else None
        )

    def _model_for(self, module: str) -> ModelStandin:
        """The model stand-in answering with the pattern's default script (as under
        `./dev run`), started on first use and kept for the run."""
        if module not in self.models:
            standin = ModelStandin(
                free_port(),
                self.work / f"model-{module}.log",
                default=SCRIPTS_DIR / f"{module}.json",
            )
            self.started.append(standin)
            standin.start()
            self.models[module] = standin
        return self.models[module]

    def retire(self, arms: list[Arm]) -> None:
        """Stop the services of these arms (all at once) once their block is done."""
        keys = {self._key(*arm) for arm in arms} & set(self.services)
        stopping = [self.services.pop(key) for key in keys]
        for service in stopping:
            service.request_stop()
        for service in stopping:
            service.finish_stop()
            self.started.remove(service)
        for module, key in list(self.active.items()):
            if key in keys:
                del self.active[module]

    def stop(self) -> None:
        for process in reversed(self.started):
            process.stop()

    def settle(self, timeout: float = 30) -> None:
        """Wait until no invocation is in flight (fan-out subtasks, batches, Kafka records
        left over), so that one measurement's tail does not load the next one."""
        admin = self.server.admin_url
        in_flight = "FROM sys_invocation WHERE status NOT IN ('completed', 'scheduled')"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # admin_query fails with AssertionError once its own timeout has passed
            with contextlib.suppress(AssertionError, KeyError, IndexError):
                if admin_query(admin, f"SELECT count(*) AS n {in_flight}", 5)[0]["n"] == 0:
                    return
            time.sleep(0.2)
        self.unsettled += 1
        say(f"[bench] invocations still in flight after {timeout:g} s; measuring on")
        with contextlib.suppress(AssertionError, KeyError):
            for row in admin_query(
                admin, f"SELECT target, status, count(*) AS n {in_flight} GROUP BY target, status"
            ):
                say(f"[bench]   {row['n']} x {row['target']} {row['status']}")
        # Invocations that keep backing off will not finish on their own (a timer that fires
        # for a serving variant already retired): kill them, so that they do not hold every
        # later measurement's wait too.
        with contextlib.suppress(AssertionError, KeyError):
            stuck = admin_query(admin, f"SELECT id {in_flight} AND status = 'backing-off'")
            for row in stuck:
                httpx.patch(f"{admin}/invocations/{row['id']}/kill", timeout=10)
            if stuck:
                say(f"[bench]   killed {len(stuck)} invocation(s) backing off")

    # one measurement --------------------------------------------------------------------

    def warm(self, scenario: Scenario, serving: Serving) -> None:
        """Start (if needed) and warm up a service; not measured."""
        service = self.service(scenario, serving)
        if scenario.kind is Kind.RECORDS:
            # the first records also wait for the consumer to join its group
            if self._records(scenario, service, 50, timeout=90).completed == 0:
                raise DevError("no Kafka record reached the service within 90 s")
        elif self.opts.warmup > 0:
            self._requests(scenario, service, self.opts.warmup, f"w{uuid.uuid4().hex[:8]}")
        self.settle()

    def measure(self, scenario: Scenario, serving: Serving) -> Sample:
        service = self.service(scenario, serving)
        prefix = f"b{uuid.uuid4().hex[:8]}"
        if scenario.kind is Kind.RECORDS:
            records = max(100, int(self.opts.duration * 100))
            timeout = max(20, self.opts.duration * 5)
            sample = self._records(scenario, service, records, timeout)
        elif scenario.kind is Kind.DELIVERIES:
            sample = self._deliveries(scenario, service, prefix)
        else:
            seconds = max(self.opts.duration, scenario.min_seconds)
            sample = self._requests(scenario, service, seconds, prefix)
        self.settle()
        return sample

    def _usage(self, service: Served) -> meter.Usage:
        return meter.Usage({"server": [self.server.pid or 0], "service": [service.pid or 0]})

    def _requests(self, scenario: Scenario, service: Served, seconds: float, prefix: str) -> Sample:
        usage = self._usage(service)
        load = wrk.drive(
            self.wrk,
            self.wrk_env,
            self.server.ingress_url,
            self.work / f"{scenario.name}.lua",
            scenario.lua,
            prefix,
            scenario.concurrency or self.opts.concurrency,
            seconds,
        )
        usage.finish()
        return Sample(
            throughput=load.ok * scenario.per_call / load.seconds,
            completed=load.ok,
            errors=load.errors,
            p50_ms=load.p50_ms,
            p90_ms=load.p90_ms,
            p99_ms=load.p99_ms,
            cpu={**usage.cpu, "load": load.cpu_s},
            peak_mb={**usage.peak_mb, "load": load.peak_mb},
        )

    def _deliveries(self, scenario: Scenario, service: Served, prefix: str) -> Sample:
        """Units/s the service reports delivered, from the start of the load until the last
        unit sent has been delivered (or 15 s after the load ended)."""
        delivered = LogCounter(service.log_path, scenario.counted.format(prefix=prefix))
        began = time.monotonic()
        sample = self._requests(scenario, service, self.opts.duration, prefix)
        delivered.wait_for(sample.completed, time.monotonic() + 15)
        sample.extra = {"calls_per_s": sample.throughput}
        sample.throughput = delivered.total / (time.monotonic() - began)
        return sample

    def _records(self, scenario: Scenario, service: Served, records: int, timeout: float) -> Sample:
        """Produce `records`; records/s from the first one sent until the last one is
        counted in the service's log, or until `timeout` s (the rest count as errors)."""
        assert self.broker is not None
        assert scenario.feed is not None
        feed = scenario.feed
        prefix = f"k{uuid.uuid4().hex[:8]}"
        with httpx.Client(base_url=self.server.ingress_url, timeout=60) as client:
            for key in range(feed.keys):
                path = feed.setup_path.format(key=f"{prefix}-{key}")
                headers = {"content-type": "application/json"}
                client.post(path, content=feed.setup_body, headers=headers).raise_for_status()
        counted = LogCounter(service.log_path, scenario.counted.format(prefix=prefix))
        usage = self._usage(service)
        before = resource.getrusage(resource.RUSAGE_SELF)
        began = time.monotonic()
        kafka.produce(
            self.broker.bootstrap,
            feed.topic,
            ((f"{prefix}-{n % feed.keys}", feed.value.format(n=n)) for n in range(records)),
        )
        after = resource.getrusage(resource.RUSAGE_SELF)
        counted.wait_for(records, began + timeout)
        elapsed = time.monotonic() - began
        usage.finish()
        cpu_used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return Sample(
            throughput=counted.total / elapsed,
            completed=counted.total,
            errors=records - counted.total,
            p50_ms=None,
            p90_ms=None,
            p99_ms=None,
            cpu={**usage.cpu, "load": cpu_used},
            peak_mb={**usage.peak_mb, "load": after.ru_maxrss / 1024},
        )


def _health(service: PatternService) -> Callable[[], bool]:
    return lambda: http_ok(f"{service.url}/health")


def _chosen(names: list[str]) -> list[Scenario]:
    """The scenarios named (by pattern or scenario name; all if none), baseline first."""
    unknown = set(names) - {s.module for s in SCENARIOS} - {s.name for s in SCENARIOS}
    if unknown:
        modules = sorted({s.module for s in SCENARIOS} - {"bench.noop"})
        raise DevError(f"no benchmark for {', '.join(sorted(unknown))}; there are: "
                       + ", ".join(modules))  # fmt: skip
    return [
        s for s in SCENARIOS if not names or s.name == BASELINE or {s.module, s.name} & set(names)
    ]


def _typescript_missing() -> str:
    """Why the TypeScript side cannot run ("" if it can), installing it if needed."""
    try:
        typescript.ensure()
    except DevError as error:
        return str(error)
    return ""


def run(names: list[str], opts: Options) -> Path:
    """Benchmark the given patterns (all if none) against the baseline, in other ways of
    serving and next to TypeScript (see the module's docstring); the table's path."""
    global _BEGIN
    begin = _BEGIN = time.monotonic()
    chosen = _chosen(names)
    unknown = set(opts.servings) - {s.key for s in SERVINGS}
    if unknown:
        raise DevError(f"no serving {', '.join(sorted(unknown))}; there are: "
                       + ", ".join(s.key for s in SERVINGS))  # fmt: skip
    baseline = chosen[0]
    twins = {t.name: t for t in TWINS}
    skipped: list[str] = []
    unavailable: dict[str, list[str]] = {}  # serving -> why not, per scenario
    ts_missing = _typescript_missing() if opts.typescript else "--no-typescript"
    if ts_missing and opts.typescript:
        skipped.append(f"the TypeScript twins: {ts_missing}")

    def servings_of(scenario: Scenario) -> list[Serving]:
        """The other ways of serving measured with `scenario`: all of SERVINGS, or with
        the comparison off those its twin is compared under; those available here."""
        if opts.serving:
            wanted = [s for s in SERVINGS if not opts.servings or s.key in opts.servings]
        elif scenario.twin and not ts_missing:
            wanted = [s for s in TWIN_SERVINGS if s != DEFAULT]
        else:
            wanted = []
        out = []
        for serving in wanted:
            reason = serving.missing(scenario.module)
            if reason:
                unavailable.setdefault(serving.name, []).append(reason)
            else:
                out.append(serving)
        return out

    info = report.machine()
    info["busy loop's share of wall time at start"] = f"{meter.availability():.0%}"
    on_off = {True: "on", False: "off"}
    say(f"[bench] {len(chosen)} scenarios, each in {opts.runs} rounds of {opts.duration:g} s "
        f"measurements, concurrency {opts.concurrency}; serving choices "
        f"{on_off[opts.serving]}; TypeScript {on_off[not ts_missing]}")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="restate-bench-"))
    bench = Bench(work, opts)
    samples: dict[Arm, list[Sample]] = {}
    pairs: dict[tuple[Arm, Arm], list[tuple[Sample, Sample]]] = {}

    def block(arms: list[Arm], references: list[tuple[Arm, Arm]]) -> None:
        """`opts.runs` rounds over `arms`; the pairs (arm, reference) of each round."""
        for number in range(opts.runs):
            order = arms if number % 2 == 0 else arms[::-1]
            measured = {}
            for scenario, serving in order:
                sample = bench.measure(scenario, serving)
                label = scenario.name + ("" if serving == DEFAULT else f" ({serving.name})")
                say(f"[bench] round {number + 1}/{opts.runs} "
                    + report.line(label, scenario.unit, sample))  # fmt: skip
                measured[(scenario, serving)] = sample
                samples.setdefault((scenario, serving), []).append(sample)
            for arm, reference in references:
                pairs.setdefault((arm, reference), []).append((measured[arm], measured[reference]))

    try:
        bench.start(with_kafka=any(s.kind is Kind.RECORDS for s in chosen))
        bench.warm(baseline, DEFAULT)
        say(f"[bench] server up ({time.monotonic() - begin:.0f} s); measuring")
        # Kafka last: records it leaves unprocessed would load the other scenarios.
        for scenario in sorted(chosen, key=lambda s: s.kind is Kind.RECORDS):
            own = (scenario, DEFAULT)
            arms: list[Arm] = [own]
            references: list[tuple[Arm, Arm]] = []
            if scenario is not baseline:
                arms.append((baseline, DEFAULT))
                references.append((own, (baseline, DEFAULT)))
            others = [(scenario, serving) for serving in servings_of(scenario)]
            arms += others
            references += [(other, own) for other in others]
            if scenario.twin and not ts_missing:
                twin = (twins[scenario.twin], DEFAULT)
                arms.append(twin)
                references += [
                    ((scenario, serving), twin)
                    for serving in TWIN_SERVINGS
                    if (scenario, serving) in arms
                ]
            if len(arms) == 1 and len(chosen) > 1:
                continue  # the baseline alone: it is measured in the other blocks
            bench.prepare(arms)
            for arm in arms:
                bench.warm(*arm)
            block(arms, references)
            # the baseline and the TypeScript twins (one process) serve the next blocks too
            bench.retire([a for a in arms if a != (baseline, DEFAULT) and a[0].name not in twins])
        info["busy loop's share of wall time at end"] = f"{meter.availability():.0%}"
    finally:
        bench.stop()
        shutil.rmtree(work, ignore_errors=True)
    if bench.node is not None:
        info["node"] = typescript.node_version(bench.node)
        info["restate-sdk (TypeScript)"] = typescript.sdk_version()
    info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    info["wall time"] = f"{time.monotonic() - begin:.0f} s"
    if bench.unsettled:
        info["measurements followed by invocations in flight after 30 s"] = str(bench.unsettled)
    for name, reasons in unavailable.items():
        skipped.append(f"{name}: {'; '.join(dict.fromkeys(reasons))}")
    result = _result(chosen, opts, info, skipped, samples, pairs)
    return report.write_results(result, opts.results)


def _result(
    chosen: list[Scenario],
    opts: Options,
    info: dict[str, str],
    skipped: list[str],
    samples: dict[Arm, list[Sample]],
    pairs: dict[tuple[Arm, Arm], list[tuple[Sample, Sample]]],
) -> dict[str, Any]:
    baseline = (chosen[0], DEFAULT)
    twins = {t.name: t for t in TWINS}
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": info,
        "options": {k: v for k, v in asdict(opts).items() if k != "results"},
        "skipped": skipped,
        "scenarios": [
            {
                "name": s.name,
                "what": s.what,
                "kind": s.kind.value,
                "unit": s.unit,
                "settings": s.settings,
                "concurrency": s.concurrency or opts.concurrency,
                **report.summarise(samples[(s, DEFAULT)]),
                "x_baseline": report.ratios(pairs.get(((s, DEFAULT), baseline), [])),
            }
            for s in chosen
        ],
        "typescript": [
            {
                "scenario": s.name,
                "twin": s.twin,
                "serving": serving.name,
                "server": serving.server,
                # both sides over the rounds they were paired in
                "python": report.summarise([a for a, _ in found]),
                "typescript": report.summarise([b for _, b in found]),
                "x_typescript": report.ratios(found),
            }
            for s in chosen
            for serving in TWIN_SERVINGS
            if s.twin and (found := pairs.get(((s, serving), (twins[s.twin], DEFAULT))))
        ],
        "serving": [
            {
                "scenario": s.name,
                "serving": serving.name,
                "unit": s.unit,
                **report.summarise(values),
                "x_default": report.ratios(pairs.get(((s, serving), (s, DEFAULT)), [])),
            }
            for s in chosen
            for serving in [DEFAULT, *SERVINGS]
            if (values := _serving_samples(s, serving, pairs))
        ],
    }


def _serving_samples(
    scenario: Scenario, serving: Serving, pairs: dict[tuple[Arm, Arm], list[tuple[Sample, Sample]]]
) -> list[Sample]:
    """The measurements of `scenario` served this way in the rounds that compared ways of
    serving it (for the default: once each, though every other way was paired with it)."""
    if serving != DEFAULT:
        return [a for a, _ in pairs.get(((scenario, serving), (scenario, DEFAULT)), [])]
    unique: dict[int, Sample] = {}
    for other in SERVINGS:
        for _, reference in pairs.get(((scenario, other), (scenario, DEFAULT)), []):
            unique.setdefault(id(reference), reference)
    return list(unique.values())
