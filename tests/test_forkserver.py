"""The fork server that starts the suite's services (devkit/forkserver.py): a forked child
is what `python -m <module>` would have been, seen from the test as a spawned one is."""

import os
import signal
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from devkit import ROOT, forkserver
from devkit.processes import ManagedProcess
from tests.harness import eventually

# run from its folder, which is not the fork server's (the repository's root)
FOLDER, MODULE = ROOT / "tests" / "example", "forked"


@pytest.fixture
def fork_server(tmp_path: Path) -> Iterator[forkserver.ForkServer]:
    """A fork server of this test's own (the suite's may be turned off)."""
    server = forkserver.ForkServer(tmp_path / "forkserver.log", ROOT)
    assert server.env is not None, (tmp_path / "forkserver.log").read_text()
    yield server
    server.stop()


def child(tmp_path: Path, end: str, **env: str) -> ManagedProcess:
    settings = {**os.environ, "FORKED_SETTING": "given", "FORKED_END": end, **env}
    return ManagedProcess(
        MODULE, [sys.executable, "-m", MODULE], tmp_path / f"{end}.log", settings, FOLDER
    )


def waits(process: ManagedProcess) -> bool:
    return "waiting" in process.log_text()


def ended(process: ManagedProcess) -> bool:
    return process.exit_code() is not None


def lines(process: ManagedProcess) -> dict[str, str]:
    return dict(line.split("=", 1) for line in process.log_lines() if "=" in line)


def forked_from(server: forkserver.ForkServer, process: ManagedProcess) -> bool:
    assert process.pid is not None
    ppid = int(Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return ppid == server.pid


def test_a_forked_child_is_the_module_run_as_main_with_its_settings_and_exit_code(
    fork_server: forkserver.ForkServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ManagedProcess, "launcher", fork_server.launcher)
    for end, code in [("", 0), ("exit:7", 7), ("exit:gone", 1), ("raise", 1)]:
        process = child(tmp_path, end)
        process.start()
        eventually(partial(ended, process), 30, f"{end or 'return'} ends")
        assert process.exit_code() == code, (end, process.log_text())
        seen = lines(process)
        assert seen["argv0"] == str(FOLDER / "forked.py")
        assert (seen["cwd"], seen["path0"]) == (str(FOLDER), str(FOLDER))
        assert (seen["setting"], seen["main"]) == ("given", "__main__")
    assert "gone" in (tmp_path / "exit:gone.log").read_text()
    assert "RuntimeError: the child failed" in (tmp_path / "raise.log").read_text()


def test_a_forked_child_is_signalled_and_killed_like_a_spawned_one(
    fork_server: forkserver.ForkServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ManagedProcess, "launcher", fork_server.launcher)
    for how, code in [("term", 3), ("kill", -signal.SIGKILL), ("int", -signal.SIGINT)]:
        process = child(tmp_path / how, "wait")
        (tmp_path / how).mkdir()
        process.start()
        assert forked_from(fork_server, process)
        eventually(partial(waits, process), 30, "the child waits")
        comm = Path(f"/proc/{process.pid}/comm").read_text().strip()
        assert comm == MODULE[:15]  # what ps shows: the module, not the fork server
        if how == "kill":
            process.kill()
        else:
            assert process.pid is not None
            os.kill(process.pid, signal.SIGTERM if how == "term" else signal.SIGINT)
            process.finish_stop(10)
        # SIGINT: an uncaught KeyboardInterrupt, which ends Python by SIGINT, as it does here
        assert process.exit_code() == code, (how, process.log_text())
        assert not process.running()


def test_a_start_the_fork_server_cannot_match_is_spawned(
    fork_server: forkserver.ForkServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python reads PYTHON* variables at its start: a child with others than the fork
    server's would differ from a spawned one, so it is spawned."""
    monkeypatch.setattr(ManagedProcess, "launcher", fork_server.launcher)
    (tmp_path / "other").mkdir()
    flipped = "" if os.environ.get("PYTHONUNBUFFERED") else "1"  # the child applies it itself
    same = child(tmp_path, "wait", PYTHONUNBUFFERED=flipped)
    other = child(tmp_path / "other", "wait", PYTHONHASHSEED="123")
    try:
        for process in same, other:
            process.start()
            eventually(partial(waits, process), 30, "the child waits")
        assert forked_from(fork_server, same)
        assert not forked_from(fork_server, other)  # spawned: a child of this process
    finally:
        same.kill()
        other.kill()
    command = [sys.executable, "-c", "pass"]  # not `python -m`: spawned
    assert fork_server.launcher(command, None, tmp_path, tmp_path / "x.log") is None
