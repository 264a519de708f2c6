#!/usr/bin/env python
"""Training throughput of the default run under different settings, measured interleaved.

Every setting gets its own copy of the default model (same initial weights)
and optimizer; rounds alternate over the settings, a few optimizer steps each
(forward, backward, grad clip, AdamW step, exactly as ``xforget.train.loop``),
so a busy neighbour on a shared machine slows all settings alike. Reported per
setting: median tokens/s over the rounds, the ratio to the first setting (the
peer, fp32 by default) and MFU against this machine's measured peak
(``scripts/bench_peak.py``; the fp32 peak for fp32, the bf16 peak for bf16).

Settings are ``precision[+compile][+fused|+foreach][@override,override...]``,
e.g. ``fp32 bf16 bf16+fused bf16+compile+fused bf16+fused@model=fox_pro``;
``--batch``/``--seq-len``/the positional overrides apply to all, the ones after
``@`` to that setting only (so two models are timed in the same run).

    python scripts/bench_train.py
    python scripts/bench_train.py --settings fp32 bf16 bf16+fused --rounds 8 --steps 3
    python scripts/bench_train.py --settings bf16+fused@model=fox bf16+fused@model=fox_pro,model.kv_shift=false
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from xforget.models.autoregressive import AutoregressiveWrapper  # noqa: E402
from xforget.train.config import compose_config, to_train_config  # noqa: E402
from xforget.train.optim import param_groups  # noqa: E402
from xforget.train.metrics import model_flops_per_token  # noqa: E402
from xforget.train.peak_flops import load_peak  # noqa: E402
from xforget.models.wrapper import build_model  # noqa: E402

AMP = {"fp32": None, "bf16": torch.bfloat16}


class Runner:
    def __init__(self, name: str, cfg, batch: int, seq_len: int) -> None:
        parts = name.split("@")[0].split("+")
        self.name, self.precision = name, parts[0]
        if self.precision not in AMP:
            raise SystemExit(f"error: unknown precision {self.precision!r} in setting {name!r}; valid: {list(AMP)}")
        unknown = set(parts[1:]) - {"compile", "regional", "fused", "foreach"}
        if unknown:
            raise SystemExit(f"error: unknown option(s) {sorted(unknown)} in {name!r}; "
                             "valid: compile, regional, fused, foreach")
        torch.manual_seed(0)
        self.model = build_model(cfg.model)
        self.lm = AutoregressiveWrapper(self.model)
        self.forward = torch.compile(self.lm) if "compile" in parts else self.lm
        if "regional" in parts:  # each block compiled in place (one graph, re-used by every block)
            for block in self.model.attn_layers.blocks:
                block.compile()
        kw = {"fused": True} if "fused" in parts else {"foreach": True} if "foreach" in parts else {"foreach": False}
        o = cfg.optim
        self.opt = torch.optim.AdamW(param_groups(self.model, o.weight_decay), lr=o.lr, betas=tuple(o.betas),
                                     eps=o.eps, **kw)
        self.amp = AMP[self.precision]
        self.batch, self.seq_len = batch, seq_len
        self.step_times: list[float] = []
        self.gen = torch.Generator().manual_seed(1)
        self.cfg = cfg

    def steps(self, n: int, record: bool = True) -> None:
        for _ in range(n):
            x = torch.randint(0, 256, (self.batch, self.seq_len + 1), generator=self.gen)
            tic = time.perf_counter()
            ctx = torch.autocast("cpu", dtype=self.amp) if self.amp else contextlib.nullcontext()
            with ctx:
                loss = self.forward(x)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            if record:
                self.step_times.append(time.perf_counter() - tic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=["fp32", "fp32+fused", "bf16", "bf16+fused",
                                                       "bf16+compile+fused"])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per setting per round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per setting first (compiles)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the training config, e.g. model.depth=6")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the training loop does on CPUs
    overrides = list(args.overrides)
    if args.batch:
        overrides.append(f"trainer.batch_size={args.batch}")
    if args.seq_len:
        overrides.append(f"trainer.seq_len={args.seq_len}")
    cfg = to_train_config(compose_config(overrides))
    batch, seq_len = cfg.trainer.batch_size, cfg.trainer.seq_len
    runners = []
    for setting in args.settings:
        extra = setting.split("@")[1].split(",") if "@" in setting else []
        runners.append(Runner(setting, to_train_config(compose_config(overrides + extra)) if extra else cfg,
                              batch, seq_len))
    compile_s = {}
    for r in runners:
        tic = time.perf_counter()
        r.steps(args.warmup, record=False)
        compile_s[r.name] = time.perf_counter() - tic
    for i in range(args.rounds):
        for r in runners:
            r.steps(args.steps)
        report(runners, cfg, args, i + 1, compile_s)  # after every round: a killed run still leaves numbers


def report(runners, cfg, args, rounds: int, compile_s: dict) -> None:
    batch, seq_len = cfg.trainer.batch_size, cfg.trainer.seq_len
    tokens = batch * seq_len
    print(f"model dim={cfg.model.dim} depth={cfg.model.depth} heads={cfg.model.heads} position={cfg.model.position}; "
          f"batch {batch} x {seq_len}; {torch.get_num_threads()} threads; {rounds} rounds x {args.steps} steps")
    print(f"{'setting':<40} {'tokens/s':>9} {'s/step':>7} {'ratio':>6} {'TFLOP/s':>8} {'MFU':>6} {'warm-up s':>9}")
    base = None
    for r in runners:
        per_step = statistics.median(r.step_times)
        fpt = model_flops_per_token(r.model, seq_len)
        tps = tokens / per_step
        base = base or tps
        peak = load_peak(r.precision)
        mfu = f"{fpt * tps / peak:6.1%}" if peak else "   n/a"
        print(f"{r.name:<40} {tps:>9.0f} {per_step:>7.3f} {tps / base:>5.2f}x {fpt * tps / 1e12:>8.3f} {mfu} "
              f"{compile_s[r.name]:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
