"""`import geo_ssl` is the front door: `__version__`, and the main entry points by name, each with its
docstring, loaded on first use so that the import itself stays cheap (no torch)."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import geo_ssl

REPO = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
#: Heavy libraries a bare `import geo_ssl` must leave alone.
HEAVY = ("torch", "torchvision", "pyarrow", "numpy", "geopandas", "geo_ssl.pipeline", "geo_ssl.training")


def _fresh(code: str, **kwargs) -> dict:
    """Run `code` in a new interpreter and return what it printed as JSON (this process has torch already)."""
    proc = subprocess.run(
        [sys.executable, *kwargs.pop("flags", ()), "-c", code],
        capture_output=True, text=True, timeout=60, **kwargs,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_import_is_cheap_and_knows_its_version() -> None:
    code = (
        "import json, sys, geo_ssl; "
        f"print(json.dumps({{'version': geo_ssl.__version__, 'loaded': [m for m in {HEAVY!r} if m in sys.modules]}}))"
    )
    seen = _fresh(code, cwd=REPO)  # from the clone, as `python -m` runs there
    assert seen == {"version": VERSION, "loaded": []}


def test_an_entry_point_loads_only_its_own_module() -> None:
    code = (
        "import json, sys, geo_ssl; f = geo_ssl.cluster; "
        "print(json.dumps([f.__module__, 'torch' in sys.modules, 'geo_ssl.training' in sys.modules, "
        "'cluster' in vars(geo_ssl)]))"
    )
    assert _fresh(code) == ["geo_ssl.pipeline.cluster", False, False, True]  # and cached after the first use


def test_version_falls_back_when_the_distribution_is_not_installed(tmp_path) -> None:
    """The package folder on sys.path without any installed metadata (python -S: no site-packages)."""
    (tmp_path / "geo_ssl").symlink_to(REPO / "pipeline" / "_geo_ssl", target_is_directory=True)
    code = "import json, geo_ssl; print(json.dumps(geo_ssl.__version__))"
    assert _fresh(code, flags=("-S",), cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)}) == "0+unknown"


@pytest.mark.parametrize("name", geo_ssl.__all__)
def test_every_entry_point_resolves_and_says_what_it_is(name: str) -> None:
    obj = getattr(geo_ssl, name)
    assert obj is getattr(importlib.import_module(geo_ssl._ENTRY_POINTS[name]), name)
    doc = inspect.getdoc(obj) or ""
    assert doc.strip() and not doc.startswith(f"{name}("), (
        f"{name}: no docstring of its own"
    )  # dataclass stub


def test_the_front_door_lists_stages_loaders_methods_and_evaluation() -> None:
    wanted = {
        "synth_fmow", "index_fmow", "cluster", "write_shards", "build", "validate", "report",  # stages
        "LoaderConfig", "pretrain_loader", "views_loader", "eval_loader", "SampleIndexDataset",  # loaders
        "register", "get_method", "MethodFamily",  # methods
        "pretrain", "knn_top1", "linear_probe", "finetune", "export_backbone",  # training, evaluation
    }  # fmt: skip
    assert wanted <= set(geo_ssl.__all__)
    doc = geo_ssl.__doc__ or ""
    assert [n for n in geo_ssl.__all__ if n not in doc] == [], "the module docstring says where each name is"
    assert set(geo_ssl.__all__) | {"__version__", "pipeline", "training", "schemas"} <= set(dir(geo_ssl))
    assert geo_ssl.training is importlib.import_module("geo_ssl.training")
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = geo_ssl.no_such_name
