"""`./dev bench` keeps working: the baseline scenario, one short run (a few seconds).

Benchmarks themselves never run in the suite; this only proves that the command starts a
server and a service, drives load through them with wrk and writes its table. It needs
wrk, which `./dev bench` and `./dev test` unpack into .tools/wrk/ beforehand.
"""

import json
from pathlib import Path

import pytest

from devkit import DevError, bench


def test_bench_measures_the_baseline_and_writes_its_table(tmp_path: Path) -> None:
    try:
        bench.wrk_command(install=False)
    except DevError as missing:
        pytest.skip(f"wrk is not installed ({missing}); ./dev test installs it")
    options = bench.Options(
        runs=1, duration=3, warmup=1, concurrency=4, serving=False, results=tmp_path
    )

    report = bench.run([bench.BASELINE], options)

    result = json.loads((tmp_path / "latest.json").read_text())
    [baseline] = result["scenarios"]
    assert baseline["name"] == bench.BASELINE
    assert baseline["completed"] > 0
    assert baseline["errors"] == 0
    assert baseline["throughput"]["median"] > 0
    assert baseline["p99_ms"]["median"] >= baseline["p50_ms"]["median"] > 0
    assert baseline["cpu_s"]["server"] > 0
    assert baseline["peak_mb"]["service"] > 0
    table = report.read_text()
    assert "| **baseline** |" in table
    assert result["machine"]["cores"] in table
