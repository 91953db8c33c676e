"""Observability: one trace from the ingress to the fraud check, no extra spans on replay,
the retried attempt in the same trace after a crash, bad input, loopback only."""

import ipaddress
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.otlp_receiver import OtlpReceiver
from devkit.otlp_receiver import main as otlp_receiver_cli
from devkit.processes import ManagedProcess, PatternService, RestateServer, StandInProcess, register
from devkit.pytest_restate import ALWAYS_REPLAY, StartServer
from tests.harness import Ingress, StartService, eventually
from tests.test_loopback_only import listening

Span = dict[str, Any]
RESTATE = "Restate"  # the service.name of restate-server's spans
SERVICE, DOWNSTREAM = "checkout-service", "fraud-check"
INVOCATION = "restate.invocation.id"
INACTIVITY = next(iter(ALWAYS_REPLAY))  # the server setting that makes it replay at every await


def count_lines(process: ManagedProcess, text: str) -> int:
    """How many lines of the process's log contain `text` (across restarts)."""
    return sum(text in line for line in process.log_lines())


def new_trace() -> tuple[str, str]:
    """A trace id of the test's own, and a `traceparent` that puts a call into it."""
    trace_id = uuid.uuid4().hex
    return trace_id, f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"


def order(order_id: str, amount: float = 42.5) -> dict[str, Any]:
    return {"orderId": order_id, "customerId": "customer-7", "amount": amount}


def checkout(ingress: Ingress, body: Any, traceparent: str | None = None) -> httpx.Response:
    headers = {"traceparent": traceparent} if traceparent else {}
    return ingress.post("/CheckoutService/checkout", json=body, headers=headers)


def start_checkout(
    start_service: StartService, fraud_check: StandInProcess, traced_settings: dict[str, str]
) -> PatternService:
    return start_service(
        "observability", settings={**traced_settings, "FRAUD_CHECK_URL": fraud_check.url}
    )


def named(spans: list[Span], service: str, name: str) -> list[Span]:
    return [s for s in spans if s["service"] == service and s["name"] == name]


def named_like(spans: list[Span], service: str, prefix: str) -> list[Span]:
    return [s for s in spans if s["service"] == service and s["name"].startswith(prefix)]


def attempts(spans: list[Span]) -> list[Span]:
    """The server's spans of the attempts to run the handler."""
    return named_like(spans, RESTATE, "invocation-attempt")


def wait_for_trace(
    receiver: OtlpReceiver, key: str, complete: Callable[[list[Span]], bool], what: str
) -> list[Span]:
    """The spans of a trace (by trace or invocation id) once `complete` holds for them: the
    processes send their spans in batches, a moment after the work."""

    def received() -> list[Span] | None:
        spans = receiver.spans(key)
        return spans if spans and complete(spans) else None

    return eventually(received, timeout=30, message=f"the receiver holds {what}")


def done(spans: list[Span]) -> bool:
    """The server's span of the invocation's end, the last it sends, has arrived."""
    return any(s["name"].startswith("invocation-end") for s in spans)


def finished(last_step: str, fraud_checks: int = 1) -> Callable[[list[Span]], bool]:
    """Whether every process has sent its spans of a checkout: the server its last one, the
    service the span of its last step, the fraud check one per call. A process sends its
    spans in the order they end, so an extra span would have arrived before these."""
    return lambda spans: (
        done(spans)
        and len(named(spans, SERVICE, last_step)) >= 1
        and len(named(spans, DOWNSTREAM, "POST /fraud-check")) >= fraud_checks
    )


def service_span_names(spans: list[Span]) -> Counter[tuple[str, str]]:
    return Counter((s["service"], s["name"]) for s in spans if s["service"] != RESTATE)


