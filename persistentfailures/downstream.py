"""The systems an order calls, in one local stand-in: a warehouse, a payment provider, a
carrier and an invoice renderer, each with a way to fail.

`python -m persistentfailures.downstream` serves it on 127.0.0.1:9081 (`./dev run
persistentfailures` starts it beside the service). Standard library only, so that the
folder stays self-contained. Every call is idempotent per order, as a real provider's are
with an idempotency key: a step that Restate runs again after a crash does not reserve,
charge or book twice.

What the service calls (JSON bodies):

    POST   /stock/reservations   {"orderId", "item"}  reserve the item
    DELETE /stock/reservations/<orderId>              release it (the compensation)
    POST   /payments             {"orderId", "card"}  charge the card:
             tok_visa         paid
             tok_declined     402, card declined (any other card too)
             tok_unavailable  503, at every attempt: a failure that does not go away
             tok_ratelimited  429 with Retry-After for the first RATE_LIMITED_CALLS calls
    POST   /labels               {"orderId"}          book a shipping label; 503 while the
                                                      carrier is down
    POST   /invoices             {"orderId"}          render the invoice; takes RENDER_SECONDS

What you (and the tests) use:

    GET    /carrier, PUT /carrier {"up": false}       the carrier's API down, or up again
    GET    /orders/<orderId>                          what this order did here
    GET    /events                                    every call as it came and was answered
    PUT    /holds/<orderId>/<call>                    hold the answers to an order's calls
    DELETE /holds/<orderId>/<call>                    (call: reserve, release, charge, label,
                                                      invoice) until the hold is lifted

Settings: DOWNSTREAM_PORT (9081), RETRY_AFTER_SECONDS (2: the Retry-After it asks for),
RATE_LIMITED_CALLS (1), RENDER_SECONDS (2).
"""

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PORT = int(os.environ.get("DOWNSTREAM_PORT", "9081"))
RETRY_AFTER_SECONDS = int(os.environ.get("RETRY_AFTER_SECONDS", "2"))
RATE_LIMITED_CALLS = int(os.environ.get("RATE_LIMITED_CALLS", "1"))
RENDER_SECONDS = float(os.environ.get("RENDER_SECONDS", "2"))
HOLD_LIMIT_SECONDS = 120.0  # a hold nobody lifts ends after this

logger = logging.getLogger("downstream")


@dataclass
class Order:
    """What happened to one order here: the calls that came, and their effects (once)."""

    stock: str | None = None  # "reserved", then "released"
    reserve_calls: int = 0
    release_calls: int = 0
    charge_calls: int = 0
    early_charge_calls: int = 0  # came back before the Retry-After we asked for
    payment_id: str | None = None
    label_calls: int = 0
    tracking_number: str | None = None
    invoice_calls: int = 0
    invoice: str | None = None

    def as_json(self) -> dict[str, Any]:
        camel = {"stock": "stock", "reserve_calls": "reserveCalls",
                 "release_calls": "releaseCalls", "charge_calls": "chargeCalls",
                 "early_charge_calls": "earlyChargeCalls", "payment_id": "paymentId",
                 "label_calls": "labelCalls", "tracking_number": "trackingNumber",
                 "invoice_calls": "invoiceCalls", "invoice": "invoice"}  # fmt: skip
        return {camel[name]: value for name, value in asdict(self).items()}


class World:
    """The state of the stand-in, shared by the request threads."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.orders: dict[str, Order] = {}
        self.not_before: dict[str, float] = {}  # orderId -> when it may charge again
        self.events: list[dict[str, Any]] = []
        self.holds: set[tuple[str, str]] = set()
        self.carrier_up = True

    def order(self, order_id: str) -> Order:
        return self.orders.setdefault(order_id, Order())

    def event(self, order_id: str, call: str, what: str, status: int | None = None) -> None:
        self.events.append({"seq": len(self.events) + 1, "orderId": order_id, "call": call,
                            "event": what, "status": status})  # fmt: skip

    def wait_while_held(self, order_id: str, call: str) -> None:
        deadline = time.monotonic() + HOLD_LIMIT_SECONDS
        with self.changed:
            while (order_id, call) in self.holds and time.monotonic() < deadline:
                self.changed.wait(deadline - time.monotonic())


WORLD = World()


class Reply(Exception):
    """An answer other than 200: its status and message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def reserve(body: dict[str, Any]) -> dict[str, Any]:
    order_id = text(body, "orderId")
    with WORLD.changed:
        order = WORLD.order(order_id)
        order.reserve_calls += 1
        order.stock = order.stock or "reserved"
    return {"reservationId": f"res-{order_id}"}


def release(order_id: str) -> dict[str, Any]:
    with WORLD.changed:
        order = WORLD.order(order_id)
        order.release_calls += 1
        order.stock = "released"
    return {"released": True}


