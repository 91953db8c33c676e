"""`./dev bench` keeps working: one pattern scenario against the baseline, one short round.

Benchmarks themselves never run in the suite; this only proves that the command starts a
server and the services, drives load through them with wrk, pairs each measurement with a
baseline one and writes its table. It needs wrk, which `./dev bench` and `./dev test`
unpack into .tools/wrk/ beforehand.
"""

import json
from pathlib import Path

import pytest

from devkit import DevError, bench


def test_bench_measures_a_scenario_against_the_baseline(tmp_path: Path) -> None:
    try:
        bench.wrk_command(install=False)
    except DevError as missing:
        pytest.skip(f"wrk is not installed ({missing}); ./dev test installs it")
    options = bench.Options(
        runs=1, duration=2, warmup=1, concurrency=4, serving=False, results=tmp_path
    )

    report = bench.run(["durablerpc-distinct"], options)

    result = json.loads((tmp_path / "latest.json").read_text())
    baseline, reserve = result["scenarios"]
    assert [baseline["name"], reserve["name"]] == [bench.BASELINE, "durablerpc-distinct"]
    for scenario in (baseline, reserve):
        assert scenario["completed"] > 0, scenario
        assert scenario["errors"] == 0, scenario
        assert scenario["p99_ms"]["median"] >= scenario["p50_ms"]["median"] > 0
        assert scenario["cpu_s"]["server"] > 0
        assert scenario["peak_mb"]["service"] > 0
    # one round: the ratio is that of the two measurements
    ratio = reserve["x_baseline"]["throughput"]["median"]
    expected = reserve["throughput"]["median"] / baseline["throughput"]["median"]
    assert ratio == pytest.approx(expected)
    assert "measurements followed by invocations in flight after 30 s" not in result["machine"]
    table = report.read_text()
    assert "| **baseline** |" in table
    assert f"| **durablerpc-distinct** | {bench._cell(reserve['throughput'])} " in table
    assert f"| {ratio:.2f} ({ratio:.2f}-{ratio:.2f}) |" in table
    assert result["machine"]["cores"] in table