def test_walkthrough_one_trace_from_the_ingress_to_the_fraud_check(
    capsys: pytest.CaptureFixture[str],
    start_service: StartService,
    ingress: Ingress,
    otlp_receiver: OtlpReceiver,
    fraud_check: StandInProcess,
    traced_settings: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    service = start_checkout(start_service, fraud_check, traced_settings)
    trace_id, traceparent = new_trace()
    first = unique("order-1")

    answer = checkout(ingress, order(first), traceparent)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"orderId": first, "status": "confirmed"}

    spans = wait_for_trace(
        otlp_receiver, trace_id, finished("charge payment"), f"the whole trace of {first}"
    )
    assert {s["trace_id"] for s in spans} == {trace_id}
    by_id = {s["span_id"]: s for s in spans}
    # restate-server: the ingress call joins the caller's trace, then the invocation
    (ingress_span,) = [s for s in spans if s["name"] == "ingress CheckoutService/checkout"]
    assert ingress_span["service"] == RESTATE
    assert ingress_span["parent_span_id"] == traceparent.split("-")[2]
    invocation_id = ingress_span["attributes"][INVOCATION]
    tried = attempts(spans)  # one, or one per await where the server replays at every await
    assert tried
    assert {s["attributes"][INVOCATION] for s in tried} == {invocation_id}
    # the service: one span per step, each a child of the server's attempt span
    assert service_span_names(spans) == Counter(
        {(SERVICE, "reserve stock"): 1, (SERVICE, "POST /fraud-check"): 1,
         (SERVICE, "charge payment"): 1, (DOWNSTREAM, "POST /fraud-check"): 1}
    )  # fmt: skip
    for step in ("reserve stock", "POST /fraud-check", "charge payment"):
        assert named(spans, SERVICE, step)[0]["parent_span_id"] in {s["span_id"] for s in tried}
    # the HTTP call: the fraud check's span is a child of the caller's client span
    (call,) = named(spans, SERVICE, "POST /fraud-check")
    (served,) = named(spans, DOWNSTREAM, "POST /fraud-check")
    assert call["kind"] == "client"
    assert served["kind"] == "server"
    assert by_id[served["parent_span_id"]] is call
    assert served["attributes"]["approved"] is True

    # log lines: the trace id beside the invocation id, in the service and the fraud check
    line = next(line for line in service.log_lines() if f"Reserved stock for order {first}" in line)
    assert f"[CheckoutService/checkout][{invocation_id}]" in line
    assert f"[trace {trace_id}] Reserved stock" in line
    assert count_lines(fraud_check, f"[trace {trace_id}] Fraud check of order {first}") == 1

    # the tree the README shows (`python -m devkit.otlp_receiver tree`, in this process)
    assert otlp_receiver_cli(["tree", trace_id, "--url", otlp_receiver.url]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0] == f"trace {trace_id}: {len(spans)} spans from 3 services"
    assert any("ingress CheckoutService/checkout" in line for line in lines)
    # the fraud check's span one level below the call's
    (client,) = [ln for ln in lines if f"{SERVICE}  " in ln and ln.endswith("POST /fraud-check")]
    callee = lines[lines.index(client) + 1]
    assert f"{DOWNSTREAM}  " in callee
    assert callee.index("└─ POST /fraud-check") == client.index("POST /fraud-check"), printed

    # without a traceparent, restate-server starts the trace; the log line names it
    second = unique("order-2")
    answer = checkout(ingress, order(second, amount=4200))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"orderId": second, "status": "refused"}
    line = eventually(
        lambda: next((ln for ln in service.log_lines() if f"stock of order {second}" in ln), None),
        timeout=10,
        message="the log line of the released stock",
    )
    invocation_id = line.split("][")[1].split("]")[0]
    new_trace_id = line.split("[trace ")[1].split("]")[0]
    spans = wait_for_trace(
        otlp_receiver,
        invocation_id,
        finished("release stock"),
        f"the trace of {invocation_id}",
    )
    assert {s["trace_id"] for s in spans} == {new_trace_id}
    assert {s["service"] for s in spans} == {RESTATE, SERVICE, DOWNSTREAM}
    assert not named(spans, SERVICE, "charge payment")
    assert count_lines(service, f"Charged 4200.00 for order {second}") == 0


