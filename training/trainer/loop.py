"""The pretraining loop behind `geo-pretrain`: one process or torchrun DDP, CPU or CUDA.

Per step: next batch (timed: the data-wait share) -> forward under autocast (CUDA only) -> SGD step ->
per-step lr schedule. Every `log_every` steps a record goes to metrics.jsonl and TensorBoard; every
`ckpt_every` steps, on SIGTERM or SIGINT and at the end the run is checkpointed atomically (model incl.
the MoCo queue, optimizer, scheduler, grad scaler, step/epoch and every rank's RNG states). Not at each
epoch end: a checkpoint resumes mid-epoch exactly, and short epochs made that 100+ MB per epoch.
`--resume` replays the current epoch's data order and skips the batches already trained on, then
restores the RNG states, so with a deterministic loader the continued run matches an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import time
import traceback
import warnings
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.logs import STDOUT, get_logger
from geo_ssl.pipeline.common.progress import Summary, progress_bar
from geo_ssl.training.data.gpu_augment import DeviceDataPath, resolve_data_path
from geo_ssl.training.methods import get_method
from geo_ssl.training.models.backbone import FeatureExtractor
from geo_ssl.training.models.knn import extract_features, knn_top1
from geo_ssl.training.trainer.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    LAST,
    keep_copy,
    load_checkpoint,
    prune_kept,
    rng_state,
    save_checkpoint,
    set_rng_state,
    step_name,
)
from geo_ssl.training.trainer.config import (
    RUN_CONFIG,
    PretrainConfig,
    changed_fields,
    parse_steps,
    resolved_bn_splits,
    run_defining,
)
from geo_ssl.training.trainer.distributed import (
    DistContext,
    any_rank,
    barrier,
    gather_objects,
    init_distributed,
    shutdown,
)
from geo_ssl.training.trainer.feed import augmentation, make_loader
from geo_ssl.training.trainer.preflight import preflight, resolve_n_clusters
from geo_ssl.training.trainer.run_folder import RunLock, prepare_run_folder, remove_stale_temps
from geo_ssl.training.trainer.run_log import RunLog
from geo_ssl.training.trainer.run_store import RunStore
from geo_ssl.training.trainer.schedule import LrFactor
from geo_ssl.training.trainer.signals import StopSignal, fork_shielded

log = get_logger(__name__)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PretrainConfig)}


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run (or with cfg.resume continue) a pretraining run in cfg.out; returns a result summary."""
    ctx = init_distributed()
    trainer = Trainer(cfg, ctx)
    try:
        return trainer.run()
    except BaseException as exc:
        drop_frames(exc)
        raise
    finally:
        trainer.release()
        shutdown(ctx)


