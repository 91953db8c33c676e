"""The harness plugin's own guarantees that the other tests rely on (devkit/pytest_restate.py):
a started service is the process it started, on a port no other test is handed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devkit import ROOT
from devkit.processes import PatternService, free_port
from devkit.pytest_restate import listening_pids


def test_a_service_whose_port_another_sdk_holds_moves_instead_of_taking_the_other_for_ready(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Another Restate SDK on the port answers the same health check: the harness once took
    that answer for the new service's, and registered the other's services."""
    port = free_port()
    holder = PatternService("durablerpc", port, tmp_path / "holder.log")
    mover = PatternService(
        "tests.example.greeter",
        port,
        tmp_path / "greeter.log",
        cwd=request.config.rootpath,
        move_if_taken=True,
    )
    try:
        holder.start()
        mover.start()
        assert mover.port != port
        assert listening_pids(mover.port) == {mover.pid}
        assert listening_pids(port) == {holder.pid}
        assert "Address already in use" in mover.log_text()
        assert f"Running on http://127.0.0.1:{mover.port}" in mover.log_text()
    finally:
        mover.stop()
        holder.stop()


def test_free_ports_are_not_handed_out_twice_nor_to_another_process() -> None:
    """Ports the kernel picks for one process's bind(0) it may pick again for another's a
    moment later; the harness's come from a block that its process holds, below the
    kernel's range. Another process (the other pass of `./dev test`) gets another block."""
    low, _ = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ours = [free_port() for _ in range(50)]
    program = "from devkit.pytest_restate import free_port; print([free_port() for _ in range(50)])"
    other = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert other.returncode == 0, other.stderr
    theirs = json.loads(other.stdout)
    assert len(set(ours)) == len(set(theirs)) == 50
    assert not set(ours) & set(theirs)
    assert max(ours + theirs) < low
