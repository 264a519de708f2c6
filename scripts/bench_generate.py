"""Decode speed with the KV cache: xforget vs x-transformers 2.31.10, same model, same process.

For each scheme and context length, a prompt of `context` tokens is prefilled
(not timed), then `--new` tokens are decoded greedily one at a time with the KV
cache; decode tokens/s = 1 / median time of one decoding step, for both
libraries called the way their own cached generation calls them. Model: dim 256, depth 4, heads 8, batch 1, fp32, greedy.

x-transformers rows use attn_flash=True and its cached generate(); its forget
gate is omitted because it does not cache correctly (DESIGN.md section 4.1):
for FoX the peer column shows its ALiBi speed, the target being "FoX at the
speed of ALiBi".

    python scripts/bench_generate.py                 # contexts 512 2048 8192
    python scripts/bench_generate.py --contexts 512 --new 16   # quick
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import xforget

SCHEMES = {  # ours: position=...; x-transformers: Decoder flags (None = not comparable)
    "none": ("none", {}),
    "rotary": ("rotary", {"rotary_pos_emb": True}),
    "alibi": ("alibi", {"alibi_pos_bias": True}),
    "fox": ("fox", {"alibi_pos_bias": True}),  # peer: ALiBi (its forget gate cannot cache)
}


def ours(position: str, max_len: int):
    net = xforget.TransformerWrapper(num_tokens=256, max_seq_len=max_len,
                                     attn_layers=xforget.Decoder(dim=256, depth=4, heads=8, position=position)).eval()

    def step(tokens, cache):  # tokens: the whole sequence so far; only the new ones are fed with a cache
        new = tokens if cache is None else tokens[:, -1:]
        return net(new, cache=cache, return_cache=True)

    return step


def peer(flags: dict, max_len: int):
    import x_transformers as xt

    net = xt.TransformerWrapper(num_tokens=256, max_seq_len=max_len, use_abs_pos_emb=False,
                                attn_layers=xt.Decoder(dim=256, depth=4, heads=8, attn_flash=True, **flags)).eval()

    def step(tokens, cache):  # the call pattern of x-transformers' own cached generate()
        return net(tokens, return_intermediates=True, cache=cache)

    return step


def decode_tokens_per_s(step, context: int, new: int, repeats: int) -> float:
    """Median time of one cached greedy decoding step after a prefill of ``context`` tokens."""
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            tokens = torch.randint(0, 256, (1, context))
            logits, cache = step(tokens, None)  # prefill (not timed)
            for _ in range(new):
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                tokens = torch.cat((tokens, nxt), dim=1)
                t0 = time.perf_counter()
                logits, cache = step(tokens, cache)
                times.append(time.perf_counter() - t0)
    return 1.0 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # both libraries alike: decayed weights underflow to denormals
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import x_transformers  # noqa: F401
        have_peer = True
    except ImportError:
        have_peer = False
        print("x-transformers not installed (pip install -e '.[bench]'): peer columns empty")

    print(f"decode tokens/s, batch 1, fp32, dim 256, depth 4, heads 8, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| scheme | context | xforget tok/s | x-transformers tok/s | ratio | ms/token ours |")
    print("|---|---|---|---|---|---|")
    for name in args.schemes:
        position, flags = SCHEMES[name]
        for context in args.contexts:
            max_len = context + args.new + 8
            torch.manual_seed(0)
            ours_tps = decode_tokens_per_s(ours(position, max_len), context, args.new, args.repeats)
            peer_tps = decode_tokens_per_s(peer(flags, max_len), context, args.new, args.repeats) if have_peer else float("nan")
            label = name if name != "fox" else "fox (peer: its alibi)"
            print(f"| {label} | {context} | {ours_tps:.1f} | {peer_tps:.1f} | {ours_tps / peer_tps:.2f}x | "
                  f"{1000 / ours_tps:.1f} |", flush=True)


if __name__ == "__main__":
    main()
