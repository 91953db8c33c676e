"""`./dev test`: the checks and both passes of the suite at once, then a table of timings.

The suite mostly waits (durable timers, restarts, process start-ups), so its parts run
side by side: ruff, mypy, the first pass and the always-replay pass (the server suspends
and replays every invocation at every await), each pass spread over pytest-xdist workers
that have a Restate server each. Every part writes its output to a log file under
`.restate/test-logs/`; a part that fails has its log printed whole, one that passes its
summary. The table at the end gives each pattern's test seconds in each pass and the
command's wall time, with the share of the wall time a busy loop got at start and end (a
throttled machine is slower in every figure).
"""

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from devkit import ROOT, bench, patterns

LOGS = ROOT / ".restate" / "test-logs"
# Workers per pass. With 4 (8 test processes in all) a full run kept both cores of the
# 2-core machine busy (190% CPU over its 6.0 min, 2026-12-02): more would queue for the CPU.
DEFAULT_WORKERS = 4
FUZZ_TEST = "tests/fuzz/test_fuzz_bad_input.py::test_every_public_handler_refuses_malformed_bodies"


def say(line: str) -> None:
    print(line, flush=True)


@dataclass
class Part:
    """One command of the run, started at once, its output in `log`."""

    title: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    timings: Path | None = None
    began: float = field(default_factory=time.monotonic)
    ended: float | None = None
    code: int | None = None
    proc: "subprocess.Popen[bytes] | None" = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        self.began = time.monotonic()

    def poll(self) -> bool:
        """True once it has ended."""
        if self.code is None and self.proc is not None and self.proc.poll() is not None:
            self.code = self.proc.returncode
            self.ended = time.monotonic()
        return self.code is not None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # pytest stops its workers and fixtures on SIGTERM too
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.began

    def report(self) -> None:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        if self.code == 0:
            # the summary: what follows the last progress line (durations, fuzz table, counts)
            lines = text.splitlines()
            tail = [i for i, line in enumerate(lines) if line.endswith("%]")]
            text = "\n".join(lines[tail[-1] + 1 :] if tail else lines[-40:])
        verdict = "passed" if self.code == 0 else f"FAILED (exit code {self.code})"
        say(f"\n[dev] ---- {self.title}: {verdict} in {self.seconds:.0f} s ({self.log}) ----")
        if text.strip():
            say(text.rstrip())


def select(names: list[str]) -> tuple[list[str], list[str]]:
    """Split `./dev test` arguments into pattern names (turned into their test paths and
    their fuzz test) and the rest, passed on to pytest as they are."""
    known = set(patterns.known())
    paths, rest = [], []
    for name in names:
        if name in known:
            folder = ROOT / "tests" / name
            paths += [f"tests/{name}"] if folder.is_dir() else []
            paths.append(f"{FUZZ_TEST}[{name}]")
        else:
            rest.append(name)
    return paths, rest


def group(nodeid: str) -> str:
    """The pattern (or the suite-wide test) a test id belongs to."""
    parts = nodeid.partition("::")[0].split("/")
    if parts[1] == "fuzz":
        return "fuzz"
    if len(parts) > 2:
        return parts[1]
    return parts[1].removeprefix("test_").removesuffix(".py")


