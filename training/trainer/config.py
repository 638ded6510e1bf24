"""The pretraining config: one dataclass, read from a TOML file, overridden by flags, validated up front.

Every field is a flag (`batch_size` -> `--batch-size`, booleans get `--no-...`), listed by --help in
its group (the field's metadata); the TOML file holds the same names as top-level keys. A method family's
own options (`MethodFamily.options`, e.g. BYOL's byol_tau) are keys and flags the same way. Whether a
field defines the run (`--resume` refuses a change) is its metadata too. Unknown keys, wrong types and
impossible values stop the run before any work with a one-line GeoSSLError that names the key and what
is allowed; the method's family adds its own checks (`MethodFamily.check`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.errors import GeoSSLError

if TYPE_CHECKING:
    from geo_ssl.training.methods import Method

log = logging.getLogger(__name__)

ARCH_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
AMP_MODES = ("auto", "bf16", "fp16", "off")
SCHEDULES = ("cosine", "step", "constant")
RUN_CONFIG = "config.toml"  # written into the run folder at start


#: Option groups of `geo-pretrain --help`, in order (object storage flags follow them).
GROUPS = {
    "data": "data: shards, split, crop, loader",
    "model": "method and model (a plug-in family's own options follow under 'method NAME')",
    "optimiser": "optimiser and schedule",
    "run": "run: length of this invocation, precision, logging, checkpoints, kNN monitor, resume",
}


def _f(
    default: Any, help: str, choices: tuple | None = None, *, group: str, defines_run: bool = False
) -> Any:
    """A config field; `defines_run`: the run's result depends on it, so `--resume` refuses a change."""
    return field(
        default=default,
        metadata={"help": help, "choices": choices, "group": group, "defines_run": defines_run},
    )


def _data(default: Any, help: str, choices: tuple | None = None) -> Any:
    return _f(default, help, choices, group="data", defines_run=True)


