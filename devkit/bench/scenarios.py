"""What `./dev bench` measures: the scenarios, their TypeScript twins and the ways of serving.

All of it is data. A scenario's `kind` says how it is driven and counted:
- REQUESTS: wrk sends requests (Lua `make(n)` gives the n-th one's path and body); the
  rate counts answered requests (times `per_call` units of work each).
- DELIVERIES: wrk sends requests, the rate counts what the service reports delivered
  (the number captured by the log regex `counted`), until the last item sent arrived.
- RECORDS: the benchmark produces Kafka records (`feed`); the rate counts the log lines
  `counted` of the records processed, until the last one arrived.
"""

import enum
import importlib.util
from dataclasses import dataclass, field

from devkit import ROOT


class Kind(enum.Enum):
    REQUESTS = "requests"
    DELIVERIES = "deliveries"
    RECORDS = "records"


class Runtime(enum.Enum):
    PYTHON = "python"  # `python -m <module>`: the module's own __main__.py
    TYPESCRIPT = "typescript"  # `node bench/ts/serve.mjs`


@dataclass(frozen=True)
class KafkaFeed:
    """Records for a RECORDS scenario: each key first set up with one request."""

    topic: str
    sink: str  # the subscription's sink, e.g. service://PackageTracker/updateLocation
    keys: int
    setup_path: str  # "/Service/{key}/handler", called once per key
    setup_body: str  # JSON
    value: str  # JSON of record n: a format string of `n`


@dataclass(frozen=True, eq=False)  # identity: a scenario is one object, a dict key
class Scenario:
    name: str
    what: str  # one line for the table
    module: str  # the served module (a pattern, bench.noop); for TypeScript: bench/ts
    kind: Kind = Kind.REQUESTS
    lua: str = ""  # body of `make(n)`: returns path, body for the n-th request
    settings: dict[str, str] = field(default_factory=dict)
    concurrency: int | None = None  # None: the run's concurrency
    unit: str = "invocations/s"
    per_call: int = 1  # units of work per completed call (subtasks of a fan-out)
    min_seconds: float = 0  # measure at least this long (calls that take seconds each)
    counted: str = ""  # DELIVERIES, RECORDS: regex of a log line, `{prefix}` filled in
    feed: KafkaFeed | None = None  # RECORDS
    twin: str = ""  # the TypeScript scenario doing the same, measured side by side
    runtime: Runtime = Runtime.PYTHON
    setup: tuple[tuple[str, str], ...] = ()  # (path, JSON body) posted once it is registered


BASELINE = "baseline"
TS_DIR = "bench/ts"

# The TypeScript SDK's twins (bench/ts/services.mjs), named apart from the Python services
# so that both are registered on one server in the same run.
TWINS = [
    Scenario("ts-noop", "TsNoop/call, TypeScript SDK", TS_DIR,
             lua='return "/TsNoop/call", nil', runtime=Runtime.TYPESCRIPT),
    Scenario("ts-reserve", "TsProductService/reserve, TypeScript SDK, a new product each call",
             TS_DIR, lua='return "/TsProductService/" .. prefix .. "-" .. n .. "/reserve", nil',
             runtime=Runtime.TYPESCRIPT),
]  # fmt: skip

PACKAGES = KafkaFeed(
    topic="package-location-updates",
    sink="service://PackageTracker/updateLocation",
    keys=20,
    setup_path="/PackageTracker/{key}/registerPackage",
    setup_body='{"finalDestination": "Bridge 6, Amsterdam"}',
    value='{{"location": "Road {n}", "timestamp": "{n}"}}',
)

