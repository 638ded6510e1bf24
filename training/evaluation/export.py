"""`geo-export`: a pretrained query encoder as a plain ResNet backbone, in safetensors (default) or .pth.

    geo-export RUN/checkpoint-last.pt resnet50-gassl.safetensors        # + .json card and .md model card
    geo-export checkpoint_0199.pth.tar resnet50-gassl.pth --format pth

The weights load into `torchvision.models.resnet50()` with `load_state_dict(sd, strict=False)` where only
fc.weight and fc.bias are missing, and strictly into `timm.create_model("resnet50", num_classes=0)`
(timm's ResNet keys are torchvision's). Inputs: geo-pretrain checkpoints, official MoCo and GASSL
checkpoints (`state_dict` with `module.encoder_q.*`; GASSL's `geo_dict` is left out), or an already
exported backbone (.pth or .safetensors). Beside the weights: OUT.json (machine-readable card) and OUT.md
(the model card: architecture, method, data, preprocessing, training steps, loading code).

torch is imported only once the input is known to be a weight file and the outputs are writable, so a
mistake is refused in a fraction of a second.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import zipfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from geo_ssl.pipeline import __version__
from geo_ssl.pipeline.common import fsio, storage
from geo_ssl.pipeline.common.cli_args import OneLineParser
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.logs import STDOUT, add_verbosity_flags, get_logger, set_verbosity
from geo_ssl.pipeline.common.progress import Summary
from geo_ssl.pipeline.common.retry import explain_failure
from geo_ssl.training.evaluation import model_card
from geo_ssl.training.trainer.weights_io import FORMATS, check_destination, encode_weights, read_weights

if TYPE_CHECKING:
    import torch
    import torchvision

log = get_logger(__name__)
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
#: Crop size of the official MoCo / GASSL recipes, for checkpoints that do not record theirs.
DEFAULT_INPUT_SIZE = 224
ARCH_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")  # = backbone.ARCHS, torch-free


def backbone_state_dict(
    ckpt: dict[str, Any], where: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], dict]:
    """(backbone state_dict without fc, description) from any supported checkpoint layout."""
    from geo_ssl.training.trainer.checkpoint import FORMAT

    if ckpt.get("format") == FORMAT:
        from geo_ssl.training.methods import get_method, load_plugins

        load_plugins(str((ckpt.get("config") or {}).get("plugins", "")))  # a plug-in method's checkpoint
        sd, prefix = ckpt["model"], get_method(ckpt["method"]).backbone_prefix
        meta = {"source": "geo-ssl", "method": ckpt["method"], "step": ckpt["step"], "epoch": ckpt["epoch"]}
        meta["config"] = dict(ckpt.get("config") or {})
        meta["image_size"] = meta["config"].get("image_size")
    elif "conv1.weight" in ckpt:
        sd, prefix, meta = ckpt, "", {"source": "backbone"}
        recorded = ckpt.get("__metadata__") or {}  # safetensors metadata of an earlier export
        for key in ("arch", "method", "step"):
            if recorded.get(key):
                meta[key] = int(recorded[key]) if key == "step" else recorded[key]
        if recorded.get("input_size"):  # "[3, H, W]", written by geo-export: the trained crop size
            meta["image_size"] = int(json.loads(recorded["input_size"])[-1])
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
    encoder = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix) and k != "__metadata__"}
    backbone = {k: v for k, v in encoder.items() if not k.startswith("fc.")}
    meta["dropped_head_tensors"] = len(encoder) - len(backbone)
    return backbone, meta


def _few(d: dict) -> str:
    keys = list(d)
    return ", ".join(map(str, keys[:6])) + (", ..." if len(keys) > 6 else "")


def resolve_arch(
    where: str, backbone: dict[str, torch.Tensor], claimed: str | None = None, requested: str | None = None
) -> str:
    """The ResNet depth of `backbone`; a checkpoint's claim or --arch that disagrees names both archs."""
    from geo_ssl.training.models.backbone import infer_arch

    actual = infer_arch(backbone)
    if claimed and claimed != actual:
        raise GeoSSLError(f"{where}: checkpoint says arch {claimed}, but its weights are {actual}")
    if requested and requested != actual:
        raise GeoSSLError(f"{where}: --arch {requested} asked, but the weights are {actual}")
    return actual


def to_torchvision(backbone: dict[str, torch.Tensor], arch: str | None = None) -> torchvision.models.ResNet:
    """Load a backbone state_dict into a fresh torchvision ResNet, checking that only fc is missing."""
    from geo_ssl.training.models.backbone import build_resnet, infer_arch

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
    """A torchvision ResNet with pretrained weights from any supported file (.pt/.pth/.pth.tar/.safetensors),
    or 'random' (needs arch)."""
    import torch

    from geo_ssl.training.models.backbone import build_resnet

    if url == "random":
        if arch is None:
            raise GeoSSLError("--weights random needs --arch")
        with torch.random.fork_rng(devices=[]):  # the same random network every time
            torch.manual_seed(0)
            return build_resnet(arch), {"source": "random", "arch": arch, "seed": 0}
    content, fmt = read_weights(url, trusted=trusted)
    backbone, meta = backbone_state_dict(content, where=url)
    meta.pop("config", None)
    meta["arch"] = resolve_arch(url, backbone, meta.get("arch"), arch)
    meta["file_format"] = fmt
    return to_torchvision(backbone, meta["arch"]), meta


