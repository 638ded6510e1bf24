"""Argument mistakes are one line with the flag, a reason and a hint, exit 2, in every command line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from geo_ssl.pipeline.common.cli_args import OneLineParser

MODULES = {
    "geo-build-dataset": "geo_ssl.pipeline.cli",
    "geo-pretrain": "geo_ssl.training.trainer.cli",
    "geo-eval": "geo_ssl.training.evaluation.cli",
    "geo-export": "geo_ssl.training.evaluation.export",
}


@pytest.mark.parametrize(
    "cli, args, expect",
    [
        ("geo-build-dataset", ["write-shards", "--index", "i", "--resise", "64"],
         "geo-build-dataset write-shards: error: --resise: unknown flag; did you mean --resize? "
         "(see geo-build-dataset write-shards --help)"),
        ("geo-build-dataset", ["cluster", "--index", "i", "--seed", "x"],
         "geo-build-dataset cluster: error: --seed: not an integer: 'x' (see geo-build-dataset cluster --help)"),
        ("geo-build-dataset", ["harvest-flickr", "--out", "o"],
         "geo-build-dataset harvest-flickr: error: --urls: required, not given "
         "(see geo-build-dataset harvest-flickr --help)"),
        ("geo-pretrain", ["--seed", "x"],
         "geo-pretrain: error: --seed: invalid int value: 'x' (see geo-pretrain --help)"),
        ("geo-eval", ["knn", "--weigths", "w.pth", "--data", "d"],
         "geo-eval knn: error: --weigths: unknown flag; did you mean --weights? (see geo-eval knn --help)"),
        ("geo-export", [],
         "geo-export: error: checkpoint, out: required, not given (see geo-export --help)"),
    ],
)  # fmt: skip
def test_a_mistake_is_one_line_with_the_flag_and_a_hint(cli: str, args: list[str], expect: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", MODULES[cli], *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, "GEO_SSL_PROGRESS": "0"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [expect], proc.stderr
    assert proc.stdout == ""


def _parser() -> OneLineParser:
    parser = OneLineParser(prog="tool")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("build")
    p.add_argument("--root", required=True)
    p.add_argument("--resize", type=int)
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--layout", choices=("locations", "views"))
    return parser


@pytest.mark.parametrize(
    "args, expect",
    [
        (["biuld"], "tool: error: COMMAND: invalid choice: 'biuld' (choose from 'build'); did you mean build?"),
        (["build", "--root", "r", "--re", "3"], "tool build: error: --re: ambiguous, could be --resize, --rebuild"),
        (["build", "--root", "r", "--layout", "view"],
         "tool build: error: --layout: invalid choice: 'view' (choose from 'locations', 'views'); did you mean views?"),
        (["build", "--rot", "r"], "tool build: error: --rot: unknown flag; did you mean --root?"),
        (["build", "--root", "r", "stray"], "tool build: error: stray: unexpected argument"),
    ],
)  # fmt: skip
def test_reasons_and_hints(args: list[str], expect: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The typo beats the "required" argparse checks first; choices get a near match; one line each."""
    with pytest.raises(SystemExit) as stop:
        _parser().parse_args(args)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(expect + " (see tool"), lines
