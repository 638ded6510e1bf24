"""`geo-export`: a pretrained query encoder as a plain torchvision ResNet backbone state_dict.

The output loads with `torchvision.models.resnet50().load_state_dict(sd, strict=False)` where only
fc.weight and fc.bias are missing (and into timm ResNets, which share torchvision's names). Inputs:
geo-pretrain checkpoints, official MoCo and GASSL checkpoints (`state_dict` with `module.encoder_q.*`;
GASSL's `geo_dict` is left out), or an already exported backbone. A JSON card beside the output records
the architecture, the source and the input normalisation.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torchvision

from geo_ssl.pipeline import __version__
from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.progress import Summary
from geo_ssl.training.models.backbone import ARCHS, build_resnet, infer_arch
from geo_ssl.training.trainer.checkpoint import FORMAT, load_checkpoint

#: Key prefixes of the query encoder in checkpoints we know, tried in order.
ENCODER_PREFIXES = (
    "module.encoder_q.",
    "encoder_q.",
    "module.moco.encoder_q.",
    "moco.encoder_q.",
    "encoder.",
)
FC_KEYS = {"fc.weight", "fc.bias"}
#: Input normalisation of the geo-ssl loader and of official MoCo/GASSL (ImageNet mean and std, RGB in [0, 1]).
NORMALIZE = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def backbone_state_dict(
    ckpt: dict[str, Any], where: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], dict]:
    """(backbone state_dict without fc, description) from any supported checkpoint layout."""
    if ckpt.get("format") == FORMAT:
        from geo_ssl.training.models.methods import get_method

        sd, prefix = ckpt["model"], get_method(ckpt["method"]).backbone_prefix
        meta = {"source": "geo-ssl", "method": ckpt["method"], "step": ckpt["step"], "epoch": ckpt["epoch"]}
        meta["image_size"] = ckpt["config"].get("image_size")
    elif "conv1.weight" in ckpt:
        sd, prefix, meta = ckpt, "", {"source": "backbone"}
    else:
        sd = ckpt.get("state_dict", ckpt.get("model"))
        if not isinstance(sd, dict):
            raise GeoSSLError(f"{where}: no state_dict, model or ResNet weights found (keys: {_few(ckpt)})")
        prefix = next((p for p in ENCODER_PREFIXES if f"{p}conv1.weight" in sd), None)
        if prefix is None:
            raise GeoSSLError(
                f"{where}: no query-encoder ResNet keys ({', '.join(ENCODER_PREFIXES)}) in {_few(sd)}"
            )
        meta = {"source": "gassl" if "geo_dict" in ckpt else "moco", "epoch": ckpt.get("epoch")}
        if isinstance(ckpt.get("arch"), str):
            meta["arch"] = ckpt["arch"]
    encoder = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    backbone = {k: v for k, v in encoder.items() if not k.startswith("fc.")}
    meta["dropped_head_tensors"] = len(encoder) - len(backbone)
    return backbone, meta


def _few(d: dict) -> str:
    keys = list(d)
    return ", ".join(map(str, keys[:6])) + (", ..." if len(keys) > 6 else "")


def to_torchvision(backbone: dict[str, torch.Tensor], arch: str | None = None) -> torchvision.models.ResNet:
    """Load a backbone state_dict into a fresh torchvision ResNet, checking that only fc is missing."""
    arch = arch or infer_arch(backbone)
    model = build_resnet(arch)
    try:
        result = model.load_state_dict(backbone, strict=False)
    except RuntimeError as exc:
        raise GeoSSLError(f"weights do not fit torchvision {arch}: {str(exc).splitlines()[0]}") from None
    if set(result.missing_keys) != FC_KEYS or result.unexpected_keys:
        raise GeoSSLError(
            f"weights do not fit torchvision {arch}: missing {sorted(set(result.missing_keys) - FC_KEYS)[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return model


def load_backbone(
    url: str, arch: str | None = None, trusted: bool = False
) -> tuple[torchvision.models.ResNet, dict]:
    """A torchvision ResNet with pretrained weights from any supported file, or 'random' (needs arch)."""
    if url == "random":
        if arch is None:
            raise GeoSSLError("--weights random needs --arch")
        with torch.random.fork_rng(devices=[]):  # the same random network every time
            torch.manual_seed(0)
            return build_resnet(arch), {"source": "random", "arch": arch, "seed": 0}
    backbone, meta = backbone_state_dict(load_checkpoint(url, trusted=trusted), where=url)
    arch = arch or infer_arch(backbone)
    if meta.get("arch") and meta["arch"] != arch:
        raise GeoSSLError(f"{url}: checkpoint says arch {meta['arch']}, but its weights are {arch}")
    meta["arch"] = arch
    return to_torchvision(backbone, arch), meta


def export_backbone(src: str, dst: str, arch: str | None = None, trusted: bool = False) -> dict[str, Any]:
    """Write the backbone of `src` to `dst` (+ `dst`.json card); returns the card."""
    ckpt = load_checkpoint(src, trusted=trusted)
    backbone, meta = backbone_state_dict(ckpt, where=src)
    del ckpt
    arch = arch or meta.get("arch") or infer_arch(backbone)
    to_torchvision(backbone, arch)  # refuse to write weights that would not load
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in backbone.items()}, buf)
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    fsio.atomic_write_bytes(dst, data)
    method = str(meta.get("method", meta["source"])).replace("+", "_")
    card = {
        **meta,
        "arch": arch,
        "from": src,
        "file": os.path.basename(dst),
        "sha256": sha,
        "tensors": len(backbone),
        "normalize": NORMALIZE,
        "torchgeo_style_name": f"{arch}_fmow_rgb_{method}-{sha[:8]}.pth",
        "load": f"torchvision.models.{arch}().load_state_dict(torch.load(path), strict=False)  # fc missing",
    }
    summary = Summary(stage="export", unit="tensors", inputs=len(backbone) + meta["dropped_head_tensors"])
    summary.written, summary.skipped = len(backbone), meta["dropped_head_tensors"]
    card["summary"] = summary.as_dict()
    fsio.atomic_write_text(dst + ".json", json.dumps(card, indent=1, sort_keys=True) + "\n")
    print(summary.line() + f" (head tensors skipped) -> {dst}")
    return card


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="geo-export",
        description="Export a pretrained query encoder as a torchvision ResNet state_dict (fc left out).",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("checkpoint", help="geo-pretrain checkpoint, official MoCo/GASSL .pth.tar, or a backbone")
    p.add_argument("out", help="output .pth (a JSON card is written beside it)")
    p.add_argument("--arch", choices=tuple(ARCHS), default=None, help="default: inferred from the weights")
    p.add_argument("--trust", action="store_true", help="load with weights_only=False (only files you trust)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        card = export_backbone(args.checkpoint, args.out, arch=args.arch, trusted=args.trust)
    except GeoSSLError as exc:
        print(f"geo-export: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(
        f"{card['arch']} backbone, sha256 {card['sha256'][:8]}; torchgeo-style name {card['torchgeo_style_name']}"
    )


if __name__ == "__main__":
    main()
