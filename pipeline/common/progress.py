"""Progress bars (items/s, ETA) and the end-of-stage summary that must reconcile."""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

#: "1" shows the progress bars even when stderr is not a terminal, "0" hides them (--quiet sets it, for the
#: workers too); unset, they show only on a terminal, so logs and pipes get no bar redraws.
ENV = "GEO_SSL_PROGRESS"
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def bars_enabled() -> bool:
    """Whether progress bars show: as GEO_SSL_PROGRESS forces, else only when sys.stderr is a terminal."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in _ON or forced in _OFF:
        return forced in _ON
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(items: Iterable[T], total: int | None, desc: str, unit: str = "it") -> Iterator[T]:
    """tqdm on stderr, shown as `bars_enabled()` says (on a terminal, or forced with GEO_SSL_PROGRESS=1)."""
    yield from tqdm(
        items,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not bars_enabled(),
        mininterval=0.5,
        smoothing=0.1,
    )


@dataclass
class Summary:
    """Counts of one stage run: inputs = written + rejected + skipped, always."""

    stage: str
    unit: str
    inputs: int = 0
    written: int = 0
    rejected: int = 0
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)
    extra: dict = field(default_factory=dict)

    @property
    def reconciles(self) -> bool:
        return self.inputs == self.written + self.rejected + self.skipped

    def line(self) -> str:
        status = "ok" if self.reconciles else "MISMATCH"
        text = (
            f"{self.stage}: {self.inputs} {self.unit} in = {self.written} written + {self.rejected} rejected"
            f" + {self.skipped} skipped [{status}]"
        )
        if self.reasons:
            text += " | rejects: " + ", ".join(f"{k}={v}" for k, v in sorted(self.reasons.items()))
        return text

    def as_dict(self) -> dict:
        return {
            "stage": self.stage,
            "unit": self.unit,
            "inputs": self.inputs,
            "written": self.written,
            "rejected": self.rejected,
            "skipped": self.skipped,
            "reasons": dict(sorted(self.reasons.items())),
            **self.extra,
        }


def progress_bar(total: int | None, desc: str, unit: str = "it", initial: int = 0) -> tqdm:
    """A tqdm bar to drive by hand (update, set_postfix), with the same settings as progress()."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not bars_enabled(),
        mininterval=0.5,
        smoothing=0.1,
    )
