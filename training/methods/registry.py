"""The method registry: every method family by name, built-in ones first, then plug-ins.

A plug-in is any importable module that calls `register(MyFamily())`: name it with
`geo-pretrain --plugins my_pkg.my_method` (or `plugins = "my_pkg.my_method"` in the config, which
config.toml records, so `--resume` finds it again), or publish it under the `geo_ssl.methods` entry-point
group of an installed package.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.methods.base import Method, MethodFamily
from geo_ssl.training.methods.byol import ByolFamily
from geo_ssl.training.methods.moco import MocoFamily
from geo_ssl.training.methods.simclr import SimclrFamily

log = logging.getLogger(__name__)

_FAMILIES: dict[str, MethodFamily] = {}
_METHODS: dict[str, Method] = {}
_LOADED: set[str] = set()
ENTRY_POINT_GROUP = "geo_ssl.methods"


def register(family: MethodFamily) -> MethodFamily:
    """Add a family and its method names (its +tp / +geo variants); the same family again is a no-op."""
    if not family.name or (family.name in _FAMILIES and type(_FAMILIES[family.name]) is not type(family)):
        raise ValueError(f"method family name {family.name!r} is empty or taken")
    _FAMILIES[family.name] = family
    for method in family.variants():
        _METHODS[method.name] = method
    return family


register(MocoFamily())
register(SimclrFamily())
register(ByolFamily())


def load_plugins(modules: str = "") -> None:
    """Import the comma-separated plug-in `modules` and, once, the entry points of installed packages."""
    names = [m.strip() for m in modules.split(",") if m.strip()]
    if "entry points" not in _LOADED:
        _LOADED.add("entry points")
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            log.debug("loading method plug-in %s", ep.value)
            ep.load()
    for name in names:
        if name in _LOADED:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise GeoSSLError(f"plugins: cannot import method plug-in {name!r} ({exc})") from None
        _LOADED.add(name)


def method_names() -> tuple[str, ...]:
    """Every registered method name (built-in and plug-in), in the order they were registered."""
    return tuple(_METHODS)


def families() -> tuple[MethodFamily, ...]:
    return tuple(_FAMILIES.values())


def get_method(name: str) -> Method:
    """The registered method called `name` (e.g. "moco+geo+tp"); GeoSSLError listing the known names else."""
    if name not in _METHODS:
        raise GeoSSLError(
            f"unknown method {name!r}; choose one of {', '.join(_METHODS)} (a plug-in's method needs --plugins)"
        )
    return _METHODS[name]
