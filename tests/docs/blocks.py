"""Find a page's fenced blocks and their annotations, and cut console transcripts into commands.

A small fence parser (markdown-it-py is not in the venv): CommonMark fences of ``` or ~~~, closed by a fence
of the same character at least as long, indented fences (inside list items) dedented by their own indent. What
each language means is in the module docstring of ``tests.docs.run``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

RUN_LANGS = {"console", "bash", "sh", "python", "pycon"}
SHOWN_LANGS = {"text", "toml", "yaml", "json", "ini", "tsv", "csv"}
DEFAULT_TIMEOUT_S = 300.0

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_ANNOTATION = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<body>.*?)\s*-->\s*$")
_ATTR = re.compile(r'(\w+)="([^"]*)"')
_EXIT = re.compile(r"\s#\s*exit\s+(\d+)\b(?::[^#]*)?$")  # "# exit 2" or "# exit 2: why"
_HEREDOC = re.compile(r"(?<!<)<<(?!<)(-?)\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")


class CollectionError(ValueError):
    """A page that breaks the conventions; ``str`` names page and line."""

    def __init__(self, page: str, line: int, message: str) -> None:
        super().__init__(f"{page}:{line}: {message}")
        self.page, self.line, self.message = page, line, message


@dataclass
class Command:
    """One ``$ `` command of a console block, with the output the page shows for it."""

    line: int  # page line of the ``$ `` prompt
    text: str  # what bash runs (continuations and heredoc bodies included, prompts removed)
    shown: str  # the shown output, "" when the page shows none
    expect_exit: int = 0


@dataclass
class Block:
    page: str  # as displayed (relative to the repository when inside it)
    path: Path  # absolute, for tracebacks
    line: int  # page line of the opening fence
    lang: str
    info: str
    content: str
    title: str | None = None
    skip: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    commands: list[Command] = field(default_factory=list)

    @property
    def content_line(self) -> int:
        """Page line of the block's first content line."""
        return self.line + 1

    @property
    def kind(self) -> str:
        if self.title is not None:
            return "file"
        return self.lang if self.lang in RUN_LANGS else "shown"

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def display_name(path: Path, root: Path) -> str:
    path = path.resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _annotations(lines: list[str], fence_index: int) -> tuple[list[tuple[int, str]], set[int]]:
    """Annotation comments directly above the fence at ``fence_index`` (one per line, blank lines between
    allowed), as (0-based line, body); plus the indices they occupy."""
    found: list[tuple[int, str]] = []
    i = fence_index - 1
    while i >= 0 and not lines[i].strip():
        i -= 1
    while i >= 0:
        m = _ANNOTATION.match(lines[i])
        if not m:
            break
        found.append((i, m.group("body")))
        i -= 1
        while i >= 0 and not lines[i].strip():
            i -= 1
    return found[::-1], {i for i, _ in found}


def _apply_annotation(block: Block, body: str, line: int) -> None:
    key, _, value = body.partition(":")
    key, value = key.strip(), value.strip()
    if key == "skip":
        if not value:
            raise CollectionError(
                block.page, line, "docs-test: skip needs a reason (docs-test: skip: REASON)"
            )
        block.skip = value
    elif key == "timeout":
        try:
            block.timeout = float(value)
        except ValueError:
            raise CollectionError(
                block.page, line, f"docs-test: timeout needs seconds, got {value!r}"
            ) from None
        if block.timeout <= 0:
            raise CollectionError(block.page, line, f"docs-test: timeout must be positive, got {value!r}")
    else:
        raise CollectionError(
            block.page,
            line,
            f"unknown annotation 'docs-test: {body}' (known: skip: REASON, timeout: SECONDS)",
        )


def parse_console(content: str, page: str, first_line: int) -> list[Command]:
    """Cut a console transcript into commands; ``first_line`` is the page line of the content's first line."""
    lines = content.split("\n")
    commands: list[Command] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            if commands:
                commands[-1].shown += line + "\n"
            elif line.strip():
                raise CollectionError(page, first_line + i, "console output before the first '$ ' command")
            i += 1
            continue
        start = i
        head = [line[2:]]
        while head[-1].endswith(" \\") or head[-1] == "\\":
            i += 1
            if i >= len(lines):
                raise CollectionError(
                    page, first_line + start, "command ends with '\\' on the block's last line"
                )
            head.append(lines[i])
        i += 1
        body: list[str] = []
        for m in _HEREDOC.finditer("\n".join(head)):
            strip_tabs, tag = m.group(1) == "-", m.group(3)
            while True:
                if i >= len(lines):
                    raise CollectionError(page, first_line + start, f"heredoc {tag!r} is never closed")
                body.append(lines[i])
                i += 1
                if (body[-1].lstrip("\t") if strip_tabs else body[-1]) == tag:
                    break
        exit_match = _EXIT.search(head[-1])
        commands.append(
            Command(
                line=first_line + start,
                text="\n".join(head + body),
                shown="",
                expect_exit=int(exit_match.group(1)) if exit_match else 0,
            )
        )
    if not commands:
        raise CollectionError(page, first_line - 1, "console block without a '$ ' command")
    for command in commands:
        command.shown = command.shown.strip("\n")
    return commands


def _check_title(block: Block, title: str) -> None:
    pure = PurePosixPath(title)
    if not title or pure.is_absolute() or ".." in pure.parts:
        raise CollectionError(
            block.page, block.line, f"title={title!r} must be a relative path inside the workspace"
        )


def parse_page(path: Path, root: Path) -> list[Block]:
    """All fenced blocks of a page, annotated; raises ``CollectionError`` on the first broken convention."""
    page = display_name(path, root)
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks: list[Block] = []
    used_annotations: set[int] = set()
    fenced: set[int] = set()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m or (m.group("fence")[0] == "`" and "`" in m.group("info")):
            i += 1
            continue
        indent, fence, info = len(m.group("indent")), m.group("fence"), m.group("info").strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = _FENCE.match(lines[i])
            if close and close.group("fence")[0] == fence[0] and len(close.group("fence")) >= len(fence):
                if not close.group("info").strip():
                    break
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i].lstrip())
            i += 1
        else:
            raise CollectionError(page, start + 1, "fence is never closed")
        fenced.update(range(start, i + 1))
        i += 1
        lang = info.split()[0].lstrip("{").lstrip(".").lower() if info else ""
        attrs = dict(_ATTR.findall(info))
        block = Block(
            page=page,
            path=path.resolve(),
            line=start + 1,
            lang=lang,
            info=info,
            content="\n".join(body) + ("\n" if body else ""),
        )
        annotations, occupied = _annotations(lines, start)
        used_annotations |= occupied
        for at, body_text in annotations:
            _apply_annotation(block, body_text, at + 1)
        if "title" in attrs:
            _check_title(block, attrs["title"])
            block.title = attrs["title"]
        elif lang not in RUN_LANGS | SHOWN_LANGS:
            what = f"unknown language {lang!r}" if lang else "a block without a language"
            raise CollectionError(
                page,
                block.line,
                f"{what}: give the block a language "
                f'({", ".join(sorted(RUN_LANGS | SHOWN_LANGS))}, or title="NAME" for a file)',
            )
        if block.kind == "console":
            block.commands = parse_console(block.content.rstrip("\n"), page, block.content_line)
        blocks.append(block)
    for n, text in enumerate(lines):
        if n not in used_annotations and n not in fenced and _ANNOTATION.match(text):
            raise CollectionError(page, n + 1, "docs-test annotation not directly above a fence")
    return blocks
