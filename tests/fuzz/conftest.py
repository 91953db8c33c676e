"""The table of inputs tried per handler, printed at the end of the run.

Each fuzz test records its counts as a property of its report, so that they reach the
process that prints the summary also when the tests run in pytest-xdist workers."""

import pytest

from tests.fuzz.test_fuzz_bad_input import INPUTS_TRIED

_counts: dict[str, int] = {}  # handler ("Service/handler") -> bodies sent to it


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, value in report.user_properties:
        if name == INPUTS_TRIED and isinstance(value, dict):
            _counts.update(value)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _counts:
        return
    width = max(len(handler) for handler in _counts)
    terminalreporter.section("fuzzed bad input: inputs tried per handler")
    for handler, count in sorted(_counts.items()):
        terminalreporter.write_line(f"{handler:<{width}}  {count:>5}")
    terminalreporter.write_line(
        f"{'total':<{width}}  {sum(_counts.values()):>5}  ({len(_counts)} handlers)"
    )
