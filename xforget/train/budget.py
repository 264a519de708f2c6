"""``trainer.max_time``: a time budget for training, turned into a step count once the step time is known.

The learning-rate schedule stays a pure function of the step (exact resume,
reproducible runs), so a budget cannot stretch or shrink the schedule while the
run goes on. Instead the run *calibrates* once and then fixes its step count:

1. warm-up: the first step (two when compiled: the first one compiles) is not timed;
2. calibration: the next steps are timed until :data:`MIN_CALIBRATION_STEPS`
   steps and :func:`calibration_seconds` of the budget are measured and the two
   halves of the window agree within :data:`STABLE_SPREAD` (at most
   :data:`MAX_CALIBRATION_STEPS` steps or :data:`MAX_CALIBRATION_FRACTION` of the budget:
   on a noisy machine the guard of step 4 covers what the calibration missed); it stops at the end of the warmup when it can,
   so that every calibrated step's learning rate is independent of the horizon;
3. the run times one evaluation and one (throwaway) checkpoint write, and
   :func:`plan_steps` chooses the largest step count whose steps, evaluations and
   checkpoints end within the budget (less a :data:`MARGIN`). That count is the
   cosine horizon; the decision is logged in one line and saved with every later
   checkpoint (``state.pt`` ``budget``) and in ``budget.json``, so a resume continues
   the same schedule.
4. a guard (:meth:`TimeBudget.must_stop`) ends the run early, with its last
   evaluation and checkpoint, if the machine slows down; a faster machine still
   stops at the chosen step count.

The clock counts seconds of *training*: the loop, its evaluations and its
checkpoints, over resumes (not loading data, building the model, the final sample).
A test hook replaces it with a fake clock (:func:`clock_from_env`).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

from xforget.errors import ConfigError
from xforget.files import atomic_write_text

UNITS = {"s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0}
VALID_FORMS = "seconds (600, 90.5) or a number with a unit s, sec, min or h (90s, 10min, 1.5h)"
MIN_CALIBRATION_STEPS = 10  # timed steps at least
MAX_CALIBRATION_STEPS = 200  # timed steps at most (an unsteady machine: the guard covers the rest)
MAX_CALIBRATION_FRACTION = 0.1  # of the budget timed at most, stable or not (a shared, noisy machine)
STABLE_SPREAD = 0.1  # the two halves of the window agree within 10%
MARGIN = 0.03  # of the budget kept free for timing noise
# the guard's allowance for the final evaluation and checkpoint: measured on a shared 2-core CPU, a final
# evaluation took 14.6 s against 11.8 s calibrated (and 11.3 s mid-run), which ran a 600 s budget to 602 s
FINAL_SLACK = 1.25
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-z]*)\s*$")


def parse_duration(value) -> float | None:
    """``trainer.max_time`` in seconds: ``600`` / ``"600"`` / ``"90s"`` / ``"10min"`` / ``"1.5h"``; None stays None.

    Raises:
        ValueError: zero, negative, not finite, or not one of the forms (one line naming the valid forms).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        return None
    bad = f"invalid value trainer.max_time={value!r}: must be a positive duration: {VALID_FORMS}"
    if isinstance(value, bool):
        raise ValueError(bad)
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value).lower())
        if match is None or match.group(2) not in ("", *UNITS):
            raise ValueError(bad)
        seconds = float(match.group(1)) * UNITS.get(match.group(2), 1.0)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(bad)
    return seconds


def format_seconds(seconds: float) -> str:
    """``600`` -> ``"600 s"``, ``90.0`` -> ``"90 s"``, ``12.34`` -> ``"12.3 s"``: whole seconds without a decimal,
    one decimal below 100 s otherwise. Every budget line and budget error formats seconds with it."""
    if seconds >= 100 or float(seconds).is_integer():
        return f"{seconds:.0f} s"
    return f"{seconds:.1f} s"


def calibration_seconds(budget_s: float) -> float:
    """How long the calibration measures at least: 2% of the budget, at most 10 s."""
    return min(10.0, 0.02 * budget_s)