def output_format(out: str, fmt: str | None) -> str:
    """The format to write: --format, else the suffix of OUT (.safetensors / .pth / .pt), else safetensors."""
    lower = out.lower()
    by_suffix = (
        "safetensors"
        if lower.endswith(".safetensors")
        else "pth"
        if lower.endswith((".pth", ".pt"))
        else None
    )
    if fmt and by_suffix and fmt != by_suffix:
        raise GeoSSLError(f"{out}: the name says {by_suffix}, but --format {fmt}; make them agree")
    return fmt or by_suffix or "safetensors"


def card_paths(dst: str) -> dict[str, str]:
    """Where the JSON card, the Markdown model card and timm's config.json of `dst` go."""
    folder = os.path.dirname(dst)
    timm = fsio.join(folder, model_card.TIMM_CONFIG) if folder else model_card.TIMM_CONFIG
    return {"json": dst + ".json", "md": dst + ".md", "timm": timm}


def _data_description(config: dict[str, Any]) -> dict[str, Any]:
    """What the run trained on: the run config's data path and split, plus the shard folder's dataset.json."""
    if not config.get("data"):
        return {}
    out: dict[str, Any] = {"shards": config["data"], "split": config.get("split", "train")}
    try:  # best effort: the shard folder may be gone or on storage this machine cannot reach
        card = json.loads(fsio.read_bytes(fsio.join(config["data"], "dataset.json")))
        out["name"] = card.get("name")
        out["dataset"] = card.get("dataset")  # GeoImageNet; none: fMoW (the model card's licence)
        out["fingerprint"] = card.get("fingerprint")
        split = (card.get("splits") or {}).get(out["split"]) or {}
        out["locations"], out["views"] = split.get("samples"), split.get("views")
    except Exception:  # any failure only leaves these fields out of the card
        pass
    if config.get("n_clusters"):
        out["geo_clusters"] = config["n_clusters"]
    return {k: v for k, v in out.items() if v is not None}


#: checkpoint.FORMAT, looked for in a torch file's pickle without importing torch
_TRAINING_FORMAT = b"geo-ssl-pretrain"


def refuse_overwriting_input(src: str, dst: str) -> None:
    """GeoSSLError when writing `dst` would destroy `src` (the same file) or a training checkpoint: a
    backbone written over RUN/checkpoint-last.pt left the run impossible to --resume."""
    if _same_file(src, dst):
        raise GeoSSLError(f"{dst}: is the input checkpoint; writing the backbone there would destroy it")
    if _is_training_checkpoint(dst):
        raise GeoSSLError(
            f"{dst}: is a geo-pretrain training checkpoint (--resume needs it); choose another output path"
        )


def _same_file(a: str, b: str) -> bool:
    if fsio.is_local(a) != fsio.is_local(b):
        return False
    if not fsio.is_local(a):
        (fs_a, path_a), (fs_b, path_b) = fsio.get_fs(a), fsio.get_fs(b)
        return fs_a.protocol == fs_b.protocol and path_a.rstrip("/") == path_b.rstrip("/")
    path_a, path_b = fsio.get_fs(a)[1], fsio.get_fs(b)[1]
    try:
        return os.path.samefile(path_a, path_b)  # links and other spellings of one file too
    except OSError:  # one of them does not exist (yet)
        return os.path.abspath(path_a) == os.path.abspath(path_b)


def _is_training_checkpoint(url: str) -> bool:
    """Whether `url` is a geo-pretrain checkpoint: a torch zip whose pickle names the format (read without
    loading its tensors: a few KB of a 100+ MB file)."""
    try:
        fs, path = fsio.get_fs(url)
        if not fs.isfile(path):
            return False
        with fs.open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                return False
            f.seek(0)
            with zipfile.ZipFile(f) as archive:
                pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
                return any(_TRAINING_FORMAT in archive.read(n) for n in pickles[:1])
    except (OSError, zipfile.BadZipFile, ValueError):
        return False  # unreadable or not a zip: not a checkpoint we must protect (it is replaced atomically)


def _write(url: str, data: bytes) -> None:
    try:
        fsio.atomic_write_bytes(url, data)
    except OSError as exc:
        raise GeoSSLError(f"{url}: cannot write ({exc.strerror or exc})") from None


