"""The fraud check: a plain HTTP service (no Restate) that the checkout handler calls.

`python -m observability.downstream` serves `POST /fraud-check` on 127.0.0.1:9081. It reads
the W3C `traceparent` header of the request and makes its own span a child of the caller's,
so the call shows up inside the checkout's trace, in a process of its own. An order above
FRAUD_LIMIT is refused; FRAUD_CHECK_DELAY_SECONDS holds each answer back (try a crash of the
checkout service during the call).

Settings: HOST (127.0.0.1), PORT (9081), FRAUD_LIMIT (1000), FRAUD_CHECK_DELAY_SECONDS (0),
OTEL_EXPORTER_OTLP_ENDPOINT (http://localhost:4318).
"""

import json
import logging
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry import propagate, trace

from .telemetry import TraceIdInLogs, tracer_provider

HOST, PORT = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "9081"))
FRAUD_LIMIT = float(os.environ.get("FRAUD_LIMIT", "1000"))
DELAY = float(os.environ.get("FRAUD_CHECK_DELAY_SECONDS", "0"))

provider = tracer_provider("fraud-check")
tracer = provider.get_tracer(__name__)  # a plain tracer: this process knows no Restate
logger = logging.getLogger("observability.downstream")
logger.addFilter(TraceIdInLogs())


def verdict(order: dict[str, Any]) -> dict[str, Any]:
    """Approve an order up to FRAUD_LIMIT; the score grows with the amount."""
    amount = float(order["amount"])
    return {"approved": amount <= FRAUD_LIMIT, "score": round(min(amount / FRAUD_LIMIT, 9.99), 2)}


class FraudCheck(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # one line of our own per call
        pass

    def answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self.answer(200, {"status": "ok"})
        else:
            self.answer(404, {"error": f"no such path: {self.path}"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path != "/fraud-check":
            self.answer(404, {"error": f"no such path: {self.path}"})
            return
        caller = propagate.extract(self.headers)  # the caller's span, from `traceparent`
        with tracer.start_as_current_span(
            "POST /fraud-check", context=caller, kind=trace.SpanKind.SERVER
        ) as span:
            try:
                order = json.loads(body)
                result = verdict(order)
            except (ValueError, KeyError, TypeError) as error:
                self.answer(400, {"error": f"expected {{'orderId', 'amount'}}: {error!r}"})
                return
            span.set_attributes({"order.id": str(order.get("orderId")), **result})
            logger.info(
                "Fraud check of order %s (amount %.2f): %s",
                order.get("orderId"),
                float(order["amount"]),
                "approved" if result["approved"] else "refused",
            )
            time.sleep(DELAY)
            try:
                self.answer(200, result)
            except OSError:  # BrokenPipeError ...: the caller has gone (crashed?) meanwhile
                span.set_status(trace.StatusCode.ERROR, "the caller hung up before the answer")
                logger.warning("Order %s: the caller hung up before the answer", order["orderId"])


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)-5s %(name)s - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    server = ThreadingHTTPServer((HOST, PORT), FraudCheck)
    server.daemon_threads = True
    logger.info("Fraud check on http://%s:%d/fraud-check (limit %.2f)", HOST, PORT, FRAUD_LIMIT)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        provider.shutdown()  # send the spans still in the batch


if __name__ == "__main__":
    main()
