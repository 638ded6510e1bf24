"""Run the README's and the docs' blocks as a reader would, in order, and compare the output they show.

The contract the pages follow:

- Pages run in order: README.md, then mkdocs.yml's ``nav`` (under ``docs_dir``, default ``docs/``; nested
  entries walked in order, URLs ignored). All pages share one workspace directory; each page gets a fresh
  bash session and a fresh Python session (files carry over, environment and Python state do not).
- ``console``: a transcript. ``$ cmd`` is a command (`` \\`` at the end continues it on the next line;
  a heredoc ``<<TAG``, ``<<'TAG'``, ``<<-TAG`` takes the lines up to TAG); the other lines up to the next
  command are its shown output. Commands run in the page's bash session (``export``, ``cd``, ``&`` jobs
  persist across the page's console blocks), stdout and stderr merged. Exit status 0, or N where the command
  ends in ``# exit N``. Shown output, when there is any, is compared with the actual, both masked (durations,
  rates, ETAs, clock times, ANSI escapes; of a ``\\r``-rewritten line the last rewrite); ``...`` matches
  anything, whitespace differences are ignored.
- ``bash`` / ``sh``: a script run by ``bash -euo pipefail FILE`` from the page's bash session;
  must exit 0; output not compared.
- ``python``: exec'd in the page's Python namespace (cwd = workspace); an exception fails it.
  ``pycon``: doctest in the same namespace, output compared (masked).
- ``title="NAME"`` in the info string: the content is written to workspace/NAME; nothing runs.
- ``text``, and ``toml``/``yaml``/``json``/``ini``/``tsv``/``csv`` without a title: shown only.
- Any other language, or none: the collection check fails ("give the block a language").
- ``<!-- docs-test: skip: REASON -->`` or ``<!-- docs-test: timeout: SECONDS -->`` (default 300 s, per
  command) on the line(s) directly above a fence annotate it; other ``docs-test:`` comments fail the
  collection check.
- Sessions see: the venv's bin first on PATH, HOME=workspace/.home, MPLBACKEND=Agg, OMP_NUM_THREADS=1,
  GEO_SSL_RUN_CACHE=workspace/.run-cache, PYTHONUNBUFFERED=1, no COLUMNS/LINES; the rest is inherited. At the
  end of a page its bash process group (background jobs included) and its Python process are ended.

CLI, for writing pages: ``python -m tests.docs.run [PAGES...] [--workspace DIR] [--from-page N] [--keep-going]
[--list]``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.docs import checking
from tests.docs.blocks import Block, CollectionError, display_name, parse_page
from tests.docs.sessions import BashSession, Outcome, PythonSession, session_env

REPO = Path(__file__).resolve().parents[2]
OUTPUT_TAIL_LINES = 60


@dataclass
class BlockResult:
    block: Block
    status: str  # "ok", "FAIL", "skip"
    seconds: float = 0.0
    detail: str = ""  # the failure report, or the skip reason

    def line(self) -> str:
        text = f"{self.block.where} {self.block.kind} {self.status} {self.seconds:.1f}s"
        if self.status == "skip":
            text += f" ({self.detail})"
        elif self.block.kind == "file":
            text += f" -> {self.block.title}"
        return text


@dataclass
class PageResult:
    page: str
    results: list[BlockResult] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""  # a collection error: nothing ran

    @property
    def failures(self) -> list[BlockResult]:
        return [r for r in self.results if r.status == "FAIL"]

    @property
    def ok(self) -> bool:
        return not self.error and not self.failures

    def summary(self) -> str:
        if self.error:
            return f"{self.page}: not run: {self.error}"
        ran = [r for r in self.results if r.status != "skip" and r.block.kind != "shown"]
        skipped = [r for r in self.results if r.status == "skip"]
        text = (
            f"{self.page}: {len(ran)} blocks run ({len(self.failures)} failed), {len(skipped)} skipped, "
            f"{self.seconds:.1f}s"
        )
        for r in skipped:
            text += f"\n  skipped {r.block.where}: {r.detail}"
        return text

    def report(self) -> str:
        """The failures in full, for an assertion message or the CLI."""
        if self.error:
            return self.error
        return "\n\n".join(f"FAIL {r.block.where} {r.block.kind}\n{r.detail}" for r in self.failures)


class _Yaml(yaml.SafeLoader):
    """mkdocs.yml may hold tags such as ``!!python/name:...`` or ``!ENV``; their values do not matter here."""


_Yaml.add_multi_constructor("", lambda loader, suffix, node: None)
_Yaml.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def _mkdocs_config(mkdocs_yml: Path) -> dict:
    return yaml.load(mkdocs_yml.read_text(encoding="utf-8"), Loader=_Yaml) or {}


def docs_dir(mkdocs_yml: Path) -> Path:
    """mkdocs.yml's ``docs_dir`` (default ``docs``), as a path."""
    return mkdocs_yml.parent / (_mkdocs_config(mkdocs_yml).get("docs_dir") or "docs")


