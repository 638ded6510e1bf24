"""geo-ssl: geo-tagged imagery to WebDataset shards, and self-supervised trainers that stream them.

The names below can be used as ``geo_ssl.<name>``; each loads its module on first use, so ``import geo_ssl``
stays cheap (no torch, no pyarrow). Where they live:

- build stages, ``geo_ssl.pipeline``: synth_fmow, index_fmow, cluster, write_shards (ShardOptions), validate,
  report; build / BuildConfig run index, cluster and write-shards in one go. GeoImageNet: harvest_flickr,
  index_imagenet, build_geoimagenet / GeoImageNetBuild.
- loaders, ``geo_ssl.training.data``: LoaderConfig, pretrain_loader, views_loader, eval_loader, and
  SampleIndexDataset for random access through sample_index.parquet.
- methods, ``geo_ssl.training.methods``: register, get_method, method_names, load_plugins, MethodFamily, Method.
- pretraining, ``geo_ssl.training.trainer``: PretrainConfig, pretrain.
- evaluation, ``geo_ssl.training.evaluation`` and ``geo_ssl.training.models.knn``: extract_features, knn_top1,
  linear_probe, finetune, export_backbone, load_backbone.
- table schemas and the dataset card: ``geo_ssl.schemas``.

The command lines are geo-build-dataset, geo-pretrain, geo-eval and geo-export. This file lives in
pipeline/_geo_ssl/ of the repository (pyproject.toml maps it to ``geo_ssl``), as the repository keeps its
top-level folders.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module that defines it (imported on first access, PEP 562).
_ENTRY_POINTS: dict[str, str] = {
    # build stages
    "synth_fmow": "geo_ssl.pipeline.fmow.synth",
    "index_fmow": "geo_ssl.pipeline.fmow.index",
    "cluster": "geo_ssl.pipeline.cluster",
    "write_shards": "geo_ssl.pipeline.shards.write",
    "ShardOptions": "geo_ssl.pipeline.shards.options",
    "validate": "geo_ssl.pipeline.shards.validate",
    "report": "geo_ssl.pipeline.report",
    "build": "geo_ssl.pipeline.build",
    "BuildConfig": "geo_ssl.pipeline.build",
    "harvest_flickr": "geo_ssl.pipeline.geoimagenet.harvest",
    "index_imagenet": "geo_ssl.pipeline.geoimagenet.index",
    "build_geoimagenet": "geo_ssl.pipeline.geoimagenet.build",
    "GeoImageNetBuild": "geo_ssl.pipeline.geoimagenet.build",
    # loaders
    "LoaderConfig": "geo_ssl.training.data.loader",
    "pretrain_loader": "geo_ssl.training.data.loader",
    "views_loader": "geo_ssl.training.data.loader",
    "eval_loader": "geo_ssl.training.data.loader",
    "SampleIndexDataset": "geo_ssl.training.data.random_access",
    # methods
    "register": "geo_ssl.training.methods",
    "get_method": "geo_ssl.training.methods",
    "method_names": "geo_ssl.training.methods",
    "load_plugins": "geo_ssl.training.methods",
    "MethodFamily": "geo_ssl.training.methods",
    "Method": "geo_ssl.training.methods",
    # pretraining
    "PretrainConfig": "geo_ssl.training.trainer.config",
    "pretrain": "geo_ssl.training.trainer.loop",
    # evaluation
    "extract_features": "geo_ssl.training.models.knn",
    "knn_top1": "geo_ssl.training.models.knn",
    "linear_probe": "geo_ssl.training.evaluation.linear_probe",
    "finetune": "geo_ssl.training.evaluation.finetune",
    "export_backbone": "geo_ssl.training.evaluation.export",
    "load_backbone": "geo_ssl.training.evaluation.export",
}
_SUBPACKAGES = ("pipeline", "training", "schemas")

__all__ = sorted(_ENTRY_POINTS)


def __getattr__(name: str) -> Any:
    """Import the module behind an entry point (or a subpackage) the first time the name is asked for."""
    if name == "__version__":  # importlib.metadata alone is most of a bare `import geo_ssl`'s time
        value = _installed_version()
    elif name in _ENTRY_POINTS:
        value = getattr(importlib.import_module(_ENTRY_POINTS[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBPACKAGES, "__version__"})


def _installed_version() -> str:
    """The installed distribution's version; "0+unknown" in a source tree that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("geo-ssl")
    except PackageNotFoundError:
        return "0+unknown"
