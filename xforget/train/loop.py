"""The training loop: one function, read top to bottom as phases.

``train(cfg, run_dir)`` runs :func:`_train`, whose phases hand one :class:`_Run`
to each other: the hardware; the run directory's checkpoint, checked before any
slow work (:class:`~xforget.train.checkpointer.Checkpointer`, which owns all
training state and the resume policy); the data; the model and its weights; the
processes (DDP / FSDP2); the optimizer, schedule and grad scaler, restored on
resume; the metrics sinks; the loop (train, log, evaluate, checkpoint); the final
report (``val_bpb``, the final weights and a sample).
Everything a resumed run needs to continue the exact same run is either a pure
function of the step (data windows, learning rate) or in the checkpoint.
Under torchrun the same function runs on every rank (see :mod:`.distributed`).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from loguru import logger
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from xforget.data import TrainBatches, val_windows
from xforget.data.batches import step_seed
from xforget.data.tokenizer import ByteTokenizer
from xforget.data.training import TrainingData, load_training_data
from xforget.errors import ConfigError
from xforget.models.autoregressive import AutoregressiveWrapper
from xforget.models.config import describe_model
from xforget.models.packing import packed
from xforget.models.wrapper import TransformerWrapper, build_model
from xforget.train.budget import TimeBudget, clock_from_env, format_seconds, parse_duration, write_budget_json
from xforget.train.checkpoint import save_final_model
from xforget.train.loading import check_init_from
from xforget.train.checkpointer import Checkpointer
from xforget.train.compile import resolve_compile
from xforget.train.config import TrainConfig, resolve_data_vocab, validate
from xforget.train.device import check_backend_device
from xforget.train.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_object,
    full_model,
    init_distributed,
    rank0_first,
    shard_model,
    shutdown,
)
from xforget.train.metrics import MetricsLog, model_flops_per_token, peak_flops
from xforget.train.optim import adamw_impl, decay_names, param_groups
from xforget.train.precision import AMP_DTYPES, device_name, precision_reason, resolve_precision
from xforget.train.schedule import describe_short_schedule, make_scheduler
from xforget.train.scoring import LN2, loss_sums, nats_to_bpb, perplexity  # noqa: F401  (LN2: its old home)
from xforget.train.stop import StopRequest
from xforget.train.trackers import check_trackers, open_trackers


class TrainingError(RuntimeError):
    """The run cannot continue (e.g. the loss became NaN); the message is one line for the user."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimizer steps completed
    val_loss: float | None = None  # nats per token (per byte for byte-level data)
    val_bpb: float | None = None  # bits per byte of the original text = val_loss x tokens / bytes / ln 2
    val_ppl: float | None = None  # per-token perplexity = exp(val_loss)
    sample: str | None = None  # the generated continuation (decoded by the run's tokenizer)
    sample_prompt: str | None = None  # the prompt it continues (a line/document start of the validation split)
    interrupted: bool = False  # stopped before max_steps (a signal, or stop_after_step)
    budget_line: str | None = None  # trainer.max_time's decision (``budget 600 s: 1100 steps at ...``)
    budget_stopped: bool = False  # the time budget ended the run before its planned step (the machine slowed)
    elapsed_s: float | None = None  # seconds of training when the loop ended (its last evaluation and checkpoint in)
    stop_signal: str | None = None  # "SIGINT" / "SIGTERM" when a signal stopped the run (checkpoint written)
    checkpoint: Path | None = None  # the latest complete checkpoint when the run stopped on a signal
    losses: dict[int, float] = field(default_factory=dict)  # step -> train loss, for this process's steps