def nav_pages(mkdocs_yml: Path) -> list[Path]:
    """The pages of mkdocs.yml's nav, in order, as paths; URLs are left out."""
    config = _mkdocs_config(mkdocs_yml)
    pages_dir = docs_dir(mkdocs_yml)
    pages: list[Path] = []

    def walk(entry: object) -> None:
        if isinstance(entry, str):
            if "://" not in entry and not entry.startswith("mailto:"):
                pages.append(pages_dir / entry)
        elif isinstance(entry, list):
            for item in entry:
                walk(item)
        elif isinstance(entry, dict):
            for value in entry.values():
                walk(value)

    walk(config.get("nav") or [])
    return pages


def pages_outside_nav(mkdocs_yml: Path) -> list[Path]:
    """The .md files under docs_dir that the nav leaves out (they would never be run)."""
    in_nav = {page.resolve() for page in nav_pages(mkdocs_yml)}
    return sorted(page for page in docs_dir(mkdocs_yml).rglob("*.md") if page.resolve() not in in_nav)


def default_pages(root: Path = REPO) -> list[Path]:
    """README.md, then the nav's pages when mkdocs.yml exists."""
    mkdocs = root / "mkdocs.yml"
    return [root / "README.md", *(nav_pages(mkdocs) if mkdocs.exists() else [])]


def _tail(text: str, lines: int = OUTPUT_TAIL_LINES) -> str:
    cut = text.rstrip("\n").split("\n")
    head = [f"[... {len(cut) - lines} lines above]"] if len(cut) > lines else []
    return "\n".join(head + cut[-lines:])


def _command_failure(text: str, outcome: Outcome, expect: int, timeout: float, shown: str) -> str | None:
    prompt = "$ " + text.replace("\n", "\n  ")
    if outcome.exit_code is None:
        return f"{prompt}\ntimed out after {timeout:g} s (docs-test: timeout: SECONDS raises it)\n" + _tail(
            outcome.output
        )
    if outcome.exit_code != expect:
        return f"{prompt}\nexit status {outcome.exit_code}, expected {expect}; output:\n" + _tail(
            outcome.output
        )
    if shown.strip() and not checking.matches(shown, outcome.output):
        return f"{prompt}\nshown output differs from the actual:\n" + checking.diff(shown, outcome.output)
    return None


class PageRunner:
    """Runs one page's blocks in its own sessions inside the shared workspace."""

    def __init__(self, workspace: Path, extra_env: dict[str, str] | None = None) -> None:
        self.workspace = workspace
        self.env = session_env(workspace, extra_env)
        self._bash: BashSession | None = None
        self._python: PythonSession | None = None

    @property
    def bash(self) -> BashSession:
        if self._bash is None:
            self._bash = BashSession(self.workspace, self.env)
        return self._bash

    @property
    def python(self) -> PythonSession:
        if self._python is None:
            self._python = PythonSession(self.workspace, self.env)
        return self._python

    def close(self) -> None:
        for session in (self._bash, self._python):
            if session is not None:
                session.close()

    def run_block(self, block: Block) -> BlockResult:
        start = time.monotonic()
        detail = getattr(self, f"_run_{block.kind}")(block)
        return BlockResult(block, "FAIL" if detail else "ok", time.monotonic() - start, detail or "")

    def _run_shown(self, block: Block) -> str | None:
        return None

    def _run_file(self, block: Block) -> str | None:
        target = self.workspace / block.title
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.content, encoding="utf-8")
        return None

    def _run_console(self, block: Block) -> str | None:
        for command in block.commands:
            outcome = self.bash.run(command.text, block.timeout)
            failure = _command_failure(
                command.text, outcome, command.expect_exit, block.timeout, command.shown
            )
            if failure:
                return f"command at line {command.line}:\n{failure}"
        return None

    def _run_script(self, block: Block) -> str | None:
        script = self.bash.tmp / f"block-{block.line}.sh"
        script.write_text(block.content, encoding="utf-8")
        outcome = self.bash.run(f"bash -euo pipefail '{script}'", block.timeout)
        if outcome.exit_code is None:
            return f"timed out after {block.timeout:g} s; output:\n" + _tail(outcome.output)
        if outcome.exit_code != 0:
            return f"exit status {outcome.exit_code}; output:\n" + _tail(outcome.output)
        return None

    _run_bash = _run_sh = _run_script

    def _run_in_python(self, block: Block, kind: str) -> str | None:
        lost = self.python.lost
        answer = self.python.request(kind, block.content, str(block.path), block.content_line, block.timeout)
        if answer["ok"]:
            return None
        text = answer["error"].rstrip("\n")
        if answer.get("output", "").strip():
            text += "\noutput of the block:\n" + _tail(answer["output"])
        if lost:
            text += f"\n(note: {lost})"
        return text

    def _run_python(self, block: Block) -> str | None:
        return self._run_in_python(block, "exec")

    def _run_pycon(self, block: Block) -> str | None:
        return self._run_in_python(block, "doctest")


