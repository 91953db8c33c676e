"""`./dev bench` keeps working: one pattern scenario against the baseline, one short round.

Benchmarks themselves never run in the suite; this only proves that the command starts a
server and the services (Python and the TypeScript twins), drives load through them with
wrk, pairs each measurement with the others of its round (baseline, another way of
serving, the TypeScript twin) and writes its table. It needs wrk, Node 24 and the
TypeScript SDK, which `./dev bench` and `./dev test` install beforehand.
"""

import json
from pathlib import Path
from typing import Any

import pytest

from devkit import DevError, bench


def _same_round_ratio(stat: dict[str, float]) -> float:
    """One round: median, min and max are that round's ratio."""
    assert stat["min"] == stat["median"] == stat["max"], stat
    return stat["median"]


def _measured(row: dict[str, Any]) -> None:
    assert row["completed"] > 0, row
    assert row["errors"] == 0, row
    assert row["p99_ms"]["median"] >= row["p50_ms"]["median"] > 0, row
    assert row["cpu_s"]["server"] > 0, row
    assert row["peak_mb"]["service"] > 0, row


def test_bench_measures_a_scenario_against_the_baseline_a_serving_and_typescript(
    tmp_path: Path,
) -> None:
    try:
        bench.wrk_command(install=False)
        bench.typescript.ensure(install=False)
    except DevError as missing:
        pytest.skip(f"{missing}; ./dev test installs it")
    options = bench.Options(
        runs=1, duration=1, warmup=0, concurrency=4, servings=("http11",), results=tmp_path
    )

    report = bench.run(["durablerpc-distinct"], options)

    result = json.loads((tmp_path / "latest.json").read_text())
    baseline, reserve = result["scenarios"]
    assert [baseline["name"], reserve["name"]] == [bench.BASELINE, "durablerpc-distinct"]
    for scenario in (baseline, reserve):
        _measured(scenario)
    # in one round, the ratio is that of the two measurements
    ratio = _same_round_ratio(reserve["x_baseline"]["throughput"])
    assert ratio > 0
    assert "measurements followed by invocations in flight after 30 s" not in result["machine"]
    # the other way of serving: each scenario measured both ways, the ratio to the default
    servings = {(row["scenario"], row["serving"]): row for row in result["serving"]}
    http11 = "hypercorn, HTTP/1.1 request/response"
    assert set(servings) == {
        (name, serving) for name in ("baseline", "durablerpc-distinct")
        for serving in (bench.DEFAULT.name, http11)
    }  # fmt: skip
    for row in servings.values():
        _measured(row)
    assert _same_round_ratio(servings[("durablerpc-distinct", http11)]["x_default"]["throughput"])
    # the TypeScript twins, each on the same server in the same round
    twins = {row["scenario"]: row for row in result["typescript"]}
    assert {name: row["twin"] for name, row in twins.items()} == {
        "baseline": "ts-noop",
        "durablerpc-distinct": "ts-reserve",
    }
    for row in twins.values():
        _measured(row["python"])
        _measured(row["typescript"])
        python = row["python"]["throughput"]["median"]
        typescript = row["typescript"]["throughput"]["median"]
        x_typescript = _same_round_ratio(row["x_typescript"]["throughput"])
        assert x_typescript == pytest.approx(python / typescript), row
    table = report.read_text()
    assert "| **baseline** |" in table
    assert f"| **durablerpc-distinct** | {bench.cell(reserve['throughput'])} " in table
    assert f"| {ratio:.2f} ({ratio:.2f}-{ratio:.2f}) |" in table
    assert "## Python next to TypeScript" in table
    assert "| durablerpc-distinct vs ts-reserve | hypercorn, HTTP/2, asyncio, 1 worker |" in table
    assert result["machine"]["cores"] in table
