"""Checkpoints that `torch.load(weights_only=True)` reads: tensors, dicts, lists, numbers and strings only.

A local checkpoint is written into an unnamed file (O_TMPFILE) in the run folder, which gets a name
only when complete (a link to `.tmp-*`, then one rename over the old checkpoint): a kill at any moment
leaves the previous or the new checkpoint, never half of one, and no 100 MB temp file either (the kernel
frees an unnamed file when its writer dies). Where O_TMPFILE is not supported (some network file
systems), a named `.tmp-*` temp is used; the next start in that folder removes it (run_folder.py).
On object storage (`--out s3://...`) the checkpoint is written to a local temp and uploaded whole.
A full disk (or quota, or file-size limit) is a one-line NoSpaceError naming the folder, checked before
writing (free space against the checkpoint's size) and again if a write fails: the previous checkpoint
stays as it was.
History (`--keep-checkpoints N`, `--save-steps`): a checkpoint also kept as `checkpoint-step{STEP:08d}.pt`
is a hard link to checkpoint-last.pt just written (no bytes written, no space used: the next checkpoint
replaces checkpoint-last.pt by a rename, never in place), a copy where the file system refuses links
(checked for space first), a server-side copy on object storage. Only the N newest are kept, besides
the asked-for steps; older ones are deleted once the new one is in place.
RNG states (python, numpy, torch, CUDA) are converted to tensors so that they pass the weights-only
unpickler.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import secrets
import shutil
from collections.abc import Collection
from typing import Any

import numpy as np
import torch

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.retry import DISK_FULL_ERRNOS, retry_io

LAST = "checkpoint-last.pt"
#: A checkpoint kept for later evaluation (--keep-checkpoints, --save-steps): `checkpoint-step00005000.pt`.
STEP_NAME = "checkpoint-step{:08d}.pt"
_STEP_RE = re.compile(r"checkpoint-step(\d{8,})\.pt")
#: What a refused hard link answers (no links on this file system, too many links): copy instead.
_NO_LINK = {errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.ENOSYS}
FORMAT = "geo-ssl-pretrain"
FORMAT_VERSION = 1
#: How the error line names each of retry.DISK_FULL_ERRNOS (a full disk, a full quota, `ulimit -f`).
_SPACE_WORDS = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large"}  # fmt: skip
#: Left free beside a new checkpoint, for metrics.jsonl, TensorBoard and the rest of the system.
SPARE_BYTES = 16 << 20


class NoSpaceError(GeoSSLError):
    """A checkpoint could not be written for want of space; the previous one is unchanged."""


def rng_state() -> dict[str, torch.Tensor]:
    """Python, numpy, torch and (if present) CUDA generator states, as tensors."""
    py_version, py_state, py_gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    out = {
        "python_version": torch.tensor(py_version),
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": torch.tensor(float("nan") if py_gauss is None else py_gauss, dtype=torch.float64),
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": torch.tensor(np_pos),
        "numpy_has_gauss": torch.tensor(np_has_gauss),
        "numpy_gauss": torch.tensor(np_gauss, dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return out


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restore what rng_state() captured."""
    gauss = float(state["python_gauss"])
    random.setstate(
        (
            int(state["python_version"]),
            tuple(int(x) for x in state["python_state"]),
            None if gauss != gauss else gauss,
        )
    )
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            int(state["numpy_pos"]),
            int(state["numpy_has_gauss"]),
            float(state["numpy_gauss"]),
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        states = list(state["cuda"])
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def save_checkpoint(url: str, payload: dict[str, Any]) -> None:
    """Atomically write `payload` (weights-only-safe types) to `url`; NoSpaceError (one line, the old
    checkpoint kept) when its folder, or the local staging folder of a bucket, lacks the space."""
    local = fsio.is_local(url)
    folder = os.path.dirname(os.path.abspath(fsio.get_fs(url)[1])) if local else fsio.staging_dir()
    need = payload_bytes(payload) + SPARE_BYTES
    free = free_bytes(folder)
    if free is not None and free < need:
        raise NoSpaceError(_no_space(url, folder, errno.ENOSPC, need))
    try:
        _save(url, payload)
    except Exception as exc:
        found = space_error(exc)
        if found is None:
            raise
        # torch reports a failed write as "unexpected pos" (a RuntimeError); the OSError is its context
        raise NoSpaceError(_no_space(url, folder, found.errno, need)) from None


def _save(url: str, payload: dict[str, Any]) -> None:
    if not fsio.is_local(url):
        _save_remote(url, payload)
        return
    if _save_unnamed(fsio.get_fs(url)[1], payload):
        return
    with fsio.atomic_local_path(url) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())


