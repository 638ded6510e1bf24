"""Each data source is wired the same way (issue 18, item 7): fMoW and GeoImageNet each keep their
subcommands and their `build` in their own commands.py; `--source` and the shared commands are cli.py's."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from geo_ssl.pipeline import cli
from geo_ssl.pipeline.fmow import commands as fmow_commands
from geo_ssl.pipeline.geoimagenet import commands as geoimagenet_commands

#: `geo-build-dataset --help`'s commands, in the order they have always been listed.
COMMANDS = ["synth-fmow", "index-fmow", "cluster", "write-shards", "build", "validate", "report",
            "harvest-flickr", "synth-imagenet", "index-imagenet"]  # fmt: skip


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def test_every_source_has_the_same_parts_and_owns_its_commands() -> None:
    assert cli.SOURCES == {"fmow": fmow_commands, "geoimagenet": geoimagenet_commands}
    assert list(_subcommands(cli.build_parser())) == COMMANDS
    for name, source in cli.SOURCES.items():
        for part in ("COMMANDS", "add_parsers", "run_command", "add_build_flags", "run_build"):
            assert hasattr(source, part), f"{name} has no {part}"
        own = argparse.ArgumentParser()
        source.add_parsers(own.add_subparsers())
        assert tuple(_subcommands(own)) == source.COMMANDS  # its parsers, and only them
    assert fmow_commands.COMMANDS == ("synth-fmow", "index-fmow")


def test_source_is_the_clis_flag() -> None:
    build = _subcommands(cli.build_parser())["build"]
    source = next(a for a in build._actions if "--source" in a.option_strings)
    assert tuple(source.choices) == ("fmow", "geoimagenet") and source.default is None
    for module in cli.SOURCES.values():  # no source module defines it
        parser = argparse.ArgumentParser()
        module.add_build_flags(parser)
        assert "--source" not in _flags(parser)
    assert {"--urls", "--yfcc", "--credentials", "--api-url", "--rate-limit", "--words"} <= _flags(build)


@pytest.mark.parametrize(
    "args, config, expect",
    [
        (["--source", "nope"], None, "--source: invalid choice: 'nope'"),
        (["--root", "{tmp}/none"], None, "fMoW root not found"),  # default: fMoW
        (["--source", "geoimagenet", "--root", "{tmp}/none"], None, "GeoImageNet build: no urls given"),
        ([], 'source = "geoimagenet"\nroot = "{tmp}/none"\n', "GeoImageNet build: no urls given"),
        (["--source", "fmow"], 'source = "geoimagenet"\nroot = "{tmp}/none"\n', "unknown key(s) source"),
    ],
)
def test_build_goes_to_the_chosen_sources_build(args, config, expect, tmp_path: Path) -> None:
    """A real `geo-build-dataset build`: --source, else the config's `source`, else fMoW; one line, exit 2."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if config is not None:
        (tmp_path / "build.toml").write_text(config.replace("{tmp}", str(tmp_path)))
        argv += ["--config", str(tmp_path / "build.toml")]
    proc = subprocess.run(
        [sys.executable, "-m", "geo_ssl.pipeline.cli", "build", "--out", str(tmp_path / "out"), *argv],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert expect in proc.stderr.splitlines()[-1] and "Traceback" not in proc.stderr, proc.stderr
