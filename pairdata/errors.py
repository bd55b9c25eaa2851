"""The one error type for unreadable or malformed data, naming the file and line."""

from __future__ import annotations

from pathlib import Path


class DataFormatError(ValueError):
    """A data file is missing or a record in it is malformed.

    The message always names the file (and the 1-based line when one is at fault) so the user
    can open it and fix it.
    """

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = Path(path)
        self.line = line


def innermost_message(error: BaseException) -> str:
    """The innermost message of an exception chain, cut to one line (for errors that wrap a library's)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return str(error).splitlines()[0][:300] if str(error) else type(error).__name__
