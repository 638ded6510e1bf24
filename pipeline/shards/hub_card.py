"""README.md of a shard folder: the Hugging Face Hub's dataset card, so the folder loads as a dataset.

`datasets.load_dataset(<shard folder>)` (or a Hub repository the folder was uploaded to) reads the YAML
front matter: its `configs` point each split at its tar files only, so the JSON and Parquet files beside
them (dataset.json, manifest, rejects, sample index) are not mistaken for data, and its `dataset_info`
declares every member, because a location sample holds one image per date (00.jpg, 01.jpg, ...) and
datasets refuses samples with different members unless the features are given. Written from the same
records as dataset.json, with no paths or timestamps, so a rerun or a resumed build writes the same bytes.
YAML is written by hand (JSON strings are YAML scalars): pyyaml is no dependency of the build.
"""

from __future__ import annotations

import json

from geo_ssl.schemas.dataset_card import data_licence

HUB_CARD = "README.md"

_TAGS = ("remote-sensing", "self-supervised", "webdataset", "geo")


def _q(text: object) -> str:
    return json.dumps(str(text), ensure_ascii=False)


def features(layout: str, max_views: int) -> dict[str, str]:
    """Member name -> Hub feature dtype of every sample (a location sample has up to max_views images)."""
    images = ["jpg"] if layout == "views" else [f"{i:02d}.jpg" for i in range(max(max_views, 1))]
    return {
        **{name: "image" for name in images},
        "cls": "int64",  # the geo cluster (schemas/SAMPLE_FORMAT.md), not the category
        "json": "json",
        "__key__": "string",
        "__url__": "string",
    }


def hub_card(card: dict, max_views: int) -> str:
    """The README.md text for a shard folder whose dataset.json is CARD (as write-shards builds it)."""
    layout = card.get("layout", "locations")
    licence = data_licence(card.get("dataset"))
    splits = {name: c for name, c in sorted(card.get("splits", {}).items()) if c.get("shards")}
    lines = ["---", "license: other", f"license_name: {licence['license_name']}"]
    if licence["license_link"]:
        lines.append(f"license_link: {licence['license_link']}")
    lines += ["task_categories:", "- image-classification", "- image-feature-extraction", "tags:"]
    lines += [f"- {t}" for t in _TAGS]
    lines += ["configs:", f"- config_name: {layout}", "  default: true", "  data_files:"]
    for name in splits:
        lines += [f"  - split: {name}", f"    path: {_q(name + '-*.tar')}"]
    lines += ["dataset_info:", f"  config_name: {layout}", "  features:"]
    lines += [f"  - name: {_q(n)}\n    dtype: {t}" for n, t in features(layout, max_views).items()]
    lines += ["  splits:"]
    for name, c in splits.items():
        lines += [f"  - name: {name}", f"    num_examples: {c['samples']}"]
    lines += ["---", ""]
    return "\n".join(lines) + _body(card, layout, licence["source"], splits)


def _body(card: dict, layout: str, source: str, splits: dict[str, dict]) -> str:
    per = (
        "one sample per view (`jpg`)"
        if layout == "views"
        else "one sample per location, its views oldest first (`00.jpg`, `01.jpg`, ...)"
    )
    rows = "\n".join(
        f"| {n} | {c['shards']} | {c['samples']} | {c['views']} | {c.get('rejected_locations', 0)} |"
        for n, c in splits.items()
    )
    categories = "\n".join(f"| {c['id']} | {c['name']} |" for c in card.get("categories") or [])
    options = card.get("parameters", {})
    flags = " ".join(
        f"--{k.replace('_', '-')} {v}" for k in ("layout", "resize", "seed", "shard_bytes")
        if (v := options.get(k)) is not None
    )  # fmt: skip
    return f"""# {card.get("name", "geo-ssl WebDataset shards")}

WebDataset shards written by geo-ssl's `geo-build-dataset write-shards` from {source}: {per}.
Each sample's `json` holds its location, dates, boxes and category; `cls` is its geo cluster
(k = {card.get("k")}). The fields are described in geo-ssl's `schemas/SAMPLE_FORMAT.md` (sample format
{card.get("schema_version")}); `dataset.json` beside the shards is the machine-readable card, and
`sample_index.parquet` locates every sample by byte offset.

```python
import datasets
ds = datasets.load_dataset("<this folder or repository>", split="{next(iter(splits), "train")}")
```

| split | shards | samples | views | rejected locations |
|---|---|---|---|---|
{rows}

Made with `geo-build-dataset write-shards INDEX OUT {flags}` (fingerprint {card.get("fingerprint")};
every option is in `dataset.json`).

## Categories

`category_index` in each sample's `json` refers to these names:

| id | name |
|---|---|
{categories}

## Licence

The images are from {source} and keep its terms; see `license_link` above and the geo-ssl README, section
Licences. The code that wrote the shards is under the MIT licence.
"""


def max_views(records: list[dict]) -> int:
    """The most images any sample of these completion records holds."""
    return max((entry.get("views", 1) for rec in records for entry in rec.get("index", [])), default=1)
