"""What the observability pattern needs around it, for `./dev run` and the tests: the
tracing settings of the server and of the services (its fraud check, a stand-in of its
folder, is started as every pattern's stand-in is: devkit/patterns.py STANDINS).

The OTLP receiver itself is devkit/otlp_receiver.py.
"""


def server_settings(grpc_endpoint: str, batch_delay_ms: int) -> dict[str, str]:
    """restate-server's environment: its spans to this OTLP/gRPC endpoint, in batches sent
    every `batch_delay_ms` (the OpenTelemetry SDK's variable, which the server reads too)."""
    return {
        "RESTATE_TRACING_ENDPOINT": grpc_endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": str(batch_delay_ms),
    }


def service_settings(http_endpoint: str, batch_delay_ms: int) -> dict[str, str]:
    """A traced Python process's environment: its spans to this OTLP/HTTP endpoint."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": http_endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": str(batch_delay_ms),
    }
