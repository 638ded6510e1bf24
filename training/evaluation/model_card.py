"""The model card written beside an exported backbone: what it is, what it saw, how to feed it, how to load it.

Hugging Face and timm users expect a short Markdown card next to the weights (on the Hub it is the
repository's README.md). Everything in it comes from the export's JSON card, so the two never disagree.
"""

from __future__ import annotations

import json
from typing import Any

from geo_ssl.schemas.dataset_card import data_licence

#: The timm config's name: timm and the Hub read it beside the weights (geo-eval too, for the input size).
TIMM_CONFIG = "config.json"
_TAGS = ("image-feature-extraction", "timm", "self-supervised", "remote-sensing", "geo-ssl")


def timm_config(card: dict[str, Any]) -> dict[str, Any]:
    """timm's config.json for the export: the architecture and a pretrained_cfg with the TRAINED input size,
    so `timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=cfg["pretrained_cfg"])` and
    `timm.data.resolve_data_config` feed the model what it was trained on (timm's resnet default is 224).
    crop_pct 1.0 and bilinear: geo-eval's Resize(S) + CenterCrop(S) of the shorter side."""
    pre = card["preprocessing"]
    return {
        "architecture": card["arch"],
        "num_classes": 0,
        "num_features": card["feature_dim"],
        "global_pool": "avg",
        "pretrained_cfg": {
            "file": card["file"],
            "input_size": list(pre["input_size"]),
            "fixed_input_size": False,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": list(pre["mean"]),
            "std": list(pre["std"]),
            "num_classes": 0,
            "first_conv": "conv1",
            "classifier": "fc",
            "license": data_licence((card.get("data") or {}).get("dataset"))["license_name"],
        },
    }


def front_matter(card: dict[str, Any]) -> str:
    """The Hub's YAML for the model card (JSON scalars are YAML): library, licence, tags, data, metrics.

    `datasets` lists a Hub dataset id only when the run read one (hf://datasets/ID/...); metrics come from
    the card's `evaluation` ({name: value}) when an evaluation was recorded, never invented."""
    data = card.get("data") or {}
    licence = data_licence(data.get("dataset"))
    method = str(card.get("method") or card.get("source", "unknown"))
    lines = ["---", "library_name: timm", "license: other", f"license_name: {licence['license_name']}"]
    if licence["license_link"]:
        lines.append(f"license_link: {licence['license_link']}")
    lines += ["pipeline_tag: image-feature-extraction", "tags:"]
    lines += [f"- {t}" for t in (*_TAGS, method.replace("+", "-"))]
    shards = str(data.get("shards", ""))
    if shards.startswith("hf://datasets/"):
        lines += ["datasets:", f"- {json.dumps('/'.join(shards.split('/')[3:5]))}"]
    evaluation = card.get("evaluation") or {}
    if evaluation:
        lines += [
            "model-index:",
            f"- name: {json.dumps(card['file'])}",
            "  results:",
            "  - task:",
            "      type: image-classification",
            "    dataset:",
            f"      name: {json.dumps(data.get('name') or licence['source'])}",
            f"      type: {json.dumps(data.get('dataset') or 'fmow')}",
            "    metrics:",
        ]
        for name, value in sorted(evaluation.items()):
            lines += [f"    - type: {json.dumps(name)}", f"      value: {json.dumps(value)}"]
    return "\n".join([*lines, "---", ""]) + "\n"


def method_text(method: str) -> str:
    """The method's one line (its family's model-card text), or what an unknown one gets."""
    from geo_ssl.training.methods import get_method

    try:
        return get_method(method).description
    except Exception:  # not a geo-pretrain method name (an imported MoCo / GASSL checkpoint)
        return "recorded by the source checkpoint"