def train(cfg: TrainConfig, run_dir: str | Path, *, stop_after_step: int | None = None) -> TrainResult:
    """Train (or resume) the run in ``run_dir``; under torchrun, one rank of a multi-process run.

    Args:
        cfg: the typed config (see :func:`xforget.train.config.to_train_config`).
        run_dir: where config, logs, metrics and checkpoints live; if it holds
            a complete checkpoint of the same model, training continues from it.
            Under torchrun, rank 0's ``run_dir`` is used by every rank.
        stop_after_step: stop right after this step as if the process were
            killed there (no extra checkpoint, no final evaluation); for tests.
    Raises:
        ConfigError, DataError, CheckpointError, TrainingError: one-line messages.

    Hidden debug knobs (environment variables, for the kill/resume tests):
    ``XFORGET_DEBUG_STEP_SLEEP=SECONDS`` sleeps that long after every step (so
    a test can SIGKILL a tiny run at a chosen step; not counted in tokens/s);
    ``XFORGET_DEBUG_STOP_AFTER_STEP=N`` is ``stop_after_step=N`` for a command line run;
    ``XFORGET_DEBUG_FAKE_CLOCK=step=S,eval=E,checkpoint=C[,slow_from=N,slow_step=S2]`` replaces the training
    clock of ``trainer.max_time`` by one that advances only by these costs (see :mod:`.budget`).
    """
    resolve_data_vocab(cfg)
    validate(cfg)
    check_trackers(cfg.logger)  # fail before anything is written if a tracker's package is missing
    check_init_from(cfg.trainer.init_from, run_dir)  # likewise a missing trainer.init_from
    check_backend_device(cfg.model, cfg.trainer.device)  # flex on a CPU: before the run directory is written
    if stop_after_step is None and os.environ.get("XFORGET_DEBUG_STOP_AFTER_STEP"):
        stop_after_step = int(os.environ["XFORGET_DEBUG_STOP_AFTER_STEP"])
    try:
        info = init_distributed(cfg.trainer.device)
    except RuntimeError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return _train(cfg, Path(run_dir), info, stop_after_step)
    finally:
        shutdown(info)


@dataclass
class _Run:
    """What the phases of :func:`_train` hand each other; each field is set by the phase named beside it."""

    cfg: TrainConfig
    info: DistInfo
    run_dir: Path
    device: torch.device  # _hardware
    precision: str  # _hardware: fp32 / bf16 / fp16 (``auto`` resolved)
    ckpt: Checkpointer = field(init=False)
    budget: TimeBudget | None = field(init=False)  # _train: trainer.max_time (None: no time limit)
    data: TrainingData = field(init=False)  # _open_data
    batches: TrainBatches = field(init=False)  # _open_data: the global batch of a step
    local_batch: int = field(init=False)  # _open_data: this rank's windows per micro-batch
    shard: slice = field(init=False)  # _open_data: this rank's columns of every global micro-batch
    val_shard: torch.Tensor = field(init=False)  # _open_data: this rank's fixed validation windows
    model: TransformerWrapper = field(init=False)  # _build_model (FSDP: sharded in place by _wrap_processes)
    flops_per_token: float = field(init=False)  # _build_model
    peak: float | None = field(init=False)  # _build_model: peak FLOP/s per device, if known
    lm: AutoregressiveWrapper = field(init=False)  # _wrap_processes: the loss and the sampler
    ddp: DistributedDataParallel | None = field(init=False)  # _wrap_processes
    compiled: bool = field(init=False)  # _wrap_processes: trainer.compile resolved
    forward: torch.nn.Module = field(init=False)  # _wrap_processes: what a training step calls
    optimizer: torch.optim.Optimizer = field(init=False)  # _build_optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler = field(init=False)  # _build_optimizer
    scaler: torch.amp.GradScaler = field(init=False)  # _build_optimizer
    sinks: list = field(init=False)  # _open_sinks: metrics.jsonl and trackers (rank 0)
    result: TrainResult = field(init=False)

    @property
    def fsdp(self) -> bool:
        return self.ckpt.fsdp

    def autocast(self):
        """The training precision's autocast (training steps only; validation scores in fp32)."""
        amp_dtype = AMP_DTYPES[self.precision]
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=amp_dtype)


def _train(cfg: TrainConfig, run_dir: Path, info: DistInfo, stop_after_step: int | None) -> TrainResult:
    t = cfg.trainer
    if t.batch_size % info.world_size:
        raise ConfigError(f"invalid value trainer.batch_size={t.batch_size}: must be divisible by the number of "
                          f"processes ({info.world_size}), each of which takes an equal share of the global batch")
    run_dir = Path(broadcast_object(str(run_dir.resolve()), info))
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    with _logging(run_dir, info), _threads(t.threads):
        run = _Run(cfg, info, run_dir, *_hardware(cfg, info))
        budget_s = parse_duration(t.max_time)
        # a different model, a changed run or unusable data fails before slow work, and before any log line
        run.ckpt = Checkpointer(run_dir, cfg, info, clock=clock_from_env())
        _open_data(run)
        logger.info(f"device {device_name(run.device)}; {precision_reason(t.precision, run.precision, run.device)}; "
                    f"{_describe_limits(t.max_steps, budget_s)}")
        _build_model(run)
        run.ckpt.load_weights(run.model)  # before DDP / FSDP: every rank reads the full checkpoint
        run.budget = None
        if budget_s is not None:
            run.budget = TimeBudget(budget_s, warmup_steps=t.warmup_steps, skip=1, plan=run.ckpt.plan)
        _wrap_processes(run)
        _build_optimizer(run)
        run.ckpt.restore(run.optimizer, run.scheduler, run.scaler)
        run.sinks = _open_sinks(run)
        run.result = TrainResult(run_dir=run_dir, step=run.ckpt.step)
        if _loop(run, stop_after_step):
            _report(run)
        return run.result


