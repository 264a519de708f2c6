"""The training loop: one function, top to bottom.

``train(cfg, run_dir)`` builds the data, model, optimizer and schedule,
resumes from the run directory's latest complete checkpoint if there is one,
trains, evaluates, checkpoints, and finally reports ``val_bpb`` and a sample.
Everything a resumed run needs to continue the exact same run is either a pure
function of the step (data windows, learning rate) or in the checkpoint
(weights, optimizer, scheduler, grad scaler, RNG states).
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from loguru import logger
from tqdm.auto import tqdm

from ..autoregressive import AutoregressiveWrapper
from ..config import build_model
from ..data import TrainBatches, load_corpus, split_corpus, val_windows
from .checkpoint import (
    check_same_model,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    remove_partial,
    rng_state,
    save_checkpoint,
    save_final_model,
    set_rng_state,
)
from .config import ConfigError, TrainConfig, config_to_yaml, validate
from .metrics import MetricsLog
from .schedule import make_scheduler

LN2 = math.log(2.0)


class TrainingError(RuntimeError):
    """The run cannot continue (e.g. the loss became NaN); the message is one line for the user."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimizer steps completed
    val_loss: float | None = None  # nats per byte
    val_bpb: float | None = None  # bits per byte = val_loss / ln 2
    sample: str | None = None
    interrupted: bool = False
    losses: dict[int, float] = field(default_factory=dict)  # step -> train loss, for this process's steps


