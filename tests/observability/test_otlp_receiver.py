"""The local OTLP receiver (devkit/otlp_receiver.py) on its own: OTLP/JSON as the JavaScript
exporters send it, malformed exports, the tree, the bound on the spans it keeps."""

import uuid

from devkit.otlp_receiver import OtlpReceiver, Span, Store, tree
from devkit.pytest_restate import http


def span(name: str, span_id: str, parent: str = "", start: int = 0, **more: object) -> Span:
    return Span(
        trace_id="ab" * 16,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        service=str(more.get("service", "svc")),
        kind="internal",
        start=start * 1_000_000,
        end=(start + 1) * 1_000_000,
        status=str(more.get("status", "")),
    )


def test_otlp_json_with_hex_ids_is_read_and_a_malformed_export_refused(
    otlp_receiver: OtlpReceiver,
) -> None:
    trace_id, root, child = uuid.uuid4().hex, uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    export = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "web"}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {"traceId": trace_id, "spanId": root, "name": "GET /", "kind": 2,
                             "startTimeUnixNano": "1000000", "endTimeUnixNano": "9000000",
                             "attributes": [{"key": "n", "value": {"intValue": "7"}}]},
                            {"traceId": trace_id, "spanId": child, "parentSpanId": root,
                             "name": "query", "startTimeUnixNano": "2000000",
                             "endTimeUnixNano": "3000000", "status": {"code": 2, "message": "x"}},
                        ]
                    }
                ],
            }
        ]
    }  # fmt: skip
    url = f"{otlp_receiver.url}/v1/traces"
    answer = http().post(url, json=export, timeout=10)
    assert answer.status_code == 200, answer.text
    spans = {s["name"]: s for s in otlp_receiver.spans(trace_id)}
    assert spans["GET /"]["span_id"] == root
    assert spans["GET /"]["service"] == "web"
    assert spans["GET /"]["kind"] == "server"
    assert spans["GET /"]["attributes"] == {"n": 7}
    assert spans["query"]["parent_span_id"] == root
    assert spans["query"]["status"] == "error: x"
    assert otlp_receiver.tree(trace_id).splitlines()[3].endswith("└─ query  [error: x]")

    for body, content_type in ((b"{not json", "application/json"), (b"\xff\x00", "x-protobuf")):
        refused = http().post(url, content=body, headers={"content-type": content_type})
        assert refused.status_code == 400, refused.text
        assert refused.text.startswith("bad OTLP request")
    assert http().get(f"{otlp_receiver.url}/traces/{uuid.uuid4().hex}").status_code == 404
    assert http().get(f"{otlp_receiver.url}/health").status_code == 200


def test_the_tree_nests_by_parent_and_keeps_orphans_at_the_top() -> None:
    lines = tree(
        [
            span("root", "01", start=0, service="a"),
            span("second child", "03", "01", start=5),
            span("first child", "02", "01", start=1),
            span("grandchild", "04", "02", start=2, status="error: boom"),
            span("orphan", "05", "99", start=3),
        ]
    ).splitlines()
    assert lines[0] == f"trace {'ab' * 16}: 5 spans from 2 services"
    assert [line[25:] for line in lines[2:]] == [
        "a    root",
        "svc  ├─ first child",
        "svc  │  └─ grandchild  [error: boom]",
        "svc  └─ second child",
        "svc  orphan  (parent 99 not received)",
    ], "\n".join(lines)


def test_the_store_keeps_at_most_max_spans_dropping_the_oldest_traces() -> None:
    store = Store(max_spans=3)
    for n in range(3):
        first = span("a", f"{n}1")
        first.trace_id = f"{n:032x}"
        second = span("b", f"{n}2", f"{n}1")
        second.trace_id = first.trace_id
        store.add([first, second])
    assert [s["traceId"] for s in store.summaries()] == [f"{2:032x}"]  # newest first
    assert store.trace(f"{0:032x}") == []
    assert len(store.trace(f"{2:032x}")) == 2
