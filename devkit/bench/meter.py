"""CPU seconds and peak memory of process trees, read from /proc; and how much of the
machine a busy loop gets (below 100% when a VM's host or other work takes the CPU away)."""

import contextlib
import os
import threading
import time
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (hypercorn workers, multiprocessing helpers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:  # utime, stime (fields 14, 15 of /proc/<pid>/stat)
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    return total


class Usage:
    """CPU seconds and peak resident memory of some process trees while it runs."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = {
            name: [p for pid in pids for p in process_tree(pid)] for name, pids in groups.items()
        }
        self.peak = dict.fromkeys(self.groups, 0)
        self._start = {name: cpu_seconds(pids) for name, pids in self.groups.items()}
        self.cpu: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            for name, pids in self.groups.items():
                self.peak[name] = max(self.peak[name], rss_bytes(pids))

    def finish(self) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu = {
            name: cpu_seconds(pids) - self._start[name] for name, pids in self.groups.items()
        }

    @property
    def peak_mb(self) -> dict[str, float]:
        return {name: peak / 2**20 for name, peak in self.peak.items()}


def availability(seconds: float = 1.5) -> float:
    """Share of wall time a busy loop gets: below 1 when the machine (a VM whose host
    throttles it, or other work) takes the CPU away. Stated with the results."""
    lost = 0.0
    began = last = time.monotonic()
    while (now := time.monotonic()) - began < seconds:
        if now - last > 0.002:
            lost += now - last
        last = now
    return 1 - lost / (now - began)