def export_backbone(
    src: str, dst: str, arch: str | None = None, trusted: bool = False, fmt: str | None = None
) -> dict[str, Any]:
    """Write the backbone of `src` to `dst` (+ `dst`.json card and `dst`.md model card); returns the card."""
    fmt = output_format(dst, fmt)
    paths = card_paths(dst)
    for path in (dst, *paths.values()):
        check_destination(path)
        refuse_overwriting_input(src, path)
    content, _ = read_weights(src, trusted=trusted)
    backbone, meta = backbone_state_dict(content, where=src)
    del content
    arch = resolve_arch(src, backbone, meta.get("arch"), arch)
    from geo_ssl.training.models.backbone import feature_dim

    resnet = to_torchvision(backbone, arch)  # refuse to write weights that would not load
    config = meta.pop("config", {})
    recorded = meta.pop("image_size", None)  # the run config's, or an earlier export's metadata
    size = int(recorded or DEFAULT_INPUT_SIZE)
    size_note = (
        "the pretraining crop size"
        if recorded
        else "the official MoCo/GASSL crop size; not recorded in the checkpoint"
    )
    preprocessing = {**NORMALIZE, "input_size": [3, size, size], "input_size_note": size_note}
    method = meta.get("method") or meta["source"]
    metadata = {
        "format": "pt",
        "arch": arch,
        "method": str(method),
        "source": meta["source"],
        "input_size": json.dumps(preprocessing["input_size"]),
        "mean": json.dumps(NORMALIZE["mean"]),
        "std": json.dumps(NORMALIZE["std"]),
        "geo_ssl_version": __version__,
    }
    if meta.get("step") is not None:
        metadata["step"] = str(meta["step"])
    data = encode_weights(backbone, fmt, metadata)
    sha = hashlib.sha256(data).hexdigest()
    _write(dst, data)
    training = {k: config.get(k) for k in ("epochs", "batch_size", "lr", "temperature", "max_steps")}
    card = {
        **meta,
        "arch": arch,
        "method": method,
        "from": src,
        "file": os.path.basename(dst),
        "format": fmt,
        "sha256": sha,
        "tensors": len(backbone),
        "feature_dim": feature_dim(resnet),
        "preprocessing": preprocessing,
        "data": _data_description(config),
        "training": {k: v for k, v in training.items() if v is not None},
        "geo_ssl_version": __version__,
        "torchgeo_style_name": f"{arch}_fmow_rgb_{str(method).replace('+', '_')}-{sha[:8]}{FORMATS[fmt]}",
        "load": model_card.loading_code(arch, fmt, os.path.basename(dst)),
    }
    summary = Summary(stage="export", unit="tensors", inputs=len(backbone) + meta["dropped_head_tensors"])
    summary.written, summary.skipped = len(backbone), meta["dropped_head_tensors"]
    card["summary"] = summary.as_dict()
    card["timm_config"] = model_card.timm_config(card)
    _write(paths["json"], (json.dumps(card, indent=1, sort_keys=True) + "\n").encode())
    _write(paths["md"], model_card.render(card).encode())
    _write(paths["timm"], (json.dumps(card["timm_config"], indent=1) + "\n").encode())
    log.info(summary.line() + f" (head tensors skipped) -> {dst}", extra=STDOUT)
    return card


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="geo-export",
        description="Export a pretrained query encoder as a ResNet backbone (fc left out) with a model card.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "checkpoint",
        help="geo-pretrain checkpoint, official MoCo/GASSL .pth.tar, or a backbone (.pth/.safetensors)",
    )
    p.add_argument(
        "out", help="output weights; OUT.json (card) and OUT.md (model card) are written beside it"
    )
    p.add_argument(
        "--format",
        choices=tuple(FORMATS),
        default=None,
        help="default: from OUT's suffix (.safetensors, .pth/.pt), else safetensors",
    )
    p.add_argument("--arch", choices=ARCH_NAMES, default=None, help="default: inferred from the weights")
    p.add_argument("--trust", action="store_true", help="load with weights_only=False (only files you trust)")
    storage.add_storage_flags(p)  # CHECKPOINT and OUT may be s3:// etc. URLs
    add_verbosity_flags(p)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_verbosity(args)
    try:
        storage.configure_from_args(args)
        card = export_backbone(args.checkpoint, args.out, arch=args.arch, trusted=args.trust, fmt=args.format)
    except GeoSSLError as exc:
        print(f"geo-export: error: {storage.redact(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # storage kept failing or cannot be reached: one line (codes in retry.py)
        explained = explain_failure(exc)
        if explained is None:
            raise
        print(f"geo-export: error: {storage.redact(explained[0])}", file=sys.stderr)
        sys.exit(explained[1])
    log.info(
        f"{card['arch']} backbone ({card['format']}), sha256 {card['sha256'][:8]}; "
        f"model card {card_paths(args.out)['md']}",
        extra=STDOUT,
    )


if __name__ == "__main__":
    main()