def loading_code(arch: str, fmt: str, filename: str) -> dict[str, str]:
    """Python snippets that load the file into torchvision's and timm's ResNet (tested by the suite)."""
    if fmt == "safetensors":
        imports, read = "from safetensors.torch import load_file\n", f'load_file("{filename}")'
    else:
        imports, read = "import torch\n", f'torch.load("{filename}", weights_only=True)'
    torchvision_code = (
        f"import torchvision\n{imports}"
        f"model = torchvision.models.{arch}()\n"
        f"missing, unexpected = model.load_state_dict({read}, strict=False)\n"
        'assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected  # fc stays random: train or replace it'
    )
    timm_code = (
        f"import timm\n{imports}"
        f'model = timm.create_model("{arch}", pretrained=False, num_classes=0)  # no classifier: pooled features\n'
        f"model.load_state_dict({read})  # strict: every key matches timm's ResNet"
    )
    return {"torchvision": torchvision_code, "timm": timm_code}


def _row(name: str, value: Any) -> str:
    return f"| {name} | {value} |"


def render(card: dict[str, Any]) -> str:
    """Markdown model card from the export's JSON card."""
    arch, method = card["arch"], card.get("method") or card.get("source", "unknown")
    pre, data, train = card["preprocessing"], card.get("data") or {}, card.get("training") or {}
    size = pre["input_size"]
    lines = [
        front_matter(card) + f"# {arch} backbone, self-supervised with {method} (geo-ssl)",
        "",
        f"A torchvision `{arch}` without its classifier: the weights of everything before `fc`, whose output "
        f"is a {card['feature_dim']}-d pooled feature. Exported by geo-export {card.get('geo_ssl_version', '')} "
        f"from `{card['from']}`.",
        "",
        "| | |",
        "|---|---|",
        _row("architecture", f"`{arch}` (torchvision and timm share the key names); `fc` not included"),
        _row("method", f"`{method}`: {method_text(str(method))}"),
        _row("source", card["source"]),
        _row(
            "training",
            f"{card['step']} optimizer steps" if card.get("step") is not None else "step count not recorded",
        ),
    ]
    rows = {"epoch reached": card.get("epoch"), "epochs planned": train.get("epochs")}
    rows.update({k.replace("_", " "): train.get(k) for k in ("batch_size", "lr", "temperature")})
    lines += [_row(name, value) for name, value in rows.items() if value is not None]
    if data:
        lines.append(_row("data", "; ".join(f"{k}: {v}" for k, v in data.items())))
    else:
        lines.append(_row("data", "not recorded in the checkpoint"))
    lines += [
        _row(
            "preprocessing",
            f"RGB scaled to [0, 1], then normalised with mean {pre['mean']} and std {pre['std']}; "
            f"input {size[1]} x {size[2]} ({pre['input_size_note']}); geo-eval feeds the shorter side "
            f"resized to {size[1]}, centre-cropped",
        ),
        _row(
            "file", f"`{card['file']}` ({card['format']}, {card['tensors']} tensors, sha256 {card['sha256']})"
        ),
        "",
        "## Load with torchvision",
        "",
        "```python",
        card["load"]["torchvision"],
        "```",
        "",
        "## Load with timm",
        "",
        "```python",
        card["load"]["timm"],
        "```",
        "",
        f"`{TIMM_CONFIG}` beside the weights holds timm's `pretrained_cfg` with the trained input size "
        f"({size[1]} px; timm's {arch} default is 224): pass it as `pretrained_cfg_overlay` "
        "(with `file=` the weights) so `timm.data.resolve_data_config({}, model=model)` resizes to it. "
        "Several exports into one folder share that file (the last one wins); each `.json` card keeps its own "
        "copy under `timm_config`.",
        "",
        "## Licence",
        "",
        "The weights were learned from the data named above; their use is subject to that data's licence "
        "or terms (fMoW: the Functional Map of the World Challenge Public License; GeoImageNet: ImageNet's "
        "terms of access and each Flickr photo's licence; see the geo-ssl README, section Licences).",
        "",
    ]
    return "\n".join(lines)
