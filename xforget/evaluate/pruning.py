"""What adaptive computation pruning skips in a trained model (``xforget-eval`` prints it).

Runs one forward pass over a validation window inside
:func:`xforget.ops.prune.collect_pruning`, with each self-attention layer
labelling its op calls, and reports the pruned fraction of the causal
query-key pairs (attention FLOPs) per layer and head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xforget.nn.attention import Attention
from xforget.ops.prune import PRUNE_MIN_KEYS, collect_pruning


@torch.no_grad()
def pruning_fractions(net: nn.Module, window: torch.Tensor) -> dict[str, Any]:
    """Pruned fraction per self-attention layer and head on one window (or a batch of windows, pooled).

    Args:
        net: a TransformerWrapper (eval mode).
        window: (n,) or (b, n) int64 token ids; with b > 1 the fraction is over all b windows' pairs.
    Returns:
        ``{"length": n, "layers": [{"layer": name, "heads": [fractions], "mean": f}, ...],
        "mean": f}``; layers that never reach a pruning kernel (no decay bias,
        pruning off, dense paths, fewer than ``PRUNE_MIN_KEYS`` keys) are absent, and the mean is None
        without any; then ``"reason"`` says why.
    """
    x = window.view(1, -1) if window.ndim == 1 else window
    layers = [(name, m) for name, m in net.named_modules() if isinstance(m, Attention) and not m.cross]
    with collect_pruning() as log:
        hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: log.label(name)) for name, m in layers]
        try:
            net(x)
        finally:
            for h in hooks:
                h.remove()
    rows = []
    for name, frac in log.by_label().items():
        rows.append({"layer": name, "heads": [round(float(f), 4) for f in frac], "mean": round(float(frac.mean()), 4)})
    mean = round(sum(r["mean"] for r in rows) / len(rows), 4) if rows else None
    out = {"length": int(x.shape[1]), "windows": int(x.shape[0]), "layers": rows, "mean": mean}
    if not rows:
        out["reason"] = _no_pruning_reason([m for _, m in layers], int(x.shape[1]))
    return out


def _no_pruning_reason(layers: list[Attention], n: int) -> str:
    """Why no layer pruned: no decay bias, pruning off, or too few keys (the fold prunes from 512 on)."""
    decay = [m for m in layers if m.bias is not None and m.bias.kind == "decay"]
    if not decay:
        return "no decay bias (pruning needs a forget gate)"
    if not any(m.prune for m in decay):
        return "attn_prune=false"
    if n < PRUNE_MIN_KEYS:
        return f"pruning starts at {PRUNE_MIN_KEYS} keys (PRUNE_MIN_KEYS), this window has {n}"
    return "no layer reached a pruning kernel (a dense or GPU path)"


def format_pruning(report: dict[str, Any]) -> list[str]:
    """Lines for the ``xforget-eval`` table."""
    if not report.get("layers"):
        why = report.get("reason") or "no decay bias, or attn_prune=false"
        return [f"pruned attention at length {report.get('length')}: none ({why})"]
    lines = [f"pruned fraction of causal attention pairs at length {report['length']} (mean {report['mean']:.3f}):"]
    for r in report["layers"]:
        heads = " ".join(f"{h:.2f}" for h in r["heads"])
        lines.append(f"  {r['layer']}: mean {r['mean']:.3f}  heads {heads}")
    return lines