def _loader(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A data setting that changes how, not what, the loader reads."""
    return _f(default, help, choices, group="data")


def _model(default: Any, help: str, choices: tuple | None = None) -> Any:
    return _f(default, help, choices, group="model", defines_run=True)


def _optim(default: Any, help: str, choices: tuple | None = None) -> Any:
    return _f(default, help, choices, group="optimiser", defines_run=True)


def _run(default: Any, help: str, choices: tuple | None = None) -> Any:
    return _f(default, help, choices, group="run")


@dataclass
class PretrainConfig:
    """One pretraining run's settings: each field (but the internal ones) is a geo-pretrain flag and a
    config.toml key, its help text in the field's metadata."""

    # data
    data: str = _data(
        "", "shard folder (with manifest.parquet) or brace pattern of .tar shards; local or URL"
    )
    split: str = _data("train", "split to pretrain on")
    out: str = _run(
        "runs/geo-ssl", "run folder: checkpoints, metrics.jsonl, TensorBoard events (local or s3:// etc.)"
    )
    image_size: int = _data(224, "crop size fed to the network")
    num_workers: int = _loader(4, "loader worker processes per rank")
    shuffle_buffer: int = _loader(1000, "sample shuffle buffer per worker")
    epoch_samples: int = _data(
        0, "locations per epoch, images with --epoch-unit image (0 = one pass over the split's manifest)"
    )
    strict: bool = _loader(False, "fail on an undecodable sample instead of skipping it")
    cache_dir: str = _loader(
        "", "local folder caching remote (s3:// etc.) shards, least recently used out ('' = none)"
    )
    cache_limit: str = _loader("20G", "size cap of --cache-dir, e.g. 20G or 512M")
    prefetch: int = _loader(
        -1,
        "shard slices each loader worker fetches ahead, in epoch order (-1 = 4 from s3:// etc., none from "
        "local disk; 0 = off)",
    )
    prefetch_bytes: str = _loader("128M", "memory cap of --prefetch per loader worker, e.g. 128M or 1G")
    augment: bool = _data(True, "MoCo-v2 augmentation (off: resize + centre crop only, for debugging)")
    crop: str = _data(  # GASSL's +TP crop (geo_ssl.training.data.gassl_crop)
        "moco", "training crop: moco = RandomResizedCrop scale 0.2-1 of the stored view (MoCo-v2); gassl = "
        "GASSL's +TP crop, scale 0.08-1 inside the view's central square (Resize+CenterCrop 448)",
        ("moco", "gassl"),
    )  # fmt: skip
    crop_scale: float = _data(
        0.0, "smallest crop area as a fraction of the view (0 = the crop's own: moco 0.2, gassl 0.08)"
    )
    epoch_unit: str = _data(  # geo_ssl.training.data.epoch_unit
        "location", "what an epoch counts: location = each location once; image = each location once per "
        "view (GASSL's epoch: locations drawn by view count, about 4.8x the steps on fMoW)",
        ("location", "image"),
    )  # fmt: skip
    data_path: str = _loader(  # the GPU data path (geo_ssl.training.data.gpu_augment)
        "cpu", "where JPEGs are decoded and augmented: cpu (loader workers), gpu (nvJPEG + batched ops on the "
        "device; opt-in until a GPU benchmark shows it equal to the CPU path and faster), auto = cpu for now",
        ("auto", "cpu", "gpu"),
    )  # fmt: skip
    # method and model
    method: str = _model(
        "moco+geo+tp",
        "SSL method: moco, simclr or byol, +geo (moco) and +tp modifiers, or a plug-in's method",
    )
    plugins: str = _f(
        "", "comma-separated modules that register method plug-ins (geo_ssl.training.methods.registry)",
        group="model",
    )  # fmt: skip
    arch: str = _model("resnet50", "torchvision ResNet depth", ARCH_NAMES)
    dim: int = _model(128, "projection width")
    mlp: bool = _model(True, "MoCo-v2 MLP projection head (off = MoCo-v1 linear head)")
    head_bn: bool = _model(
        False, "BatchNorm after the MLP head's hidden layer (SimCLR / MoCo v3; helps very short runs)"
    )
    moco_k: int = _model(65536, "MoCo queue length K (official --moco-k)")
    moco_m: float = _model(0.999, "MoCo key-encoder momentum m (official --moco-m)")
    temperature: float = _model(0.2, "softmax temperature (MoCo-v2: 0.2; the GASSL run used 0.02)")
    n_clusters: int = _model(0, "geo clusters of the head (0 = read DATA/index/cluster_stats.json)")
    moco_weight: float = _model(1.0, "weight of the contrastive loss")
    geo_weight: float = _model(1.0, "weight of the geo-cluster loss (GASSL: 1)")
    bn_splits: int = _model(
        0,
        "BatchNorm sub-batches for shuffle-BN (0 = auto: up to 8 of >= 16 samples in one process, 1 under DDP)",
    )
    shuffle_bn: bool = _model(True, "shuffle keys before the key encoder (shuffle-BN)")
    # optimisation
    epochs: int = _optim(200, "epochs")
    max_steps: int = _run(
        0,
        "stop (with a checkpoint) after this many steps in total, for this invocation only: the lr schedule "
        "still spans all epochs, and a later --resume without --max-steps continues to the planned end "
        "(0 = run all)",
    )
    batch_size: int = _optim(256, "global batch size, split evenly over the DDP ranks")
    lr: float = _optim(0.0, "learning rate (0 = 0.03 x batch_size / 256)")
    momentum: float = _optim(0.9, "SGD momentum")
    weight_decay: float = _optim(1e-4, "SGD weight decay (all parameters, as official MoCo)")
    schedule: str = _optim(
        "cosine", "lr schedule, updated every step (step = x0.1 at 60% and 80%)", SCHEDULES
    )
    warmup_steps: int = _optim(0, "linear warm-up steps")
    amp: str = _run(
        "auto", "mixed precision on CUDA (auto = bf16 if supported, else fp16); never on CPU", AMP_MODES
    )
    channels_last: bool = _run(True, "channels-last memory format on CUDA")
    seed: int = _optim(0, "seed of model init, loader order and augmentation")
    deterministic: bool = _run(False, "torch deterministic algorithms (slower; for exact reproduction)")
    # logging, checkpoints, monitors
    log_every: int = _run(10, "steps between metric records")
    ckpt_every: int = _run(500, "steps between checkpoints (also on SIGTERM/SIGINT and at the end)")
    keep_checkpoints: int = _run(
        2, "keep the N newest --ckpt-every checkpoints as checkpoint-step{STEP:08d}.pt besides "
        "checkpoint-last.pt (hard links in a local folder; 0 = checkpoint-last.pt only)",
    )  # fmt: skip
    save_steps: str = _run(
        "", "steps whose checkpoints are kept for good as checkpoint-step{STEP:08d}.pt, e.g. 1000,5000 "
        "(also off the --ckpt-every grid; never pruned; --resume adds to the run's earlier ones)",
    )  # fmt: skip
    knn_every: int = _run(1, "epochs between kNN monitor runs (0 = off)")
    knn_every_steps: int = _run(0, "steps between kNN monitor runs (0 = only per epoch)")
    knn_data: str = _run("", "shards for the kNN monitor (default: --data)")
    knn_bank_split: str = _run("train", "split whose category labels form the kNN feature bank")
    knn_query_split: str = _run("val", "held-out split whose top-1 is reported")
    knn_bank_samples: int = _run(10000, "max images in the kNN bank (0 = all)")
    knn_query_samples: int = _run(2000, "max query images (0 = all)")
    knn_k: int = _run(200, "neighbours (at most a tenth of the bank is used: a 240-image bank gets k=24)")
    knn_t: float = _run(0.1, "kNN vote temperature")
    resume: bool = _run(False, "continue the run in --out from its last checkpoint")
    #: a plug-in family's own options (`byol_tau`, ...), read through `family.section(cfg)`
    method_options: dict[str, Any] = field(default_factory=dict, metadata={"internal": True})

    def as_dict(self) -> dict[str, Any]:
        """Flat: every field, then the method family's options with their defaults (config.toml's keys)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata.get("internal")}
        return {**out, **family_options(self)}

    @property
    def base_lr(self) -> float:
        return base_lr(self.lr, self.batch_size)


def base_lr(lr: float, batch_size: int) -> float:
    """--lr, or with 0 MoCo's linear scaling rule: 0.03 x batch_size / 256."""
    return lr if lr > 0 else 0.03 * batch_size / 256


#: Fields that define the run (their `defines_run` metadata); `--resume` refuses a config that changes them,
#: or an option of the method's family (every family option defines the run).
RUN_DEFINING = tuple(f.name for f in fields(PretrainConfig) if f.metadata.get("defines_run"))


def family_options(cfg: PretrainConfig) -> dict[str, Any]:
    """The options of cfg.method's family (plug-in style, `MethodFamily.options`), defaults filled in."""
    from geo_ssl.training.methods import get_method

    try:
        section = get_method(cfg.method).family.section(cfg)
    except GeoSSLError:  # an unknown method: validate() says so
        return dict(cfg.method_options)
    return dataclasses.asdict(section) if section is not None else {}


def run_defining(values: dict[str, Any], resolved: dict[str, Any]) -> dict[str, Any]:
    """The run-defining values of a flat config dict (RUN_DEFINING and the family's options), each 'auto' (0)
    replaced by what it resolved to (lr by the scaling rule; n_clusters and bn_splits by `resolved`, a
    checkpoint's), so that `--resume` with an explicit value equal to the one auto chose is no change."""
    extra = sorted(set(values) - {f.name for f in fields(PretrainConfig)})
    out = {k: values.get(k) for k in (*RUN_DEFINING, *extra)}
    for k in ("n_clusters", "bn_splits"):
        if not out[k] and resolved.get(k) is not None:
            out[k] = resolved[k]
    if not out["lr"] and isinstance(out["batch_size"], int):
        out["lr"] = base_lr(0.0, out["batch_size"])
    return out


def changed_fields(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The keys whose values differ (floats compared to 1e-9 relative: a value written to TOML and read back,
    or computed by the scaling rule, is the same value)."""

    def same(a: Any, b: Any) -> bool:
        floats = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0) if floats else a == b

    return [k for k in now if not same(saved.get(k), now[k])]


#: Fields that limit one invocation only; `--resume` does not take them from the run's saved config.
PER_INVOCATION = ("max_steps",)


def parse_steps(text: str) -> tuple[int, ...]:
    """The step numbers of --save-steps ('1000,5000'); GeoSSLError unless each is an integer > 0."""
    parts = [p.strip() for p in text.split(",")] if text.strip() else []
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise GeoSSLError(f"config: save_steps = {text!r}: give step numbers > 0, e.g. 1000,5000")
    return tuple(sorted({int(p) for p in parts}))


def _check_type(name: str, value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise GeoSSLError(f"{where}: {name} = {value!r} should be {type(default).__name__}")
    return value


def option_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """Every registered family's own options: {key: (family name, field)}."""
    from geo_ssl.training.methods import families

    return {f.name: (fam.name, f) for fam in families() if fam.options for f in fields(fam.options)}


def config_from_dict(values: dict[str, Any], where: str = "config") -> PretrainConfig:
    """Build a config from plain values, rejecting unknown keys and wrong types."""
    from geo_ssl.training.methods import load_plugins

    if isinstance(values.get("plugins"), str):
        load_plugins(values["plugins"])  # their families' options are keys too
    known = {f.name for f in fields(PretrainConfig) if not f.metadata.get("internal")}
    options = option_fields()
    unknown = sorted(set(values) - known - set(options))
    if unknown:
        allowed = ", ".join([*known, *options])
        raise GeoSSLError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {allowed}")
    defaults = PretrainConfig()
    steps = values.get("save_steps")
    if isinstance(steps, list):  # TOML: save_steps = [1000, 5000]
        values = {**values, "save_steps": ",".join(str(s) for s in steps)}
    typed = {k: _check_type(k, v, getattr(defaults, k), where) for k, v in values.items() if k in known}
    extra = {k: _check_type(k, v, options[k][1].default, where) for k, v in values.items() if k in options}
    return PretrainConfig(**typed, method_options=extra)


def load_toml(url: str) -> dict[str, Any]:
    """Top-level keys of a TOML config file (a [pretrain] table is accepted too)."""
    if fsio.is_local(url) and os.path.isdir(url):
        raise GeoSSLError(f"--config {url}: is a folder; give a TOML file (e.g. RUN/{RUN_CONFIG})")
    try:
        data = tomllib.loads(fsio.read_bytes(url).decode("utf-8"))
    except FileNotFoundError:
        raise GeoSSLError(f"{url}: config file not found") from None
    except OSError as exc:
        raise GeoSSLError(f"--config {url}: cannot read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise GeoSSLError(f"{url}: not valid TOML ({exc})") from None
    return dict(data.get("pretrain", data)) if set(data) <= {"pretrain"} else data


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field and per family option, in --help's groups; default None, so that only
    flags given override the file."""
    groups = {name: parser.add_argument_group(title) for name, title in GROUPS.items()}
    for f in fields(PretrainConfig):
        if not f.metadata.get("internal"):
            _add_flag(groups[f.metadata["group"]], f)
    by_family: dict[str, argparse._ArgumentGroup] = {}
    for family, f in option_fields().values():
        if family not in by_family:
            by_family[family] = parser.add_argument_group(f"method {family} (its own options)")
        _add_flag(by_family[family], f)


def _add_flag(group: argparse._ArgumentGroup, f: dataclasses.Field) -> None:
    flag = "--" + f.name.replace("_", "-")
    helptext = (f.metadata["help"] + f" (default {f.default!r})").replace("%", "%%")
    if isinstance(f.default, bool):
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=helptext)
    else:
        group.add_argument(
            flag, type=type(f.default), default=None, choices=f.metadata.get("choices"), help=helptext
        )


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    """TOML file (args.config) first, then every flag that was given.

    With --resume, the run folder's own config.toml (written when the run started) comes first, so
    `geo-pretrain --out RUN --resume` needs nothing else.
    """
    values = load_toml(args.config) if getattr(args, "config", None) else {}
    where = args.config if getattr(args, "config", None) else "flags"
    lr_given = "lr" in values or getattr(args, "lr", None) is not None  # before the preset's lr joins
    if getattr(args, "preset", None):  # shipped presets come first, the file and flags override
        from geo_ssl.training.trainer.presets import preset_values

        preset = preset_values(args.preset)
        config_from_dict(dict(preset), where=f"preset {args.preset}")  # the file is wrong, not the user
        values = {**preset, **values}
    for name in (*(f.name for f in fields(PretrainConfig)), *option_fields()):
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
    if getattr(args, "preset", None):
        values = preset_lr(args.preset, preset, values, lr_given)
    if values.get("resume"):
        saved = fsio.join(values.get("out", PretrainConfig.out), RUN_CONFIG)
        if fsio.exists(saved) and not os.path.isdir(saved):
            # max_steps limits one invocation: a plain --resume continues to the planned end.
            previous = {k: v for k, v in load_toml(saved).items() if k not in PER_INVOCATION}
            values = {**previous, **values}
    return config_from_dict(values, where)


def preset_lr(name: str, preset: dict[str, Any], values: dict[str, Any], lr_given: bool) -> dict[str, Any]:
    """`values` with the preset's lr rescaled by the linear scaling rule (lr x batch / the preset's batch)
    when the batch size differs from the preset's and no --lr (or config file lr) was given; logs one line
    either way, since a preset's lr is tuned for its batch and silently keeping it changes the recipe."""
    p_lr, p_batch, batch = preset.get("lr"), preset.get("batch_size"), values.get("batch_size")
    if not p_lr or not p_batch or not isinstance(batch, int) or batch <= 0 or batch == p_batch:
        return values
    what = f"preset {name}: batch_size {batch} instead of the preset's {p_batch}"
    if lr_given:
        log.warning(
            "%s: lr %g as given, not rescaled (--lr wins over the linear scaling rule)", what, values["lr"]
        )
        return values
    lr = p_lr * batch / p_batch
    log.warning(
        "%s: lr %g -> %g (linear scaling rule, x %d/%d); --lr sets it", what, p_lr, lr, batch, p_batch
    )
    return {**values, "lr": lr}


def _bad(msg: str) -> None:
    raise GeoSSLError(f"config: {msg}")


def validate(cfg: PretrainConfig, world_size: int = 1) -> None:
    """Raise GeoSSLError for the first impossible setting, naming it and the allowed values."""
    validate_fields(cfg, world_size)
    validate_method(cfg, world_size)


def validate_fields(cfg: PretrainConfig, world_size: int = 1) -> None:
    """The checks of the config's own fields, which need no method family (and so no torch: the CLI runs
    them, and reads the data's manifest, before torch is imported)."""
    bad = _bad
    if not cfg.data:
        bad("data is empty; pass --data SHARD_FOLDER (or a brace pattern of .tar shards)")
    for name in ("arch", "amp", "schedule", "crop", "epoch_unit"):
        choices = next(f for f in fields(PretrainConfig) if f.name == name).metadata["choices"]
        if getattr(cfg, name) not in choices:
            bad(f"{name} = {getattr(cfg, name)!r}; choose one of {', '.join(choices)}")
    for name in ("image_size", "epochs", "batch_size", "dim", "log_every", "ckpt_every", "knn_k"):
        if getattr(cfg, name) <= 0:
            bad(f"{name} = {getattr(cfg, name)} must be > 0")
    for name in ("num_workers", "epoch_samples", "max_steps", "warmup_steps", "n_clusters", "bn_splits",
                 "knn_every", "knn_every_steps", "knn_bank_samples", "knn_query_samples", "shuffle_buffer",
                 "keep_checkpoints"):  # fmt: skip
        if getattr(cfg, name) < 0:
            bad(f"{name} = {getattr(cfg, name)} must be >= 0")
    parse_steps(cfg.save_steps)
    for f in fields(PretrainConfig):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            bad(f"{f.name} = {value} must be a finite number")
    if not 0 <= cfg.crop_scale <= 1:
        bad(f"crop_scale = {cfg.crop_scale} must be in (0, 1], or 0 for the crop's own smallest area")
    for name in ("lr", "weight_decay", "moco_weight", "geo_weight", "momentum"):
        if getattr(cfg, name) < 0:
            bad(f"{name} = {getattr(cfg, name)} must be >= 0")
    if cfg.image_size < 32:
        bad(f"image_size = {cfg.image_size} is below 32 px, too small for a ResNet")
    if cfg.temperature <= 0 or cfg.knn_t <= 0:
        bad("temperature and knn_t must be > 0")
    if cfg.batch_size % world_size:
        bad(f"batch_size = {cfg.batch_size} is not divisible by the {world_size} ranks")


def validate_method(cfg: PretrainConfig, world_size: int = 1) -> None:
    """The method's checks: a known name, its family's options and checks, the BatchNorm sub-batches."""
    bad = _bad
    method = checked_method(cfg)
    per_rank = cfg.batch_size // world_size
    splits = resolved_bn_splits(cfg, world_size)
    if per_rank % splits:
        bad(f"per-rank batch {per_rank} is not divisible by bn_splits = {splits}; pick bn_splits dividing it")
    if method.geo and cfg.geo_weight == 0:
        bad(f"method {cfg.method} with geo_weight = 0 has no geo head; use the method without +geo")
    problem = method.family.check(cfg, method, world_size)  # the family's own checks (moco_k, batch, ...)
    if problem:
        bad(problem)


def checked_method(cfg: PretrainConfig) -> Method:
    """cfg's method, after refusing an unknown name and options given for another family."""
    from geo_ssl.training.methods import get_method

    try:
        method = get_method(cfg.method)
    except GeoSSLError as exc:
        raise GeoSSLError(f"config: {exc}") from None
    others = {k: fam for k, (fam, _) in option_fields().items() if fam != method.family.name}
    stray = sorted(k for k in cfg.method_options if k in others)
    if stray:
        raise GeoSSLError(
            f"config: {', '.join(stray)} belong(s) to method family {others[stray[0]]}, not {cfg.method}"
        )
    return method


def resolved_bn_splits(cfg: PretrainConfig, world_size: int) -> int:
    """bn_splits, with 0 resolved: 8 sub-batches in one process (if the batch allows), 1 under DDP."""
    if cfg.bn_splits:
        return cfg.bn_splits
    if world_size > 1 or not cfg.shuffle_bn or not checked_method(cfg).family.split_bn:
        return 1
    per_rank = cfg.batch_size // world_size
    # BN over fewer than 16 samples is too noisy to help; tiny batches get plain BN.
    return next(s for s in (8, 4, 2, 1) if (per_rank % s == 0 and per_rank // s >= 16) or s == 1)
