"""Does a compiled training step keep adaptive computation pruning's speed? Eager vs torch.compile, prune on/off.

    .venv/bin/python scripts/bench_compile.py                  # FoX, 2048 tokens, fwd+bwd, 1 thread
    .venv/bin/python scripts/bench_compile.py --n 4096 --threads 2

One FoX decoder (gate bias 0: strong forgetting, so the fold prunes most tiles) and a copy with
``attn_prune=False`` and the same weights, each run eagerly and through ``torch.compile(fullgraph=True)``
(inductor), in one process, the four interleaved round by round; prints the median seconds per
forward+backward step and the ratios to the eager unpruned step, plus the compile time of the first
step. The pruned fold is one custom operator (xforget/ops/pruned_op.py), so the compiled step
should skip the same tiles as the eager one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from xforget import Decoder, TransformerWrapper


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2048, help="tokens per sequence")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # decayed softmax weights are subnormal: x86 slows down otherwise (ops/fold.py)
    torch.manual_seed(0)

    def build(prune: bool) -> TransformerWrapper:
        return TransformerWrapper(num_tokens=256, max_seq_len=args.n, attn_layers=Decoder(
            dim=args.dim, depth=args.depth, heads=args.heads, position="fox", forget_gate_bias_init=0.0,
            attn_prune=prune))

    pruned, dense = build(True), build(False)
    dense.load_state_dict(pruned.state_dict())
    x = torch.randint(0, 256, (1, args.n + 1))

    def step(fn, net) -> float:
        net.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        logits = fn(x[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
        return time.perf_counter() - t0

    runs = {"eager, pruned": (pruned, pruned), "eager, unpruned": (dense, dense),
            "compiled, pruned": (torch.compile(pruned, fullgraph=True), pruned),
            "compiled, unpruned": (torch.compile(dense, fullgraph=True), dense)}
    first = {name: step(fn, net) for name, (fn, net) in runs.items()}  # compiles
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (fn, net) in runs.items():
            times[name].append(step(fn, net))
    base = statistics.median(times["eager, unpruned"])
    print(f"FoX decoder dim {args.dim} depth {args.depth} heads {args.heads}, {args.n} tokens, fwd+bwd, "
          f"{args.threads} thread(s), median of {args.rounds} interleaved rounds")
    print("| step | s/step | x eager unpruned | first step (compile) s |\n|---|---|---|---|")
    for name in runs:
        med = statistics.median(times[name])
        print(f"| {name} | {med:.3f} | {med / base:.2f} | {first[name]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
