"""What the observability pattern needs around it, for `./dev run` and the tests: its
downstream HTTP service as a process, and the tracing settings of the server and services.

The OTLP receiver itself is devkit/otlp_receiver.py.
"""

import os
import sys
from pathlib import Path

from devkit.processes import Echo, ManagedProcess, http_ok


class HttpProcess(ManagedProcess):
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
        env = {**os.environ, **(settings or {})}
        env.update(HOST="127.0.0.1", PORT=str(port), PYTHONUNBUFFERED="1")
        super().__init__(name, [sys.executable, "-m", module], log_path, env=env, echo=echo)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 30.0) -> None:
        super().start()
        self.wait_ready(
            lambda: http_ok(f"{self.url}/health"), timeout, f"{self.name} to listen on {self.url}"
        )


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
