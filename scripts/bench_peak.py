#!/usr/bin/env python
"""Measure this machine's peak matmul FLOP/s in fp32 and bf16 (the denominator of MFU).

Square matmuls of a few sizes, dtypes interleaved round by round (so a busy
neighbour slows both alike); per dtype the best call of all is the peak. The
result is stored for training (``mfu`` in metrics.jsonl when
``trainer.peak_flops`` is null; see :mod:`xforget.train.peak_flops`).

    python scripts/bench_peak.py                 # 2 threads (torch default here), stores the result
    python scripts/bench_peak.py --threads 1 --no-save
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from xforget.train.peak_flops import DTYPES, machine_key, matmul_flops, save_peak  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per (round, size, dtype)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    best = {(d, n): 0.0 for d in args.dtypes for n in args.sizes}
    for _ in range(args.rounds):
        for n in args.sizes:
            for d in args.dtypes:
                best[d, n] = max(best[d, n], matmul_flops(DTYPES[d], n, repeats=args.repeats))
    print(f"machine: {machine_key()}")
    print(f"{'n':>6} " + " ".join(f"{d + ' TFLOP/s':>13}" for d in args.dtypes))
    for n in args.sizes:
        print(f"{n:>6} " + " ".join(f"{best[d, n] / 1e12:>13.3f}" for d in args.dtypes))
    peaks = {d: max(best[d, n] for n in args.sizes) for d in args.dtypes}
    print("peak:  " + ", ".join(f"{d} {v / 1e12:.3f} TFLOP/s" for d, v in peaks.items()))
    if "fp32" in peaks:
        for d in args.dtypes:
            if d != "fp32":
                print(f"ratio {d}/fp32: {peaks[d] / peaks['fp32']:.2f}x")
    if not args.no_save:
        print(f"stored in {save_peak(peaks)}")


if __name__ == "__main__":
    main()
