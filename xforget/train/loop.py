"""The training loop: one function, top to bottom.

``train(cfg, run_dir)`` builds the data, model, optimizer and schedule,
resumes from the run directory's latest complete checkpoint if there is one,
trains, evaluates, checkpoints, and finally reports ``val_bpb`` and a sample.
Everything a resumed run needs to continue the exact same run is either a pure
function of the step (data windows, learning rate) or in the checkpoint
(weights, optimizer, scheduler, grad scaler, RNG states).
Under torchrun the same function runs on every rank (see :mod:`.distributed`).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from loguru import logger
from tqdm.auto import tqdm

from xforget.models.autoregressive import AutoregressiveWrapper
from xforget.models.config import describe_model
from xforget.models.wrapper import build_model
from xforget.data import TrainBatches, val_windows
from xforget.data.training import load_training_data
from xforget.data.batches import step_seed
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
    save_final_model,
    set_rng_state,
    step_dir_name,
)
from xforget.train.loading import check_init_from, load_init_weights
from xforget.errors import ConfigError
from xforget.train.config import TrainConfig, config_to_yaml, resolve_data_vocab, validate
from xforget.train.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_sum,
    barrier,
    broadcast_object,
    full_model,
    full_optimizer_state,
    init_distributed,
    load_optimizer_state,
    rank0_first,
    shard_model,
    shutdown,
)
from xforget.files import atomic_write_text
from xforget.train.compile import resolve_compile
from xforget.train.metrics import MetricsLog, model_flops_per_token, peak_flops
from xforget.train.optim import adamw_impl, decay_names, param_groups
from xforget.train.precision import AMP_DTYPES, resolve_precision
from xforget.train.resume import check_resume, describe, record_resume_config
from xforget.train.schedule import describe_short_schedule, lr_factor, make_scheduler
from xforget.train.trackers import check_trackers, open_trackers

LN2 = math.log(2.0)


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
    ``XFORGET_DEBUG_STOP_AFTER_STEP=N`` is ``stop_after_step=N`` for a command line run.
    """
    resolve_data_vocab(cfg)
    validate(cfg)
    check_trackers(cfg.logger)  # fail before anything is written if a tracker's package is missing
    check_init_from(cfg.trainer.init_from, run_dir)  # likewise a missing trainer.init_from
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