def run_page(
    page: Path,
    workspace: Path,
    keep_going: bool = False,
    extra_env: dict[str, str] | None = None,
    on_block: Callable[[BlockResult], None] | None = None,
    root: Path = REPO,
) -> PageResult:
    """Run one page's blocks in order; stop at the first failure unless ``keep_going``."""
    start = time.monotonic()
    try:
        blocks = parse_page(page, root)
    except (CollectionError, OSError) as e:
        return PageResult(page=display_name(page, root), error=str(e))
    result = PageResult(page=display_name(page, root))
    runner = PageRunner(workspace, extra_env)
    try:
        for block in blocks:
            if block.skip is not None:
                block_result = BlockResult(block, "skip", detail=block.skip)
            else:
                block_result = runner.run_block(block)
            result.results.append(block_result)
            if on_block is not None and block.kind != "shown":
                on_block(block_result)
            if block_result.status == "FAIL" and not keep_going:
                break
    finally:
        runner.close()
        result.seconds = time.monotonic() - start
    return result


def check_collection(pages: Iterable[Path], root: Path = REPO) -> list[str]:
    """The collection errors of ``pages`` (languages, annotations, transcripts), one string each."""
    errors = []
    for page in pages:
        try:
            parse_page(page, root)
        except (CollectionError, OSError) as e:
            errors.append(str(e))
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.docs.run",
        description="Run README.md and the mkdocs nav's pages (or PAGES) in order in one workspace.",
    )
    parser.add_argument("pages", nargs="*", type=Path, help="pages to run (default: README.md + mkdocs nav)")
    parser.add_argument(
        "--workspace", type=Path, help="the shared working directory (kept; default: new temp)"
    )
    parser.add_argument(
        "--from-page", type=int, default=1, metavar="N", help="start at the N-th page (1-based)"
    )
    parser.add_argument("--keep-going", action="store_true", help="go on after a failure")
    parser.add_argument("--list", action="store_true", help="list the pages with their numbers and exit")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that each page's sessions are ended

    pages = [p.resolve() for p in args.pages] or default_pages()
    if args.list:
        for n, page in enumerate(pages, 1):
            print(f"{n} {display_name(page, REPO)}")
        return 0
    if not 1 <= args.from_page <= len(pages):
        parser.error(f"--from-page {args.from_page}: there are {len(pages)} pages")
    errors = check_collection(pages[args.from_page - 1 :])
    if errors:
        print("\n".join(errors))
        if not args.keep_going:
            return 1  # with --keep-going, the pages that pass the check run and the others count as failed
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="docs-workspace-"))
    workspace = workspace.resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    print(f"workspace: {workspace} (kept)", flush=True)

    def show(block_result: BlockResult) -> None:
        print(block_result.line(), flush=True)
        if block_result.status == "FAIL":
            print("  " + block_result.detail.replace("\n", "\n  "), flush=True)

    results = []
    for page in pages[args.from_page - 1 :]:
        result = run_page(page, workspace, keep_going=args.keep_going, on_block=show)
        results.append(result)
        print(result.summary(), flush=True)
        if not result.ok and not args.keep_going:
            break
    failed = [r for r in results if not r.ok]
    print(
        f"{len(results)} of {len(pages) - args.from_page + 1} pages run, {len(failed)} failed"
        + (f" (from page {args.from_page})" if args.from_page > 1 else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