@dataclass(frozen=True)
class BudgetPlan:
    """A budget's decision: train ``steps`` optimizer steps (the schedule's horizon).

    Attributes (seconds are seconds of training, see the module docstring):
        budget_s: trainer.max_time.
        steps: the run's last step: ``min(max_steps, what the budget fits)``.
        budget_steps: the steps the budget fits (``steps`` unless max_steps ends first).
        step_s, eval_s, checkpoint_s: the measured costs the choice used.
        decided_at: the step at which it was decided; ``elapsed_s``: the training time then.
        evaluations, checkpoints: how many the run does after ``decided_at`` (the last step's included).
        end_s: the predicted training time at the end of the run.
        ends_first: "max_time" or "max_steps".
    """

    budget_s: float
    steps: int
    budget_steps: int
    step_s: float
    eval_s: float
    checkpoint_s: float
    decided_at: int
    elapsed_s: float
    evaluations: int
    checkpoints: int
    end_s: float
    ends_first: str

    def describe(self, max_steps: int | None) -> str:
        """The one log line: ``budget 600 s: 1100 steps at 0.490 s/step, 5 evaluations, ...``."""
        line = (f"budget {format_seconds(self.budget_s)}: {self.steps} steps at {self.step_s:.3g} s/step, "
                f"{self.evaluations} evaluations ({self.eval_s:.2g} s each), {self.checkpoints} checkpoints "
                f"({self.checkpoint_s:.2g} s each); ends at ~{format_seconds(self.end_s)} "
                f"(calibrated by step {self.decided_at}, {format_seconds(self.elapsed_s)} in)")
        if max_steps is None:
            return line + "; the learning-rate schedule ends at that step"
        if self.ends_first == "max_steps":
            return line + f"; trainer.max_steps={max_steps} ends first (the budget fits {self.budget_steps})"
        return line + f"; the budget ends first (trainer.max_steps={max_steps})"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BudgetPlan:
        return cls(**d)


def _count(first: int, last: int, every: int) -> int:
    """Events in steps (first, last]: multiples of ``every`` below ``last``, plus one at ``last`` (the run's end)."""
    if last <= first:
        return 0
    inside = 0 if every <= 0 else (last - 1) // every - first // every
    return inside + 1


def run_cost(steps: int, *, step: int, elapsed_s: float, step_s: float, eval_s: float, checkpoint_s: float,
             eval_every: int, checkpoint_every: int) -> float:
    """Predicted training seconds at the end of a run stopping at ``steps``, from ``step`` at ``elapsed_s``."""
    return (elapsed_s + (steps - step) * step_s + _count(step, steps, eval_every) * eval_s
            + _count(step, steps, checkpoint_every) * checkpoint_s)