def table(parts: list[Part]) -> str:
    passes = [part for part in parts if part.timings is not None]
    seconds: dict[str, dict[str, float]] = defaultdict(dict)
    counts: dict[str, int] = defaultdict(int)
    for part in passes:
        assert part.timings is not None
        try:
            timings: dict[str, float] = json.loads(part.timings.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for nodeid, spent in timings.items():
            name = group(nodeid)
            seconds[name][part.title] = seconds[name].get(part.title, 0.0) + spent
            if part is passes[0]:
                counts[name] += 1
    width = max([len(name) for name in seconds] + [8])
    header = f"{'tests of':<{width}}  {'count':>5}  " + "  ".join(
        f"{part.title:>10}" for part in passes
    )
    lines = [header, "-" * len(header)]
    for name in sorted(seconds, key=lambda n: -max(seconds[n].values())):
        cells = "  ".join(f"{seconds[name].get(part.title, 0.0):>9.1f}s" for part in passes)
        lines.append(f"{name:<{width}}  {counts[name]:>5}  {cells}")
    lines.append("(seconds of test time, setup and teardown included; the workers run several")
    lines.append(" tests at once, so the sums exceed the wall time)")
    return "\n".join(lines)


def run(args: list[str], replay_pass: bool = True, workers: int | None = None) -> int:
    """The whole of `./dev test`: checks and passes at once; 0 if all passed."""
    begin = time.monotonic()
    share_at_start = bench.availability()
    say(f"[dev] test: a busy loop gets {share_at_start:.0%} of the wall time on this machine now")
    workers = workers or int(os.environ.get("PATTERNS_TEST_WORKERS", DEFAULT_WORKERS))
    python = sys.executable
    code = ["devkit", "tests", "bench", *patterns.known()]
    paths, rest = select(args)
    pytest_args = ["-n", str(workers), "--dist", "load", "--maxschedchunk", "2", *paths, *rest]
    parts = [
        Part("lint", [python, "-m", "ruff", "check", *code], LOGS / "lint.log"),
        Part("format", [python, "-m", "ruff", "format", "--check", *code], LOGS / "format.log"),
        Part("types", [python, "-m", "mypy", *code], LOGS / "types.log"),
    ]
    modes: list[tuple[str, dict[str, str]]] = [("pass 1", {})]
    if replay_pass:
        modes.append(("replay", {"PATTERNS_ALWAYS_REPLAY": "1"}))
    for title, extra in modes:
        name = title.replace(" ", "")
        timings = LOGS / f"timings-{name}.json"
        timings.unlink(missing_ok=True)
        env = dict(os.environ, **extra, PATTERNS_TIMINGS_FILE=str(timings))
        argv = [python, "-m", "pytest", "-p", "no:cacheprovider", *pytest_args]
        parts.append(Part(title, argv, LOGS / f"{name}.log", env=env, timings=timings))
    say(f"[dev] test: {', '.join(p.title for p in parts)} at once; {workers} workers per pass; "
        f"output in {LOGS}/")  # fmt: skip
    try:
        for part in parts:
            part.start()
        last_note = time.monotonic()
        running = list(parts)
        while running:
            time.sleep(0.5)
            for part in [p for p in running if p.poll()]:
                running.remove(part)
                verdict = "passed" if part.code == 0 else "FAILED"
                say(f"[dev] test: {part.title} {verdict} in {part.seconds:.0f} s")
            if running and time.monotonic() - last_note >= 60:
                busy = ", ".join(p.title for p in running)
                say(f"[dev] test: {time.monotonic() - begin:.0f} s, running: {busy}")
                last_note = time.monotonic()
    except KeyboardInterrupt:
        for part in parts:
            part.stop()
        say("\n[dev] test: interrupted")
        return 130
    for part in parts:
        part.report()
    wall = time.monotonic() - begin
    say(f"\n[dev] test: timings per pattern\n{table(parts)}")
    share_at_end = bench.availability()
    failed = [part.title for part in parts if part.code != 0]
    say(
        f"[dev] test: {'FAILED: ' + ', '.join(failed) if failed else 'all passed'}; "
        f"wall time {wall:.0f} s ({wall / 60:.1f} min); busy-loop share "
        f"{share_at_start:.0%} at start, {share_at_end:.0%} at end"
    )
    return 1 if failed else 0


def save_durations() -> Path:
    """tests/durations.json from the last run's timings (the longer of the two passes), which
    the suite reads to hand out the slowest tests first."""
    durations: dict[str, float] = {}
    for timings in sorted(LOGS.glob("timings-*.json")):
        for nodeid, spent in json.loads(timings.read_text(encoding="utf-8")).items():
            durations[nodeid] = round(max(durations.get(nodeid, 0.0), spent), 1)
    target = ROOT / "tests" / "durations.json"
    ordered = dict(sorted(durations.items(), key=lambda item: -item[1]))
    target.write_text(json.dumps(ordered, indent=1) + "\n", encoding="utf-8")
    return target


if __name__ == "__main__":
    if sys.argv[1:] != ["--save-durations"]:
        sys.exit("usage: python -m devkit.testrun --save-durations")
    print(f"wrote {save_durations()}")
