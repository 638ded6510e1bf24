"""Checkpoints that `torch.load(weights_only=True)` reads: tensors, dicts, lists, numbers and strings only.

Writes go to a temp file that replaces the old checkpoint in one rename (fsio.atomic_local_path), so a
kill at any moment leaves either the previous or the new checkpoint, never half of one. RNG states
(python, numpy, torch, CUDA) are converted to tensors so that they pass the weights-only unpickler.
"""

from __future__ import annotations

import os
import pickle
import random
from typing import Any

import numpy as np
import torch

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.errors import GeoSSLError

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
    with fsio.atomic_local_path(url) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())


def load_checkpoint(
    url: str, map_location: str | torch.device = "cpu", trusted: bool = False
) -> dict[str, Any]:
    """torch.load with weights_only=True (or False for a checkpoint you trust); one-line errors."""
    fs, path = fsio.get_fs(url)
    if not fs.exists(path):
        raise GeoSSLError(f"{url}: checkpoint not found")
    try:
        with fs.open(path, "rb") as f:
            obj = torch.load(f, map_location=map_location, weights_only=not trusted)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as exc:
        hint = "" if trusted else " (if it is a checkpoint you trust that holds other objects, pass --trust)"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GeoSSLError(f"{url}: cannot read as a torch checkpoint: {first}{hint}") from None
    if not isinstance(obj, dict):
        raise GeoSSLError(f"{url}: expected a dict checkpoint, found {type(obj).__name__}")
    return obj
