"""Adaptive computation pruning rows of ``scripts/bench_attention.py`` (``--acp RUN_DIR``).

Uses a trained default FoX model (a run directory of ``xforget-train``, e.g.
``xforget-train trainer.max_steps=200 hydra.run.dir=runs/acp_fox``) on real
text (the validation split of the run's corpus), so the gates are the ones
users get.  Every measurement runs in a fresh subprocess (honest peak RSS);
compared configurations are interleaved and reported as ratios.

Rows:
* pruned fraction of causal attention pairs per layer at 4096 and 16384 tokens;
* forward+backward of the FoX decoder vs our no-bias decoder (plain causal
  SDPA, same size, random weights: its speed does not depend on them) at 4096
  and 16384 tokens, and FoX with ``attn_prune=false``;
* 65536 tokens forward+backward of the FoX decoder: time and peak RSS;
* cached decoding at context 32768: tokens/s of FoX (cache from a real-text
  prefill) vs the no-bias model (cache of random keys/values of the same size).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _model(spec: dict):
    import torch

    sys.path.insert(0, str(ROOT))
    from xforget import Decoder, TransformerWrapper
    from xforget.evaluate.core import validation_bytes
    from xforget.train.checkpoint import load_model

    fox, cfg = load_model(spec["run"])
    text, _ = validation_bytes(cfg.data)
    if spec["model"] == "fox":
        net = fox
    else:
        m = cfg.model
        torch.manual_seed(0)
        net = TransformerWrapper(num_tokens=m.num_tokens, max_seq_len=max(spec["n"], 1) + 64,
                                 attn_layers=Decoder(dim=m.dim, depth=m.depth, heads=m.heads, position="none"))
    if spec.get("prune") is False:
        for mod in net.modules():
            if hasattr(mod, "prune_eps"):
                mod.prune = False
    return net, text


def worker(spec: dict) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_flush_denormal(True)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from xforget.ops.prune import collect_pruning

    net, text = _model(spec)
    n = spec["n"]
    reps = (n + text.numel() - 2) // (text.numel() - 1)
    data = text.repeat(reps + 1)[: n + 1].long()
    x, y = data[:-1][None], data[1:][None]
    out: dict = {}
    if spec["kind"] == "fwd_bwd":
        net.train()

        def step():
            logits = net(x)
            F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1)).backward()
            net.zero_grad(set_to_none=True)

        if spec.get("warmup", True):
            step()
        times = []
        for _ in range(spec.get("repeats", 1)):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        out["time_s"] = statistics.median(times)
    elif spec["kind"] == "open_gates":  # heads that never forget: the op with pruning on vs off, interleaved
        from xforget.ops import forgetting_attention

        b, h, d = 1, 8, 32
        torch.manual_seed(0)
        q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
        lf = torch.zeros(b, h, n, requires_grad=True)
        times = {True: [], False: []}
        for i in range(2 * spec.get("repeats", 5) + 2):
            prune = bool(i % 2)
            t0 = time.perf_counter()
            forgetting_attention(q, k, v, lf, backend="fold", prune=prune).sum().backward()
            if i >= 2:
                times[prune].append(time.perf_counter() - t0)
        out["on_s"], out["off_s"] = statistics.median(times[True]), statistics.median(times[False])
    elif spec["kind"] == "fractions":
        net.eval()
        from xforget.evaluate.pruning import pruning_fractions

        out["pruning"] = pruning_fractions(net, x[0])
    elif spec["kind"] == "decode":
        from xforget.nn.kv_cache import Cache, LayerCache

        net.eval()
        steps = spec.get("steps", 16)
        with torch.no_grad():
            if spec["model"] == "fox":
                _, cache = net(x, return_cache=True)  # real-text prefill (pruned fold)
            else:
                layers = []
                for block in net.attn_layers.blocks:
                    a = block.layers[0].fn
                    kv = (1, a.kv_heads, n, a.dim_head)
                    layers.append(LayerCache(torch.randn(kv), torch.randn(kv)))
                cache = Cache(layers=layers, mask=None, seen=torch.full((1,), n, dtype=torch.long))
            tok = y[:, -1:]
            logits, cache2 = net(tok, cache=cache, return_cache=True)  # warm-up step
            t0 = time.perf_counter()
            with collect_pruning() as log:
                for i in range(steps):
                    logits, cache2 = net(tok, cache=cache2, return_cache=True)
                    tok = logits[:, -1:].argmax(-1)
            out["tokens_per_s"] = steps / (time.perf_counter() - t0)
            fr = [float(r.fraction.mean()) for r in log.records]
            out["decode_pruned_mean"] = sum(fr) / len(fr) if fr else 0.0
    out["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def run(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), json.dumps(spec)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout:.0f} s"}
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            return {"status": "ok", **json.loads(line)}
    tail = (p.stderr.strip().splitlines() or ["?"])[-1][:160]
    return {"status": f"failed (rc={p.returncode}): {tail}"}


def acp_tables(run_dir: str, *, rounds: int = 2, timeout: float = 3600.0, threads: int | None = 1,
               log=print) -> list[str]:
    """The pruning rows as markdown lines.

    ``threads``: torch threads per worker (1 by default: on a shared, oversubscribed
    CPU every OpenMP parallel region can stall for a scheduler slice, which swamps
    small kernels; both sides of every ratio use the same setting).
    """
    lines = [f"## Adaptive computation pruning (trained FoX gates, real text; {threads or 'default'} thread(s) per worker)", ""]
    base = {"run": run_dir, "threads": threads}
    # 1. pruned fractions
    lines += ["| n | layer | pruned fraction (mean over heads) | per head |", "|---|---|---|---|"]
    for n in (4096, 16384):
        r = run({**base, "model": "fox", "kind": "fractions", "n": n}, timeout)
        if r["status"] != "ok":
            lines.append(f"| {n} | - | {r['status']} | |")
            continue
        for layer in r["pruning"]["layers"]:
            lines.append(f"| {n} | {layer['layer']} | {layer['mean']:.3f} | {' '.join(f'{h:.2f}' for h in layer['heads'])} |")
        log(f"  fractions n={n}: mean {r['pruning']['mean']}")
    # 1b. heads that never forget (log f = 0): pruning finds nothing, what does looking cost?
    r = run({**base, "model": "fox", "kind": "open_gates", "n": 4096}, timeout)
    lines += ["", "| heads that never forget (op fwd+bwd, 4096 tokens, 8 heads) | prune=True | prune=False | ratio | target |",
              "|---|---|---|---|---|"]
    if r["status"] == "ok":
        lines.append(f"| log f = 0 | {r['on_s']:.3f} s | {r['off_s']:.3f} s | {r['on_s'] / r['off_s']:.3f}x | <= 1.05x |")
    else:
        lines.append(f"| log f = 0 | {r['status']} | | | |")
    # 2. fwd+bwd, interleaved rounds
    lines += ["", "| n | FoX (pruned) | FoX (attn_prune=false) | no-bias (plain causal SDPA) | pruned / no-bias | unpruned / no-bias | target |",
              "|---|---|---|---|---|---|---|"]
    for n, target in ((4096, 1.0), (16384, 0.6)):
        res = {"fox": [], "fox_exact": [], "none": []}
        for _ in range(rounds):
            for name, spec in (("fox", {"model": "fox"}), ("none", {"model": "none"}),
                               ("fox_exact", {"model": "fox", "prune": False})):
                r = run({**base, **spec, "kind": "fwd_bwd", "n": n}, timeout)
                log(f"  fwd+bwd n={n} {name}: {r.get('time_s', r['status'])}")
                if r["status"] == "ok":
                    res[name].append(r["time_s"])
        med = {k: statistics.median(v) if v else None for k, v in res.items()}
        f = lambda k: f"{med[k]:.2f} s" if med[k] else "failed"  # noqa: E731
        rat = lambda k: f"{med[k] / med['none']:.2f}x" if med[k] and med["none"] else ""  # noqa: E731
        lines.append(f"| {n} | {f('fox')} | {f('fox_exact')} | {f('none')} | {rat('fox')} | {rat('fox_exact')} | <= {target}x |")
    # 3. 65536 tokens
    r = run({**base, "model": "fox", "kind": "fwd_bwd", "n": 65536, "warmup": False}, timeout)
    log(f"  fwd+bwd n=65536: {r}")
    lines += ["", "| n | FoX fwd+bwd time | peak RSS | target |", "|---|---|---|---|"]
    lines.append(f"| 65536 | {r.get('time_s', 0):.1f} s | {r.get('peak_gb', 0):.2f} GB | <= 8 GB |" if r["status"] == "ok"
                 else f"| 65536 | {r['status']} | | <= 8 GB |")
    # 4. decoding at context 32768
    res = {"fox": [], "none": []}
    pruned = []
    for _ in range(rounds):
        for name in ("fox", "none"):
            r = run({**base, "model": name, "kind": "decode", "n": 32768}, timeout)
            log(f"  decode 32768 {name}: {r.get('tokens_per_s', r['status'])}")
            if r["status"] == "ok":
                res[name].append(r["tokens_per_s"])
                if name == "fox":
                    pruned.append(r["decode_pruned_mean"])
    med = {k: statistics.median(v) if v else None for k, v in res.items()}
    lines += ["", "| context | FoX tokens/s | no-bias tokens/s | FoX / no-bias | FoX keys skipped | target |",
              "|---|---|---|---|---|---|"]
    if med["fox"] and med["none"]:
        lines.append(f"| 32768 | {med['fox']:.1f} | {med['none']:.1f} | {med['fox'] / med['none']:.2f}x "
                     f"| {statistics.median(pruned):.3f} | >= 1.5x |")
    else:
        lines.append("| 32768 | failed | | | | |")
    return lines


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))), flush=True)
