"""The two ways a Sieve script fails.

``SieveError`` is a script that cannot be accepted (syntax, unknown command,
missing require, bad arguments): ManageSieve refuses to store it and delivery
never runs it.  ``SieveRuntimeError`` is a valid script that cannot finish on
one message (too many actions, conflicting actions, a pattern that runs too
long): the caller files the message in INBOX (RFC 5228 §2.10.6).
"""

from __future__ import annotations


class SieveError(Exception):
    """A script rejected before it runs, with the place in the script."""

    def __init__(self, message: str, line: int, col: int) -> None:
        super().__init__(message, line, col)
        self.message, self.line, self.col = message, line, col

    def __str__(self) -> str:
        return f"line {self.line}, column {self.col}: {self.message}"


class SieveRuntimeError(Exception):
    """A script that failed on one message; the caller falls back to keep."""

    def __init__(self, message: str, line: int = 0, col: int = 0) -> None:
        super().__init__(message, line, col)
        self.message, self.line, self.col = message, line, col

    def __str__(self) -> str:
        if self.line:
            return f"line {self.line}, column {self.col}: {self.message}"
        return self.message
