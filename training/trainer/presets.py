"""Shipped run presets (`geo-pretrain --preset NAME`): the paper's runs as config files.

A preset is a TOML file in geo_ssl/training/presets/ with a [preset] table (description, the paper's
figure for the run, what the sources leave uncertain) and a [pretrain] table of config fields. Its
values come first; a --config file and then flags override them. `--preset list` prints them.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any

from geo_ssl.pipeline.common.errors import GeoSSLError


def _folder():
    return resources.files("geo_ssl.training") / "presets"


def preset_names() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.name[: -len(".toml")] for p in _folder().iterdir() if p.name.endswith(".toml"))


def read_preset(name: str) -> dict[str, Any]:
    """{"name", "description", "paper", "uncertain": [str], "values": {config field: value}}."""
    path = _folder() / f"{name}.toml"
    if not path.is_file():
        raise GeoSSLError(
            f"--preset {name}: unknown preset; choose one of {', '.join(preset_names())} (or list)"
        )
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    meta = data.get("preset", {})
    return {
        "name": name,
        "description": str(meta.get("description", "")),
        "paper": str(meta.get("paper", "")),
        "uncertain": [str(u) for u in meta.get("uncertain", [])],
        "values": dict(data.get("pretrain", {})),
    }


def preset_values(name: str | None) -> dict[str, Any]:
    """The config values of preset `name` ({} for None); config_from_args checks their keys and types."""
    return read_preset(name)["values"] if name else {}


def format_presets() -> str:
    """What `--preset list` prints: each preset, its description, the paper's figure and its values."""
    lines = []
    for name in preset_names():
        p = read_preset(name)
        lines.append(f"{name}: {p['description']}")
        lines.append(f"  paper: {p['paper']}")
        lines.append("  " + " ".join(f"{k}={v}" for k, v in p["values"].items()))
        for u in p["uncertain"]:
            lines.append(f"  uncertain: {u}")
    return "\n".join(lines)
