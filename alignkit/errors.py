"""Errors that are the user's to fix: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (a file, a config value, a model name).

    The CLI prints ``str(error)`` alone, with no traceback, and exits with status 2.
    """


class DataError(UserError):
    """A problem with one data file, located by file, row (1-based line or record number) and field."""

    def __init__(
        self, message: str, *, path: str, row: int | None = None, field: str | None = None
    ):
        self.path = path
        self.row = row
        self.field = field
        self.reason = message
        where = str(path)
        if row is not None:
            where += f":{row}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: {message}")