def _hardware(cfg: TrainConfig, info: DistInfo) -> tuple[torch.device, str]:
    """The device and the resolved precision (``auto``: bf16 where the hardware has it natively)."""
    device = _device(cfg.trainer.device, info)
    if device.type == "cpu":
        # Decayed attention weights (forget gate, ALiBi) underflow into denormal floats, which
        # x86 CPUs process ~10x slower: FoX's backward ran 3x slower without this.
        torch.set_flush_denormal(True)
    return device, resolve_precision(cfg.trainer.precision, device)


def _open_data(run: _Run) -> None:
    """Fixed split; the training windows are a pure function of (seed, step), each rank keeps its columns."""
    cfg, t, info = run.cfg, run.cfg.trainer, run.info
    data = rank0_first(info, lambda: load_training_data(cfg.data, t.seq_len))  # rank 0 builds any cache first
    logger.info(f"data {data.description}")
    run.data = data
    run.batches = TrainBatches(data.train, t.seq_len, t.batch_size, t.grad_accum, cfg.seed)
    run.local_batch = t.batch_size // info.world_size
    run.shard = slice(info.rank * run.local_batch, (info.rank + 1) * run.local_batch)
    val = val_windows(data.val, t.seq_len, t.eval_batches * t.batch_size)
    per_rank = val.shape[0] // info.world_size
    run.val_shard = val[info.rank * per_rank:(info.rank + 1) * per_rank]
    logger.info(f"split: {len(data.train):,} train tokens, {len(data.val):,} validation tokens; "
                f"{val.shape[0]} fixed validation windows; val_bpb = loss x {data.tokens_per_byte:.5f} "
                "tokens per byte / ln 2")
    if info.is_main:
        data.tokenizer.save(run.run_dir)  # the run directory alone can generate (tokenizer.json unless bytes)


def _build_model(run: _Run) -> None:
    """The model, initialised from ``seed`` (the same weights on every rank), and its throughput figures."""
    cfg, t, info = run.cfg, run.cfg.trainer, run.info
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    try:
        model = build_model(cfg.model).to(run.device)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid model config: {exc}") from None
    if info.rank > 0:  # its own dropout stream; rank 0 keeps the single-process one
        random.seed(step_seed(cfg.seed, (1 << 40) + info.rank))
        torch.manual_seed(step_seed(cfg.seed, (1 << 40) + info.rank))
    run.model = model
    run.flops_per_token = flops = model_flops_per_token(model, t.seq_len)
    run.peak = peak = peak_flops(run.device, run.precision, t.peak_flops)
    n_params = sum(p.numel() for p in model.parameters())
    processes = (f", {info.world_size} processes ({t.strategy}), {run.local_batch} windows each per micro-batch"
                 if info.enabled else "")
    logger.info(f"model {describe_model(cfg.model)}; dim={cfg.model.dim} depth={cfg.model.depth} heads={cfg.model.heads}: "
                f"{n_params / 1e6:.2f}M parameters on {run.device} ({run.precision}"
                f"{' (auto)' if t.precision == 'auto' else ''}, {torch.get_num_threads()} threads{processes}); "
                f"{flops / 1e6:.2f} MFLOP per trained token"
                f"{f', peak {peak / 1e12:.1f} TFLOP/s per device' if peak else ''}")