def payload_bytes(obj: Any) -> int:
    """The bytes of the tensors in `obj` (nested dicts, lists, tuples): about the size of its file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(payload_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(payload_bytes(v) for v in obj)
    return 0


def free_bytes(folder: str) -> int | None:
    """Bytes an unprivileged writer may still use in `folder`'s file system (None if it cannot be told)."""
    while folder and not os.path.isdir(folder):  # the run folder may not exist yet
        folder = os.path.dirname(folder)
    try:
        st = os.statvfs(folder or ".")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def space_error(exc: BaseException | None) -> OSError | None:
    """The full-disk / quota / file-size OSError in `exc` or in the errors it was raised from, if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _no_space(url: str, folder: str, code: int, need: int, then: str = "") -> str:
    name, free = os.path.basename(url.rstrip("/")), free_bytes(folder)
    detail = f"{free / 1e6:.0f} MB free" if free is not None else "free space unknown"
    if not then and (not fsio.is_local(url) or os.path.exists(fsio.get_fs(url)[1])):
        then = f"the previous {name} is kept: free space (or raise the limit), then continue with --resume"
    elif not then:
        then = f"no {name} was written: free space (or raise the limit) and start again"
    return f"{folder}: {_SPACE_WORDS[code]} ({detail}; a checkpoint needs about {need / 1e6:.0f} MB); {then}"


def step_name(step: int) -> str:
    """The file name a checkpoint kept at `step` gets."""
    return STEP_NAME.format(step)


def keep_copy(src: str, dst: str) -> None:
    """Keep the complete checkpoint `src` under `dst` too (replacing one there): a hard link in a local
    folder, a copy (checked for space first: NoSpaceError, `src` untouched) where links are refused, a
    server-side copy on object storage (no local space, whole or not at all)."""
    if not fsio.is_local(src):
        fs, path = fsio.get_fs(src)
        retry_io(lambda: fs.copy(path, fsio.get_fs(dst)[1]), f"writing {dst}")
        return
    src_path, dst_path = fsio.get_fs(src)[1], fsio.get_fs(dst)[1]
    folder = os.path.dirname(os.path.abspath(dst_path))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{os.path.basename(dst_path)}")
    try:
        try:
            os.link(src_path, tmp)
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            _copy_checked(src_path, tmp, dst)
        os.replace(tmp, dst_path)
    finally:  # also where rename() found both names already linked to one file, and did nothing
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _copy_checked(src: str, tmp: str, dst: str) -> None:
    """Copy `src` to `tmp` when the folder has room for it (NoSpaceError naming `dst` otherwise)."""
    folder = os.path.dirname(os.path.abspath(tmp))
    need = os.path.getsize(src) + SPARE_BYTES
    then = (
        f"{os.path.basename(src)} is written but {os.path.basename(dst)} was not kept: free space "
        "(or lower --keep-checkpoints), then continue with --resume"
    )
    free = free_bytes(folder)
    if free is not None and free < need:
        raise NoSpaceError(_no_space(dst, folder, errno.ENOSPC, need, then))
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        raise NoSpaceError(_no_space(dst, folder, exc.errno, need, then)) from None


def kept_steps(out: str) -> dict[int, str]:
    """{step: url} of the checkpoints kept in the run folder `out` (local or object storage)."""
    if fsio.is_local(out):
        names = os.listdir(out) if os.path.isdir(out) else []
    else:
        fs, path = fsio.get_fs(out)
        fs.invalidate_cache(path)  # another run (or our last prune) changed it since the last listing
        listed = retry_io(lambda: fs.ls(path, detail=False), f"listing {out}")
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in listed]
    found = (_STEP_RE.fullmatch(n) for n in names)
    return {int(m.group(1)): fsio.join(out, m.group(0)) for m in found if m}


def prune_kept(out: str, keep: int, protected: Collection[int]) -> list[str]:
    """Delete the kept checkpoints in `out` beyond the `keep` newest, never those of `protected` steps
    (--save-steps); return the URLs deleted."""
    kept = kept_steps(out)
    candidates = sorted(s for s in kept if s not in protected)
    doomed = [kept[s] for s in candidates[: max(0, len(candidates) - keep)]]
    for url in doomed:
        if fsio.is_local(url):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(fsio.get_fs(url)[1])
        else:
            fs, path = fsio.get_fs(url)
            retry_io(lambda fs=fs, path=path: fs.rm_file(path), f"deleting {url}")
    return doomed


def _save_remote(url: str, payload: dict[str, Any]) -> None:
    """Object storage: the complete file goes to a local temp ($TMPDIR), then up as one object (a single
    PUT, or a multipart upload, which the store also shows only once complete): a reader sees the old
    checkpoint or the new one, never part of one. Transient upload errors are retried (retry.py)."""
    fs, path = fsio.get_fs(url)
    fsio.sweep_staging()
    fd, tmp = fsio.staging_temp("-ckpt.pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        retry_io(lambda: fs.put_file(tmp, path), f"writing {url}")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _save_unnamed(path: str, payload: dict[str, Any]) -> bool:
    """Write through an O_TMPFILE file, named only once complete; False where the folder cannot do it."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o666 & ~_umask())
    except (AttributeError, OSError):  # no O_TMPFILE here (not Linux, or the file system lacks it)
        return False
    with os.fdopen(fd, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
        # A name for the complete file (linkat cannot replace), then one atomic rename over the old one.
        tmp = os.path.join(folder, f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{os.path.basename(path)}")
        try:
            os.link(f"/proc/self/fd/{f.fileno()}", tmp, follow_symlinks=True)
        except OSError:  # no /proc: write it again the ordinary way
            return False
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(url: str, trusted: bool = False) -> dict[str, Any]:
    """A checkpoint on the CPU, loaded weights-only (or fully, for a file you trust); one-line errors.

    The file is sniffed before unpickling (geo_ssl.training.trainer.weights_io), so a damaged or foreign
    file is "not a checkpoint", never torch's advice to retry with weights_only=False.
    """
    from geo_ssl.training.trainer.weights_io import read_weights

    obj, kind = read_weights(url, trusted=trusted)
    if kind != "torch":
        raise GeoSSLError(f"{url}: a {kind} file holds weights only, not a training checkpoint")
    return obj