def charge(body: dict[str, Any]) -> dict[str, Any]:
    order_id, card = text(body, "orderId"), text(body, "card")
    with WORLD.changed:
        order = WORLD.order(order_id)
        order.charge_calls += 1
        now = time.monotonic()
        if now < WORLD.not_before.get(order_id, 0.0):
            order.early_charge_calls += 1
        if order.payment_id is not None:  # paid already: the same answer, no second charge
            return {"paymentId": order.payment_id}
        if card == "tok_unavailable":
            raise Reply(503, "payment provider unavailable")
        if card == "tok_ratelimited" and order.charge_calls <= RATE_LIMITED_CALLS:
            WORLD.not_before[order_id] = now + RETRY_AFTER_SECONDS
            raise Reply(429, "too many requests", {"Retry-After": str(RETRY_AFTER_SECONDS)})
        if card not in ("tok_visa", "tok_ratelimited"):
            raise Reply(402, "card declined")
        order.payment_id = f"pay-{order_id}"
        return {"paymentId": order.payment_id}


def book_label(body: dict[str, Any]) -> dict[str, Any]:
    order_id = text(body, "orderId")
    with WORLD.changed:
        order = WORLD.order(order_id)
        order.label_calls += 1
        if not WORLD.carrier_up:
            raise Reply(503, "carrier API unavailable")
        order.tracking_number = order.tracking_number or f"TRK-{order_id}"
        return {"trackingNumber": order.tracking_number}


def render_invoice(body: dict[str, Any]) -> dict[str, Any]:
    order_id = text(body, "orderId")
    with WORLD.changed:
        WORLD.order(order_id).invoice_calls += 1
    logger.info("rendering the invoice of %s ...", order_id)
    time.sleep(RENDER_SECONDS)
    with WORLD.changed:
        order = WORLD.order(order_id)
        order.invoice = order.invoice or f"INV-{order_id}"
        return {"invoice": order.invoice}


def text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise Reply(400, f"{name}: a non-empty string is required")
    return value


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.control(self.read_state)

    def do_PUT(self) -> None:
        self.control(lambda: self.write_state(put=True))

    def do_DELETE(self) -> None:
        parts = self.path.strip("/").split("/")
        if parts[:2] == ["stock", "reservations"] and len(parts) == 3:
            self.call(parts[2], "release", lambda: release(parts[2]))
        else:
            self.control(lambda: self.write_state(put=False))

    def do_POST(self) -> None:
        calls = {"/stock/reservations": ("reserve", reserve), "/payments": ("charge", charge),
                 "/labels": ("label", book_label),
                 "/invoices": ("invoice", render_invoice)}  # fmt: skip
        if self.path not in calls:
            return self.answer(404, {"error": f"no such call: POST {self.path}"})
        try:
            body = self.body()
            order_id = text(body, "orderId")
        except Reply as reply:
            return self.answer(reply.status, {"error": reply.message})
        name, work = calls[self.path]
        self.call(order_id, name, lambda: work(body))

    def call(self, order_id: str, name: str, work: Any) -> None:
        """A call of the service: record it, do its work, hold the answer if asked, answer."""
        with WORLD.changed:
            WORLD.event(order_id, name, "received")
        status, headers = 200, {}
        try:
            answer = work()
        except Reply as reply:
            status, headers, answer = reply.status, reply.headers, {"error": reply.message}
        WORLD.wait_while_held(order_id, name)
        with WORLD.changed:
            WORLD.event(order_id, name, "answered", status)
        reason = "" if status == 200 else f" {HTTPStatus(status).phrase}: {answer['error']}"
        logger.info("%s %s for %s -> %d%s", self.command, self.path, order_id, status, reason)
        self.answer(status, answer, headers)

    def control(self, work: Any) -> None:
        try:
            self.answer(200, work())
        except Reply as reply:
            self.answer(reply.status, {"error": reply.message})

    def read_state(self) -> Any:
        parts = self.path.strip("/").split("/")
        with WORLD.changed:
            if parts == ["health"]:
                return "ok"
            if parts == ["carrier"]:
                return {"up": WORLD.carrier_up}
            if parts == ["events"]:
                return list(WORLD.events)
            if parts[0] == "orders" and len(parts) == 2:
                return WORLD.order(parts[1]).as_json()
        raise Reply(404, f"nothing at GET {self.path}")

    def write_state(self, put: bool) -> Any:
        parts = self.path.strip("/").split("/")
        if parts == ["carrier"] and put:
            up = self.body().get("up")
            if not isinstance(up, bool):
                raise Reply(400, "up: true or false is required")
            with WORLD.changed:
                WORLD.carrier_up = up
            logger.info("the carrier's API is %s", "up" if up else "DOWN")
            return {"up": up}
        if parts[0] == "holds" and len(parts) == 3:
            with WORLD.changed:
                (WORLD.holds.add if put else WORLD.holds.discard)((parts[1], parts[2]))
                WORLD.changed.notify_all()
            return {"held": put}
        raise Reply(404, f"nothing at {self.command} {self.path}")

    def body(self) -> dict[str, Any]:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise Reply(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise Reply(400, "the body must be a JSON object")
        return body

    def answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            for name, value in {"content-type": "application/json", **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the caller is gone (a service killed while we held its answer)
            pass

    def log_message(self, format: str, *args: Any) -> None:
        """Not every request: `call` logs the service's calls."""


def main() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-5s downstream - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    server.daemon_threads = True
    logger.info("warehouse, payments, carrier and invoices on http://127.0.0.1:%d", PORT)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