def plan_steps(*, budget_s: float, step: int, elapsed_s: float, step_s: float, eval_s: float, checkpoint_s: float,
               eval_every: int, checkpoint_every: int, max_steps: int | None = None,
               margin: float = MARGIN) -> BudgetPlan:
    """The largest step count whose remaining steps, evaluations and checkpoints end within ``budget_s``
    less ``margin`` of it: a pure function of the measured costs and the budget.

    Args:
        budget_s: the budget in seconds; step, elapsed_s: where the run is now (its calibration);
        step_s, eval_s, checkpoint_s: measured seconds per step, per evaluation, per checkpoint write;
        eval_every, checkpoint_every: trainer's (0 = only at the end); max_steps: a step limit, or None.
    Raises:
        ConfigError: the budget does not fit one more step, a final evaluation and a checkpoint;
            the message names the minimum budget.
    """
    usable = budget_s * (1.0 - margin)

    def cost(n: int) -> float:
        return run_cost(n, step=step, elapsed_s=elapsed_s, step_s=step_s, eval_s=eval_s, checkpoint_s=checkpoint_s,
                        eval_every=eval_every, checkpoint_every=checkpoint_every)

    minimum = cost(step + 1) / (1.0 - margin)
    if minimum > budget_s:
        raise ConfigError(
            f"invalid value trainer.max_time={format_seconds(budget_s)}: too short for this run on this machine: after "
            f"{format_seconds(elapsed_s)} of warm-up and calibration ({step} steps), one more step ({step_s:.3g} s), "
            f"an evaluation ({eval_s:.3g} s) and a checkpoint ({checkpoint_s:.3g} s) need at least "
            f"trainer.max_time={math.ceil(minimum)}s; use a longer budget or trainer.max_steps")
    lo = step + 1  # fits; find the largest n with cost(n) <= usable (cost grows with n)
    hi = step + 2 + int(max(0.0, usable - elapsed_s) / max(step_s, 1e-9))
    while cost(hi) <= usable:  # step_s ~ 0 (a fake clock): widen
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= usable else (lo, mid)
    steps, ends_first = lo, "max_time"
    if max_steps is not None and max_steps <= lo:
        steps, ends_first = max_steps, "max_steps"
    return BudgetPlan(budget_s=budget_s, steps=steps, budget_steps=lo, step_s=step_s, eval_s=eval_s,
                      checkpoint_s=checkpoint_s, decided_at=step, elapsed_s=elapsed_s,
                      evaluations=_count(step, steps, eval_every), checkpoints=_count(step, steps, checkpoint_every),
                      end_s=cost(steps), ends_first=ends_first)


