"""geo-ssl's library messages go through `logging`, under the "geo_ssl" logger.

Modules log with `logging.getLogger(__name__)` (names under geo_ssl.*), the message text being the line
users read today ("geo-ssl loader: ..."). So that a script or a test that configures nothing sees the
same stderr lines as before, the "geo_ssl" logger has one handler of its own, writing the bare message to
the current sys.stderr, and does not propagate. A caller routes or silences the messages the usual way:

    logging.getLogger("geo_ssl").setLevel(logging.ERROR)   # silence the warnings
    geo_ssl.pipeline.common.logs.propagate()              # hand them to the root logger's handlers

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


class _CurrentStderr(logging.StreamHandler):
    """Writes to sys.stderr as it is at each record (pytest's capsys and capfd swap it), like logging's
    last-resort handler, and never closes it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(message)s"))

    @property  # type: ignore[override]
    def stream(self):  # a text stream: whatever sys.stderr is now
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; ignored
        pass


def _install() -> logging.Logger:
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h, _CurrentStderr) for h in logger.handlers):
        logger.addHandler(_CurrentStderr())
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
    """Send geo-ssl's records to the root logger's handlers instead of geo-ssl's own stderr handler."""
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _CurrentStderr)]:
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
