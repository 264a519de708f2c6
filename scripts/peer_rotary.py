"""The peer of the default run: x-transformers' rotary decoder (``attn_flash=True``) trained on the same corpus,
the same batches and the same time budget, at three learning rates; prints each val_bpb and the best.

    python scripts/peer_rotary.py                      # 3 x 10 minutes: lr 1e-3, 1.5e-3, 2e-3
    python scripts/peer_rotary.py --minutes 1 --lrs 2e-3 data=text data.path=notes.txt

Compare its best val_bpb with ``make train``'s on the same machine (docs/training.md, the default run):
same data split and validation windows (xforget's), same size (dim 256, depth 4, 8 heads, context 256,
batch 16), AdamW with warmup and cosine decay over the step count the budget fits, chosen as xforget's
``trainer.max_time`` does (:func:`xforget.train.budget.plan_steps` after timing the first steps), bf16
autocast where the hardware has it, compiled when a backend exists. Needs ``x-transformers``
(``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from x_transformers import Decoder, TransformerWrapper

from xforget.train import compose_config, to_train_config
from xforget.data import TrainBatches, val_windows
from xforget.data.training import load_training_data
from xforget.train.budget import plan_steps
from xforget.train.compile import has_compiler_backend
from xforget.train.precision import AMP_DTYPES, resolve_precision
from xforget.train.schedule import make_scheduler, set_horizon
from xforget.train.scoring import loss_sums, nats_to_bpb

CALIBRATION_STEPS = 12  # timed after 2 untimed (compiling) steps


def train_peer(lr: float, budget_s: float, cfg, data, device: torch.device, compiled: bool) -> tuple[float, int]:
    """(val_bpb, steps) of one run of the peer at learning rate ``lr`` within ``budget_s`` seconds."""
    t, o = cfg.trainer, cfg.optim
    torch.manual_seed(cfg.seed)
    model = TransformerWrapper(num_tokens=256, max_seq_len=t.seq_len, attn_layers=Decoder(
        dim=cfg.model.dim, depth=cfg.model.depth, heads=cfg.model.heads, rotary_pos_emb=True, attn_flash=True)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    scheduler = make_scheduler(optimizer, warmup_steps=t.warmup_steps, max_steps=10**9, min_lr_ratio=o.min_lr_ratio)
    forward = torch.compile(model) if compiled else model
    batches = TrainBatches(data.train, t.seq_len, t.batch_size, 1, cfg.seed)
    val = val_windows(data.val, t.seq_len, t.eval_batches * t.batch_size)
    amp = AMP_DTYPES[resolve_precision(t.precision, device)]

    def step(i: int) -> None:
        x = batches(i)[0].to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = forward(x[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

    def val_bpb() -> float:
        total, count = loss_sums(model, val, batch_size=t.batch_size, device=device)
        return nats_to_bpb(total / count, data.tokens_per_byte)

    start = time.perf_counter()
    times = []
    for i in range(2 + CALIBRATION_STEPS):
        tic = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - tic)
    tic = time.perf_counter()
    val_bpb()
    eval_s = time.perf_counter() - tic
    step_s = sum(times[2 + CALIBRATION_STEPS // 2:]) / (CALIBRATION_STEPS - CALIBRATION_STEPS // 2)
    plan = plan_steps(budget_s=budget_s, step=len(times), elapsed_s=time.perf_counter() - start, step_s=step_s,
                      eval_s=eval_s, checkpoint_s=0.0, eval_every=0, checkpoint_every=0)
    set_horizon(scheduler, warmup_steps=t.warmup_steps, max_steps=plan.steps, min_lr_ratio=o.min_lr_ratio)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["lr"] = lr * factor(scheduler.last_epoch)
    done = len(times)
    while done < plan.steps and time.perf_counter() - start + step_s + eval_s <= budget_s:  # (a slower machine)
        step(done)
        done += 1
    return val_bpb(), done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget of each run (default 10)")
    ap.add_argument("--lrs", default="1e-3,1.5e-3,2e-3", help="comma-separated learning rates")
    ap.add_argument("overrides", nargs="*", help="xforget training overrides for the data and sizes, e.g. data=text")
    args = ap.parse_args()
    cfg = to_train_config(compose_config(args.overrides))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    data = load_training_data(cfg.data, cfg.trainer.seq_len)
    compiled = has_compiler_backend(device) and args.minutes * 60 >= 300
    results = {}
    for lr in (float(v) for v in args.lrs.split(",")):
        bpb, steps = train_peer(lr, args.minutes * 60, cfg, data, device, compiled)
        results[lr] = bpb
        print(f"x-transformers rotary (attn_flash) lr {lr:g}: val_bpb {bpb:.4f} after {steps} steps "
              f"in {args.minutes:g} min on {device}", flush=True)
    best = min(results, key=results.get)
    print(f"best: lr {best:g}, val_bpb {results[best]:.4f}")


if __name__ == "__main__":
    main()
