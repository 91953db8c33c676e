"""The results of `./dev bench`: samples summarised, paired ratios, and the files written
(bench/results/latest.json, the table latest.md, the chart latest.png)."""

import importlib.util
import json
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from devkit import ROOT, binaries
from devkit.bench.scenarios import BASELINE, DEFAULT

RESULTS_DIR = ROOT / "bench" / "results"


@dataclass
class Sample:
    """One measurement."""

    throughput: float
    completed: int
    errors: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    cpu: dict[str, float]  # CPU seconds: server, service, load
    peak_mb: dict[str, float]
    extra: dict[str, float] = field(default_factory=dict)


def _median_range(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(samples: list[Sample]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "throughput": _median_range([s.throughput for s in samples]),
        "errors": sum(s.errors for s in samples),
        "completed": sum(s.completed for s in samples),
        "runs": len(samples),
    }
    for key in ("p50_ms", "p90_ms", "p99_ms"):
        values = [v for s in samples if (v := getattr(s, key)) is not None]
        out[key] = _median_range(values) if values else None
    out["cpu_s"] = {k: statistics.median(s.cpu[k] for s in samples) for k in samples[0].cpu}
    out["peak_mb"] = {k: max(s.peak_mb[k] for s in samples) for k in samples[0].peak_mb}
    extras = {k for s in samples for k in s.extra}
    out["extra"] = {k: statistics.median(s.extra[k] for s in samples) for k in extras}
    return out


def ratios(pairs: list[tuple[Sample, Sample]]) -> dict[str, Any]:
    """Median (min-max) of the ratios of paired samples (measured in the same round), for
    throughput and p99: robust where a machine's speed drifts."""
    out: dict[str, Any] = {}
    for key in ("throughput", "p99_ms"):
        values = []
        for sample, reference in pairs:
            a, b = getattr(sample, key), getattr(reference, key)
            if a is not None and b:
                values.append(a / b)
        out[key] = _median_range(values) if values else None
    return out


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    server = subprocess.run(
        [str(binaries.find(binaries.SERVER)), "--version"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kb / 2**20:.0f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "restate-server": server,
        "restate-sdk": metadata.version("restate-sdk"),
        "hypercorn": metadata.version("hypercorn"),
        "granian": _version("granian"),
        "uvloop": _version("uvloop"),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def line(label: str, unit: str, sample: Sample) -> str:
    """One measurement as a progress line."""
    p99 = f"{sample.p99_ms:7.1f} ms" if sample.p99_ms is not None else "      - ms"
    cpu = " / ".join(f"{sample.cpu[k]:.1f}" for k in ("server", "service", "load"))
    return (f"{label:<60} {sample.throughput:8.1f} {unit:<18} p99 {p99}  "
            f"CPU s server/service/load {cpu}")  # fmt: skip


def fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def cell(stat: dict[str, float] | None) -> str:
    if stat is None:
        return "-"
    return f"{fmt(stat['median'])} ({fmt(stat['min'])}-{fmt(stat['max'])})"


def ratio_cell(stat: dict[str, float] | None) -> str:
    if stat is None:
        return "-"
    return f"{stat['median']:.2f} ({stat['min']:.2f}-{stat['max']:.2f})"


def _cpu_ms(row: dict[str, Any], key: str) -> str:
    """CPU ms per unit of work: CPU seconds of a measurement / units completed in it."""
    per_run = max(1.0, row["completed"] / max(1, row["runs"]))
    return f"{row['cpu_s'][key] * 1000 / per_run:.2f}"


def markdown(result: dict[str, Any]) -> str:
    scenarios = result["scenarios"]
    opts = result["options"]
    lines = [
        "# Benchmark results",
        "",
        f"`./dev bench`, {result['date']}; how it measures and how to read this: "
        "[bench/README.md](../README.md). Each scenario: "
        f"{opts['runs']} rounds, each round one measurement of {opts['duration']:g} s of "
        "everything compared with it (the no-op baseline, the other ways of serving it, its "
        "TypeScript twin), in alternating order, after a warm-up; load from `wrk` (1 thread, "
        f"{opts['concurrency']} connections unless stated). Medians, (min-max) over the "
        "measurements. **x baseline**: the median (min-max) of the ratios scenario / "
        "baseline within each round, so that the machine's drift cancels out; it is the "
        "figure to compare across machines. CPU: seconds used during one measurement "
        "(median), by restate-server, by the scenario's service process(es), by the load "
        "generator. Peak: highest resident memory seen.",
        "",
        "| scenario | throughput | x baseline | p50 ms | p90 ms | p99 ms | p99 x baseline "
        "| CPU s server / service / load | peak MB server / service / load | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scenarios:
        cpu = " / ".join(f"{s['cpu_s'][k]:.1f}" for k in ("server", "service", "load"))
        mem = " / ".join(f"{s['peak_mb'][k]:.0f}" for k in ("server", "service", "load"))
        conc = "" if s["concurrency"] == opts["concurrency"] else f", {s['concurrency']} conn."
        base = s["name"] == BASELINE
        ratio = "1" if base else ratio_cell(s["x_baseline"]["throughput"])
        p99_ratio = "1" if base else ratio_cell(s["x_baseline"]["p99_ms"])
        lines.append(
            f"| **{s['name']}** | {cell(s['throughput'])} {s['unit']}{conc} | {ratio} | "
            f"{cell(s['p50_ms'])} | {cell(s['p90_ms'])} | {cell(s['p99_ms'])} | {p99_ratio} "
            f"| {cpu} | {mem} | {s['errors']} |"
        )
    lines += ["", "What each scenario does, and the settings its service ran with:", ""]
    for s in scenarios:
        settings = ", ".join(f"`{k}={v}`" for k, v in s["settings"].items()) or "defaults"
        lines.append(f"- **{s['name']}**: {s['what']}; {settings}.")
    if result["typescript"]:
        lines += [
            "",
            "## Python next to TypeScript",
            "",
            "The same handler written with the TypeScript SDK (bench/ts/, Node "
            f"{result['machine'].get('node', '?')}, SDK "
            f"{result['machine'].get('restate-sdk (TypeScript)', '?')}), served on the same "
            "server and measured in the same rounds. **x TypeScript**: the median (min-max) "
            "of the ratios Python / TypeScript within each round (above 1: Python served "
            "more). CPU ms per invocation = CPU seconds of a measurement / invocations "
            "completed in it.",
            "",
            "| handler | Python served by | Python /s | TypeScript /s | **x TypeScript** "
            "| p99 ms Python / TypeScript | CPU ms/invocation service Python / TypeScript "
            "| CPU ms/invocation server Python / TypeScript |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in result["typescript"]:
            py, ts = row["python"], row["typescript"]
            lines.append(
                f"| {row['scenario']} vs {row['twin']} | {row['serving']} "
                f"| {cell(py['throughput'])} | {cell(ts['throughput'])} "
                f"| **{ratio_cell(row['x_typescript']['throughput'])}** "
                f"| {cell(py['p99_ms'])} / {cell(ts['p99_ms'])} "
                f"| {_cpu_ms(py, 'service')} / {_cpu_ms(ts, 'service')} "
                f"| {_cpu_ms(py, 'server')} / {_cpu_ms(ts, 'server')} |"
            )
    if result["serving"]:
        lines += [
            "",
            "## Serving choices",
            "",
            "Every scenario served in other ways, measured in the same rounds as its default "
            f"({DEFAULT.name}); **x default** is the median (min-max) of the ratios within "
            "each round. CPU ms per unit = CPU seconds of a measurement / units completed "
            "in it.",
            "",
            "| scenario | serving | throughput/s | x default | p50 ms | p99 ms "
            "| p99 x default | CPU ms/unit server / service | errors |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in result["serving"]:
            default = row["serving"] == DEFAULT.name
            ratio = "1" if default else ratio_cell(row["x_default"]["throughput"])
            p99_ratio = "1" if default else ratio_cell(row["x_default"]["p99_ms"])
            lines.append(
                f"| {row['scenario']} | {row['serving']} | {cell(row['throughput'])} | "
                f"{ratio} | {cell(row['p50_ms'])} | {cell(row['p99_ms'])} | {p99_ratio} "
                f"| {_cpu_ms(row, 'server')} / {_cpu_ms(row, 'service')} | {row['errors']} |"
            )
    if result["skipped"]:
        lines += ["", "Not measured in this run:", ""]
        lines += [f"- {reason}" for reason in result["skipped"]]
    lines += [
        "",
        "Kafka: records are produced by the benchmark process (librdkafka) as fast as the "
        "broker takes them; the rate counts from the first record sent until the last one "
        "is in the object's state (the service's log line of each update), or until a "
        "timeout (then the records not yet processed count as errors); no per-record "
        "latency is measured. batcher: items delivered to BatchReceiver per second, from the "
        "start of the load until the last item sent has been delivered. parallelizework: "
        "subtasks aggregated per second; its latency is the time to aggregate one run. "
        "After every measurement the benchmark waits until no invocation is in flight.",
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in result["machine"].items()]
    lines += ["", "![throughput, p99 and x TypeScript](latest.png)", ""]
    return "\n".join(lines)


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(reversed(result["scenarios"]))
    names = [s["name"] for s in scenarios]
    colors = ["#888888" if s["name"] == BASELINE else "#3b6ea8" for s in scenarios]
    twins = list(reversed(result["typescript"]))
    top = 0.45 * len(names) + 1.2
    bottom = 0.45 * len(twins) + 1.0 if twins else 0
    fig = plt.figure(figsize=(12, top + bottom + 0.6))
    grid = fig.add_gridspec(2 if twins else 1, 2, height_ratios=[top, bottom] if twins else [1])
    left = fig.add_subplot(grid[0, 0])
    right = fig.add_subplot(grid[0, 1], sharey=left)

    def bars(axis: Any, key: str, title: str) -> None:
        stats = [s[key] for s in scenarios]
        medians = [st["median"] if st else 0 for st in stats]
        low = [st["median"] - st["min"] if st else 0 for st in stats]
        high = [st["max"] - st["median"] if st else 0 for st in stats]
        axis.barh(names, medians, xerr=[low, high], color=colors, capsize=3)
        axis.set_title(title, fontsize=10)
        axis.grid(axis="x", alpha=0.3)
        for y, (scenario, st) in enumerate(zip(scenarios, stats, strict=True)):
            label = " n/a"
            if st:  # right of the whisker, with the paired ratio to the baseline
                ratio = scenario["x_baseline"][key]
                label = f" {fmt(st['median'])}" + (f"  ({ratio['median']:.2f}x)" if ratio else "")
            axis.text(st["max"] if st else 0, y, label, va="center", fontsize=8)
        axis.set_xlim(right=max((st["max"] for st in stats if st), default=1) * 1.3)

    bars(left, "throughput", "throughput/s (median, min-max; x baseline)")
    bars(right, "p99_ms", "p99 ms (median, min-max; x baseline)")
    right.tick_params(labelleft=False)
    if twins:
        axis = fig.add_subplot(grid[1, :])
        labels = [f"{row['scenario']} on {row['server']} / {row['twin']}" for row in twins]
        stats = [row["x_typescript"]["throughput"] for row in twins]
        medians = [st["median"] if st else 0 for st in stats]
        low = [st["median"] - st["min"] if st else 0 for st in stats]
        high = [st["max"] - st["median"] if st else 0 for st in stats]
        axis.barh(labels, medians, xerr=[low, high], color="#c07a2c", capsize=3)
        axis.axvline(1, color="black", linewidth=0.8)
        for y, st in enumerate(stats):
            if st:
                axis.text(st["max"], y, f" {st['median']:.2f}x", va="center", fontsize=8)
        axis.set_xlim(0, max([st["max"] for st in stats if st] + [1]) * 1.2)
        axis.set_title("x TypeScript: Python throughput / TypeScript SDK's, paired per round "
                       "(1 = as fast)", fontsize=10)  # fmt: skip
        axis.grid(axis="x", alpha=0.3)
    fig.suptitle(
        f"./dev bench {result['date']}: {result['machine']['cpu']}, "
        f"{result['machine']['cores']} cores (grey: no-op baseline)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(result: dict[str, Any], directory: Path = RESULTS_DIR) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "latest.json").write_text(json.dumps(result, indent=1) + "\n")
    (directory / "latest.md").write_text(markdown(result))
    if importlib.util.find_spec("matplotlib") is not None:  # ./dev bench installs it
        chart(result, directory / "latest.png")
    return directory / "latest.md"