def test_replaying_at_every_await_makes_no_extra_span(
    start_service: StartService,
    start_server: StartServer,
    server: RestateServer,
    restate_settings: dict[str, str],
    tracing_settings: dict[str, str],
    otlp_receiver: OtlpReceiver,
    fraud_check: StandInProcess,
    traced_settings: dict[str, str],
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """The same checkout on two servers, one that keeps the invocation running and one that
    suspends it at every await and replays its journal on the next attempt (whichever mode
    this pass's server is in, the other one is started here): the same service spans."""
    service = start_checkout(start_service, fraud_check, traced_settings)
    replaying_here = restate_settings.get(INACTIVITY) == ALWAYS_REPLAY[INACTIVITY]
    other = start_server(
        tmp_path / "other",
        settings={**tracing_settings, INACTIVITY: "1m" if replaying_here else "0s"},
    )
    try:
        register(other.admin_url, service.url, ingress_urls=[other.ingress_url])
        runs = {}
        for mode, where in ((replaying_here, server), (not replaying_here, other)):
            trace_id, traceparent = new_trace()
            order_id = unique("order")
            answer = checkout(Ingress(where), order(order_id), traceparent)
            assert answer.status_code == 200, answer.text
            runs[mode] = wait_for_trace(
                otlp_receiver,
                trace_id,
                finished("charge payment"),
                f"the trace of {order_id}",
            )
            assert count_lines(service, f"Reserved stock for order {order_id}") == 1
            assert count_lines(fraud_check, f"Fraud check of order {order_id}") == 1
    finally:
        other.stop()

    # the always-replay server did replay: an attempt per await (3 steps), the other one
    assert len(attempts(runs[False])) == 1
    assert len(attempts(runs[True])) >= 4
    expected = Counter(
        {(SERVICE, "reserve stock"): 1, (SERVICE, "POST /fraud-check"): 1,
         (SERVICE, "charge payment"): 1, (DOWNSTREAM, "POST /fraud-check"): 1}
    )  # fmt: skip
    assert service_span_names(runs[True]) == service_span_names(runs[False]) == expected
    # in replay mode each step's span hangs under the attempt that ran the step
    parents = {s["parent_span_id"] for s in runs[True] if s["service"] == SERVICE}
    assert len(parents) >= 2


def test_after_a_kill_9_of_the_service_mid_call_the_retry_is_in_the_same_trace(
    start_service: StartService,
    ingress: Ingress,
    otlp_receiver: OtlpReceiver,
    slow_fraud_check: StandInProcess,
    traced_settings: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    service = start_checkout(start_service, slow_fraud_check, traced_settings)
    trace_id, traceparent = new_trace()
    order_id = unique("order")
    invocation_id = ingress.send(
        "/CheckoutService/checkout", json=order(order_id), headers={"traceparent": traceparent}
    )

    # the first attempt reserved the stock (its span sent) and waits for the fraud check
    wait_for_trace(
        otlp_receiver,
        trace_id,
        lambda s: len(named(s, SERVICE, "reserve stock")) == 1,
        "the first attempt's step",
    )
    eventually(
        lambda: count_lines(slow_fraud_check, f"Fraud check of order {order_id}") == 1,
        timeout=10,
        message="the fraud check got the first call",
    )
    service.kill()
    service.start()

    answer = ingress.get(f"/restate/invocation/{invocation_id}/attach")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"orderId": order_id, "status": "confirmed"}
    spans = wait_for_trace(
        otlp_receiver,
        trace_id,
        finished("charge payment", fraud_checks=2),
        "the retried attempt's spans",
    )

    # one trace: the attempts, the steps of both and both calls of the fraud check
    assert {s["trace_id"] for s in spans} == {trace_id}
    assert {s["attributes"][INVOCATION] for s in spans if INVOCATION in s["attributes"]} == {
        invocation_id
    }
    tried = attempts(spans)
    assert len(tried) >= 2
    (reserved,) = named(spans, SERVICE, "reserve stock")  # once: the retry replayed it
    (charged,) = named(spans, SERVICE, "charge payment")
    (call,) = named(spans, SERVICE, "POST /fraud-check")  # the killed call's never ended
    steps = (reserved, call, charged)
    assert {step["parent_span_id"] for step in steps} <= {s["span_id"] for s in tried}
    assert reserved["parent_span_id"] != call["parent_span_id"]  # the call in a later attempt
    served = named(spans, DOWNSTREAM, "POST /fraud-check")
    assert call["span_id"] in {s["parent_span_id"] for s in served}
    # every side effect once, the interrupted call twice
    assert count_lines(service, f"Reserved stock for order {order_id}") == 1
    assert count_lines(service, f"Charged 42.50 for order {order_id}") == 1
    assert count_lines(slow_fraud_check, f"[trace {trace_id}] Fraud check of order {order_id}") == 2


@pytest.mark.kills_server
def test_after_a_kill_9_of_the_server_mid_call_the_invocation_goes_on_in_its_trace(
    start_service: StartService,
    server: RestateServer,
    ingress: Ingress,
    otlp_receiver: OtlpReceiver,
    slow_fraud_check: StandInProcess,
    traced_settings: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    service = start_checkout(start_service, slow_fraud_check, traced_settings)
    trace_id, traceparent = new_trace()
    order_id = unique("order")
    invocation_id = ingress.send(
        "/CheckoutService/checkout", json=order(order_id), headers={"traceparent": traceparent}
    )
    wait_for_trace(
        otlp_receiver,
        trace_id,
        lambda s: any(x["name"].startswith("invocation-start") for x in s),
        "the server's span of the invocation",
    )
    eventually(
        lambda: count_lines(slow_fraud_check, f"Fraud check of order {order_id}") == 1,
        timeout=10,
        message="the fraud check got the first call",
    )
    server.kill()
    server.start()

    def attached() -> httpx.Response | None:
        response = ingress.get(f"/restate/invocation/{invocation_id}/attach")
        return response if response.status_code == 200 else None

    answer = eventually(attached, timeout=60, message="attach to the checkout after the crash")
    assert answer.json() == {"orderId": order_id, "status": "confirmed"}
    spans = wait_for_trace(
        otlp_receiver,
        trace_id,
        finished("charge payment", fraud_checks=2),
        "the spans after the restart",
    )
    assert {s["trace_id"] for s in spans} == {trace_id}
    (started,) = named_like(spans, RESTATE, "invocation-start")
    tried = attempts(spans)
    assert tried, "no attempt span after the restart"
    assert {s["parent_span_id"] for s in tried} == {started["span_id"]}
    assert len(named(spans, SERVICE, "reserve stock")) == 1  # replayed after the restart
    (charged,) = named(spans, SERVICE, "charge payment")
    assert charged["parent_span_id"] in {s["span_id"] for s in tried}
    assert count_lines(service, f"Reserved stock for order {order_id}") == 1
    assert count_lines(service, f"Charged 42.50 for order {order_id}") == 1


def test_bad_input_is_a_400_naming_the_field_and_runs_no_step(
    start_service: StartService,
    ingress: Ingress,
    otlp_receiver: OtlpReceiver,
    fraud_check: StandInProcess,
    traced_settings: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    service = start_checkout(start_service, fraud_check, traced_settings)
    order_id = unique("order")
    cases = [
        ({"orderId": order_id, "customerId": "c"}, "amount: Field required"),
        (order(order_id, amount=0), "amount: Input should be greater than 0"),
        ({**order(order_id), "amount": "42"}, "amount: Input should be a valid number"),
        ({**order(order_id), "orderId": ""}, "orderId: String should have at least 1 character"),
        ({**order(order_id), "coupon": "X"}, "coupon: Extra inputs are not permitted"),
        ([order(order_id)], "body: Input should be an object"),
    ]
    for body, message in cases:
        trace_id, traceparent = new_trace()
        answer = checkout(ingress, body, traceparent)
        assert answer.status_code == 400, (body, answer.text)
        assert message in answer.json()["message"], (body, answer.text)
        spans = wait_for_trace(otlp_receiver, trace_id, done, f"the trace of {body}")
        assert {s["service"] for s in spans} == {RESTATE}, "a step ran"
    assert count_lines(service, order_id) == 0
    assert count_lines(fraud_check, order_id) == 0


def test_the_receiver_and_the_fraud_check_listen_on_loopback_only(
    otlp_receiver: OtlpReceiver, fraud_check: StandInProcess
) -> None:
    for process in (otlp_receiver, fraud_check):
        sockets = listening(process)
        for address, _ in sockets:
            ip = ipaddress.ip_address(address)
            mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
            assert (mapped or ip).is_loopback, f"{process.name} listens on {address}"
        assert sockets, f"{process.name} listens nowhere"