def _wrap_processes(run: _Run) -> None:
    """DDP averages gradients over ranks; FSDP2 also shards the weights (in place); then torch.compile."""
    t, info = run.cfg.trainer, run.info
    run.lm = AutoregressiveWrapper(packed(run.model, run.data.eot_id))  # data.pack_documents: ids from end-of-text
    run.ddp = None
    if run.fsdp:
        shard_model(run.model, run.device, info)  # parameters become DTensor shards, in place
    elif info.enabled:
        run.ddp = DistributedDataParallel(run.lm, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    run.compiled, why = resolve_compile(t.compile, t.max_steps, run.device, parse_duration(t.max_time))
    logger.info(why)
    if run.compiled and run.budget is not None:
        run.budget.skip = 2  # the first step compiles, the second may still recompile: neither is timed
    run.forward = torch.compile(run.ddp or run.lm) if run.compiled else (run.ddp or run.lm)


def _build_optimizer(run: _Run) -> None:
    """AdamW, the warmup + cosine schedule over the checkpoint's horizon, the fp16 grad scaler."""
    o, t, model = run.cfg.optim, run.cfg.trainer, run.model
    run.optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                      **adamw_impl(o.impl, run.fsdp))
    decayed, kept = decay_names(model)
    logger.info(f"AdamW: weight decay {o.weight_decay} on {len(decayed)} weight matrices, none on "
                f"{len(kept)} norm gains, biases, embeddings and memory key/values")
    # the schedule's horizon is the run's first max_steps: a resume with a larger max_steps trains the
    # extra steps at the final learning rate (see xforget/train/resume.py), no jump
    horizon = run.ckpt.horizon
    short = describe_short_schedule(warmup_steps=t.warmup_steps, max_steps=horizon, lr=o.lr,
                                    min_lr_ratio=o.min_lr_ratio)
    if short is not None:
        logger.warning(short)
    run.scheduler = make_scheduler(run.optimizer, warmup_steps=t.warmup_steps, max_steps=horizon,
                                   min_lr_ratio=o.min_lr_ratio)
    run.scaler = torch.amp.GradScaler(run.device.type, enabled=run.precision == "fp16")


def _open_sinks(run: _Run) -> list:
    """Rank 0's ``metrics.jsonl`` and trackers (a resumed run drops the records past its step)."""
    if not run.info.is_main:
        return []
    resume_step = run.ckpt.step if run.ckpt.resuming else None
    metrics = MetricsLog(run.run_dir / "metrics.jsonl", resume_step=resume_step)
    if metrics.rotated_to is not None:
        logger.warning(f"{run.run_dir} has metrics.jsonl but no checkpoint: training starts at step 0; "
                       f"the old records were kept as {metrics.rotated_to.name}")
    if metrics.dropped:
        logger.info(f"metrics.jsonl: dropped {metrics.dropped} records past step {run.ckpt.step} "
                    "(trained after the last checkpoint; trained again now)")
    return [metrics, *open_trackers(run.cfg, run.run_dir, resume_step)]


def _describe_limits(max_steps: int | None, budget_s: float | None) -> str:
    """The run's end as the first log line states it."""
    if budget_s is None:
        return f"{max_steps} steps (trainer.max_steps; no time budget)"
    line = (f"budget {format_seconds(budget_s)} of training (trainer.max_time): the steps it fits are chosen once "
            "the step time is measured")
    return line + (f"; or trainer.max_steps={max_steps}, whichever ends first" if max_steps is not None else "")


def _stop_step(run: _Run) -> int | None:
    """The run's last step: trainer.max_steps and/or the budget's choice (None: not calibrated yet)."""
    t, plan = run.cfg.trainer, run.ckpt.plan
    if run.budget is None or plan is None:
        return t.max_steps
    return plan.budget_steps if t.max_steps is None else min(t.max_steps, plan.budget_steps)



def _resumed_budget_spent(run: _Run) -> bool:
    """On resume under a time budget: log the recorded decision; True when the budget is already spent."""
    t, ckpt, budget = run.cfg.trainer, run.ckpt, run.budget
    if ckpt.plan is None or budget is None:
        return False
    run.result.budget_line = ckpt.plan.describe(t.max_steps)
    logger.info(f"resumed the time budget's decision: {run.result.budget_line}")
    if not budget.spent(ckpt.elapsed()):
        return False
    logger.warning(f"time budget spent: {format_seconds(ckpt.elapsed())} of trainer.max_time="
                   f"{format_seconds(budget.budget_s)} trained; no step left to train")
    return True


