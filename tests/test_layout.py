"""The collection's layout rules, checked for every pattern folder."""

import ast
import re
import sys

import pytest

from devkit import ROOT, patterns

PATTERNS = patterns.known()
REFERENCE_MAIN = (ROOT / "durablerpc" / "__main__.py").read_text(encoding="utf-8")
# granian: the optional server of the serving file (SERVER=granian), imported only then;
# agents, openai: the OpenAI Agents SDK and client, from restate-sdk's `openai` extra
ALLOWED_TOP_LEVEL = {"restate", "pydantic", "hypercorn", "granian", "httpx", "croniter", "stripe",
                     "psycopg", "agents", "openai"}  # fmt: skip


def imported_top_levels(pattern: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / pattern).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pattern_imports_only_the_sdk_its_libraries_and_its_own_files(pattern: str) -> None:
    foreign = {
        name
        for name in imported_top_levels(pattern)
        if name not in sys.stdlib_module_names and name not in ALLOWED_TOP_LEVEL and name != pattern
    }
    assert not foreign, f"{pattern}/ imports {sorted(foreign)}: a copied folder would break"


@pytest.mark.parametrize("pattern", PATTERNS)
def test_main_is_the_same_serving_file_in_every_pattern(pattern: str) -> None:
    text = (ROOT / pattern / "__main__.py").read_text(encoding="utf-8")
    assert text == REFERENCE_MAIN, f"{pattern}/__main__.py differs from durablerpc/__main__.py"


@pytest.mark.parametrize("pattern", PATTERNS)
def test_readme_has_try_it_commands_and_a_row_in_the_root_table(pattern: str) -> None:
    try_it = patterns.try_it(pattern)
    assert not try_it.startswith("(see"), f"{pattern}/README.md has no ## Try it section"
    assert try_it.strip(), f"{pattern}/README.md: ## Try it has no shell block"
    root_readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(rf"^\| \[{pattern}\]\({pattern}/\) \|", root_readme, re.M), (
        f"README.md has no row for {pattern}"
    )


def test_the_benchmark_baseline_is_served_by_the_same_file() -> None:
    text = (ROOT / "bench" / "noop" / "__main__.py").read_text(encoding="utf-8")
    assert text == REFERENCE_MAIN, "bench/noop/__main__.py differs from durablerpc/__main__.py"
