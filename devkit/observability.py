"""What the observability pattern needs around it, for `./dev run` and the tests: its
downstream HTTP service as a process, and the tracing settings of the server and services.

The OTLP receiver itself is devkit/otlp_receiver.py.
"""

from pathlib import Path

from devkit.processes import Echo, StandInProcess


class HttpProcess(StandInProcess):
    """A plain HTTP service that a pattern calls (no Restate SDK), `python -m <module>` on
    127.0.0.1 (HOST and PORT set, the settings in its environment), ready when it answers
    200 on `/health`."""

    def __init__(
        self,
        name: str,
        module: str,
        port: int,
        log_path: Path,
        settings: dict[str, str] | None = None,
        echo: Echo | None = None,
    ) -> None:
        env = {**(settings or {}), "HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
        super().__init__(module, port, "PORT", log_path, env, echo, name=name)


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