def _after_step(run: _Run, done: int, stop_at: int | None, lr: float, window: _Window, bar,
                step_clock_s: float) -> tuple[int | None, bool, bool]:
    """What follows step ``done``: the budget's verdict (calibrate, or stop early on a slower machine),
    the log line and evaluation, the checkpoint. Returns ``(stop_at, is_last, saved)``."""
    t, ckpt, result, budget = run.cfg.trainer, run.ckpt, run.result, run.budget
    eval_due = t.eval_every > 0 and done % t.eval_every == 0
    save_due = t.checkpoint_every > 0 and done % t.checkpoint_every == 0
    verdict = None
    if budget is not None and done != stop_at:
        verdict = _budget_verdict(run, done, step_clock_s, eval_due, save_due)
    is_last = done == stop_at or verdict == "stop"
    eval_now = is_last or eval_due
    eval_s = None
    if eval_now or done % t.log_every == 0:
        eval_s = _log_window(run, done, lr, window, eval_now, bar)
        if eval_s is not None and budget is not None and budget.plan is not None:
            budget.observe_eval(eval_s)
    if verdict == "calibrated":
        stop_at = _calibrate(run, done, eval_s, bar)
    elif verdict == "stop":
        plan = ckpt.plan
        result.budget_stopped = True
        logger.warning(f"time budget: ending at step {done} of the {stop_at} planned: steps now take "
                       f"{max(budget.recent, default=plan.step_s):.3g} s (calibrated {plan.step_s:.3g} s); a last evaluation and "
                       f"checkpoint within trainer.max_time={format_seconds(budget.budget_s)}")
    saved = is_last or save_due
    if saved:
        ckpt.save(done)
    result.elapsed_s = ckpt.elapsed()
    if is_last and budget is not None:
        logger.info(f"trained {done} steps in {format_seconds(result.elapsed_s)} of the "
                    f"{format_seconds(budget.budget_s)} budget")
    return stop_at, is_last, saved


def _loop(run: _Run, stop_after_step: int | None) -> bool:
    """Train from the restored step to the last step (``trainer.max_steps`` and/or what ``trainer.max_time``
    fits), logging, evaluating and checkpointing on the way.

    Returns False when the run stopped early (a signal: after checkpointing the step; ``stop_after_step``).
    """
    t, ckpt, result = run.cfg.trainer, run.ckpt, run.result
    step_sleep = float(os.environ.get("XFORGET_DEBUG_STEP_SLEEP") or 0.0)
    stop_at = _stop_step(run)
    # disable=None: tqdm draws only on a terminal, so a redirected log gets no \r progress lines
    bar = tqdm(total=stop_at, initial=ckpt.step, disable=None if t.progress and run.info.is_main else True,
               unit="step", dynamic_ncols=True, file=sys.stderr, desc="train")
    window = _Window(tokens_per_step=t.batch_size * t.grad_accum * t.seq_len)  # global tokens
    # resumed from a step that closed no log window: the first record averages fewer steps than the
    # uninterrupted run's record for the same step, and says how many (train_loss_steps)
    window.partial = ckpt.step > 0 and ckpt.step % t.log_every != 0 and not (t.eval_every and ckpt.step % t.eval_every == 0)
    ckpt.start_clock()
    if _resumed_budget_spent(run):
        bar.close()
        for sink in run.sinks:
            sink.close()
        return True
    stop = StopRequest(run.info, run.device)
    run.model.train()
    step = ckpt.step
    try:
        stop.install()
        while stop_at is None or step < stop_at:
            tic, clock_tic = time.perf_counter(), ckpt.clock.now()
            lr = run.optimizer.param_groups[0]["lr"]
            train_loss = _train_step(run, step)
            seconds = time.perf_counter() - tic
            if step_sleep > 0:  # the test hook: a slower step (counted by the budget, not in tokens/s)
                time.sleep(step_sleep)
            ckpt.clock.spend("step", step)
            done = step + 1
            result.step, result.losses[done] = done, train_loss
            first_compiled = run.compiled and step == ckpt.step  # torch.compile traces and compiles in this step
            window.add(train_loss, seconds, timed=not first_compiled)
            if first_compiled:
                logger.info(f"first step {window.last_time:.1f} s (torch.compile compiling forward and backward; "
                            "not counted in tokens/s)")
            bar.update(1)
            stop_at, is_last, saved_now = _after_step(run, done, stop_at, lr, window, bar,
                                                      ckpt.clock.now() - clock_tic)
            if stop.requested() and not is_last:  # SIGINT / SIGTERM: save this step, then stop
                if not saved_now:
                    ckpt.save(done)
                logger.warning(f"stopped by {stop.signal} after step {done}; checkpoint {ckpt.last_saved}")
                result.interrupted, result.stop_signal, result.checkpoint = True, stop.signal, ckpt.last_saved
                return False
            if stop_after_step is not None and done >= stop_after_step and not is_last:
                result.interrupted = True
                return False
            if is_last:
                break
            step = done
    finally:
        stop.restore()
        bar.close()
        for sink in run.sinks:
            sink.close()
    return True


