"""Learning-rate schedule: linear warmup, then cosine decay to ``min_lr_ratio * lr``.

The schedule is a pure function of the step, held by a ``LambdaLR`` whose
state (the step counter) is checkpointed, so a resumed run continues it exactly.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the base lr for optimizer step ``step`` (0-based).

    Warmup: (step + 1) / warmup_steps for step < warmup_steps; then cosine from 1
    down to ``min_lr_ratio``, reached at ``max_steps - 1``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, max_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: Optimizer, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> LambdaLR:
    def factor(step: int) -> float:
        return lr_factor(step, warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio)

    return LambdaLR(optimizer, factor)
