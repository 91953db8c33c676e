"""A local OpenTelemetry trace receiver: it takes OTLP, keeps the spans, prints a trace as a tree.

No Docker and no Jaeger needed: `./dev run observability` and the tests start it as a process
of its own, on 127.0.0.1 only, with the ports Jaeger and the OpenTelemetry Collector use:

- OTLP/gRPC on 4317, restate-server's protocol (`--tracing-endpoint http://localhost:4317`);
- OTLP/HTTP on 4318, `POST /v1/traces` (protobuf or JSON): the Python exporter's default.

It keeps the last `--max-spans` spans in memory and answers on its HTTP port:

    GET /traces                  recent traces, one line each (JSON with Accept: application/json)
    GET /traces/<trace id>       the trace as a tree (JSON with Accept: application/json)
    GET /traces/<invocation id>  the trace of a Restate invocation (`inv_...`)
    GET /health                  200 once it listens

`python -m devkit.otlp_receiver tree <trace id | inv_...>` prints the tree too. Why this and
not a receiver from a registry: see observability/README.md (none that binds loopback only
and can be queried could be had from PyPI, npm or Debian).
"""

import argparse
import base64
import json
import sys
import threading
from collections import OrderedDict
from concurrent import futures
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from devkit.processes import Echo, ManagedProcess, http, http_ok

