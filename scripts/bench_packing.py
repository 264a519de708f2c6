#!/usr/bin/env python
"""Training throughput with packed documents (``document_ids``) against the same batch unpacked.

Both settings train their own copy of the default model (same initial weights) on the same
windows: random tokens with an end-of-text token every ``--doc-len`` tokens on average
(document lengths drawn from an exponential distribution, as in a real corpus). Rounds
alternate between the settings, a few optimizer steps each (forward, backward, AdamW), so a busy
neighbour on a shared machine slows both alike. Printed per sequence length: median tokens/s
of each and the ratio packed / unpacked (the issue's target: >= 0.95 on the CPU), and the
fraction of the causal attention pairs the packed fold skipped (earlier documents).

    python scripts/bench_packing.py
    python scripts/bench_packing.py --seq-len 256 1024 --doc-len 200 --rounds 6 --steps 2
    python scripts/bench_packing.py --rebase-off   # + both settings with the fold's exact channels off
                                                   # (xforget.ops.rebase), interleaved in the same rounds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from xforget.models.autoregressive import AutoregressiveWrapper  # noqa: E402
from xforget.models.packing import packed  # noqa: E402
from xforget.models.wrapper import build_model  # noqa: E402
from xforget.ops import rebase  # noqa: E402
from xforget.ops.prune import collect_pruning  # noqa: E402
from xforget.train.config import compose_config, to_train_config  # noqa: E402

EOT = 0


def windows(batch: int, n: int, doc_len: float, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, vocab, (batch, n + 1), generator=g)
    ends = torch.rand(batch, n + 1, generator=g) < 1.0 / doc_len  # geometric gaps: mean doc_len tokens
    return x.masked_fill(ends, EOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--batch", type=int, default=None, help="windows per step (default: the run's, 16; 4 above 512)")
    ap.add_argument("--doc-len", type=float, default=200.0, help="mean document length in tokens")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rebase-off", action="store_true",
                    help="also time both settings with the fold's exact channels (xforget.ops.rebase) turned off")
    ap.add_argument("overrides", nargs="*", help="training config overrides, e.g. model=fox")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the training loop does
    cfg = to_train_config(compose_config(list(args.overrides)))
    print(f"model {cfg.model.position} dim={cfg.model.dim} depth={cfg.model.depth}, {torch.get_num_threads()} threads, "
          f"mean document {args.doc_len:g} tokens")
    for n in args.seq_len:
        batch = args.batch or (cfg.trainer.batch_size if n <= 512 else 4)
        x = windows(batch, n, args.doc_len, 256, seed=n)
        lms, opts = {}, {}
        settings = [("unpacked", None, True), ("packed", EOT, True)]
        if args.rebase_off:
            settings += [("unpacked_unrebased", None, False), ("packed_unrebased", EOT, False)]
        rebased = {name: on for name, _, on in settings}
        for name, eot, _ in settings:
            torch.manual_seed(0)
            model = build_model(cfg.model)
            lms[name] = AutoregressiveWrapper(packed(model, eot))
            opts[name] = torch.optim.AdamW(model.parameters(), lr=1e-4)
        times = {name: [] for name in lms}
        skipped = 0.0
        for r in range(args.rounds + 1):  # round 0 warms up
            for name, lm in lms.items():
                rebase.ENABLED = rebased[name]
                tic = time.perf_counter()
                with collect_pruning() as log:
                    for _ in range(args.steps):
                        lm(x).backward()
                        opts[name].step()
                        opts[name].zero_grad(set_to_none=True)
                if r:
                    times[name].append(args.steps * batch * n / (time.perf_counter() - tic))
                if name == "packed" and log.records:
                    skipped = float(sum(rec.pruned.sum() for rec in log.records) / sum(rec.total.sum() for rec in log.records))
        med = {name: statistics.median(v) for name, v in times.items()}
        print(f"n={n:5d} batch={batch:3d}: unpacked {med['unpacked']:8.0f} tok/s, packed {med['packed']:8.0f} tok/s, "
              f"ratio packed/unpacked {med['packed'] / med['unpacked']:.3f}"
              + (f", skipped {skipped:.0%} of the attention pairs" if skipped else ""))
        if args.rebase_off:
            print(f"          rebase off: unpacked {med['unpacked_unrebased']:8.0f} tok/s, packed "
                  f"{med['packed_unrebased']:8.0f} tok/s; rebased/unrebased: unpacked "
                  f"{med['unpacked'] / med['unpacked_unrebased']:.3f}, packed {med['packed'] / med['packed_unrebased']:.3f}")
        rebase.ENABLED = True


if __name__ == "__main__":
    main()
