"""Metrics of a run: one JSON object per line in metrics.jsonl, the same scalars in TensorBoard.

Settings (the run's config, and constants such as the kNN's k or 1/sqrt(dim)) are not curves: they stay in
metrics.jsonl and go to TensorBoard once, as hparams beside the final metrics, so runs compare in its HPARAMS
tab instead of as flat scalar lines.

On resume, records newer than the checkpoint (written after it, before the run died) are dropped from
metrics.jsonl and TensorBoard's purge_step hides them there, so every step appears once.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

from geo_ssl.pipeline.common import fsio

_log = logging.getLogger(__name__)
METRICS = "metrics.jsonl"
TENSORBOARD = "tb"
#: Record fields that are settings, not measurements: left out of TensorBoard's scalars.
SETTINGS_FIELDS = frozenset({"q_std_ref", "k", "t", "bank", "query"})


class RunLog:
    def __init__(self, out: str, resume_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        os.makedirs(out, exist_ok=True)
        self.path = os.path.join(out, METRICS)
        if resume_step is None:
            open(self.path, "w").close()
        elif os.path.exists(self.path):
            kept = [line for line in _read_lines(self.path) if json.loads(line).get("step", 0) <= resume_step]
            fsio.atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self._file = open(self.path, "a", encoding="utf-8")  # closed in close()
        self._tb = SummaryWriter(os.path.join(out, TENSORBOARD), purge_step=resume_step)

    def log(self, record: dict[str, Any], group: str = "train") -> None:
        """Append one record (must hold 'step'); numeric fields also go to TensorBoard as group/name."""
        row = {"group": group, **record}
        self._file.write(json.dumps(row, sort_keys=True) + "\n")
        self._file.flush()
        step = int(record["step"])
        for name, value in record.items():
            if name in SETTINGS_FIELDS or name == "step":
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                if math.isfinite(value):
                    self._tb.add_scalar(f"{group}/{name}", value, step)

    def hparams(self, settings: dict[str, Any], metrics: dict[str, float]) -> None:
        """The run's settings as TensorBoard hparams, once, in the run's own event file (add_hparams would
        open a new, timestamp-named one). METRICS maps scalar tags already logged (e.g. "train/loss") to
        their final values; TensorBoard shows each tag's last value beside the settings."""
        from torch.utils.tensorboard.summary import hparams

        clean = {k: _hparam_value(v) for k, v in sorted(settings.items())}
        try:  # called while the run ends, maybe on an error: never hide the run's own outcome
            writer = self._tb._get_file_writer()
            for summary in hparams(clean, {k: float(v) for k, v in metrics.items()}):
                writer.add_summary(summary)
        except Exception as exc:
            _log.warning("TensorBoard hparams not written: %s", exc)

    def flush(self) -> None:
        """Everything logged so far on disk (before the run cache is uploaded, run_store.py)."""
        self._file.flush()
        self._tb.flush()

    def close(self) -> None:
        self._file.close()
        self._tb.close()


def _hparam_value(value: Any) -> bool | int | float | str:
    """TensorBoard hparams take numbers, booleans and text: anything else (None, lists) as its text."""
    if isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return _valid_lines(f)


def _valid_lines(lines: Any) -> list[str]:
    out = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        out.append(line)
    return out


def read_metrics(out: str, group: str | None = None) -> list[dict[str, Any]]:
    """The records of a run folder's metrics.jsonl (optionally one group: train, knn, ...); local or URL."""
    if not fsio.is_local(out):
        url = fsio.join(out, METRICS)
        text = fsio.read_bytes(url).decode("utf-8") if fsio.exists(url) else ""
        rows = [json.loads(line) for line in _valid_lines(text.splitlines())]
        return [r for r in rows if group is None or r.get("group") == group]
    path = os.path.join(out, METRICS)
    rows = [json.loads(line) for line in _read_lines(path)] if os.path.exists(path) else []
    return [r for r in rows if group is None or r.get("group") == group]