def _budget_verdict(run: _Run, done: int, step_s: float, eval_due: bool, save_due: bool) -> str | None:
    """The time budget after step ``done`` took ``step_s`` seconds: "calibrated" (time an evaluation and a
    checkpoint, then choose the step count), "stop" (the next step would overrun it: the machine slowed down),
    or None. Rank 0 decides for every rank (their clocks differ slightly).

    Raises:
        ConfigError: the budget ran out before the calibration finished (the message names a minimum).
    """
    budget, ckpt = run.budget, run.ckpt
    verdict = None
    if run.info.is_main:
        calibrating = budget.plan is None
        calibrated = budget.observe(done, step_s)
        if calibrating:
            try:
                budget.check_calibration(ckpt.elapsed(), done)
            except ConfigError as exc:
                verdict = f"error: {exc}"
            else:
                verdict = "calibrated" if calibrated else None
        elif budget.must_stop(ckpt.elapsed(), eval_here=eval_due, checkpoint_here=save_due):
            verdict = "stop"
    verdict = broadcast_object(verdict, run.info)
    if verdict is not None and verdict.startswith("error: "):
        raise ConfigError(verdict[len("error: "):])
    return verdict


def _calibrate(run: _Run, done: int, eval_s: float | None, bar) -> int:
    """Time one evaluation (unless this step just did one) and one checkpoint write, choose the step count
    that fits the budget, fix the schedule's horizon to it, log and record the decision; returns the last step.

    Raises:
        ConfigError: the budget does not fit one more step, an evaluation and a checkpoint (naming the minimum).
    """
    t, ckpt = run.cfg.trainer, run.ckpt
    if eval_s is None:
        tic = ckpt.clock.now()
        _record_validation(run)
        eval_s = ckpt.clock.now() - tic
    checkpoint_s = ckpt.measure_save(done)
    plan = None
    if run.info.is_main:
        try:
            plan = run.budget.decide(step=done, elapsed_s=ckpt.elapsed(), eval_s=eval_s, checkpoint_s=checkpoint_s,
                                     eval_every=t.eval_every, checkpoint_every=t.checkpoint_every,
                                     max_steps=t.max_steps)
        except ConfigError as exc:
            plan = str(exc)
    plan = broadcast_object(plan, run.info)
    if isinstance(plan, str):
        raise ConfigError(plan)
    run.budget.plan = plan
    ckpt.set_plan(plan)
    run.result.budget_line = plan.describe(t.max_steps)
    logger.info(run.result.budget_line)
    if run.info.is_main:
        write_budget_json(run.run_dir, plan, t.max_steps)
    bar.total = plan.steps
    bar.refresh()
    return plan.steps


def _train_step(run: _Run, step: int) -> float:
    """One optimizer step on this rank's columns of the step's global batch; returns the global mean loss.

    Raises:
        TrainingError: the loss is not finite.
    """
    t = run.cfg.trainer
    windows = run.batches(step)[:, run.shard].to(run.device)
    loss_sum = torch.zeros((), device=run.device)
    for i, micro in enumerate(windows):  # gradient accumulation: mean over micro-batches
        # DDP: average gradients over ranks once, on the last micro-batch
        sync = i == len(windows) - 1
        if run.fsdp:
            run.model.set_requires_gradient_sync(sync)
        with contextlib.nullcontext() if sync or run.ddp is None else run.ddp.no_sync():
            with run.autocast():
                loss = run.forward(micro) / t.grad_accum
            run.scaler.scale(loss).backward()
        loss_sum += loss.detach().float()
    if run.info.enabled:
        loss_sum = all_reduce_sum(loss_sum, run.info) / run.info.world_size
    train_loss = loss_sum.item()
    if not math.isfinite(train_loss):
        last = run.ckpt.last_saved
        where = f"last good checkpoint: {last}" if last else "no checkpoint was written"
        raise TrainingError(f"loss became {train_loss} at step {step + 1}; stopping ({where})")
    run.scaler.unscale_(run.optimizer)
    if t.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), t.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    return train_loss


