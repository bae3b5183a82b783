"""The error every command reports as one line, with its exit status."""

from __future__ import annotations


class Failure(Exception):
    """A one-line reason for the user; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
