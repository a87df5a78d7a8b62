"""The CLI's exit codes, and the error it raises for what is not a domain error."""

from __future__ import annotations

EXIT_OK, EXIT_OTHER, EXIT_INPUT, EXIT_CAPACITY = 0, 1, 2, 3


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_OTHER) -> None:
        super().__init__(message)
        self.code = code
