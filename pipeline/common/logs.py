"""geo-ssl's library messages go through `logging`, under the "geo_ssl" logger.

Modules log with `get_logger(__name__)` (names under geo_ssl.*), the message text being the line users
read today ("geo-ssl loader: ...", "cluster: ... [ok]"). So that a script or a test that configures nothing
sees the same lines as before, the "geo_ssl" logger has one handler of its own, writing the bare message to
the current sys.stderr, or to the current sys.stdout for a stage's result lines (logged at INFO with
`extra=STDOUT`), flushing after each; it does not propagate. A caller routes or silences the messages the
usual way:

    logging.getLogger("geo_ssl").setLevel(logging.WARNING)  # silence the summary lines and notes
    logging.getLogger("geo_ssl").setLevel(logging.ERROR)    # ... and the warnings
    geo_ssl.pipeline.common.logs.propagate()               # hand them to the root logger's handlers

The command lines take --quiet (warnings and errors only, no progress bars) and --verbose (debug too).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

LOGGER = "geo_ssl"
#: The level set by --quiet/--verbose, for the worker processes a command starts (loader, build workers).
ENV_LEVEL = "GEO_SSL_LOG_LEVEL"
#: `extra=` for a record meant for stdout (a stage's summary line, which scripts and pipes read there).
STDOUT = {"stdout": True}


class _Console(logging.StreamHandler):
    """Writes each record to sys.stdout or sys.stderr as they are at that record (pytest's capsys and
    capfd swap them), like logging's last-resort handler, and never closes them; flushes after each record
    so that lines arrive promptly through a pipe."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(message)s"))
        self._to_stdout = False

    @property  # type: ignore[override]
    def stream(self):  # a text stream: whatever sys.stdout or sys.stderr is now
        return sys.stdout if self._to_stdout else sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; ignored
        pass

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock:  # the stream choice and the write go together
            self._to_stdout = bool(getattr(record, "stdout", False))
            try:
                super().emit(record)  # writes, then flushes
            finally:
                self._to_stdout = False


#: Set by propagate(): modules imported later must not put the console handler back.
_propagating = False


def _install() -> logging.Logger:
    logger = logging.getLogger(LOGGER)
    if not _propagating and not any(isinstance(h, _Console) for h in logger.handlers):
        logger.addHandler(_Console())
        logger.propagate = False
        if logger.level == logging.NOTSET:
            named = logging.getLevelNamesMapping().get(os.environ.get(ENV_LEVEL, "").upper())
            logger.setLevel(named if named is not None else logging.INFO)
    return logger


def get_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)` for a geo_ssl.* module, with the "geo_ssl" handler in place."""
    _install()
    return logging.getLogger(name)


def propagate() -> None:
    """Send geo-ssl's records to the root logger's handlers instead of geo-ssl's own stdout/stderr handler."""
    global _propagating
    _propagating = True
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _Console)]:
        logger.removeHandler(handler)
    logger.propagate = True


def add_verbosity_flags(parser: argparse.ArgumentParser) -> None:
    """--quiet / --verbose, mutually exclusive."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quiet", action="store_true", help="warnings and errors only; no progress bars")
    group.add_argument("--verbose", action="store_true", help="debug messages too")


def set_verbosity(args: argparse.Namespace) -> None:
    """Apply --quiet / --verbose (absent flags leave INFO); --quiet also turns the progress bars off,
    in this process and in the workers it starts (GEO_SSL_PROGRESS=0)."""
    logger = _install()
    if getattr(args, "quiet", False):
        logger.setLevel(logging.WARNING)
        os.environ["GEO_SSL_PROGRESS"] = "0"
    elif getattr(args, "verbose", False):
        logger.setLevel(logging.DEBUG)
    else:
        return
    os.environ[ENV_LEVEL] = logging.getLevelName(logger.level)
