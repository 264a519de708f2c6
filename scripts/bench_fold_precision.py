#!/usr/bin/env python
"""The fold's fp32 error vs float64, and its speed, with and without the per-block rebase, in one run.

For ALiBi (8 heads, slopes 2^-1 .. 2^-8) and FoX (strong gates, |c| ~ 1e4), at each length: the
fold with and without pruning, rebased (today) and not (``xforget.ops.rebase.ENABLED = False``,
the fold before the rebase), interleaved repeats of one forward+backward, median time; the max
absolute error of the outputs against a float64 reference of the last 256 query rows.  Ratios
are rebased / unrebased time from the same run.

    python scripts/bench_fold_precision.py                 # n = 2048, 4096, 16384 (16384: pruned only)
    python scripts/bench_fold_precision.py --n 2048 --repeats 5
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from xforget.ops import attend, rebase


def reference_rows(q, k, v, log_f, rows):
    """float64 causal attention with decay c_i - c_j for query positions ``rows``."""
    q, k, v = q.double(), k.double(), v.double()
    c = log_f.double().expand(q.shape[0], q.shape[1], -1).cumsum(-1)
    e = rows.stop
    logits = torch.einsum("bhid,bhjd->bhij", q[:, :, rows], k[:, :, :e]) / math.sqrt(q.shape[-1])
    logits = logits + c[:, :, rows, None] - c[:, :, None, :e]
    i, j = torch.arange(rows.start, e)[:, None], torch.arange(e)[None, :]
    return torch.softmax(logits.masked_fill(j > i, -math.inf), -1) @ v[:, :, :e]


def gate(scheme: str, h: int, n: int) -> torch.Tensor:
    if scheme == "alibi":
        return (-torch.tensor([2.0 ** -k for k in range(1, h + 1)]))[None, :, None].expand(1, h, n).contiguous()
    g = torch.Generator().manual_seed(1)
    return torch.nn.functional.logsigmoid(torch.randn(1, h, n, generator=g) * 2 - 2.0)


def one(q, k, v, lf, prune: bool, on: bool, backward: bool):
    rebase.ENABLED = on
    ins = [t.clone().requires_grad_(backward) for t in (q, k, v, lf)]
    t0 = time.perf_counter()
    out = attend(*ins[:3], causal=True, log_fgate=ins[3], backend="fold", prune=prune)
    if backward:
        out.backward(torch.ones_like(out))
    return time.perf_counter() - t0, out.detach()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="*", default=[2048, 4096, 16384])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim-head", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--unpruned-max", type=int, default=4096, help="longest n timed without pruning")
    args = ap.parse_args(argv)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32, b=1, h={args.heads}, "
          f"d={args.dim_head}; error: max |out - float64| over the last 256 rows; time: fwd+bwd median")
    print("| scheme | n | prune | err before | err after | time before (s) | time after (s) | after/before |")
    print("|---|---|---|---|---|---|---|---|")
    for scheme in ("alibi", "fox"):
        for n in args.n:
            q, k, v = (torch.randn(1, args.heads, n, args.dim_head) for _ in range(3))
            lf = gate(scheme, args.heads, n)
            rows = range(n - 256, n)
            ref = reference_rows(q, k, v, lf, rows)
            for prune in (False, True):
                if not prune and n > args.unpruned_max:
                    continue
                times = {True: [], False: []}
                errs = {}
                one(q, k, v, lf, prune, True, True)  # warm-up
                for _ in range(args.repeats):
                    for on in (False, True):  # interleaved
                        t, out = one(q, k, v, lf, prune, on, True)
                        times[on].append(t)
                        errs[on] = (out[:, :, rows].double() - ref).abs().max().item()
                tb, ta = statistics.median(times[False]), statistics.median(times[True])
                print(f"| {scheme} | {n} | {prune} | {errs[False]:.2g} | {errs[True]:.2g} | {tb:.3f} | {ta:.3f} "
                      f"| {ta / tb:.3f} |", flush=True)
    rebase.ENABLED = True


if __name__ == "__main__":
    main()
