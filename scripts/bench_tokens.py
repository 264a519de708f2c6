"""Training tokens/s from memory-mapped token shards vs the same model training from an in-memory tensor.

    python scripts/bench_tokens.py                      # prepares the stdlib corpus (bytes) into a temp dir
    python scripts/bench_tokens.py --data DIR --dim 256 --depth 4 --rounds 6

Two identical models (same seed, same optimizer) train on the same windows
(step-seeded, :class:`~xforget.data.batches.TrainBatches`): one draws them
from ``train.bin`` through ``numpy.memmap`` (what ``data=tokens`` does), the
other from the whole split loaded into a torch tensor first. The two
alternate in blocks of ``--steps`` steps for ``--rounds`` rounds (interleaved,
so load from other processes hits both alike). Prints tokens/s of each, the
ratio mmap / memory (target >= 0.95) and the time spent gathering windows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="a prepared dataset directory (default: stdlib, bytes, in a temp dir)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=3, help="steps per block")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    from xforget import AutoregressiveWrapper, Decoder, TransformerWrapper
    from xforget.data.batches import TrainBatches
    from xforget.data.tokens import load_tokens

    if args.data is None:
        from xforget.data.corpora.cache import cache_dir
        from xforget.data.prepare import PrepareConfig, prepare
        from xforget.data.corpora.stdlib import load_stdlib_corpus

        load_stdlib_corpus(cache_dir())
        blob = next(cache_dir().glob("stdlib-py*.bin"))
        data_dir = Path(tempfile.mkdtemp(prefix="bench_tokens-")) / "stdlib"
        prepare(PrepareConfig(input=str(blob), output=str(data_dir), progress=False), log=lambda m: None)
    else:
        data_dir = Path(args.data)
    data = load_tokens(data_dir)
    in_memory = torch.from_numpy(np.array(data.train, dtype=np.int64))  # the whole split, read into RAM
    sources = {"mmap": data.train, "memory": in_memory}

    def make():
        torch.manual_seed(0)
        net = TransformerWrapper(num_tokens=data.vocab_size, max_seq_len=args.seq_len,
                                 attn_layers=Decoder(dim=args.dim, depth=args.depth, heads=args.heads, position="fox"))
        lm = AutoregressiveWrapper(net)
        return lm, torch.optim.AdamW(lm.parameters(), lr=1e-3)

    runs = {k: (*make(), TrainBatches(src, args.seq_len, args.batch_size, 1, seed=0)) for k, src in sources.items()}
    stats = {k: {"time": 0.0, "gather": 0.0, "tokens": 0} for k in runs}
    step = {k: 0 for k in runs}
    losses = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, (lm, opt, batches) in runs.items():
            for _ in range(args.steps):
                tic = time.perf_counter()
                windows = batches(step[name])[0]
                gathered = time.perf_counter()
                loss = lm(windows)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                done = time.perf_counter()
                stats[name]["time"] += done - tic
                stats[name]["gather"] += gathered - tic
                stats[name]["tokens"] += windows.shape[0] * args.seq_len
                losses[name].append(loss.item())
                step[name] += 1
    assert losses["mmap"] == losses["memory"], "the two sources must give the same windows (same losses)"
    tps = {k: s["tokens"] / s["time"] for k, s in stats.items()}
    print(f"data {data_dir}: {len(data.train):,} train tokens ({data.meta['dtype']}), vocabulary {data.vocab_size}; "
          f"model dim {args.dim} depth {args.depth}, batch {args.batch_size} x {args.seq_len}, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps each, interleaved")
    for k, s in stats.items():
        print(f"  {k:>6}: {tps[k]:8.0f} tokens/s, gathering windows {1e3 * s['gather'] / step[k]:.2f} ms/step "
              f"of {1e3 * s['time'] / step[k]:.0f} ms/step")
    print(f"ratio mmap / in-memory tokens/s = {tps['mmap'] / tps['memory']:.3f} (target >= 0.95); "
          f"identical losses on both: {losses['mmap'] == losses['memory']}")


if __name__ == "__main__":
    main()