def _train(cfg: TrainConfig, run_dir: Path, info: DistInfo, stop_after_step: int | None) -> TrainResult:
    t, world, rank, main = cfg.trainer, info.world_size, info.rank, info.is_main
    if t.batch_size % world:
        raise ConfigError(f"invalid value trainer.batch_size={t.batch_size}: must be divisible by the number of "
                          f"processes ({world}), each of which takes an equal share of the global batch")
    run_dir = Path(broadcast_object(str(run_dir.resolve()), info))
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    step_sleep = float(os.environ.get("XFORGET_DEBUG_STEP_SLEEP") or 0.0)
    with _logging(run_dir, info), _threads(t.threads):
        # ---- hardware ---------------------------------------------------------------
        device = _device(t.device, info)
        if device.type == "cpu":
            # Decayed attention weights (forget gate, ALiBi) underflow into denormal floats, which
            # x86 CPUs process ~10x slower: FoX's backward ran 3x slower without this.
            torch.set_flush_denormal(True)
        precision = resolve_precision(t.precision, device)  # `auto`: bf16 where the hardware has it natively
        amp_dtype = AMP_DTYPES[precision]

        def autocast():
            if amp_dtype is None:
                return contextlib.nullcontext()
            return torch.autocast(device_type=device.type, dtype=amp_dtype)

        # ---- the run directory's latest checkpoint: checked before any slow work ------------
        resume_from = broadcast_object(latest_checkpoint(run_dir), info)
        changes = []
        if resume_from is not None:
            saved_cfg = check_same_model(resume_from, cfg)
            changes = check_resume(saved_cfg, cfg, int(resume_from.name.split("_")[1]), run_dir)

        # ---- data: fixed split; training windows are a pure function of (seed, step) ----
        data = rank0_first(info, lambda: load_training_data(cfg.data, t.seq_len))  # rank 0 builds any cache first
        logger.info(f"data {data.description}")
        batches = TrainBatches(data.train, t.seq_len, t.batch_size, t.grad_accum, cfg.seed)
        local_batch = t.batch_size // world  # this rank's columns of every global micro-batch
        shard = slice(rank * local_batch, (rank + 1) * local_batch)
        val = val_windows(data.val, t.seq_len, t.eval_batches * t.batch_size)
        val_shard = val[rank * (val.shape[0] // world):(rank + 1) * (val.shape[0] // world)]
        logger.info(f"split: {len(data.train):,} train tokens, {len(data.val):,} validation tokens; "
                    f"{val.shape[0]} fixed validation windows; val_bpb = loss x {data.tokens_per_byte:.5f} "
                    "tokens per byte / ln 2")
        if main:
            data.tokenizer.save(run_dir)  # the run directory alone can generate (tokenizer.json unless bytes)

        # ---- model -------------------------------------------------------------------------
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        try:
            model = build_model(cfg.model).to(device)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid model config: {exc}") from None
        if rank > 0:  # its own dropout stream; rank 0 keeps the single-process one
            random.seed(step_seed(cfg.seed, (1 << 40) + rank))
            torch.manual_seed(step_seed(cfg.seed, (1 << 40) + rank))
        n_params = sum(p.numel() for p in model.parameters())
        flops_per_token = model_flops_per_token(model, t.seq_len)
        peak = peak_flops(device, precision, t.peak_flops)
        fsdp = info.enabled and t.strategy == "fsdp"
        logger.info(f"model {describe_model(cfg.model)}; dim={cfg.model.dim} depth={cfg.model.depth} heads={cfg.model.heads}: "
                    f"{n_params / 1e6:.2f}M parameters on {device} ({precision}{' (auto)' if t.precision == 'auto' else ''}, {torch.get_num_threads()} threads"
                    f"{f', {world} processes ({t.strategy}), {local_batch} windows each per micro-batch' if info.enabled else ''}); "
                    f"{flops_per_token / 1e6:.2f} MFLOP per trained token"
                    f"{f', peak {peak / 1e12:.1f} TFLOP/s per device' if peak else ''}")

        # ---- resume: weights (every rank reads the full checkpoint) ------------------------
        if main:
            for leftover in remove_partial(run_dir):
                logger.warning(f"removed an interrupted checkpoint write: {leftover.name}")
        state = load_checkpoint(resume_from, model) if resume_from is not None else None
        if state is None and t.init_from:
            source = load_init_weights(t.init_from, model, cfg.model)
            logger.info(f"initialised the weights from {source} (trainer.init_from; fresh optimizer and schedule)")
        elif t.init_from:
            logger.info(f"trainer.init_from={t.init_from} not used: resuming this run directory's own checkpoint")

        # ---- processes: DDP averages gradients over ranks; FSDP2 also shards the weights ---
        lm = AutoregressiveWrapper(model)
        ddp = None
        if fsdp:
            shard_model(model, device, info)  # parameters become DTensor shards, in place
        elif info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ddp = DistributedDataParallel(lm, device_ids=[device.index] if device.type == "cuda" else None)
        compiled, why = resolve_compile(t.compile, t.max_steps, device)
        logger.info(why)
        forward = torch.compile(ddp or lm) if compiled else (ddp or lm)

        # ---- optimizer, schedule, grad scaler (and their resumed state) ----------------------
        optimizer = torch.optim.AdamW(
            param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
            **adamw_impl(cfg.optim.impl, fsdp),
        )
        decayed, kept = decay_names(model)
        logger.info(f"AdamW: weight decay {cfg.optim.weight_decay} on {len(decayed)} weight matrices, none on "
                    f"{len(kept)} norm gains, biases, embeddings and memory key/values")
        # the schedule's horizon is the run's first max_steps: a resume with a larger max_steps trains the
        # extra steps at the final learning rate (see xforget/train/resume.py), no jump
        horizon = t.max_steps if state is None else int(state.get("schedule_max_steps", saved_cfg.trainer.max_steps))
        short = describe_short_schedule(warmup_steps=t.warmup_steps, max_steps=horizon, lr=cfg.optim.lr,
                                        min_lr_ratio=cfg.optim.min_lr_ratio)
        if short is not None:
            logger.warning(short)
        scheduler = make_scheduler(optimizer, warmup_steps=t.warmup_steps, max_steps=horizon,
                                   min_lr_ratio=cfg.optim.min_lr_ratio)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        start_step = 0
        if state is not None:
            try:
                load_optimizer_state(model, optimizer, state["optimizer"])
            except (KeyError, ValueError, IndexError, TypeError) as exc:
                raise CheckpointError(f"corrupt checkpoint {resume_from}: state.pt optimizer state does not fit "
                                      f"this model ({type(exc).__name__}: {exc})") from None
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            _apply_optim_config(optimizer, scheduler, cfg, horizon)  # the config's values (allow_changes may change them)
            _restore_rng(state, info, cfg.seed)
            start_step = int(state["step"])
            elapsed_before = float(state.get("elapsed_s", 0.0))
            logger.info(f"resumed from {resume_from} at step {start_step}")
            del state
            if changes:
                logger.warning(f"resumed with changed settings: {describe(changes)}")
                if t.max_steps != horizon:
                    final = cfg.optim.lr * lr_factor(horizon - 1, warmup_steps=t.warmup_steps, max_steps=horizon,
                                                     min_lr_ratio=cfg.optim.min_lr_ratio)
                    logger.info(f"trainer.max_steps={t.max_steps}, the learning-rate schedule keeps its horizon of "
                                f"{horizon} steps (after it: its final lr {final:.3g})")
        else:
            elapsed_before = 0.0

        if main:
            if resume_from is None or not (run_dir / "config.yaml").is_file():
                atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))  # the run's first config
            if changes:
                logger.info(f"recorded the resumed config in {record_resume_config(run_dir, start_step, cfg)}")
            metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step=start_step if resume_from is not None else None)
            if metrics.rotated_to is not None:
                logger.warning(f"{run_dir} has metrics.jsonl but no checkpoint: training starts at step 0; "
                               f"the old records were kept as {metrics.rotated_to.name}")
            if metrics.dropped:
                logger.info(f"metrics.jsonl: dropped {metrics.dropped} records past step {start_step} "
                            "(trained after the last checkpoint; trained again now)")
            sinks = [metrics]
            sinks += open_trackers(cfg, run_dir, start_step if resume_from is not None else None)
        else:
            sinks = []
        result = TrainResult(run_dir=run_dir, step=start_step)
        last_saved = resume_from

        def checkpoint(step: int) -> None:
            nonlocal last_saved
            rngs = all_gather_object(rng_state(), info)
            weights, optim_state = (full_model(model, cfg.model, info), full_optimizer_state(model, optimizer)) if fsdp \
                else (model, optimizer.state_dict())  # FSDP: gathered on every rank, kept by rank 0
            if main:
                state = {"optimizer": optim_state, "scheduler": scheduler.state_dict(),
                         "scaler": scaler.state_dict(), "rng": rngs[0], "schedule_max_steps": horizon,
                         "elapsed_s": elapsed()}
                if info.enabled:
                    state["rng_ranks"] = rngs
                path = save_checkpoint(run_dir, step, weights, state, cfg)
                prune_checkpoints(run_dir, t.keep_last)
                logger.info(f"checkpoint {path}")
            barrier(info)  # written before any rank moves on
            last_saved = run_dir / CHECKPOINTS / step_dir_name(step)

        def validation_loss() -> float:
            # in fp32 whatever the training precision: val_bpb compares across precisions and equals xforget-eval
            total, count = _eval_sums(lm, val_shard, local_batch, device)
            sums = all_reduce_sum(torch.tensor([total, count], dtype=torch.float64, device=device), info)
            return (sums[0] / sums[1]).item() if info.enabled else total / count

        # ---- train ---------------------------------------------------------------------
        tokens_per_step = t.batch_size * t.grad_accum * t.seq_len  # global
        bar = tqdm(total=t.max_steps, initial=start_step, disable=not (t.progress and main), unit="step",
                   dynamic_ncols=True, file=sys.stderr, desc="train")
        # window_timed/window_time: the steps whose time counts in tokens/s (not a compiled run's first step)
        window_loss, window_steps, window_timed, window_time = 0.0, 0, 0, 0.0
        loop_start = time.perf_counter()

        def elapsed() -> float:  # seconds of training (evaluations, checkpoints included) since step 0, over resumes
            return round(elapsed_before + time.perf_counter() - loop_start, 3)

        stop = _StopRequest(info, device)
        model.train()
        try:
            stop.install()
            for step in range(start_step, t.max_steps):
                tic = time.perf_counter()
                lr = optimizer.param_groups[0]["lr"]
                windows = batches(step)[:, shard].to(device)
                loss_sum = torch.zeros((), device=device)
                for i, micro in enumerate(windows):  # gradient accumulation: mean over micro-batches
                    # DDP: average gradients over ranks once, on the last micro-batch
                    sync = i == len(windows) - 1
                    if fsdp:
                        model.set_requires_gradient_sync(sync)
                    with contextlib.nullcontext() if sync or ddp is None else ddp.no_sync():
                        with autocast():
                            loss = forward(micro) / t.grad_accum
                        scaler.scale(loss).backward()
                    loss_sum += loss.detach().float()
                if info.enabled:
                    loss_sum = all_reduce_sum(loss_sum, info) / world
                train_loss = loss_sum.item()
                if not math.isfinite(train_loss):
                    where = f"last good checkpoint: {last_saved}" if last_saved else "no checkpoint was written"
                    raise TrainingError(f"loss became {train_loss} at step {step + 1}; stopping ({where})")
                scaler.unscale_(optimizer)
                if t.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                done = step + 1
                result.step, result.losses[done] = done, train_loss
                window_loss, window_steps = window_loss + train_loss, window_steps + 1
                step_time = time.perf_counter() - tic
                if compiled and step == start_step:  # torch.compile traces and compiles during this step
                    logger.info(f"first step {step_time:.1f} s (torch.compile compiling forward and backward; "
                                "not counted in tokens/s)")
                else:
                    window_timed, window_time = window_timed + 1, window_time + step_time
                bar.update(1)

                is_last = done == t.max_steps
                eval_now = is_last or (t.eval_every > 0 and done % t.eval_every == 0)
                if eval_now or done % t.log_every == 0:
                    if window_timed == 0:  # the window is only the compiling first step: count it after all
                        window_timed, window_time = 1, step_time
                    tokens_per_s = tokens_per_step * window_timed / max(window_time, 1e-9)
                    record = {"step": done, "train_loss": window_loss / window_steps, "lr": lr,
                              "tokens_per_s": tokens_per_s, "tflops": flops_per_token * tokens_per_s / 1e12,
                              "elapsed_s": elapsed()}
                    if peak:  # model FLOPs utilisation of all devices together
                        record["mfu"] = flops_per_token * tokens_per_s / (peak * world)
                    if eval_now:
                        val_loss = validation_loss()
                        result.val_loss, result.val_bpb = val_loss, val_loss * data.tokens_per_byte / LN2
                        result.val_ppl = math.exp(min(val_loss, 700.0))
                        record.update(val_loss=val_loss, val_bpb=result.val_bpb, val_ppl=result.val_ppl)
                    for sink in sinks:
                        sink.write(record)
                    postfix = {"loss": f"{record['train_loss']:.3f}", "lr": f"{lr:.2e}", "tok_s": f"{tokens_per_s:.0f}"}
                    if "mfu" in record:
                        postfix["mfu"] = f"{record['mfu']:.1%}"
                    bar.set_postfix(postfix, refresh=False)
                    logger.info(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
                    window_loss, window_steps, window_timed, window_time = 0.0, 0, 0, 0.0
                saved_now = is_last or (t.checkpoint_every > 0 and done % t.checkpoint_every == 0)
                if saved_now:
                    checkpoint(done)
                if stop.requested() and not is_last:  # SIGINT / SIGTERM: save this step, then stop
                    if not saved_now:
                        checkpoint(done)
                    logger.warning(f"stopped by {stop.signal} after step {done}; checkpoint {last_saved}")
                    result.interrupted, result.stop_signal, result.checkpoint = True, stop.signal, last_saved
                    return result
                if stop_after_step is not None and done >= stop_after_step and not is_last:
                    result.interrupted = True
                    return result
                if step_sleep > 0:
                    time.sleep(step_sleep)
        finally:
            stop.restore()
            bar.close()
            for sink in sinks:
                sink.close()

        # ---- report --------------------------------------------------------------------
        if result.val_bpb is None:  # nothing left to train (finished run, or max_steps=0)
            result.val_loss = validation_loss()
            result.val_bpb = result.val_loss * data.tokens_per_byte / LN2
            result.val_ppl = math.exp(min(result.val_loss, 700.0))
        weights = full_model(model, cfg.model, info) if fsdp else model
        if main:
            save_final_model(run_dir, weights)
        if t.sample_bytes > 0 and (main or fsdp):  # FSDP: every rank runs the (collective) forward passes
            prompt, sample = sample_text(lm, data.val, t.sample_bytes, t.sample_temperature, cfg.seed, device,
                                         tokenizer=data.tokenizer)
            result.sample_prompt, result.sample = (prompt, sample) if main else (None, None)
        barrier(info)
        logger.info(f"finished step {result.step}: val_bpb={result.val_bpb:.4f} (run directory {run_dir})")
        return result


class _StopRequest:
    """SIGINT / SIGTERM during the training loop: the first asks the loop to checkpoint the current step and
    stop; a second exits at once (exit code 128 + signal number; checkpoints are atomic, so the latest complete
    one stays). Under torchrun the ranks agree on stopping at the same step (one all-reduce per step)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, info: DistInfo, device: torch.device) -> None:
        self.info, self.device, self.signal, self._old = info, device, None, {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in self.SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:  # e.g. SIGINT of a background job in a script
                self._old[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None:
            sys.stderr.write(f"\n{name} again: exiting at once (the latest complete checkpoint is kept)\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signal = name
        sys.stderr.write(f"\n{name}: finishing this step and saving a checkpoint (again to exit at once)\n")
        sys.stderr.flush()

    def requested(self) -> bool:
        if not self.info.enabled:
            return self.signal is not None
        flag = all_reduce_sum(torch.tensor([1.0 if self.signal else 0.0], device=self.device), self.info)
        if flag.item() > 0 and self.signal is None:
            self.signal = "SIGTERM"  # another rank was signalled
        return flag.item() > 0


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


def evaluate(lm: AutoregressiveWrapper, windows: torch.Tensor, batch_size: int, device: torch.device,
             autocast=contextlib.nullcontext) -> float:
    """Mean next-byte cross-entropy (nats) over the fixed validation windows."""
    total, count = _eval_sums(lm, windows, batch_size, device, autocast)
    return total / count


@torch.no_grad()
def _eval_sums(lm: AutoregressiveWrapper, windows: torch.Tensor, batch_size: int, device: torch.device,
               autocast=contextlib.nullcontext) -> tuple[float, int]:
    """(sum of next-byte losses in nats, number of predicted bytes) over ``windows``."""
    was_training = lm.training
    lm.eval()
    total, count = 0.0, 0
    for chunk in windows.split(batch_size):
        with autocast():
            loss = lm(chunk.to(device), reduction="none")
        total += loss.float().sum().item()
        count += loss.numel()
    lm.train(was_training)
    return total, count


def sample_text(lm: AutoregressiveWrapper, val, n_tokens: int, temperature: float, seed: int,
                device: torch.device, prompt_bytes: int = 64, tokenizer=None) -> tuple[str, str]:
    """(prompt, continuation): the start of a line (byte data; a document for other tokenizers) of the
    validation split and ``n_tokens`` generated after it, both decoded by ``tokenizer`` (default bytes,
    decoded with errors='replace'); ``val`` is a tensor or numpy array of token ids."""
    from xforget.data.tokenizer import ByteTokenizer

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
    out = lm.generate(prompt, n_tokens, temperature=temperature, generator=generator)
    return tokenizer.decode(prompt[0].tolist()), tokenizer.decode(out[0].tolist())


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