def train(cfg: TrainConfig, run_dir: str | Path, *, stop_after_step: int | None = None) -> TrainResult:
    """Train (or resume) the run in ``run_dir``.

    Args:
        cfg: the typed config (see :func:`xforget.train.config.to_train_config`).
        run_dir: where config, logs, metrics and checkpoints live; if it holds
            a complete checkpoint of the same model, training continues from it.
        stop_after_step: stop right after this step as if the process were
            killed there (no extra checkpoint, no final evaluation); for tests.
    Raises:
        ConfigError, DataError, CheckpointError, TrainingError: one-line messages.
    """
    validate(cfg)
    t, run_dir = cfg.trainer, Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    with _logging(run_dir, t.progress), _threads(t.threads):
        # ---- hardware ---------------------------------------------------------------
        device = _device(t.device)
        if device.type == "cpu":
            # Decayed attention weights (forget gate, ALiBi) underflow into denormal floats, which
            # x86 CPUs process ~10x slower: FoX's backward ran 3x slower without this.
            torch.set_flush_denormal(True)
        amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t.precision]

        def autocast():
            if amp_dtype is None:
                return contextlib.nullcontext()
            return torch.autocast(device_type=device.type, dtype=amp_dtype)

        # ---- data: fixed split; training windows are a pure function of (seed, step) ----
        corpus = load_corpus(cfg.data)
        logger.info(f"data {corpus.describe()}")
        logger.info(f"data meta {corpus.meta}")
        split = split_corpus(corpus.data, cfg.data.val_fraction, t.seq_len)
        batches = TrainBatches(split.train, t.seq_len, t.batch_size, t.grad_accum, cfg.seed)
        val = val_windows(split.val, t.seq_len, t.eval_batches * t.batch_size)
        logger.info(f"split: {split.train.numel():,} train bytes, {split.val.numel():,} validation bytes "
                    f"(last {cfg.data.val_fraction:.0%}); {val.shape[0]} fixed validation windows")

        # ---- model, optimizer, schedule, grad scaler -----------------------------------
        resume_from = latest_checkpoint(run_dir)
        if resume_from is not None:
            check_same_model(resume_from, cfg)
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        try:
            model = build_model(cfg.model).to(device)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid model config: {exc}") from None
        lm = AutoregressiveWrapper(model)
        forward = torch.compile(lm) if t.compile else lm
        optimizer = torch.optim.AdamW(
            _param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps
        )
        scheduler = make_scheduler(optimizer, warmup_steps=t.warmup_steps, max_steps=t.max_steps,
                                   min_lr_ratio=cfg.optim.min_lr_ratio)
        scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
        n_params = sum(p.numel() for p in model.parameters())
        logger.info(f"model {cfg.model.position} dim={cfg.model.dim} depth={cfg.model.depth} heads={cfg.model.heads}: "
                    f"{n_params / 1e6:.2f}M parameters on {device} ({t.precision}, {torch.get_num_threads()} threads)")

        # ---- resume --------------------------------------------------------------------
        for leftover in remove_partial(run_dir):
            logger.warning(f"removed an interrupted checkpoint write: {leftover.name}")
        start_step = 0
        if resume_from is not None:
            state = load_checkpoint(resume_from, model)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            start_step = int(state["step"])
            logger.info(f"resumed from {resume_from} at step {start_step}")
        (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
        metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step=start_step if resume_from is not None else None)
        result = TrainResult(run_dir=run_dir, step=start_step)
        last_saved = resume_from

        def checkpoint(step: int) -> None:
            nonlocal last_saved
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict(), "rng": rng_state()}
            last_saved = save_checkpoint(run_dir, step, model, state, cfg)
            prune_checkpoints(run_dir, t.keep_last)
            logger.info(f"checkpoint {last_saved}")

        # ---- train ---------------------------------------------------------------------
        tokens_per_step = t.batch_size * t.grad_accum * t.seq_len
        bar = tqdm(total=t.max_steps, initial=start_step, disable=not t.progress, unit="step", dynamic_ncols=True,
                   file=sys.stderr, desc="train")
        window_loss, window_steps, window_time = 0.0, 0, 0.0
        model.train()
        try:
            for step in range(start_step, t.max_steps):
                tic = time.perf_counter()
                lr = optimizer.param_groups[0]["lr"]
                windows = batches(step).to(device)
                loss_sum = torch.zeros((), device=device)
                for micro in windows:  # gradient accumulation: mean over micro-batches
                    with autocast():
                        loss = forward(micro) / t.grad_accum
                    scaler.scale(loss).backward()
                    loss_sum += loss.detach().float()
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
                window_time += time.perf_counter() - tic
                bar.update(1)

                is_last = done == t.max_steps
                eval_now = is_last or (t.eval_every > 0 and done % t.eval_every == 0)
                if eval_now or done % t.log_every == 0:
                    record = {"step": done, "train_loss": window_loss / window_steps, "lr": lr,
                              "tokens_per_s": tokens_per_step * window_steps / max(window_time, 1e-9)}
                    if eval_now:
                        val_loss = evaluate(lm, val, t.batch_size, device, autocast)
                        record.update(val_loss=val_loss, val_bpb=val_loss / LN2)
                        result.val_loss, result.val_bpb = val_loss, val_loss / LN2
                    metrics.write(record)
                    bar.set_postfix(loss=f"{record['train_loss']:.3f}", lr=f"{lr:.2e}",
                                    tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
                    logger.info(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
                    window_loss, window_steps, window_time = 0.0, 0, 0.0
                if is_last or (t.checkpoint_every > 0 and done % t.checkpoint_every == 0):
                    checkpoint(done)
                if stop_after_step is not None and done >= stop_after_step and not is_last:
                    result.interrupted = True
                    return result
        finally:
            bar.close()
            metrics.close()

        # ---- report --------------------------------------------------------------------
        if result.val_bpb is None:  # nothing left to train (finished run, or max_steps=0)
            result.val_loss = evaluate(lm, val, t.batch_size, device, autocast)
            result.val_bpb = result.val_loss / LN2
        save_final_model(run_dir, model)
        if t.sample_bytes > 0:
            result.sample = sample_text(lm, split.val, t.sample_bytes, t.sample_temperature, cfg.seed, device)
        logger.info(f"finished step {result.step}: val_bpb={result.val_bpb:.4f} (run directory {run_dir})")
        return result


@torch.no_grad()
def evaluate(lm: AutoregressiveWrapper, windows: torch.Tensor, batch_size: int, device: torch.device,
             autocast=contextlib.nullcontext) -> float:
    """Mean next-byte cross-entropy (nats) over the fixed validation windows."""
    was_training = lm.training
    lm.eval()
    total, count = 0.0, 0
    for chunk in windows.split(batch_size):
        with autocast():
            loss = lm(chunk.to(device), reduction="none")
        total += loss.float().sum().item()
        count += loss.numel()
    lm.train(was_training)
    return total / count


def sample_text(lm: AutoregressiveWrapper, val: torch.Tensor, n_bytes: int, temperature: float, seed: int,
                device: torch.device, prompt_bytes: int = 64) -> str:
    """A short continuation of a line start from the validation split (bytes decoded with errors='replace')."""
    data = bytes(val[: 64 * 1024].tolist())
    start = data.find(b"\n") + 1
    prompt = torch.tensor(list(data[start:start + prompt_bytes]), dtype=torch.long, device=device)[None]
    generator = torch.Generator(device=device).manual_seed(seed)
    out = lm.generate(prompt, n_bytes, temperature=temperature, generator=generator)
    return bytes(prompt[0].tolist() + out[0].tolist()).decode("utf-8", errors="replace")


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on norms, biases or embeddings."""
    no_decay = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, rest = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and id(p) not in no_decay else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
def _logging(run_dir: Path, progress: bool):
    """loguru to stderr (through tqdm, so the bar stays intact) and to ``run_dir/train.log``."""
    logger.remove()
    fmt = "<green>{time:HH:mm:ss}</green> | <level>{level: <7}</level> | {message}"
    ids = [
        logger.add(lambda m: tqdm.write(m, end="", file=sys.stderr), format=fmt, level="INFO", colorize=sys.stderr.isatty()),
        logger.add(run_dir / "train.log", format="{time:YYYY-MM-DD HH:mm:ss} | {level: <7} | {message}", level="INFO"),
    ]
    try:
        yield
    finally:
        for i in ids:
            logger.remove(i)
        logger.add(sys.stderr, level="INFO")