def drop_frames(exc: BaseException | None) -> None:
    """Clear the locals of the finished frames in `exc`'s tracebacks (and those of its causes).

    A traceback keeps the loop's frame, and in it the epoch's batch iterator, alive: its loader workers
    (forked with SIGTERM and SIGINT blocked, see signals.py) outlive the error, and the interpreter's exit waits
    on them for good (a disk full during a checkpoint hung for 12+ minutes). Dropping the locals closes
    the iterator, which shuts its workers down; the traceback still prints."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


def autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The AMP dtype for `mode` on `device`; None (full precision) with 'off', and on CPU unless asked for bf16.

    On CPU only an explicit 'bf16' turns autocast on: it pays on CPUs with AMX or AVX-512 BF16 (1.2x for
    a MoCo ResNet-18 step at 64 px, batch 32, on 2 Xeon cores with AMX) and costs time on older ones, so
    'auto' stays off.
    """
    if mode == "off" or (device.type != "cuda" and mode != "bf16"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def _say(ctx: DistContext, message: str) -> None:
    """A note on stderr from rank 0 only; "=> warning: ..." lines at WARNING (--quiet keeps them)."""
    if ctx.is_main:
        log.log(logging.WARNING if message.startswith("=> warning:") else logging.INFO, message)


class Trainer:
    def __init__(self, cfg: PretrainConfig, ctx: DistContext) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.step = self.epoch = self.epoch_step = 0
        self.start_step = 0
        self.last_record: dict[str, Any] = {}
        self.last_knn: dict[str, Any] | None = None
        self._pending_rng: dict[str, torch.Tensor] | None = None
        self._lock: RunLock | None = None
        self.save_steps: frozenset[int] = frozenset()  # --save-steps, parsed once validated
        self.store = RunStore(cfg.out)  # --out on object storage: a local run cache, uploaded (run_store.py)

    def release(self) -> None:
        """Let another run use the folder (the kernel also drops the lock if the process dies)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self.store.release()

    # ---- setup -------------------------------------------------------------------------------------
    def _configure(self) -> dict[str, Any] | None:
        cfg, ctx = self.cfg, self.ctx
        preflight(cfg, ctx.world_size)
        if ctx.is_main and self.store.remote:
            note = self.store.lock("geo-pretrain")  # a lock object in the bucket, with a heartbeat
            if note:
                _say(ctx, f"=> {note}")
        elif ctx.is_main:
            prepare_run_folder(cfg.out)
            self._lock = RunLock(cfg.out).acquire()  # one run per folder; makes the temp sweep safe
            removed = remove_stale_temps(cfg.out)
            if removed:
                _say(ctx, f"=> removed {len(removed)} temp file(s) left by a killed run in {cfg.out}")
        barrier(ctx)
        self.ckpt_url = fsio.join(cfg.out, LAST)
        ckpt = None
        if cfg.resume:
            if not fsio.exists(self.ckpt_url):
                raise GeoSSLError(
                    f"{self.ckpt_url}: no checkpoint to resume; drop --resume to start a new run"
                )
            ckpt = load_checkpoint(self.ckpt_url)
            if ckpt.get("format") != FORMAT:
                raise GeoSSLError(f"{self.ckpt_url}: not a geo-pretrain checkpoint")
            # a field added after the checkpoint was written counts as its default
            # an 'auto' field compares as what it resolved to (--n-clusters 4 where auto chose 4 is no change)
            saved = run_defining({**_DEFAULTS, **ckpt["config"]}, ckpt)
            now = run_defining(cfg.as_dict(), ckpt)
            changed = changed_fields(saved, now)
            if changed:
                diffs = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in changed)
                raise GeoSSLError(
                    f"--resume: config differs from the checkpoint's ({diffs}); use a new --out"
                )
            if ckpt["world_size"] != ctx.world_size and ckpt.get("loader") is None:  # no loader state
                _say(ctx, f"=> note: resuming on {ctx.world_size} ranks, saved on {ckpt['world_size']}")
        elif fsio.exists(self.ckpt_url):
            raise GeoSSLError(
                f"{cfg.out} already holds a run; pass --resume to continue it or choose another --out"
            )
        # --save-steps are kept for good: a --resume that names others adds them, never drops earlier ones
        earlier = parse_steps(str(ckpt["config"].get("save_steps", ""))) if ckpt else ()
        self.save_steps = frozenset(parse_steps(cfg.save_steps) + earlier)
        self.cfg = dataclasses.replace(cfg, save_steps=",".join(map(str, sorted(self.save_steps))))
        return ckpt

    def _build(self, ckpt: dict[str, Any] | None) -> None:
        cfg, ctx = self.cfg, self.ctx
        self.method = get_method(cfg.method)
        self.family = self.method.family
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
            torch.use_deterministic_algorithms(True)
        # The data first: a missing or too small split is reported before anything else about it.
        # 8-bit batches, normalised on ctx.device in batch_inputs: 4x fewer bytes to move, no float pass
        # on the loader's cores; the float output's values (bit-identical on CPU, within 4e-7 on a GPU)
        aug = augmentation(cfg)  # built once: the loader's workers and the GPU data path share it
        self.loader = make_loader(cfg, ctx.rank, ctx.world_size, output="uint8", aug=aug)
        self.device_data = None  # --data-path gpu decodes + augments the loader's JPEGs here
        if resolve_data_path(cfg.data_path, ctx.device) == "gpu":
            self.device_data = DeviceDataPath(ctx.device, cfg.image_size, cfg.augment, cfg.seed, ctx.rank,
                                              augmentation=aug)  # fmt: skip
        self.n_clusters = ckpt["n_clusters"] if ckpt else resolve_n_clusters(cfg)
        self.bn_splits = resolved_bn_splits(cfg, ctx.world_size)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = self.family.build(cfg, self.method, self.n_clusters, self.bn_splits).to(ctx.device)
        self.channels_last = cfg.channels_last and ctx.device.type == "cuda"
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.amp_dtype = autocast_dtype(cfg.amp, ctx.device)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            params, lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise GeoSSLError(
                f"{cfg.data}: split {cfg.split!r} has too few locations for one batch of "
                f"{cfg.batch_size // ctx.world_size} per rank"
            )
        per_epoch = self.steps_per_epoch * cfg.batch_size
        advice = self.family.advice(cfg, per_epoch)
        if advice:
            _say(ctx, f"=> warning: {advice}")
        self.total_steps = cfg.epochs * self.steps_per_epoch  # what the lr schedule spans
        self.stop_at = min(self.total_steps, cfg.max_steps) if cfg.max_steps else self.total_steps
        if ckpt and ckpt["step"] >= self.stop_at:
            why = (f"--max-steps {cfg.max_steps}" if self.stop_at < self.total_steps
                   else f"the planned end ({cfg.epochs} epochs)")  # fmt: skip
            _say(ctx, f"=> nothing to train: the checkpoint is at step {ckpt['step']}, already at {why}")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, LrFactor(cfg.schedule, self.total_steps, cfg.warmup_steps)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if ckpt:
            self._restore(ckpt)
        torch.manual_seed(cfg.seed * 1000 + 1 + ctx.rank)  # per-rank stream for shuffles
        self.ddp = model
        if ctx.distributed:
            # broadcast_buffers=False: every rank enqueues the same gathered keys, so the queues agree
            # without sending 8 MB-32 MB per step; BN running stats stay per rank (rank 0's are saved).
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            # torch deprecates the flag (a FutureWarning per rank) but advises it for rank-local buffers
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
                self.ddp = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
        self._monitor_loaders = self._make_monitor_loaders() if ctx.is_main else None

    def _restore(self, ckpt: dict[str, Any]) -> None:
        if ckpt["steps_per_epoch"] != self.steps_per_epoch:
            raise GeoSSLError(
                f"--resume: {ckpt['steps_per_epoch']} steps per epoch when saved, {self.steps_per_epoch} now "
                "(did the shards or the number of ranks change?)"
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.epoch, self.epoch_step = ckpt["step"], ckpt["epoch"], ckpt["epoch_step"]
        self.start_step = self.step
        self._elastic_resume(ckpt)
        rngs = ckpt["rng"]
        self._pending_rng = rngs[self.ctx.rank] if len(rngs) == self.ctx.world_size else None
        _say(self.ctx, f"=> resumed {self.ckpt_url} at step {self.step} (epoch {self.epoch})")

    def _elastic_resume(self, ckpt: dict[str, Any]) -> None:
        """On another number of ranks or loader workers (another cut of the epoch: loader.other_cut), the
        loader reads the rest of the saved epoch, each location the saved run had not trained on exactly
        once over the new ranks (training/data/elastic.py). The global
        batch (--batch-size) is the same, so that rest is exactly the steps the saved run had left: the
        step counter, the lr schedule and the epoch's end are unchanged. Also restores an epoch that was
        already resumed that way (the loader state holds its earlier cuts)."""
        state = ckpt.get("loader")
        elastic = state is not None and self.loader.other_cut({**state, "rank": self.ctx.rank})
        if state is None or not (elastic or "elastic" in state):
            return  # same ranks: set_epoch(epoch, start_step) replays the epoch exactly
        self.loader.load_state_dict({**state, "rank": self.ctx.rank})  # rank 0's state serves every rank
        steps = self.loader.steps_in_epoch(self.epoch)
        if steps != self.steps_per_epoch:  # only where the rest does not fill the ranks' batches
            raise GeoSSLError(
                f"--resume on {self.ctx.world_size} ranks: the rest of epoch {self.epoch} gives {steps} steps, "
                f"not {self.steps_per_epoch}; resume on {ckpt['world_size']} ranks"
            )
        if elastic:
            left = (steps - self.epoch_step) * self.cfg.batch_size
            was, now = state["plan"], self.loader.state_dict()["plan"]
            _say(self.ctx, f"=> note: resuming on {self.ctx.world_size} rank(s) x {now['workers']} loader "
                           f"worker(s), saved on {ckpt['world_size']} x {was.get('workers')}: the {left} "
                           f"locations epoch {self.epoch} has left are cut anew, each once over "
                           f"{self.ctx.world_size} rank(s) (RNG states not restored); later epochs are "
                           f"exact under the new cut")  # fmt: skip

    def _make_monitor_loaders(self) -> tuple | None:
        cfg = self.cfg
        if not (cfg.knn_every or cfg.knn_every_steps):
            return None
        from geo_ssl.training.data.loader import eval_loader

        data = cfg.knn_data or cfg.data
        bs = max(32, cfg.batch_size // self.ctx.world_size)
        kw = dict(image_size=cfg.image_size, batch_size=bs, num_workers=cfg.num_workers, all_views=False,
                  cache_dir=cfg.cache_dir or None, cache_limit=cfg.cache_limit)  # fmt: skip
        return (
            eval_loader(data, split=cfg.knn_bank_split, **kw),
            eval_loader(data, split=cfg.knn_query_split, **kw),
        )

    # ---- pieces of the loop ------------------------------------------------------------------------
    @property
    def unwrapped(self) -> nn.Module:
        return self.model

    def _checkpoint(self) -> None:
        """Every rank calls this (RNG states are gathered); rank 0 writes."""
        rngs = gather_objects(rng_state(), self.ctx)
        if not self.ctx.is_main:
            return
        epoch, epoch_step = self.epoch, self.epoch_step
        if epoch_step >= self.steps_per_epoch:
            epoch, epoch_step = epoch + 1, 0
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "method": self.cfg.method,
            "arch": self.cfg.arch,
            "model": self.unwrapped.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": epoch,
            "epoch_step": epoch_step,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.ctx.world_size,
            # the cut of the data (ranks, batch, workers) and earlier cuts of this epoch: elastic resume
            "loader": self.loader.state_at(epoch, epoch_step) if hasattr(self.loader, "state_at") else None,
            "n_clusters": self.n_clusters,
            "bn_splits": self.bn_splits,
            "rng": rngs,
            "config": self.cfg.as_dict(),
            "metrics": {k: v for k, v in self.last_record.items() if isinstance(v, int | float | str)},
        }
        save_checkpoint(self.ckpt_url, payload)
        self._keep_history()
        if self.store.remote and self.log:  # metrics and TensorBoard follow the checkpoint to the bucket
            self.log.flush()
            self.store.push()

    def _keep_history(self) -> None:
        """Keep the checkpoint just written as checkpoint-step{STEP}.pt when it is a --ckpt-every one (the
        --keep-checkpoints newest of those stay) or a --save-steps one (kept for good). Stops and --max-steps
        ends are not kept: off the grid, they would push a regular one out of the newest N."""
        cfg, step = self.cfg, self.step
        if step > 0 and (step in self.save_steps or (cfg.keep_checkpoints and step % cfg.ckpt_every == 0)):
            keep_copy(self.ckpt_url, fsio.join(cfg.out, step_name(step)))
        prune_kept(cfg.out, cfg.keep_checkpoints, self.save_steps)

    def _knn_monitor(self) -> None:
        """kNN top-1 of the query encoder's pooled features (rank 0; training RNG streams untouched)."""
        if self._monitor_loaders is None:
            barrier(self.ctx)
            return
        cfg = self.cfg
        saved = rng_state()
        t0 = time.perf_counter()
        extractor = FeatureExtractor(self.unwrapped.backbone)
        bank_loader, query_loader = self._monitor_loaders
        kw = dict(device=self.ctx.device, autocast_dtype=self.amp_dtype)
        bank = extract_features(
            extractor, fork_shielded(bank_loader), max_samples=cfg.knn_bank_samples, desc="knn bank", **kw
        )
        query = extract_features(
            extractor, fork_shielded(query_loader), max_samples=cfg.knn_query_samples, desc="knn query", **kw
        )
        # k fits the bank: at most a tenth of it; k=200 over a 240-image bank is a majority vote
        result = knn_top1(bank, query, k=min(cfg.knn_k, max(1, len(bank.labels) // 10)), T=cfg.knn_t)
        set_rng_state(saved)
        result.update(step=self.step, epoch=self.epoch, seconds=time.perf_counter() - t0)
        self.last_knn = result
        self.log.log(result, group="knn")
        _say(
            self.ctx,
            f"=> kNN step {self.step}: top-1 {result['top1']:.2f}% (k {result['k']}, bank {result['bank']}, "
            f"query {result['query']})",
        )
        barrier(self.ctx)

    def _record(self, stats: dict[str, torch.Tensor], window: dict[str, float]) -> dict[str, Any]:
        per_rank = self.cfg.batch_size // self.ctx.world_size
        wall = max(window["wall"], 1e-9)
        rec: dict[str, Any] = {k: float(v) for k, v in stats.items()}
        rec.update(
            step=self.step,
            epoch=self.epoch,
            lr=self.optimizer.param_groups[0]["lr"],
            samples_per_s=window["steps"] * per_rank * self.ctx.world_size / wall,
            steps_per_s=window["steps"] / wall,
            data_wait=window["data"] / wall,
            q_std_ref=1.0 / math.sqrt(self.cfg.dim),
            time=time.time() - self.t_start,
        )
        if not math.isfinite(rec["loss"]):
            raise GeoSSLError(
                f"loss became {rec['loss']} at step {self.step} (lr {rec['lr']:.4g}); lower --lr or try --amp off"
            )
        # A random network maps every image to nearly the same direction, so a low std early on is normal;
        # still low after a fifth of the run means collapse or no learning (torchgeo's train_ssl_std check).
        late = self.step >= max(self.cfg.warmup_steps, self.stop_at // 5)
        if late and rec["q_std"] < 0.1 * rec["q_std_ref"] and not self._warned:
            self._warned = True
            _say(self.ctx, f"=> warning: embedding std {rec['q_std']:.4f} is far below 1/sqrt(dim) = "
                           f"{rec['q_std_ref']:.4f}: collapsed, or not learning yet")  # fmt: skip
        return rec

    # ---- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        # SIGTERM and SIGINT are stop requests from here on, during the setup too (a clean exit 143 / 130).
        with StopSignal() as stop:
            return self._run(stop)

    def _run(self, stop: StopSignal) -> dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        ckpt = self._configure()
        self._build(ckpt)
        del ckpt
        if ctx.is_main:
            self.store.prepare(resume=bool(cfg.resume))
            os.makedirs(self.store.local, exist_ok=True)
            fsio.atomic_write_text(fsio.join(cfg.out, RUN_CONFIG), config_toml(self.cfg))
        resume_step = self.step if cfg.resume else None
        self.log = RunLog(self.store.local, resume_step=resume_step) if ctx.is_main else None
        self.t_start = time.time()
        self._warned = False
        stopped = None
        _say(ctx, (
            f"=> {cfg.method} {cfg.arch} on {ctx.world_size} rank(s), {ctx.device.type}"
            f"{' ' + str(self.amp_dtype).replace('torch.', '') if self.amp_dtype else ''}, "
            f"{self.steps_per_epoch} steps/epoch, steps {self.step}..{self.stop_at} of {self.total_steps}, "
            f"batch {cfg.batch_size}, lr {cfg.base_lr:.4g}, bn_splits {self.bn_splits}"
        ))  # fmt: skip
        if hasattr(self.loader, "plan"):
            _say(ctx, f"=> epoch plan: {self.loader.plan.describe()}")
        bar = (
            progress_bar(self.stop_at, desc=f"pretrain {cfg.method}", unit="step", initial=self.step)
            if ctx.is_main
            else _NoBar()
        )
        try:
            if stop.received is not None and not ctx.distributed:
                # stopped while setting up: the current step is the restored one (or 0); make it resumable
                if not fsio.exists(self.ckpt_url):
                    self._checkpoint()
                stopped = stop.received
            else:
                stopped = self._loop(stop, bar)
        finally:
            bar.close()
            if self.log:
                self.log.hparams(self.cfg.as_dict(), self._final_metrics())
                self.log.close()
                self._final_push()
        return self._finish(stopped)

    def _final_metrics(self) -> dict[str, float]:
        """TensorBoard tag -> final value of what this run measured (for its hparams entry)."""
        out = {f"train/{k}": self.last_record[k] for k in ("loss", "samples_per_s") if k in self.last_record}
        if self.last_knn and "top1" in self.last_knn:
            out["knn/top1"] = self.last_knn["top1"]
        return out

    def _final_push(self) -> None:
        """Metrics and TensorBoard to a bucket --out; a failure here (the run may already be failing) is a
        warning naming the local copy, never an error that hides the run's own outcome."""
        try:
            self.store.push()
        except Exception as exc:  # the checkpoints are already uploaded
            _say(self.ctx, f"=> warning: could not upload metrics/TensorBoard to {self.cfg.out} "
                           f"({type(exc).__name__}); a copy is in {self.store.local}")  # fmt: skip

    def _loop(self, stop: StopSignal, bar: Any) -> int | None:
        cfg, ctx = self.cfg, self.ctx
        window = {"wall": 0.0, "data": 0.0, "steps": 0}
        while self.step < self.stop_at:
            if self.epoch_step == 0 and self._pending_rng is not None:
                set_rng_state(self._pending_rng)
                self._pending_rng = None
            # resume mid-epoch: the loader starts at batch epoch_step without decoding the ones before
            self.loader.set_epoch(self.epoch, start_step=self.epoch_step)
            # Workers fork at the first batch: with SIGTERM blocked, so only this process handles it.
            batches = fork_shielded(self.loader)
            if self.device_data is not None:  # GPU data path, prefetched in the background
                batches = self.device_data.batches(batches, self.epoch, start_step=self.epoch_step)
            if self._pending_rng is not None:
                set_rng_state(self._pending_rng)
                self._pending_rng = None
            t_last = time.perf_counter()
            while self.epoch_step < self.steps_per_epoch and self.step < self.stop_at:
                t0 = time.perf_counter()
                try:
                    batch = next(batches)
                except Exception:
                    # Fallback: workers that died anyway while a stop was pending (the step before
                    # this one is complete, so its checkpoint is consistent).
                    if stop.received is not None and not ctx.distributed:
                        self._checkpoint()
                        return stop.received
                    raise
                window["data"] += time.perf_counter() - t0
                inputs = self.family.inputs(
                    self.method, batch, ctx.device, self.channels_last, self.n_clusters
                )
                with torch.autocast(
                    ctx.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
                ):
                    loss, stats = self.ddp(*inputs)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                self.step += 1
                self.family.on_step(cfg, self.model, self.step, self.total_steps)  # e.g. BYOL's EMA target
                self.epoch_step += 1
                now = time.perf_counter()
                window["wall"] += now - t_last
                window["steps"] += 1
                t_last = now
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.stop_at:
                    rec = self._record(stats, window)
                    self.last_record = rec
                    if self.log:
                        self.log.log(rec)
                    bar.set_postfix(
                        loss=f"{rec['loss']:.3f}", img_s=f"{rec['samples_per_s']:.1f}",
                        data=f"{100 * rec['data_wait']:.0f}%", refresh=False,
                    )  # fmt: skip
                    window = {"wall": 0.0, "data": 0.0, "steps": 0}
                # Under DDP the ranks agree on stopping at log steps only (a collective syncs the GPU).
                stopping = stop.received is not None
                if ctx.distributed:
                    stopping = self.step % cfg.log_every == 0 and any_rank(stopping, ctx)
                end_of_epoch = self.epoch_step == self.steps_per_epoch
                if not stopping:  # a pending stop skips the monitors: the checkpoint comes first
                    if cfg.knn_every_steps and self.step % cfg.knn_every_steps == 0:
                        self._knn_monitor()
                    if end_of_epoch and cfg.knn_every and (self.epoch + 1) % cfg.knn_every == 0:
                        if not (cfg.knn_every_steps and self.step % cfg.knn_every_steps == 0):
                            self._knn_monitor()
                    if not ctx.distributed:
                        stopping = stop.received is not None
                due = self.step % cfg.ckpt_every == 0 or self.step in self.save_steps
                if stopping or due or self.step == self.stop_at:
                    self._checkpoint()
                if stopping:
                    return stop.received or signal.SIGTERM
                t_last = time.perf_counter()  # monitors and checkpoints do not count as step time
            if self.epoch_step >= self.steps_per_epoch:
                self.epoch += 1
                self.epoch_step = 0
        return None

    def _finish(self, stopped: int | None) -> dict[str, Any]:
        trained = self.step - self.start_step
        summary = Summary(
            stage="pretrain", unit="steps", inputs=self.step, written=trained, skipped=self.start_step
        )
        stats = getattr(self.loader, "stats", None)
        corrupt = int(getattr(stats, "corrupt", 0))
        summary.extra.update(
            planned=self.stop_at, interrupted=stopped is not None, corrupt_samples_skipped=corrupt
        )
        result = {
            "steps": self.step,
            "trained_steps": trained,
            "total_steps": self.total_steps,
            "epoch": self.epoch,
            "interrupted": stopped is not None,
            "signal": stopped,
            "checkpoint": self.ckpt_url,
            "metrics": fsio.join(self.cfg.out, "metrics.jsonl"),
            "last": self.last_record,
            "knn": self.last_knn,
            "summary": summary.as_dict(),
        }
        if self.ctx.is_main:
            if stopped is not None:
                log.warning(f"=> stopped by signal {stopped} at step {self.step}; checkpoint {self.ckpt_url}; "
                            "continue with --resume")  # fmt: skip
            if corrupt:
                first = "; ".join(stats.errors[:3])
                log.warning(f"=> skipped {corrupt} unreadable samples on rank 0 (first: {first})")
            log.info(summary.line(), extra=STDOUT)
        return result


class _NoBar:
    """Stands in for the progress bar on ranks other than 0."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def config_toml(cfg: PretrainConfig) -> str:
    """The config as TOML, so `geo-pretrain --config RUN/config.toml` repeats a run."""
    lines = []
    for key, value in {**cfg.as_dict(), "resume": False}.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        else:
            text = repr(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"
