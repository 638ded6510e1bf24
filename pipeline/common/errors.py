"""Exception types: user mistakes become one-line CLI errors, bad items become reject rows."""

from __future__ import annotations


class GeoSSLError(Exception):
    """A user-facing error (bad path, bad flag, bad input file). The CLI prints it on one line."""


class RejectError(Exception):
    """One input item is unusable; the stage records it in the rejects table and goes on."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
