#!/usr/bin/env python
"""Benchmark forgetting attention (FoX) and ALiBi: xforget vs x-transformers 2.31.10.

Table 1: one forward+backward of a 4-layer decoder (dim 256, 8 heads, vocab
256), batch 1, fp32, at n = 1024, 4096, 16384: time (median of a few repeats
after one warm-up) and peak RSS.  Every configuration runs in its own fresh
subprocess (so ``ru_maxrss`` is honest) under an address-space limit and a
timeout; a configuration whose estimated memory exceeds the limit is reported
as skipped, one that fails or is killed is reported, never crashes the run.

Table 2: training throughput (tokens/s of forward+backward+AdamW step) at
n = 1024, batch 8, for position none / rotary / alibi / fox: ours vs
x-transformers with ``attn_flash=True``.

CPU note: decayed attention weights land in exp()'s subnormal range, which
makes x86 arithmetic ~10x slower.  By default every worker (ours and
x-transformers alike) enables flush-to-zero via ``torch.set_flush_denormal``
before any parallel work, so the OpenMP threads inherit it; ``--no-ftz``
turns that off.

    python scripts/bench_attention.py            # full run (minutes to tens of minutes)
    python scripts/bench_attention.py --quick    # n = 1024 only, fewer repeats
    python scripts/bench_attention.py --only ours
    python scripts/bench_attention.py --acp runs/acp_fox   # + adaptive computation pruning rows
                                                           # (scripts/bench_pruning_rows.py)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DIM, DEPTH, HEADS, VOCAB = 256, 4, 8, 256

# Peak RSS measured on the 2-core dev machine at n = 4096 (DESIGN.md section 3), GB;
# x-transformers' dense paths grow as n^2, the fused no-bias path as n.
XT_GB_AT_4096 = {"manual": 7.4, "flash_bias": 4.5, "flash_plain": 0.8}


@dataclass
class Config:
    impl: str  # "ours" | "xt"
    position: str  # none | rotary | alibi | fox
    n: int
    batch: int = 1
    mode: str = "fwd_bwd"  # fwd_bwd | train
    flash: bool = True  # x-transformers attn_flash
    backend: str | None = None  # our attn_backend
    repeats: int = 3
    ftz: bool = True
    label: str = field(default="")

    def name(self) -> str:
        if self.label:
            return self.label
        if self.impl == "ours":
            return f"xforget {self.position}" + (f" [{self.backend}]" if self.backend else "")
        return f"x-transformers {self.position} ({'flash' if self.flash else 'manual'})"


# ----------------------------------------------------------------------------- worker


def build_model(cfg: Config):
    if cfg.impl == "ours":
        sys.path.insert(0, str(ROOT))
        from xforget import Decoder, TransformerWrapper

        kwargs = dict(dim=DIM, depth=DEPTH, heads=HEADS, position=cfg.position)
        if cfg.backend:
            kwargs["attn_backend"] = cfg.backend
        return TransformerWrapper(num_tokens=VOCAB, max_seq_len=cfg.n, attn_layers=Decoder(**kwargs))

    import x_transformers as xt

    kwargs = dict(dim=DIM, depth=DEPTH, heads=HEADS, attn_flash=cfg.flash)
    if cfg.position == "fox":
        kwargs["attn_data_dependent_alibi"] = True
    elif cfg.position == "alibi":
        kwargs["alibi_pos_bias"] = True
    elif cfg.position == "rotary":
        kwargs["rotary_pos_emb"] = True
    elif cfg.position != "none":
        raise ValueError(f"no x-transformers setting for position {cfg.position!r}")
    return xt.TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=cfg.n, attn_layers=xt.Decoder(**kwargs), use_abs_pos_emb=False
    )


def run_worker(cfg: Config) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_flush_denormal(cfg.ftz)  # before the OpenMP pool exists: its threads inherit it
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.randint(0, VOCAB, (cfg.batch, cfg.n))
    y = torch.randint(0, VOCAB, (cfg.batch, cfg.n))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if cfg.mode == "train" else None

    def step():
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB).float(), y.reshape(-1))
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            model.zero_grad(set_to_none=True)
        return loss.item()

    step()  # warm-up
    times = []
    for _ in range(cfg.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    return {"time_s": statistics.median(times), "times": times, "peak_gb": peak_kb / 2**20}


# ----------------------------------------------------------------------------- parent


def total_memory_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 16.0


def estimate_gb(cfg: Config) -> float:
    """Rough peak RSS; only used to skip runs that cannot fit."""
    scale = cfg.batch * (cfg.n / 4096)
    if cfg.impl == "ours":
        return 0.5 + 0.3 * scale
    if not cfg.flash:
        key = "manual"
    else:
        key = "flash_plain" if cfg.position in ("none", "rotary") else "flash_bias"
    if key == "flash_plain":
        return 0.3 + XT_GB_AT_4096[key] * scale
    return 0.3 + XT_GB_AT_4096[key] * cfg.batch * (cfg.n / 4096) ** 2


def run_config(cfg: Config, mem_limit_gb: float, timeout_s: float) -> dict:
    est = estimate_gb(cfg)
    if est > mem_limit_gb:
        return {"status": f"skipped: would need ~{est:.0f} GB (limit {mem_limit_gb:.0f} GB)"}

    def limit():
        lim = int(mem_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(asdict(cfg))]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, preexec_fn=limit, cwd=str(ROOT)
        )
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout_s:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:120]
        if proc.returncode < 0 or "memory" in tail.lower() or "alloc" in tail.lower():
            return {"status": f"failed (out of memory? rc={proc.returncode}): {tail}"}
        return {"status": f"failed (rc={proc.returncode}): {tail}"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            res = json.loads(line)
            res["status"] = "ok"
            return res
    return {"status": "failed: no result line"}


def fmt_time(r: dict) -> str:
    return f"{r['time_s']:.2f} s" if r.get("status") == "ok" else r.get("status", "?")


def fmt_mem(r: dict) -> str:
    return f"{r['peak_gb']:.2f} GB" if r.get("status") == "ok" else ""


def ratio(a: dict, b: dict | None, key: str) -> str:
    if b is None or a.get("status") != "ok" or b.get("status") != "ok":
        return ""
    return f"{a[key] / b[key]:.2f}x"


def table_latency(args, mem_limit_gb: float) -> list[str]:
    ns = [1024] if args.quick else [1024, 4096, 16384]
    repeats = 1 if args.quick else args.repeats
    rows = []
    for n in ns:
        cfgs = []
        if args.only in (None, "ours"):
            for pos in ("none", "alibi", "fox"):
                cfgs.append(Config("ours", pos, n, repeats=repeats, ftz=args.ftz, backend=args.backend))
        if args.only in (None, "xt"):
            for pos in ("fox", "alibi"):
                for flash in (True, False):
                    cfgs.append(Config("xt", pos, n, flash=flash, repeats=repeats, ftz=args.ftz))
            cfgs.append(Config("xt", "none", n, flash=True, repeats=repeats, ftz=args.ftz))
        results = []
        for cfg in cfgs:
            res = run_config(cfg, mem_limit_gb, args.timeout)
            print(f"  n={n:>5} {cfg.name():<38} {fmt_time(res):>12} {fmt_mem(res):>9}", file=sys.stderr, flush=True)
            results.append((cfg, res))
        ok = lambda c, r: r.get("status") == "ok"  # noqa: E731
        xt_fg = [r for c, r in results if c.impl == "xt" and c.position == "fox" and ok(c, r)]
        best_t = min(xt_fg, key=lambda r: r["time_s"]) if xt_fg else None
        best_m = min(xt_fg, key=lambda r: r["peak_gb"]) if xt_fg else None
        ours_none = next((r for c, r in results if c.impl == "ours" and c.position == "none"), None)
        for cfg, res in results:
            rows.append(
                f"| {n} | {cfg.name()} | {fmt_time(res)} | {fmt_mem(res)} | {ratio(res, best_t, 'time_s')} "
                f"| {ratio(res, best_m, 'peak_gb')} | {ratio(res, ours_none, 'time_s') if cfg.impl == 'ours' else ''} |"
            )
    head = [
        "| n | configuration | fwd+bwd time | peak RSS | time / best x-t forget gate | memory / best x-t forget gate "
        "| time / xforget none |",
        "|---|---|---|---|---|---|---|",
    ]
    return head + rows


def table_throughput(args, mem_limit_gb: float) -> list[str]:
    n, batch = 1024, 8
    repeats = 2 if args.quick else args.repeats
    rows = []
    for pos in ("none", "rotary", "alibi", "fox"):
        res = {}
        for impl in ("ours", "xt"):
            if args.only not in (None, impl):
                continue
            cfg = Config(impl, pos, n, batch=batch, mode="train", flash=True, repeats=repeats, ftz=args.ftz,
                         backend=args.backend if impl == "ours" else None)
            res[impl] = run_config(cfg, mem_limit_gb, args.timeout)
            r = res[impl]
            tps = f"{batch * n / r['time_s']:.0f}" if r.get("status") == "ok" else r.get("status")
            print(f"  train {pos:<7} {impl:<5} {tps}", file=sys.stderr, flush=True)

        def tps(r):
            return f"{batch * n / r['time_s']:,.0f}" if r and r.get("status") == "ok" else (r or {}).get("status", "-")

        ours, xt = res.get("ours"), res.get("xt")
        rat = ratio(xt, ours, "time_s") if ours and xt else ""  # ours tokens/s / xt tokens/s
        rows.append(f"| {pos} | {tps(ours)} | {tps(xt)} | {rat} |")
    head = [
        f"| position | xforget tokens/s | x-transformers (attn_flash=True) tokens/s | ours / x-t |",
        "|---|---|---|---|",
    ]
    return head + rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="n=1024 only, fewer repeats")
    p.add_argument("--only", choices=["ours", "xt"], default=None, help="run only one implementation")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up (median reported)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per configuration")
    p.add_argument("--mem-limit-gb", type=float, default=None, help="per-configuration limit (default 85%% of RAM)")
    p.add_argument("--backend", default=None, help="our attn_backend (default: automatic)")
    p.add_argument("--no-ftz", dest="ftz", action="store_false", help="keep subnormal floats (slow on CPU)")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--acp", default=None, metavar="RUN_DIR",
                   help="add the adaptive computation pruning rows, with the trained FoX run in RUN_DIR")
    p.add_argument("--acp-only", action="store_true", help="only the pruning rows (needs --acp)")
    p.add_argument("--acp-threads", type=int, default=1, help="torch threads per pruning-row worker (0 = default)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker is not None:
        cfg = Config(**json.loads(args.worker))
        print(json.dumps(run_worker(cfg)), flush=True)
        return

    import torch  # only for the header

    mem_limit_gb = args.mem_limit_gb or 0.85 * total_memory_gb()
    print(f"# attention benchmark: dim {DIM}, depth {DEPTH}, heads {HEADS}, vocab {VOCAB}, fp32, CPU "
          f"({os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"flush-to-zero {'on' if args.ftz else 'off'}, memory limit {mem_limit_gb:.0f} GB)\n")
    if args.acp_only and not args.acp:
        p.error("--acp-only needs --acp RUN_DIR")
    if not args.acp_only:
        print("## One forward+backward, batch 1\n")
        print("\n".join(table_latency(args, mem_limit_gb)))
    if args.acp:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_pruning_rows import acp_tables

        print()
        print("\n".join(acp_tables(args.acp, threads=args.acp_threads or None,
                                   log=lambda m: print(m, file=sys.stderr, flush=True))))
    if not args.skip_throughput and not args.acp_only:
        print("\n## Training throughput, n = 1024, batch 8 (forward+backward+AdamW)\n")
        print("\n".join(table_throughput(args, mem_limit_gb)))


if __name__ == "__main__":
    main()