class _Window:
    """The steps since the last log line: their mean train loss and their throughput."""

    def __init__(self, tokens_per_step: int) -> None:
        self.tokens_per_step = tokens_per_step
        self.reset()

    def reset(self) -> None:
        # timed/time: the steps whose time counts in tokens/s (not a compiled run's first step)
        self.loss, self.steps, self.timed, self.time, self.last_time = 0.0, 0, 0, 0.0, 0.0
        self.partial = False  # set for the first window after a resume that does not start on a log step

    def add(self, loss: float, seconds: float, timed: bool = True) -> None:
        self.loss, self.steps, self.last_time = self.loss + loss, self.steps + 1, seconds
        if timed:
            self.timed, self.time = self.timed + 1, self.time + seconds

    def tokens_per_s(self) -> float:
        if self.timed == 0:  # the window is only the compiling first step: count it after all
            self.timed, self.time = 1, self.last_time
        return self.tokens_per_step * self.timed / max(self.time, 1e-9)


def _log_window(run: _Run, done: int, lr: float, window: _Window, eval_now: bool, bar) -> float | None:
    """One record (train loss, lr, throughput, elapsed time; validation when ``eval_now``) to every sink,
    the log and the progress bar; then a new window. Returns the seconds the validation took (None: none)."""
    tokens_per_s = window.tokens_per_s()
    record = {"step": done, "train_loss": window.loss / window.steps, "lr": lr,
              "tokens_per_s": tokens_per_s, "tflops": run.flops_per_token * tokens_per_s / 1e12,
              "elapsed_s": run.ckpt.elapsed()}
    if window.partial:
        record["train_loss_steps"] = window.steps
    if run.peak:  # model FLOPs utilisation of all devices together
        record["mfu"] = run.flops_per_token * tokens_per_s / (run.peak * run.info.world_size)
    eval_s = None
    if eval_now:
        tic = run.ckpt.clock.now()
        _record_validation(run)
        eval_s = run.ckpt.clock.now() - tic
        result = run.result
        record.update(val_loss=result.val_loss, val_bpb=result.val_bpb, val_ppl=result.val_ppl)
    for sink in run.sinks:
        sink.write(record)
    postfix = {"loss": f"{record['train_loss']:.3f}", "lr": f"{lr:.2e}", "tok_s": f"{tokens_per_s:.0f}"}
    if "mfu" in record:
        postfix["mfu"] = f"{record['mfu']:.1%}"
    bar.set_postfix(postfix, refresh=False)
    logger.info(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    window.reset()
    return eval_s


def _record_validation(run: _Run) -> None:
    """``val_loss`` (nats per token, over every rank's windows), ``val_bpb`` and ``val_ppl`` into the result.

    Scored in fp32 whatever the training precision, by the function xforget-eval uses: val_bpb
    compares across precisions and equals xforget-eval's score.
    """
    total, count = loss_sums(packed(run.model, run.data.eot_id), run.val_shard, batch_size=run.local_batch,
                             device=run.device)
    if run.info.enabled:
        sums = all_reduce_sum(torch.tensor([total, count], dtype=torch.float64, device=run.device), run.info)
        val_loss = (sums[0] / sums[1]).item()
    else:
        val_loss = total / count
    result = run.result
    result.val_loss, result.val_bpb = val_loss, nats_to_bpb(val_loss, run.data.tokens_per_byte)
    result.val_ppl = perplexity(val_loss)
    run.ckpt.clock.spend("eval")


def _report(run: _Run) -> None:
    """The final validation (if the loop did not end with one), the final weights and a sample."""
    cfg, t, info, result = run.cfg, run.cfg.trainer, run.info, run.result
    if result.val_bpb is None:  # nothing left to train (finished run, or max_steps=0)
        _record_validation(run)
    weights = full_model(run.model, cfg.model, info) if run.fsdp else run.model
    if info.is_main:
        save_final_model(run.run_dir, weights)
    if t.sample_bytes > 0 and (info.is_main or run.fsdp):  # FSDP: every rank runs the (collective) forward passes
        prompt, sample = sample_text(run.lm, run.data.val, t.sample_bytes, t.sample_temperature, cfg.seed,
                                     run.device, tokenizer=run.data.tokenizer)
        result.sample_prompt, result.sample = (prompt, sample) if info.is_main else (None, None)
    barrier(info)
    logger.info(f"finished step {result.step}: val_bpb={result.val_bpb:.4f} (run directory {run.run_dir})")


def sample_text(lm: AutoregressiveWrapper, val, n_bytes: int, temperature: float, seed: int,
                device: torch.device, prompt_bytes: int = 64, tokenizer=None) -> tuple[str, str]:
    """(prompt, continuation): the start of a line (byte data; a document for other tokenizers) of the
    validation split and ``n_bytes`` bytes of text generated after it (``trainer.sample_bytes``: tokens are
    generated until their text has that many UTF-8 bytes, at most ``n_bytes`` tokens), both decoded by
    ``tokenizer`` (default bytes, decoded with errors='replace'); ``val`` is a tensor or numpy array of ids."""
    tokenizer = tokenizer or ByteTokenizer()
    head = [int(v) for v in val[: 64 * 1024].tolist()]
    if isinstance(tokenizer, ByteTokenizer):
        data = bytes(head)
        start = data.find(b"\n") + 1
        ids = list(data[start:start + prompt_bytes])
    else:  # after the first end-of-text token, about prompt_bytes / 4 tokens
        start = head.index(tokenizer.eot_id) + 1 if tokenizer.eot_id in head[:-1] else 0
        ids = head[start:start + max(1, prompt_bytes // 4)]
    prompt = torch.tensor(ids, dtype=torch.long, device=device)[None]
    generator = torch.Generator(device=device).manual_seed(seed)
    if isinstance(tokenizer, ByteTokenizer):
        out = lm.generate(prompt, n_bytes, temperature=temperature, generator=generator)[0].tolist()
    else:  # a token holds several bytes: stop once the text is long enough
        out = []
        for step in lm.stream(prompt, n_bytes, temperature=temperature, generator=generator):
            out.append(int(step[0]))
            if len(tokenizer.decode(out).encode("utf-8")) >= n_bytes:
                break
    return tokenizer.decode(prompt[0].tolist()), tokenizer.decode(out)


def _device(name: str, info: DistInfo | None = None) -> torch.device:
    """``auto`` = CUDA if available, else CPU; under torchrun ``auto``/``cuda`` mean ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and info is not None and info.enabled and torch.cuda.is_available():
        name = f"cuda:{info.local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} but CUDA is not available; use trainer.device=cpu or auto")
    return device


@contextlib.contextmanager
def _threads(n: int | None):
    """``torch.set_num_threads(n)`` for the run (restored afterwards)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _logging(run_dir: Path, info: DistInfo):
    """loguru to stderr (through tqdm, so the bar stays intact) and to ``run_dir/train.log``.

    Under torchrun only rank 0 logs; the other ranks print warnings and errors, marked with their rank.
    """
    logger.remove()
    fmt = "<green>{time:HH:mm:ss}</green> | <level>{level: <7}</level> | {message}"
    if info.is_main:
        ids = [
            logger.add(lambda m: tqdm.write(m, end="", file=sys.stderr), format=fmt, level="INFO",
                       colorize=sys.stderr.isatty()),
            logger.add(run_dir / "train.log", format="{time:YYYY-MM-DD HH:mm:ss} | {level: <7} | {message}", level="INFO"),
        ]
    else:
        ids = [logger.add(sys.stderr, format=f"[rank {info.rank}] " + fmt, level="WARNING", colorize=sys.stderr.isatty())]
    try:
        yield
    finally:
        for i in ids:
            logger.remove(i)
        logger.add(sys.stderr, level="INFO")


def evaluate(lm: AutoregressiveWrapper, windows: torch.Tensor, batch_size: int, device: torch.device,
             autocast=None) -> float:
    """Mean next-token cross-entropy (nats) over ``windows`` (count, L + 1) int64: the training loop's
    validation loss (:func:`xforget.train.scoring.loss_sums`, fp32; ``autocast`` is accepted and unused,
    validation runs in fp32), kept under its old name."""
    total, count = loss_sums(getattr(lm, "net", lm), windows, batch_size=batch_size, device=device)
    return total / count
