"""A real PostgreSQL for the database pattern's tests: one per test session, in a temporary
folder, initialised from database/db/ like the one `./dev run database` starts."""

from collections.abc import Iterator

import pytest

from devkit import ROOT
from devkit.postgres import EmbeddedPostgres


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    database = EmbeddedPostgres(
        tmp_path_factory.mktemp("postgres") / "data", ROOT / "database" / "db"
    )
    try:
        database.start()
        yield database
    finally:
        database.stop()
