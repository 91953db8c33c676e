"""Development tooling of the collection: the `./dev` launcher and the process helpers
that the launcher and the test suite share. Patterns never import it."""

from pathlib import Path

from devkit.pytest_restate import ProcessError

ROOT = Path(__file__).resolve().parent.parent


class DevError(ProcessError):
    """An error with a one-line message for the user; `./dev` exits non-zero with it."""
