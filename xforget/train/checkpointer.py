"""``Checkpointer``: the one owner of a run's training state and of its resume policy.

Everything a resumed run needs to continue the exact same run is either a pure
function of the step (data windows, learning rate) or saved here:

========================  ==============================================================
``model.safetensors``     the weights (FSDP: gathered full weights)
``state.pt`` keys         ``optimizer`` (FSDP: full state keyed by parameter name),
                          ``scheduler``, ``scaler`` (fp16 grad scaler), ``step``,
                          ``rng`` (rank 0's python/torch/cuda RNG states),
                          ``rng_ranks`` (every rank's, several processes only),
                          ``schedule_max_steps`` (the schedule's horizon),
                          ``elapsed_s`` (seconds of training since step 0),
                          ``budget`` (``trainer.max_time``'s decision, once made:
                          :class:`~xforget.train.budget.BudgetPlan` as a dict;
                          absent in older checkpoints and runs without a budget)
``config.yaml``           the resolved config
========================  ==============================================================

The files, their atomic write and the pruning of old checkpoints are
:mod:`xforget.train.checkpoint`; what may change on resume is
:mod:`xforget.train.resume`. The training loop talks to this object only:

1. ``Checkpointer(run_dir, cfg, info)`` finds the latest complete checkpoint and
   refuses a different model or a changed run before any slow work;
2. :meth:`~Checkpointer.load_weights` (the model built, before DDP/FSDP);
3. :meth:`~Checkpointer.restore` (optimizer, schedule and scaler built): their
   state, the RNG streams, the step, the elapsed time; records the run's config;
4. :meth:`~Checkpointer.save` every ``trainer.checkpoint_every`` steps;
5. a time budget: :meth:`~Checkpointer.measure_save` times a throwaway checkpoint write,
   :meth:`~Checkpointer.set_plan` fixes the horizon to the budget's step count.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import torch
from loguru import logger

from xforget.data.batches import step_seed
from xforget.files import atomic_write_text
from xforget.train.checkpoint import (
    CHECKPOINTS,
    CheckpointError,
    check_same_model,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    remove_partial,
    rng_state,
    save_checkpoint,
    set_rng_state,
    step_dir_name,
)
from xforget.train.budget import BudgetPlan, Clock
from xforget.train.config import TrainConfig, config_to_yaml
from xforget.train.loading import load_init_weights
from xforget.train.distributed import (
    DistInfo,
    all_gather_object,
    barrier,
    broadcast_object,
    full_model,
    full_optimizer_state,
    load_optimizer_state,
)
from xforget.train.resume import check_resume, describe, record_resume_config
from xforget.train.schedule import lr_factor, set_horizon

PROVISIONAL_HORIZON = 10**9  # a time budget without max_steps, until it is calibrated: the warmup, then ~flat


class Checkpointer:
    """Saves and restores all training state of the run in ``run_dir`` (every rank holds one).

    Attributes:
        resume_from: the checkpoint this run resumes from (None: a fresh run).
        changes: ``(key, old, new)`` of the config against the checkpoint's (resume policy applied).
        step: optimizer steps done when training starts (the restored step, 0 for a fresh run).
        horizon: the learning-rate schedule's ``max_steps`` (the run's first ``trainer.max_steps``, or the
            step count its time budget chose).
        plan: the time budget's decision (None: no budget, or not calibrated yet).
        clock: the training clock (``time.perf_counter``, or a test's fake clock).
        last_saved: the latest complete checkpoint written or resumed from (None before the first).

    Raises (constructor):
        CheckpointError: the run directory holds a checkpoint of another model, or an unreadable one.
        ConfigError: the config changes the run without ``trainer.resume=allow_changes``
            (see :mod:`xforget.train.resume`).
    """

    def __init__(self, run_dir: Path, cfg: TrainConfig, info: DistInfo, clock: Clock | None = None) -> None:
        self.run_dir, self.cfg, self.info = run_dir, cfg, info
        self.fsdp = info.enabled and cfg.trainer.strategy == "fsdp"
        self.resume_from: Path | None = broadcast_object(latest_checkpoint(run_dir), info)
        self.saved_cfg: TrainConfig | None = None
        self.changes: list = []
        if self.resume_from is not None:
            self.saved_cfg = check_same_model(self.resume_from, cfg)
            self.changes = check_resume(self.saved_cfg, cfg, int(self.resume_from.name.split("_")[1]), run_dir)
        self.step = 0
        self.horizon = cfg.trainer.max_steps if cfg.trainer.max_steps is not None else PROVISIONAL_HORIZON
        self.plan: BudgetPlan | None = None
        self.last_saved = self.resume_from
        self._state: dict | None = None  # state.pt, read with the weights, until restore() applies it
        self.clock = clock or Clock()
        self._elapsed_before, self._clock = 0.0, self.clock.now()
        self.model = self.optimizer = self.scheduler = self.scaler = None

    @property
    def resuming(self) -> bool:
        return self.resume_from is not None

    def load_weights(self, model: torch.nn.Module) -> None:
        """The checkpoint's weights into ``model`` (every rank reads the full file), else ``trainer.init_from``'s.

        Also removes leftovers of interrupted checkpoint writes (rank 0) and reads the schedule's horizon.
        Raises CheckpointError (unreadable files, weights that do not fit).
        """
        t = self.cfg.trainer
        self.model = model
        if self.info.is_main:
            for leftover in remove_partial(self.run_dir):
                logger.warning(f"removed an interrupted checkpoint write: {leftover.name}")
        if self.resume_from is not None:
            self._state = load_checkpoint(self.resume_from, model)
            # a resume with a larger max_steps trains the extra steps at the final learning rate, no jump
            self.horizon = int(self._state.get("schedule_max_steps", self.saved_cfg.trainer.max_steps))
            if self._state.get("budget") is not None:  # the budget's decision: the same schedule, the same end
                self.plan = BudgetPlan.from_dict(self._state["budget"])
            if t.init_from:
                logger.info(f"trainer.init_from={t.init_from} not used: resuming this run directory's own checkpoint")
        elif t.init_from:
            source = load_init_weights(t.init_from, model, self.cfg.model)
            logger.info(f"initialised the weights from {source} (trainer.init_from; fresh optimizer and schedule)")

    def restore(self, optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler) -> int:
        """Attach the optimizer, schedule and grad scaler; on resume, load their state, this rank's RNG
        streams, the step and the elapsed time. Rank 0 records the run's config. Returns :attr:`step`.

        Raises:
            CheckpointError: the saved optimizer state does not fit this model.
        """
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        state, self._state = self._state, None
        if state is not None:
            try:
                load_optimizer_state(self.model, optimizer, state["optimizer"])
            except (KeyError, ValueError, IndexError, TypeError) as exc:
                raise CheckpointError(f"corrupt checkpoint {self.resume_from}: state.pt optimizer state does not "
                                      f"fit this model ({type(exc).__name__}: {exc})") from None
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            _apply_optim_config(optimizer, scheduler, self.cfg, self.horizon)  # allow_changes may change them
            _restore_rng(state, self.info, self.cfg.seed)
            self.step = int(state["step"])
            self._elapsed_before = float(state.get("elapsed_s", 0.0))
            logger.info(f"resumed from {self.resume_from} at step {self.step}")
            self._log_changes()
        if self.info.is_main:
            self._record_config()
        return self.step

    def _log_changes(self) -> None:
        if not self.changes:
            return
        o, t = self.cfg.optim, self.cfg.trainer
        logger.warning(f"resumed with changed settings: {describe(self.changes)}")
        if t.max_steps is not None and t.max_steps != self.horizon:
            final = o.lr * lr_factor(self.horizon - 1, warmup_steps=t.warmup_steps, max_steps=self.horizon,
                                     min_lr_ratio=o.min_lr_ratio)
            logger.info(f"trainer.max_steps={t.max_steps}, the learning-rate schedule keeps its horizon of "
                        f"{self.horizon} steps (after it: its final lr {final:.3g})")

    def _record_config(self) -> None:
        """``config.yaml`` is the run's first config; a resume with changes adds ``config.resume-<step>.yaml``."""
        if self.resume_from is None or not (self.run_dir / "config.yaml").is_file():
            atomic_write_text(self.run_dir / "config.yaml", config_to_yaml(self.cfg))
        if self.changes:
            logger.info(f"recorded the resumed config in {record_resume_config(self.run_dir, self.step, self.cfg)}")

    def start_clock(self) -> None:
        """The training loop starts now: :meth:`elapsed` counts from here (plus the resumed run's time)."""
        self._clock = self.clock.now()

    def elapsed(self) -> float:
        """Seconds of training (evaluations, checkpoints included) since step 0, over resumes."""
        return round(self._elapsed_before + self.clock.now() - self._clock, 3)

    def set_plan(self, plan: BudgetPlan) -> None:
        """A time budget's decision: the schedule's horizon becomes ``plan.steps`` from the next step on (the
        current learning rate set for it) and every later checkpoint records the plan."""
        o, t = self.cfg.optim, self.cfg.trainer
        self.plan, self.horizon = plan, plan.steps
        set_horizon(self.scheduler, warmup_steps=t.warmup_steps, max_steps=plan.steps, min_lr_ratio=o.min_lr_ratio)
        _apply_optim_config(self.optimizer, self.scheduler, self.cfg, self.horizon)

    def measure_save(self, step: int) -> float:
        """Seconds one checkpoint write takes (rank 0's, the same on every rank): a complete write of the
        step's state into a throwaway directory, deleted at once (an interrupted one is a ``.tmp-`` leftover
        that the next run removes)."""
        scratch = self.run_dir / CHECKPOINTS / f".tmp-measure-{os.getpid()}"
        tic = self.clock.now()
        self._write(step, scratch)
        self.clock.spend("checkpoint")
        seconds = broadcast_object(self.clock.now() - tic, self.info)
        if self.info.is_main:
            shutil.rmtree(scratch, ignore_errors=True)
        return seconds

    def save(self, step: int) -> Path:
        """Write ``checkpoints/step_<step>/`` (rank 0; FSDP gathers on every rank), prune old ones;
        every rank returns once it is complete. Returns its path (also :attr:`last_saved`)."""
        self._write(step, self.run_dir)
        self.last_saved = self.run_dir / CHECKPOINTS / step_dir_name(step)
        self.clock.spend("checkpoint")
        return self.last_saved

    def _write(self, step: int, root: Path) -> None:
        """``root/checkpoints/step_<step>/`` with all training state; pruned to keep_last (rank 0)."""
        rngs = all_gather_object(rng_state(), self.info)
        if self.fsdp:  # gathered on every rank, kept by rank 0
            weights = full_model(self.model, self.cfg.model, self.info)
            optim_state = full_optimizer_state(self.model, self.optimizer)
        else:
            weights, optim_state = self.model, self.optimizer.state_dict()
        if self.info.is_main:
            state = {"optimizer": optim_state, "scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict(), "rng": rngs[0], "schedule_max_steps": self.horizon,
                     "elapsed_s": self.elapsed()}
            if self.plan is not None:
                state["budget"] = self.plan.to_dict()
            if self.info.enabled:
                state["rng_ranks"] = rngs
            path = save_checkpoint(root, step, weights, state, self.cfg)
            if root == self.run_dir:
                prune_checkpoints(self.run_dir, self.cfg.trainer.keep_last)
                logger.info(f"checkpoint {path}")
        barrier(self.info)  # written before any rank moves on


def _apply_optim_config(optimizer: torch.optim.Optimizer, scheduler, cfg: TrainConfig, horizon: int) -> None:
    """After loading a checkpoint's optimizer and scheduler state: the config's AdamW hyper-parameters and
    the schedule's learning rate for the restored step (equal to the saved values unless the config changed)."""
    o, t = cfg.optim, cfg.trainer
    scheduler.base_lrs = [o.lr for _ in optimizer.param_groups]
    factor = lr_factor(scheduler.last_epoch, warmup_steps=t.warmup_steps, max_steps=horizon,
                       min_lr_ratio=o.min_lr_ratio)
    for group in optimizer.param_groups:
        group.update(lr=o.lr * factor, initial_lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        if group["weight_decay"] > 0:  # the decayed group (norms, biases, embeddings stay at 0)
            group["weight_decay"] = o.weight_decay
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def _restore_rng(state: dict, info: DistInfo, seed: int) -> None:
    """This rank's RNG states from a checkpoint (every rank's are saved; rank 0's alone as ``rng``)."""
    per_rank = state.get("rng_ranks")
    if per_rank is not None and len(per_rank) == info.world_size:
        set_rng_state(per_rank[info.rank])
        return
    saved_world = len(per_rank) if per_rank is not None else 1
    if saved_world != info.world_size:
        logger.warning(f"the checkpoint was written by {saved_world} process(es), this run has {info.world_size}: "
                       "same global data order; the RNG streams (dropout) of ranks > 0 are reseeded")
    if info.rank == 0:
        set_rng_state(state["rng"])
    else:
        random.seed(step_seed(seed, (1 << 41) + info.rank + int(state["step"])))
        torch.manual_seed(step_seed(seed, (1 << 41) + info.rank + int(state["step"])))