class TimeBudget:
    """The loop's side of a budget: calibrate, then guard (see the module docstring).

    ``plan`` is None until :meth:`observe` says the calibration is complete and the loop has
    measured an evaluation and a checkpoint and called :meth:`decide`; a resumed run passes the
    recorded plan.
    """

    def __init__(self, budget_s: float, *, warmup_steps: int, skip: int, plan: BudgetPlan | None = None) -> None:
        self.budget_s, self.warmup_steps, self.skip, self.plan = budget_s, warmup_steps, skip, plan
        self.times: list[float] = []  # calibration window
        self.recent: deque[float] = deque(maxlen=5)
        self.eval_times: list[float] = []  # evaluations measured after the calibration
        self.seen = 0

    def observe(self, step: int, seconds: float) -> bool:
        """Record step ``step``'s time (seconds); True when the calibration is complete at this step."""
        self.seen += 1
        self.recent.append(seconds)
        if self.plan is not None or self.seen <= self.skip:
            return False
        self.times.append(seconds)
        n = len(self.times)
        if n < MIN_CALIBRATION_STEPS:
            return False
        if n >= MAX_CALIBRATION_STEPS or sum(self.times) >= MAX_CALIBRATION_FRACTION * self.budget_s:
            return True
        half = n // 2
        first, second = sum(self.times[:half]) / half, sum(self.times[half:]) / (n - half)
        stable = abs(second - first) <= STABLE_SPREAD * max(first, second)
        long_enough = sum(self.times) >= calibration_seconds(self.budget_s)
        return stable and (long_enough or step >= self.warmup_steps)

    @property
    def step_s(self) -> float:
        """The calibrated seconds per step: the mean of the window's second half (past any drift)."""
        half = self.times[len(self.times) // 2:]
        return sum(half) / len(half)

    def decide(self, *, step: int, elapsed_s: float, eval_s: float, checkpoint_s: float, eval_every: int,
               checkpoint_every: int, max_steps: int | None) -> BudgetPlan:
        self.plan = plan_steps(budget_s=self.budget_s, step=step, elapsed_s=elapsed_s, step_s=self.step_s,
                               eval_s=eval_s, checkpoint_s=checkpoint_s, eval_every=eval_every,
                               checkpoint_every=checkpoint_every, max_steps=max_steps)
        return self.plan

    def check_calibration(self, elapsed_s: float, step: int) -> None:
        """Raises ConfigError when the budget ran out before the calibration finished (naming a minimum)."""
        if elapsed_s >= self.budget_s:
            raise ConfigError(
                f"invalid value trainer.max_time={format_seconds(self.budget_s)}: too short for this run on this machine: "
                f"warm-up and calibration alone took {format_seconds(elapsed_s)} ({step} steps); use at least "
                f"trainer.max_time={math.ceil(2 * elapsed_s)}s, or trainer.max_steps")

    def observe_eval(self, seconds: float) -> None:
        """Record an evaluation's duration (seconds): the guard budgets the final one at least this long."""
        self.eval_times.append(seconds)

    def must_stop(self, elapsed_s: float, *, eval_here: bool, checkpoint_here: bool) -> bool:
        """Whether one more step and a final evaluation and checkpoint would overrun the budget, after this
        step's own evaluation and checkpoint: the run then ends at this step.

        The final evaluation and checkpoint are budgeted at :data:`FINAL_SLACK` times their expected cost
        (the calibrated one scaled by the steps' slowdown, or the slowest evaluation measured since, if longer):
        they come after the last step, when nothing can be cut any more."""
        p = self.plan
        step_s = max(p.step_s, sum(self.recent) / len(self.recent)) if self.recent else p.step_s
        slow = step_s / p.step_s if p.step_s > 0 else 1.0  # evaluations and checkpoints slow down with the steps
        eval_s = max(p.eval_s * slow, max(self.eval_times, default=0.0))
        checkpoint_s = p.checkpoint_s * slow
        after_this = elapsed_s + eval_s * eval_here + checkpoint_s * checkpoint_here
        return after_this + step_s + FINAL_SLACK * (eval_s + checkpoint_s) > self.budget_s

    def spent(self, elapsed_s: float) -> bool:
        """A resumed run: no step (with its evaluation and checkpoint) fits the budget left."""
        p = self.plan
        return p is not None and elapsed_s + p.step_s + p.eval_s + p.checkpoint_s > self.budget_s


def write_budget_json(run_dir, plan: BudgetPlan, max_steps: int | None) -> None:
    """``budget.json``: the decision, for people and scripts (the checkpoints carry it for resume)."""
    atomic_write_text(Path(run_dir) / "budget.json", json.dumps({**plan.to_dict(), "max_steps": max_steps,
                                                           "line": plan.describe(max_steps)}, indent=1) + "\n")


class Clock:
    """Seconds, from ``time.perf_counter``; :meth:`spend` is a no-op (the fake clock's ticks)."""

    fake = False

    def now(self) -> float:
        return time.perf_counter()

    def spend(self, what: str, step: int = 0) -> None:
        pass


class FakeClock(Clock):
    """A clock that advances only when the loop reports work: a step, an evaluation, a checkpoint.

    ``XFORGET_DEBUG_FAKE_CLOCK="step=0.5,eval=2,checkpoint=0.25,slow_from=40,slow_step=1.5"``: every
    step costs 0.5 s (1.5 s from step 40 on), every evaluation 2 s, every checkpoint write 0.25 s.
    """

    fake = True

    def __init__(self, step: float = 1.0, eval: float = 0.0, checkpoint: float = 0.0,  # noqa: A002
                 slow_from: float = math.inf, slow_step: float | None = None) -> None:
        self.costs = {"step": step, "eval": eval, "checkpoint": checkpoint}
        self.slow_from, self.slow_step, self.t = slow_from, slow_step, 0.0

    def now(self) -> float:
        return self.t

    def spend(self, what: str, step: int = 0) -> None:
        if what == "step" and self.slow_step is not None and step >= self.slow_from:
            self.t += self.slow_step
        else:
            self.t += self.costs[what]


def clock_from_env() -> Clock:
    """The real clock, or the test hook's :class:`FakeClock` (``XFORGET_DEBUG_FAKE_CLOCK``)."""
    spec = os.environ.get("XFORGET_DEBUG_FAKE_CLOCK")
    if not spec:
        return Clock()
    return FakeClock(**{k: float(v) for k, v in (part.split("=") for part in spec.split(","))})