SCENARIOS = [
    Scenario(BASELINE, "no-op handler (Service)", "bench.noop",
             lua='return "/Noop/call", nil', twin="ts-noop"),
    Scenario("durablerpc-distinct", "ProductService/reserve, a new product each call",
             "durablerpc",
             lua='return "/ProductService/" .. prefix .. "-" .. n .. "/reserve", nil',
             twin="ts-reserve"),
    Scenario("durablerpc-hot", "ProductService/reserve, all calls on one product",
             "durablerpc", lua='return "/ProductService/" .. prefix .. "-hot/reserve", nil'),
    Scenario("batcher", "Batcher/receive on 32 keys; items/s delivered to BatchReceiver",
             "batcher", Kind.DELIVERIES,
             lua='return "/Batcher/" .. prefix .. "-" .. (n % 32) .. "/receive", tostring(n)',
             settings={"BATCH_LINGER_SECONDS": "0.5"}, unit="items/s delivered",
             counted=r"Received batch of (\d+) items for {prefix}-"),
    Scenario("sagas", "BookingWorkflow/run, happy path (flight, car, hotel booked)", "sagas",
             lua='return "/BookingWorkflow/run", string.format(\'{"customerId": "%s-%d", '
             '"flight": {"flightId": "1", "passengerName": "J"}, "car": {"pickupLocation": '
             '"A", "rentalDate": "2024-12-16"}, "hotel": {"arrivalDate": "2024-12-16", '
             '"departureDate": "2024-12-20"}}\', prefix, n)',
             settings={"HOTEL_FULLY_BOOKED": "false"}),
    Scenario("parallelizework-10", "FanOutWorker/run, 10 subtasks each (time to aggregate)",
             "parallelizework",
             lua='return "/FanOutWorker/run", \'{"description": "' + ",".join(
                 f"t{i}" for i in range(10)) + '"}\'',
             settings={"SUBTASK_MIN_DURATION_SECONDS": "0", "SUBTASK_MAX_DURATION_SECONDS": "0"},
             concurrency=4, unit="subtasks/s", per_call=10),
    Scenario("parallelizework-100", "FanOutWorker/run, 100 subtasks each (time to aggregate)",
             "parallelizework",
             lua='return "/FanOutWorker/run", \'{"description": "' + ",".join(
                 f"t{i}" for i in range(100)) + '"}\'',
             settings={"SUBTASK_MIN_DURATION_SECONDS": "0", "SUBTASK_MAX_DURATION_SECONDS": "0"},
             concurrency=2, unit="subtasks/s", per_call=100, min_seconds=6),
    Scenario("statemachinepayments", "PaymentProcessor makePayment, then cancelPayment "
             "(refund), 50 accounts", "statemachinepayments",
             lua='local id = prefix .. "-" .. math.floor((n + 1) / 2)\n'
             '  if n % 2 == 1 then return "/PaymentProcessor/" .. id .. "/makePayment", '
             'string.format(\'{"accountId": "%s-a%d", "amountCents": 1}\', prefix, n % 50) end\n'
             '  return "/PaymentProcessor/" .. id .. "/cancelPayment", nil'),
    Scenario("ratelimit", "myService/expensiveMethod behind a limiter set to 100/s, burst 10 "
             "(holds the rate: ~100/s whatever the load)", "ratelimit",
             lua='return "/myService/expensiveMethod", nil',
             settings={"LIMITER_KEY": "bench"},
             setup=(("/limiter/bench/setRate", '{"newLimit": 100, "newBurst": 10}'),)),
    Scenario("promiseasaservice", "durablePromiseServer resolve, then await, a new promise "
             "each pair", "promiseasaservice",
             lua='local name = prefix .. "-" .. math.floor((n + 1) / 2)\n'
             '  if n % 2 == 1 then return "/durablePromiseServer/resolve", string.format('
             '\'{"request": {"promiseName": "%s", "value": %d}}\', name, n) end\n'
             '  return "/durablePromiseServer/await", string.format('
             '\'{"request": {"promiseName": "%s"}}\', name)',
             # an await whose resolve wrk prepared but never sent (the run's end) gives up
             # after 2 s instead of holding the next measurement's wait for an idle server
             settings={"PROMISE_AWAIT_TIMEOUT_SECONDS": "2"}),
    # the model is the local stand-in (devkit/model_standin.py, started by the runner) with
    # the pattern's default script: 2 model calls and 1 tool step per turn
    Scenario("durableagent-turn", "WeatherAgent/run: an agent turn with one tool call "
             "(2 journaled model calls to the local stand-in, 1 tool step)", "durableagent",
             lua='return "/WeatherAgent/run", \'{"message": "What is the weather in Paris?"}\''),
    Scenario("eventenrichment-kafka", "Kafka records -> subscription -> "
             "PackageTracker/updateLocation (state updated), 20 keys", "eventenrichment",
             Kind.RECORDS, unit="records/s", counted=r"Package {prefix}-\d+ is at ",
             feed=PACKAGES),
]  # fmt: skip


@dataclass(frozen=True)
class Serving:
    """One way of serving and registering a Python service: the environment of its
    process, the registration's options, and what the serving file must support."""

    name: str
    key: str  # short name, for `./dev bench --servings http11,granian`
    env: tuple[tuple[str, str], ...] = ()  # added to the service's environment
    use_http_11: bool = False  # registration: request/response over HTTP/1.1
    # served by devkit.bench_serve (hypercorn's worker processes, from BENCH_WORKERS)
    # instead of the module's own `python -m <module>`
    wrapped: bool = False
    # the Python package this needs, and the variables the module's __main__.py must read
    package: str = "hypercorn"
    reads: tuple[str, ...] = ()

    @property
    def server(self) -> str:
        return dict(self.env).get("SERVER", "hypercorn")

    def missing(self, module: str) -> str:
        """Why this serving cannot serve `module` here ("" if it can)."""
        main = (ROOT / module.replace(".", "/") / "__main__.py").read_text(encoding="utf-8")
        unread = [name for name in self.reads if name not in main]
        if unread:
            return f"the serving file does not read {', '.join(unread)} yet"
        if importlib.util.find_spec(self.package) is None:
            return f"{self.package} is not installed"
        return ""


# LOOP: read by the serving file, set by every way so that each names its event loop.
ASYNCIO = ("LOOP", "asyncio")
UVLOOP = ("LOOP", "uvloop")
DEFAULT = Serving("hypercorn, HTTP/2, asyncio, 1 worker", "default", env=(ASYNCIO,))
GRANIAN = Serving("granian, HTTP/2, asyncio", "granian", env=(("SERVER", "granian"), ASYNCIO),
                  package="granian", reads=("SERVER",))  # fmt: skip
# Every scenario is also measured in these ways, each paired with DEFAULT round by round.
SERVINGS = [
    Serving("hypercorn, HTTP/1.1 request/response", "http11", env=(ASYNCIO,), use_http_11=True),
    Serving("hypercorn, HTTP/2, uvloop", "uvloop", env=(UVLOOP,), package="uvloop",
            reads=("LOOP",)),
    Serving("hypercorn, HTTP/2, 2 workers", "workers2", env=(ASYNCIO, ("BENCH_WORKERS", "2")),
            wrapped=True),
    GRANIAN,
    Serving("granian, HTTP/2, uvloop", "granian-uvloop", env=(("SERVER", "granian"), UVLOOP),
            package="granian", reads=("SERVER", "LOOP")),
    Serving("granian, HTTP/1.1 request/response", "granian-http11",
            env=(("SERVER", "granian"), UVLOOP), use_http_11=True, package="granian",
            reads=("SERVER", "LOOP")),
]  # fmt: skip
# The Python scenarios with a twin are compared with it served in these ways: the default,
# and what SERVER=granian gives (uvloop, as the serving file chooses).
TWIN_SERVINGS = [DEFAULT, next(s for s in SERVINGS if s.key == "granian-uvloop")]
