"""The docs runner on small pages written to tmp: what passes, what fails, and what the failure says."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.docs.blocks import CollectionError, parse_page
from tests.docs.checking import mask
from tests.docs.run import REPO, PageResult, nav_pages, pages_outside_nav, run_page

FENCE = "```"


def page(tmp_path: Path, text: str, name: str = "page.md") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).replace("'''", FENCE), encoding="utf-8")
    return path


def run(path: Path, workspace: Path, **kwargs) -> PageResult:
    workspace.mkdir(exist_ok=True)
    return run_page(path, workspace, root=path.parent, **kwargs)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_correct_page_passes_and_writes_titled_files(tmp_path):
    path = page(
        tmp_path,
        """\
        # A page

        '''console
        $ echo out; echo err >&2
        out
        err
        $ mkdir -p data
        '''

        '''toml title="conf/pretrain.toml"
        steps = 2
        '''

        '''bash
        for i in 1 2; do echo "$i" >> data/loop.txt; done
        '''

        '''python
        from pathlib import Path
        steps = Path("conf/pretrain.toml").read_text().split("=")[1].strip()
        '''

        '''pycon
        >>> int(steps) + 1
        3
        '''

        '''text
        $ not run
        '''
        """,
    )
    result = run(path, tmp_path / "ws")
    assert result.ok, result.report()
    assert [(r.block.kind, r.status) for r in result.results] == [
        ("console", "ok"),
        ("file", "ok"),
        ("bash", "ok"),
        ("python", "ok"),
        ("pycon", "ok"),
        ("shown", "ok"),
    ]
    assert (tmp_path / "ws/conf/pretrain.toml").read_text() == "steps = 2\n"
    assert (tmp_path / "ws/data/loop.txt").read_text() == "1\n2\n"
    assert "5 blocks run (0 failed), 0 skipped" in result.summary()


def test_wrong_shown_output_fails_with_a_diff(tmp_path):
    path = page(
        tmp_path,
        """\
        '''console
        $ printf 'a\\nb\\n'
        a
        c
        $ touch never-made
        '''
        """,
    )
    result = run(path, tmp_path / "ws")
    assert not result.ok
    report = result.report()
    assert "command at line 2" in report and "$ printf" in report
    assert "-c\n+b" in report, report
    assert not (tmp_path / "ws/never-made").exists()  # the block stops at its first failing command


def test_exit_annotation_is_honoured_both_ways(tmp_path):
    ok = page(
        tmp_path,
        "'''console\n$ false   # exit 1\n$ (exit 3)  # exit 3\n$ (exit 2)  # exit 2: a reason\n'''\n",
        "ok.md",
    )
    assert run(ok, tmp_path / "ws").ok

    unannotated = page(tmp_path, "'''console\n$ false\n'''\n", "unannotated.md")
    result = run(unannotated, tmp_path / "ws")
    assert "exit status 1, expected 0" in result.report()

    wrong = page(tmp_path, "'''console\n$ (exit 2)   # exit 1\n'''\n", "wrong.md")
    assert "exit status 2, expected 1" in run(wrong, tmp_path / "ws").report()

    missing_failure = page(tmp_path, "'''console\n$ true   # exit 1\n'''\n", "missing.md")
    assert "exit status 0, expected 1" in run(missing_failure, tmp_path / "ws").report()


def test_timings_are_masked_but_counts_are_not(tmp_path):
    timings = page(
        tmp_path,
        """\
        '''console
        $ echo 'Done in 3 s. 12 shards at 1,234/s, 3.5 it/s, ETA 0:01:02, step took 4.2 ms'
        Done in 820 s. 12 shards at 35,407/s, 12.3 it/s, ETA 0:00:09, step took 1 min 3 s
        '''
        """,
        "timings.md",
    )
    assert run(timings, tmp_path / "ws").ok

    counts = page(tmp_path, "'''console\n$ echo '4 shards'\n5 shards\n'''\n", "counts.md")
    assert "-5 shards\n+4 shards" in run(counts, tmp_path / "ws").report()


@pytest.mark.parametrize(
    "text", ["4 shards", "300 samples", "2 steps", "k=16", "500 m", "v1.2 s", "seed 253840"]
)
def test_mask_leaves_counts_alone(text):
    assert mask(text) == text


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Done in 820 s", "Done in 3 s"),
        ("1h 2m", "45 s"),
        ("35,407/h", "1.5 items/s"),
        ("\x1b[32mok\x1b[0m 0.5 s", "ok 3.2 ms"),
        ("10%\r50%\rdone at 2026-12-06 10:46:52", "done at 2027-01-01 00:00:01"),
    ],
)
def test_mask_makes_timings_equal(a, b):
    assert mask(a) == mask(b)


def test_ellipsis_matches_anything_within_and_across_lines(tmp_path):
    path = page(
        tmp_path,
        """\
        '''console
        $ printf 'wrote 4 shards to /tmp/x123\\nline 2\\nline 3\\nend\\n'
        wrote 4 shards to ...
        ...
        end
        '''
        """,
    )
    assert run(path, tmp_path / "ws").ok


def test_heredoc_and_continuation_commands(tmp_path):
    path = page(
        tmp_path,
        """\
        '''console
        $ cat > conf.txt <<'EOF'
        a $HOME
        $ not a prompt
        EOF
        $ cat conf.txt | \\
            wc -l
        2
        $ cat <<-END
        \tx
        \tEND
        x
        $ cat <<< "herestring"
        herestring
        '''
        """,
    )
    result = run(path, tmp_path / "ws")
    assert result.ok, result.report()
    assert (tmp_path / "ws/conf.txt").read_text() == "a $HOME\n$ not a prompt\n"


def test_export_and_cd_persist_within_a_page_not_across_pages(tmp_path):
    first = page(
        tmp_path,
        """\
        '''console
        $ export GREETING=hello
        $ mkdir -p sub && cd sub
        '''

        '''console
        $ echo "$GREETING from $(basename "$PWD")"
        hello from sub
        '''

        '''bash
        test "$GREETING" = hello
        touch made-by-script
        '''
        """,
        "first.md",
    )
    second = page(
        tmp_path,
        """\
        '''console
        $ echo "[${GREETING:-unset}] $(basename "$PWD")"
        [unset] ws
        $ ls sub
        made-by-script
        '''
        """,
        "second.md",
    )
    workspace = tmp_path / "ws"
    assert run(first, workspace).ok
    result = run(second, workspace)
    assert result.ok, result.report()


def test_background_process_is_gone_after_the_page(tmp_path):
    path = page(
        tmp_path,
        """\
        '''console
        $ sleep 300 > sleep.log 2>&1 &
        $ echo $! > sleep.pid
        '''
        """,
    )
    assert run(path, tmp_path / "ws").ok
    pid = int((tmp_path / "ws/sleep.pid").read_text())
    assert not _alive(pid)


def test_python_state_does_not_cross_pages(tmp_path):
    first = page(tmp_path, "'''python\nmarker = 1\n'''\n", "first.md")
    second = page(tmp_path, "'''pycon\n>>> 'marker' in globals()\nFalse\n'''\n", "second.md")
    assert run(first, tmp_path / "ws").ok
    assert run(second, tmp_path / "ws").ok


def test_skip_needs_a_reason_and_is_reported(tmp_path):
    no_reason = page(tmp_path, "<!-- docs-test: skip -->\n'''console\n$ false\n'''\n", "bad.md")
    with pytest.raises(CollectionError, match=r"bad.md:1: docs-test: skip needs a reason"):
        parse_page(no_reason, tmp_path)

    skipped = page(
        tmp_path, "<!-- docs-test: skip: needs a GPU -->\n\n'''console\n$ false\n'''\n", "skipped.md"
    )
    result = run(skipped, tmp_path / "ws")
    assert result.ok
    assert [(r.status, r.detail) for r in result.results] == [("skip", "needs a GPU")]
    assert "skipped.md:3: needs a GPU" in result.summary()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("'''rust\nfn main() {}\n'''\n", "page.md:1: unknown language 'rust': give the block a language"),
        ("text\n\n'''\nplain\n'''\n", "page.md:3: a block without a language: give the block a language"),
        ("<!-- docs-test: retry: 3 -->\n'''console\n$ true\n'''\n", "page.md:1: unknown annotation"),
        ("<!-- docs-test: skip: why -->\n\nprose\n", "page.md:1: docs-test annotation not directly above"),
        ("<!-- docs-test: timeout: soon -->\n'''bash\ntrue\n'''\n", "page.md:1: docs-test: timeout needs"),
        ("'''console\noutput first\n$ true\n'''\n", "page.md:2: console output before"),
        ("'''console\n$ cat <<EOF\nno end\n'''\n", "page.md:2: heredoc 'EOF' is never closed"),
        ("'''toml title=\"../escape.toml\"\nx = 1\n'''\n", "page.md:1: title='../escape.toml' must be"),
    ],
)
def test_collection_check_fails_naming_page_and_line(tmp_path, text, message):
    path = page(tmp_path, text)
    with pytest.raises(CollectionError) as info:
        parse_page(path, tmp_path)
    assert message in str(info.value)
    result = run(path, tmp_path / "ws")
    assert not result.ok and message in result.report()


def test_pycon_output_is_compared(tmp_path):
    path = page(tmp_path, "'''pycon\n>>> x = 20\n>>> x * 2\n41\n'''\n")
    report = run(path, tmp_path / "ws").report()
    assert 'page.md", line 3' in report and "Expected:\n    41\nGot:\n    40" in report, report


def test_pycon_blocks_share_the_pages_namespace(tmp_path):
    path = page(tmp_path, "'''pycon\n>>> x = 20\n'''\n\n'''pycon\n>>> x + 1\n21\n'''\n")
    result = run(path, tmp_path / "ws")
    assert result.ok, result.report()


def test_python_exception_fails_with_a_traceback_in_page_lines(tmp_path):
    path = page(
        tmp_path,
        """\
        '''python
        def load():
            raise ValueError("no such shard")
        load()
        '''
        """,
    )
    report = run(path, tmp_path / "ws").report()
    assert 'page.md", line 4, in <module>' in report, report
    assert 'page.md", line 3, in load' in report
    assert "ValueError: no such shard" in report


def test_python_subprocess_writing_to_fd1_does_not_break_the_session(tmp_path):
    path = page(
        tmp_path,
        """\
        '''python
        import os, subprocess
        subprocess.run(["echo", '{"ok": false}'])
        os.write(1, b"raw\\n")
        os.write(2, b"err\\n")
        print("printed")
        kept = 42
        '''

        '''pycon
        >>> kept
        42
        '''
        """,
    )
    result = run(path, tmp_path / "ws")
    assert result.ok, result.report()


def test_timeout_annotation_fails_slow_blocks_and_the_page_goes_on(tmp_path):
    path = page(
        tmp_path,
        """\
        <!-- docs-test: timeout: 1 -->
        '''console
        $ sleep 30
        '''

        '''console
        $ echo after
        after
        '''

        '''python
        before = 1
        '''

        <!-- docs-test: timeout: 1 -->
        '''python
        import time
        time.sleep(30)
        '''

        '''pycon
        >>> "before" in globals()
        True
        '''
        """,
    )
    result = run(path, tmp_path / "ws", keep_going=True)
    assert [r.status for r in result.results] == ["FAIL", "ok", "ok", "FAIL", "FAIL"]
    report = result.report()
    assert "timed out after 1 s" in report
    assert "(note: the Python namespace was reset: a block timed out after 1 s)" in report
    assert result.seconds < 15


def test_first_failure_stops_the_page_unless_keep_going(tmp_path):
    path = page(tmp_path, "'''console\n$ false\n'''\n\n'''console\n$ touch after\n'''\n")
    assert len(run(path, tmp_path / "ws").results) == 1
    assert not (tmp_path / "ws/after").exists()
    assert len(run(path, tmp_path / "ws", keep_going=True).results) == 2
    assert (tmp_path / "ws/after").exists()


def test_nav_pages_in_order_ignoring_urls_and_tags(tmp_path):
    mkdocs = tmp_path / "mkdocs.yml"
    mkdocs.write_text(
        textwrap.dedent(
            """\
            site_name: x
            docs_dir: pages
            markdown_extensions:
              - pymdownx.emoji:
                  emoji_index: !!python/name:material.extensions.emoji.twemoji
            nav:
              - Home: index.md
              - Guide:
                  - guide/build.md
                  - Train: guide/train.md
              - GitHub: https://github.com/example/geo-ssl
              - reference.md
            """
        )
    )
    assert nav_pages(mkdocs) == [
        tmp_path / "pages/index.md",
        tmp_path / "pages/guide/build.md",
        tmp_path / "pages/guide/train.md",
        tmp_path / "pages/reference.md",
    ]


def test_pages_outside_the_nav_are_found(tmp_path):
    (tmp_path / "docs/guide").mkdir(parents=True)
    for name in ("index.md", "guide/build.md", "guide/orphan.md"):
        (tmp_path / "docs" / name).write_text("# x\n")
    mkdocs = tmp_path / "mkdocs.yml"
    mkdocs.write_text("nav:\n  - index.md\n  - Guide:\n      - guide/build.md\n")
    assert pages_outside_nav(mkdocs) == [tmp_path / "docs/guide/orphan.md"]


def test_cli_prints_one_line_per_block_and_exits_1_on_failure(tmp_path):
    good = page(tmp_path, "'''console\n$ echo hi\nhi\n'''\n", "good.md")
    bad = page(tmp_path, "'''console\n$ echo hi\nho\n'''\n", "bad.md")
    workspace = tmp_path / "ws"
    cli = [sys.executable, "-m", "tests.docs.run", "--workspace", str(workspace)]
    done = subprocess.run([*cli, str(good), str(bad)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{good}:1 console ok" in done.stdout
    assert f"{bad}:1 console FAIL" in done.stdout and "+hi" in done.stdout
    assert "2 of 2 pages run, 1 failed" in done.stdout

    again = subprocess.run(
        [*cli, "--from-page", "2", str(bad), str(good)], cwd=REPO, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "bad.md" not in again.stdout and "1 of 1 pages run, 0 failed (from page 2)" in again.stdout


def test_sessions_start_without_the_callers_geo_ssl_settings(tmp_path, monkeypatch):
    """Under pytest the suite's conftest sets GEO_SSL_PROGRESS=0, which hides notes the pages show: a page
    must see a reader's shell, not the suite's settings."""
    monkeypatch.setenv("GEO_SSL_PROGRESS", "0")
    monkeypatch.setenv("GEO_SSL_STORAGE_ENDPOINT", "http://127.0.0.1:1")
    path = page(
        tmp_path,
        "'''console\n$ echo ${GEO_SSL_PROGRESS:-unset} ${GEO_SSL_STORAGE_ENDPOINT:-unset}\nunset unset\n'''\n",
    )
    result = run(path, tmp_path / "ws")
    assert result.ok, result.report()
