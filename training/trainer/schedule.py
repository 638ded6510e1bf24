"""Learning-rate factor per optimizer step (for LambdaLR), so a streaming run needs no epoch boundary.

Official MoCo updates its cosine once per epoch; here it is evaluated at every step over the whole
run, which is the same curve without the staircase. A callable object (not a lambda) so LambdaLR's
state_dict stores its fields and checkpoints stay weights-only loadable.
"""

from __future__ import annotations

import math


class LrFactor:
    def __init__(self, kind: str, total_steps: int, warmup_steps: int = 0) -> None:
        if kind not in ("cosine", "step", "constant"):
            raise ValueError(f"unknown schedule {kind!r}")
        self.kind, self.total_steps, self.warmup_steps = kind, max(1, total_steps), warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        t = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        if self.kind == "step":  # x0.1 at 60% and 80%, as MoCo's [120, 160] of 200 epochs
            return 0.1 ** ((t >= 0.6) + (t >= 0.8))
        return 1.0
