"""Compare shown output with actual output: mask what varies run to run (timings, rates, ETAs, clock times,
terminal escapes), then let doctest's OutputChecker compare with ELLIPSIS and NORMALIZE_WHITESPACE.

Standard library only: the Python session's worker loads this file by path.
"""

from __future__ import annotations

import difflib
import doctest
import re

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
TIME, RATE = "<T>", "<RATE>"

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_NUM = r"(?<![\w.])\d[\d,]*(?:\.\d+)?"
# A rate: a number, an optional unit ("it", "items", "MB", "locations"), then "/s", "/h", "/min"; or s/it.
_RATE = re.compile(rf"{_NUM}\s?[kMG]?\s?(?:[A-Za-z]+)?/(?:s|sec|h|hr|min)\b|{_NUM}\s?s/it\b")
_DATETIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?(?:Z|[+-]\d\d:?\d\d)?")
_CLOCK = re.compile(r"\b\d{1,2}:\d\d:\d\d(?:\.\d+)?\b")
# "1h 2m", "1h2m3s", "2m 5s", "3h": compound forms, where "m" means minutes.
_COMPOUND = re.compile(r"\b\d+h(?:\s?\d+m)?(?:\s?\d+s)?\b|\b\d+m\s?\d+s\b")
_DURATION = re.compile(
    rf"{_NUM}\s?(?:ns|µs|us|ms|s|sec|secs|seconds?|min|mins|minutes?|h|hrs?|hours?|days?)\b"
)
_ETA = re.compile(r"(?i)\b(eta|elapsed|remaining)(\s*[:=]?\s*)(?!<T>)(\d[\d:.]*|\?+|-+:?-*)")
_RUNS = re.compile(rf"{re.escape(TIME)}(?:\s*{re.escape(TIME)})+")


def mask(text: str) -> str:
    """The text with varying parts replaced by ``<T>`` (durations, clock times, ETAs) and ``<RATE>``.

    Counts ("4 shards", "300 samples", "2 steps", "k=16") are left alone: a duration needs a time unit
    right after the number. Of a line rewritten with carriage returns, the last rewrite is kept.
    """
    text = _ANSI.sub("", text.replace("\r\n", "\n"))
    text = "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))
    text = _RATE.sub(RATE, text)
    text = _DATETIME.sub(TIME, text)
    text = _CLOCK.sub(TIME, text)
    text = _COMPOUND.sub(TIME, text)
    text = _DURATION.sub(TIME, text)
    text = _ETA.sub(lambda m: f"{m.group(1)}{m.group(2)}{TIME}", text)
    return _RUNS.sub(TIME, text)


def matches(shown: str, actual: str) -> bool:
    """Whether ``actual`` output fits the ``shown`` output once both are masked (``...`` matches anything)."""
    want, got = mask(shown).strip() + "\n", mask(actual).strip() + "\n"
    return doctest.OutputChecker().check_output(want, got, FLAGS)


def diff(shown: str, actual: str) -> str:
    """A unified diff of the masked shown output against the masked actual output."""
    lines = difflib.unified_diff(
        mask(shown).strip().split("\n"),
        mask(actual).strip().split("\n"),
        "shown (masked)",
        "actual (masked)",
        lineterm="",
    )
    return "\n".join(lines)


class MaskingChecker(doctest.OutputChecker):
    """doctest's checker on masked text, for pycon blocks."""

    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        return super().check_output(mask(want), mask(got), optionflags)

    def output_difference(self, example: doctest.Example, got: str, optionflags: int) -> str:
        masked = doctest.Example(example.source, mask(example.want))
        return super().output_difference(masked, mask(got), optionflags | doctest.REPORT_UDIFF)
