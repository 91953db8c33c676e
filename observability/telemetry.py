"""OpenTelemetry for the pattern's two processes: the Restate service and the fraud check.

Each process batches its spans to an OTLP collector over HTTP, at the endpoint the standard
OpenTelemetry variables give (OTEL_EXPORTER_OTLP_ENDPOINT, default http://localhost:4318):
Jaeger, an OpenTelemetry Collector, or the receiver that `./dev run observability` starts.

Handler code takes its tracer from `restate.ext.tracing.RestateTracerProvider`, which wraps
the SDK's provider: every span it starts is a child of the span restate-server made for the
current attempt (the `traceparent` the server sends with it), and while the handler replays
its journal it starts none, so that a replayed step does not show up twice.
"""

import contextlib
import logging

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from restate import extensions
from restate.ext.tracing import RestateTracerProvider


def tracer_provider(service_name: str) -> TracerProvider:
    """The SDK's provider for one process: its spans carry `service_name` and are sent in
    batches (every OTEL_BSP_SCHEDULE_DELAY ms, 5000 by default; and when the process exits)."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def restate_tracer(provider: TracerProvider, name: str) -> trace.Tracer:
    """A tracer for handlers: spans under the attempt's span, none while replaying."""
    tracer: trace.Tracer = RestateTracerProvider(provider).get_tracer(name)
    return tracer


def current_trace_id() -> str:
    """The trace id (32 hex digits) of the span in progress, or else of the Restate
    invocation being handled; "" outside both."""
    span = trace.get_current_span().get_span_context()
    if not span.is_valid:
        with contextlib.suppress(LookupError):  # not inside a handler
            ctx = extensions.current_context()
            if ctx is not None:
                parent = propagate.extract(ctx.request().attempt_headers)
                span = trace.get_current_span(parent).get_span_context()
    return format(span.trace_id, "032x") if span.is_valid else ""


class TraceIdInLogs(logging.Filter):
    """Starts a logger's lines with `[trace <trace id>] ` inside a traced request, so that a
    log line leads to its trace (the serving file already puts the invocation id before)."""

    def filter(self, record: logging.LogRecord) -> bool:
        trace_id = current_trace_id()
        if trace_id:
            record.msg = f"[trace {trace_id}] {record.msg}"
        return True
