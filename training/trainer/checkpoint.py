"""Checkpoints that `torch.load(weights_only=True)` reads: tensors, dicts, lists, numbers and strings only.

A local checkpoint is written into an unnamed file (O_TMPFILE) in the run folder, which gets a name
only when complete (a link to `.tmp-*`, then one rename over the old checkpoint): a kill at any moment
leaves the previous or the new checkpoint, never half of one, and no 100 MB temp file either (the kernel
frees an unnamed file when its writer dies). Where O_TMPFILE is not supported (some network file
systems), a named `.tmp-*` temp is used; the next start in that folder removes it (run_folder.py).
On object storage (`--out s3://...`) the checkpoint is written to a local temp and uploaded whole.
RNG states (python, numpy, torch, CUDA) are converted to tensors so that they pass the weights-only
unpickler.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
from typing import Any

import numpy as np
import torch

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.retry import retry_io

LAST = "checkpoint-last.pt"
FORMAT = "geo-ssl-pretrain"
FORMAT_VERSION = 1


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
    """Atomically write `payload` (weights-only-safe types) to `url`."""
    if not fsio.is_local(url):
        _save_remote(url, payload)
        return
    if _save_unnamed(fsio.get_fs(url)[1], payload):
        return
    with fsio.atomic_local_path(url) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())


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

    The file is sniffed before unpickling (geo_ssl.training.evaluation.weights_io), so a damaged or foreign
    file is "not a checkpoint", never torch's advice to retry with weights_only=False.
    """
    from geo_ssl.training.evaluation.weights_io import read_weights

    obj, kind = read_weights(url, trusted=trusted)
    if kind != "torch":
        raise GeoSSLError(f"{url}: a {kind} file holds weights only, not a training checkpoint")
    return obj
