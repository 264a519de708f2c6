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
    down to ``min_lr_ratio``, reached at ``max_steps - 1``. Steps past the horizon
    (``step >= max_steps``, a resumed run with a larger ``max_steps``) keep the factor
    of the last step ``max_steps - 1``: ``min_lr_ratio``, or, when the warmup is not
    shorter than the run, the value the warmup had reached (never a jump).
    """
    if max_steps >= 1:
        step = min(step, max_steps - 1)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, max_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _factor(*, warmup_steps: int, max_steps: int, min_lr_ratio: float):
    def factor(step: int) -> float:
        return lr_factor(step, warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio)

    return factor


def make_scheduler(optimizer: Optimizer, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> LambdaLR:
    return LambdaLR(optimizer, _factor(warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio))


def set_horizon(scheduler: LambdaLR, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> None:
    """Give ``scheduler`` (from :func:`make_scheduler`) the horizon ``max_steps`` from its next step on; the
    caller sets the optimizer's current learning rate (a time budget fixes the horizon after calibrating)."""
    scheduler.lr_lambdas = [_factor(warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio)
                            for _ in scheduler.lr_lambdas]


def describe_short_schedule(*, warmup_steps: int, max_steps: int, lr: float, min_lr_ratio: float) -> str | None:
    """One line for a schedule whose warmup is not shorter than the run (``warmup_steps >= max_steps >= 1``),
    else None. Such a run ends during (or just at the end of) the warmup: the learning rate rises linearly to
    ``lr * max_steps / warmup_steps`` at its last step and never decays."""
    if max_steps < 1 or warmup_steps < max_steps:
        return None
    first = lr * lr_factor(0, warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio)
    last = lr * lr_factor(max_steps - 1, warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio)
    if warmup_steps == max_steps:
        reached = f"reaches optim.lr={lr:.3g} only at the last step"
    else:
        reached = f"reaches only {last:.3g} ({max_steps}/{warmup_steps} of optim.lr={lr:.3g}) at the last step"
    return (f"trainer.warmup_steps={warmup_steps} >= trainer.max_steps={max_steps}: the run ends in its warmup; the "
            f"learning rate rises linearly from {first:.3g} and {reached}, with no cosine decay to "
            f"{min_lr_ratio * lr:.3g}; set trainer.warmup_steps below {max_steps} for warmup then decay")
