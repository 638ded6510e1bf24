"""Range checks shared by the command line and the Python API: one message per mistake, exit 2."""

from __future__ import annotations

import argparse

from geo_ssl.pipeline.common.errors import GeoSSLError

#: Seeds go to numpy and scikit-learn, which take unsigned 32-bit integers.
SEED_MAX = 2**32 - 1


def check_seed(seed: object, name: str = "--seed") -> int:
    """The seed as an int, or GeoSSLError when it is not an integer in [0, 2**32 - 1]."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise GeoSSLError(f"{name} must be an integer in [0, {SEED_MAX}], got {seed!r}")
    if not 0 <= seed <= SEED_MAX:
        raise GeoSSLError(f"{name} {seed} out of range; use an integer in [0, {SEED_MAX}]")
    return seed


def seed_arg(text: str) -> int:
    """argparse type for --seed: refused at parse time, before any stage runs."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{value} out of range [0, {SEED_MAX}]")
    return value


def positive_int_arg(text: str) -> int:
    """argparse type for counts that must be at least 1 (--k, --workers, --locations)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
