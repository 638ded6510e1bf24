"""One-line argument errors for every geo-ssl command line.

argparse answers a mistyped flag with the whole usage block, which buries the one thing that went wrong.
`OneLineParser` keeps argparse's parsing and replaces only its error path: one line
`<prog>: error: <flag>: <reason>`, a "did you mean" for a near miss, a pointer to --help, exit 2.
Subparsers made from it inherit it (argparse builds them with the parent's class).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterable, Sequence
from typing import NoReturn

EXIT_USAGE = 2

_ARGUMENT = re.compile(r"^argument (?P<flag>[^:]+): (?P<reason>.*)$", re.S)
_CHOICE = re.compile(r"invalid choice: '(?P<given>[^']*)' \(choose from (?P<choices>.*)\)")


def _closest(word: str, candidates: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return match[0] if match else None


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes are one line with the flag, a reason and a hint; exit 2."""

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """As argparse's, but an unknown flag is reported by the subcommand that would have taken it,
        so that the hint names that subcommand's flags."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            self._chosen(ns).error(f"unrecognized arguments: {' '.join(extras)}")
        return ns

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._seen = list(sys.argv[1:] if args is None else args)  # for error(): a typo beats "required"
        return super().parse_known_args(args, namespace)

    def _unknown_flag(self) -> str | None:
        """The first --flag on the command line that this parser neither has nor abbreviates."""
        known = self._option_string_actions
        for word in getattr(self, "_seen", ()):
            name = word.split("=", 1)[0]
            if name.startswith("--") and len(name) > 2 and not any(k.startswith(name) for k in known):
                return word
        return None

    def _chosen(self, ns: argparse.Namespace) -> OneLineParser:
        """The innermost parser the command line selected (via each subparsers action's dest)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                sub = action.choices.get(getattr(ns, action.dest, None) or "")
                if isinstance(sub, OneLineParser):
                    return sub._chosen(ns)
        return self

    def _flags(self) -> list[str]:
        return [s for s in self._option_string_actions if s.startswith("--")]

    def one_line(self, message: str) -> str:
        """argparse's error text as `<flag>: <reason>[; did you mean X?]`."""
        hint = ""
        if message.startswith("unrecognized arguments: "):
            words = message.split(": ", 1)[1].split()
            flag = next((w for w in words if w.startswith("-")), words[0])
            reason = "unknown flag" if flag.startswith("-") else "unexpected argument"
            near = _closest(flag.split("=", 1)[0], self._flags()) if flag.startswith("-") else None
            hint = f"; did you mean {near}?" if near else ""
        elif message.startswith("the following arguments are required: "):
            typo = self._unknown_flag()
            if typo is not None:  # argparse checks required flags first; the typo is the real mistake
                return self.one_line(f"unrecognized arguments: {typo}")
            flag, reason = message.split(": ", 1)[1], "required, not given"
        elif m := _ARGUMENT.match(message):
            flag, reason = m["flag"], m["reason"]
            if c := _CHOICE.search(reason):
                near = _closest(c["given"], re.findall(r"'([^']*)'", c["choices"]))
                hint = f"; did you mean {near}?" if near else ""
        elif message.startswith("ambiguous option: "):
            text = message.split(": ", 1)[1]
            flag, _, rest = text.partition(" could match ")
            reason = f"ambiguous, could be {rest}" if rest else "ambiguous"
        else:
            return message
        return f"{flag}: {reason}{hint}"

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {self.one_line(message)} (see {self.prog} --help)\n")