GRPC_PORT, HTTP_PORT = 4317, 4318
TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
INVOCATION_ID = "restate.invocation.id"  # the attribute restate-server puts on its spans
KINDS = {0: "", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass
class Span:
    """One span as the receiver keeps it (ids in hex, times in Unix nanoseconds)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service: str  # the resource's service.name
    kind: str
    start: int
    end: int
    attributes: dict[str, Any] = field(default_factory=dict)
    status: str = ""  # "error: <message>" for a failed span, else empty


def _value(any_value: Any) -> Any:
    """The Python value of an OTLP AnyValue."""
    which = any_value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    if which == "bytes_value":
        return any_value.bytes_value.hex()
    return getattr(any_value, which) if which else None


def spans_of(request: Any) -> list[Span]:
    """The spans of an ExportTraceServiceRequest."""
    found = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        service = str(resource.get("service.name", "?"))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                failed = span.status.code == 2  # STATUS_CODE_ERROR
                found.append(
                    Span(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        service=service,
                        kind=KINDS.get(span.kind, str(span.kind)),
                        start=span.start_time_unix_nano,
                        end=span.end_time_unix_nano,
                        attributes={kv.key: _value(kv.value) for kv in span.attributes},
                        status=f"error: {span.status.message}".rstrip(": ") if failed else "",
                    )
                )
    return found


class Store:
    """The spans received, by trace, oldest trace dropped first beyond `max_spans`."""

    def __init__(self, max_spans: int) -> None:
        self.max_spans = max_spans
        self._traces: OrderedDict[str, list[Span]] = OrderedDict()
        self._count = 0
        self._lock = threading.Lock()

    def add(self, spans: list[Span]) -> None:
        with self._lock:
            for span in spans:
                self._traces.setdefault(span.trace_id, []).append(span)
                self._traces.move_to_end(span.trace_id)
                self._count += 1
            while self._count > self.max_spans and len(self._traces) > 1:
                _, dropped = self._traces.popitem(last=False)
                self._count -= len(dropped)

    def trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return sorted(self._traces.get(trace_id, []), key=lambda s: (s.start, s.end))

    def find(self, key: str) -> str | None:
        """The trace id of `key`: a trace id, or a Restate invocation id found on a span."""
        with self._lock:
            if key in self._traces:
                return key
            for trace_id, spans in reversed(self._traces.items()):
                if any(span.attributes.get(INVOCATION_ID) == key for span in spans):
                    return trace_id
        return None

    def summaries(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._lock:
            recent = list(self._traces.items())[-limit:]
        return [summary(trace_id, spans) for trace_id, spans in reversed(recent)]


def summary(trace_id: str, spans: list[Span]) -> dict[str, Any]:
    first = min(spans, key=lambda s: s.start)
    invocations = {str(s.attributes[INVOCATION_ID]) for s in spans if INVOCATION_ID in s.attributes}
    return {
        "traceId": trace_id,
        "spans": len(spans),
        "services": sorted({s.service for s in spans}),
        "first": first.name,
        "invocations": sorted(invocations),
    }


# --- the tree ------------------------------------------------------------------------------


def tree(spans: list[Span]) -> str:
    """The trace as an indented tree: each span under its parent, siblings by start time,
    with its service, its start after the trace's start and its duration. A span whose
    parent did not arrive (a crashed process never sent it) is shown at the top level."""
    if not spans:
        return "no spans"
    ids = {span.span_id for span in spans}
    children: dict[str, list[Span]] = {}
    for span in spans:
        parent = span.parent_span_id if span.parent_span_id in ids else ""
        children.setdefault(parent, []).append(span)
    begin = min(span.start for span in spans)
    width = max(len(span.service) for span in spans)
    services = len({span.service for span in spans})
    lines = [f"trace {spans[0].trace_id}: {len(spans)} spans from {services} services"]

    def walk(parent: str, prefix: str) -> None:
        kids = sorted(children.get(parent, []), key=lambda s: (s.start, s.end))
        for i, span in enumerate(kids):
            last = i == len(kids) - 1
            branch = ("└─ " if last else "├─ ") if parent else ""
            notes = f"  [{span.status}]" if span.status else ""
            if span.parent_span_id and not parent:
                notes += f"  (parent {span.parent_span_id} not received)"
            start, took = (span.start - begin) / 1e6, (span.end - span.start) / 1e6
            lines.append(
                f"{start:>8.1f} ms {took:>8.1f} ms  {span.service:<{width}}  "
                f"{prefix}{branch}{span.name}{notes}"
            )
            walk(span.span_id, prefix + (("   " if last else "│  ") if parent else ""))

    lines.append(f"{'start':>11} {'duration':>11}  {'service':<{width}}  span")
    walk("", "")
    return "\n".join(lines)


def from_otlp_json(body: bytes) -> Any:
    """An ExportTraceServiceRequest from OTLP/JSON, which spells the ids in hex where
    protobuf's JSON mapping expects base64 (the only difference that matters here)."""
    from google.protobuf.json_format import ParseDict
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    data = json.loads(body)
    for resource_spans in data.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for item in [span, *span.get("links", [])]:
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if item.get(key):
                            item[key] = base64.b64encode(bytes.fromhex(item[key])).decode()
    return ParseDict(data, ExportTraceServiceRequest())


# --- the servers ---------------------------------------------------------------------------


def _http_handler(store: Store) -> type[BaseHTTPRequestHandler]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per export
            pass

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if urlsplit(self.path).path != "/v1/traces":
                self._answer(404, b"not found: OTLP/HTTP traces go to /v1/traces\n", "text/plain")
                return
            try:
                if "json" in self.headers.get("content-type", ""):
                    request = from_otlp_json(body)
                else:
                    request = ExportTraceServiceRequest.FromString(body)
            except Exception as error:  # a malformed export: tell the sender, keep serving
                self._answer(400, f"bad OTLP request: {error}\n".encode(), "text/plain")
                return
            store.add(spans_of(request))
            if "json" in self.headers.get("content-type", ""):
                self._answer(200, b"{}", "application/json")
            else:
                answer = ExportTraceServiceResponse().SerializeToString()
                self._answer(200, answer, "application/x-protobuf")

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            as_json = "application/json" in self.headers.get("accept", "")
            parts = [part for part in url.path.split("/") if part]
            if parts == ["health"]:
                self._answer(200, b"ok\n", "text/plain")
            elif parts == ["traces"]:
                asked = parse_qs(url.query).get("limit", ["20"])[0]
                limit = int(asked) if asked.isdigit() else 20
                traces = store.summaries(limit)
                if as_json:
                    self._answer(200, json.dumps(traces).encode(), "application/json")
                else:
                    text = "\n".join(
                        f"{t['traceId']}  {t['spans']:>3} spans  {', '.join(t['services'])}  "
                        f"{' '.join(t['invocations'])}"
                        for t in traces
                    )
                    self._answer(200, (text or "no traces yet").encode() + b"\n", "text/plain")
            elif len(parts) == 2 and parts[0] == "traces":
                trace_id = store.find(parts[1])
                if trace_id is None:
                    message = f"no spans of {parts[1]} (yet: exporters send them in batches)\n"
                    self._answer(404, message.encode(), "text/plain")
                elif as_json:
                    spans = [asdict(span) for span in store.trace(trace_id)]
                    payload = {"traceId": trace_id, "spans": spans}
                    self._answer(200, json.dumps(payload).encode(), "application/json")
                else:
                    self._answer(200, tree(store.trace(trace_id)).encode() + b"\n", "text/plain")
            else:
                self._answer(404, b"not found: see GET /traces\n", "text/plain")

    return Handler


def _grpc_server(store: Store, port: int) -> Any:
    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    def export(request: ExportTraceServiceRequest, context: Any) -> ExportTraceServiceResponse:
        store.add(spans_of(request))
        return ExportTraceServiceResponse()

    handler = grpc.method_handlers_generic_handler(
        TRACE_SERVICE,
        {
            "Export": grpc.unary_unary_rpc_method_handler(
                export,
                request_deserializer=ExportTraceServiceRequest.FromString,
                response_serializer=ExportTraceServiceResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise SystemExit(f"otlp-receiver: cannot listen on 127.0.0.1:{port} (taken?)")
    return server


def serve(grpc_port: int, http_port: int, max_spans: int) -> None:
    store = Store(max_spans)
    grpc_server = _grpc_server(store, grpc_port)
    grpc_server.start()
    try:
        web = ThreadingHTTPServer(("127.0.0.1", http_port), _http_handler(store))
    except OSError as error:
        message = f"otlp-receiver: cannot listen on 127.0.0.1:{http_port}: {error}"
        raise SystemExit(message) from None
    web.daemon_threads = True
    print(
        f"otlp-receiver: OTLP/gRPC on 127.0.0.1:{grpc_port}, OTLP/HTTP and the traces on "
        f"http://127.0.0.1:{http_port} (GET /traces, /traces/<trace or invocation id>)",
        flush=True,
    )
    try:
        web.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        grpc_server.stop(grace=None)


# --- as a process of ./dev and the tests ---------------------------------------------------


class OtlpReceiver(ManagedProcess):
    """`python -m devkit.otlp_receiver` on 127.0.0.1, gRPC and HTTP ports as given."""

    def __init__(
        self,
        grpc_port: int,
        http_port: int,
        log_path: Path,
        echo: Echo | None = None,
        max_spans: int = 100_000,
    ) -> None:
        argv = [sys.executable, "-m", "devkit.otlp_receiver", "serve",
                "--grpc-port", str(grpc_port), "--http-port", str(http_port),
                "--max-spans", str(max_spans)]  # fmt: skip
        super().__init__("otlp-receiver", argv, log_path, echo=echo)
        self.grpc_endpoint = f"http://127.0.0.1:{grpc_port}"  # restate-server's
        self.http_endpoint = f"http://127.0.0.1:{http_port}"  # the Python exporter's
        self.url = self.http_endpoint

    def start(self, timeout: float = 30.0) -> None:
        super().start()
        self.wait_ready(
            lambda: http_ok(f"{self.url}/health"),
            timeout,
            f"the OTLP receiver to listen on {self.url}",
        )

    def spans(self, key: str) -> list[dict[str, Any]]:
        """The spans of a trace (by trace id or invocation id) received so far."""
        response = http().get(
            f"{self.url}/traces/{key}", headers={"accept": "application/json"}, timeout=10
        )
        if response.status_code == 404:
            return []
        response.raise_for_status()
        spans: list[dict[str, Any]] = response.json()["spans"]
        return spans

    def tree(self, key: str) -> str:
        return http().get(f"{self.url}/traces/{key}", timeout=10).text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.otlp_receiver",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="receive spans (OTLP/gRPC and OTLP/HTTP)")
    run.add_argument("--grpc-port", type=int, default=GRPC_PORT)
    run.add_argument("--http-port", type=int, default=HTTP_PORT)
    run.add_argument("--max-spans", type=int, default=100_000, help="keep at most these")
    show = commands.add_parser("tree", help="print a trace that a running receiver holds")
    show.add_argument("key", help="a trace id (32 hex digits) or a Restate invocation id")
    show.add_argument("--url", default=f"http://localhost:{HTTP_PORT}")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.grpc_port, args.http_port, args.max_spans)
        return 0
    try:
        response = httpx.get(f"{args.url}/traces/{args.key}", timeout=10)
    except httpx.HTTPError as error:
        print(f"no OTLP receiver answers at {args.url}: {error}", file=sys.stderr)
        return 1
    print(response.text, end="")
    return 0 if response.status_code == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
