"""Long-context plots of a comparison on token data: per-position loss with seed bands, FoX vs RoPE,
bpb of the first L tokens, needle accuracy and the pruned fraction (matplotlib, Agg).

Every shaded band is the range (min to max) over seeds; lines are seed means.
Per-position losses are nats per token, at the geometric middle of each
log-spaced position bucket.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from xforget.compare.colors import scheme_color  # noqa: E402


def _finish(fig, ax, path: Path, title: str | None = None) -> str:
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _mid(b: dict[str, Any]) -> float:
    return math.sqrt(b["lo"] * b["hi"])


def _position_panel(ax, schemes, train_len: int, colors: dict[str, str]) -> None:
    for s in schemes:
        pl = s.get("position_loss")
        if not pl:
            continue
        bs = pl["buckets"]
        _seed_band(ax, [_mid(b) for b in bs], bs, colors[s["name"]], f"{s['name']} ({len(bs[0]['values'])} seeds)")
    _context_axes(ax, train_len, "token position", "loss (nats per token)", legend_size=7)


def _seed_band(ax, x: list[float], stats: list[dict[str, Any]], color: str, label: str, style: str = "-") -> None:
    """The seed mean of ``stats`` (dicts with mean/min/max) as a line, its min-max range over seeds as a band."""
    ax.plot(x, [b["mean"] for b in stats], style, color=color, lw=1.5, label=label)
    ax.fill_between(x, [b["min"] for b in stats], [b["max"] for b in stats], color=color, alpha=0.2, lw=0)


def _context_axes(ax, train_len: int, xlabel: str, ylabel: str, legend_size: int) -> None:
    """Log2 x axis with the training context marked, labels, grid and legend."""
    ax.axvline(train_len, color="k", ls="--", lw=1, label=f"training context {train_len}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=legend_size)


def _colors(schemes) -> dict[str, str]:
    return {s["name"]: scheme_color(s["name"]) for s in schemes}


def plot_position_buckets(schemes: list[dict[str, Any]], path: Path, train_len: int) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    _position_panel(ax, schemes, train_len, _colors(schemes))
    ax.set_ylim(*_ylim(schemes, train_len))
    return _finish(fig, ax, path, "Per-position loss (bands: range over seeds)")


def _ylim(schemes, train_len: int, room: float = 0.6) -> tuple[float, float]:
    """From the loss floor to the worst loss past position 16, capped at ``room`` x the in-context range above the
    worst in-context loss (a blow-up beyond the context leaves the plot rather than flattening the rest)."""
    vals, inside, top = [], [], []
    for s in schemes:
        for b in (s.get("position_loss") or {}).get("buckets", []):
            if b["lo"] >= 16:
                vals.append(b["min"])
                top.append(b["max"])
                if b["hi"] <= train_len:
                    inside.append(b["max"])
    if not vals:
        return (0.0, 1.0)
    lo, hi = min(vals), max(inside or vals)
    cap = hi + room * (hi - lo) + 0.05
    return lo - 0.05 * (hi - lo) - 0.02, min(cap, max(top) + 0.05)


def plot_fox_vs_rope(schemes: list[dict[str, Any]], path: Path, train_len: int) -> str | None:
    """Left: per-position loss of fox and rotary (1x-8x, seed bands). Right: fox minus rotary, with the band
    of the seed-paired differences and ± 2 standard errors (windows) of the mean difference."""
    by = {s["name"]: s for s in schemes}
    fox, rope = by.get("fox"), by.get("rotary")
    if not fox or not rope or not fox.get("position_loss") or not rope.get("position_loss"):
        return None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    _position_panel(ax, [fox, rope], train_len, _colors([fox, rope]))
    ax.set_ylim(*_ylim([fox, rope], train_len, room=3.0))
    ax.set_title("FoX vs RoPE Transformer: loss by position")
    bf, br = fox["position_loss"]["buckets"], rope["position_loss"]["buckets"]
    n = min(len(bf), len(br))
    x = [_mid(b) for b in bf[:n]]
    diffs = [[f - r for f, r in zip(bf[i]["values"], br[i]["values"])] for i in range(n)]
    mean = [sum(d) / len(d) for d in diffs]
    se = [math.sqrt((bf[i]["se_mean"] or 0) ** 2 + (br[i]["se_mean"] or 0) ** 2) for i in range(n)]
    ax2.plot(x, mean, color=scheme_color("fox"), lw=1.5, label="fox − rotary (seed mean)")
    ax2.fill_between(x, [min(d) for d in diffs], [max(d) for d in diffs], color=scheme_color("fox"), alpha=0.25, lw=0,
                     label="range over seed pairs")
    ax2.fill_between(x, [m - 2 * e for m, e in zip(mean, se)], [m + 2 * e for m, e in zip(mean, se)], color="C7",
                     alpha=0.2, lw=0, label="± 2 standard errors (windows)")
    ax2.axhline(0, color="k", lw=0.8)
    ax2.axvline(train_len, color="k", ls="--", lw=1)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("symlog", linthresh=0.1)
    ax2.set_xlabel("token position")
    ax2.set_ylabel("loss difference (nats per token; < 0: FoX better)")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=7)
    ax2.set_title("difference (symlog scale)")
    return _finish(fig, ax, path)


def plot_prefix_bpb(schemes: list[dict[str, Any]], path: Path, train_len: int) -> str:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for s in schemes:
        pb = s.get("prefix_bpb")
        if not pb:
            continue
        keys = sorted(pb, key=int)
        _seed_band(ax, [int(k) for k in keys], [pb[k] for k in keys], scheme_color(s["name"]), s["name"], style="o-")
    _context_axes(ax, train_len, "evaluated length L (first L tokens of each window)", "bits per byte", legend_size=8)
    return _finish(fig, ax, path, "bpb vs evaluated length (bands: range over seeds)")


def plot_needle(schemes: list[dict[str, Any]], path: Path, train_len: int) -> str | None:
    have = [s for s in schemes if s.get("needle")]
    if not have:
        return None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for s in have:
        rows = [r for r in s["needle"]["lengths"] if r.get("exact")]
        x = [r["length"] for r in rows]
        ax.plot(x, [r["exact"]["mean"] for r in rows], "o-", color=scheme_color(s["name"]), label=s["name"])
        ax.fill_between(x, [r["exact"]["min"] for r in rows], [r["exact"]["max"] for r in rows], color=scheme_color(s["name"]),
                        alpha=0.2, lw=0)
        first = rows[0] if rows else None
        if first:
            d = [b["depth"] for b in first["by_depth"]]
            ax2.plot(d, [b["exact"]["mean"] for b in first["by_depth"]], "o-", color=scheme_color(s["name"]), label=s["name"])
            ax2.fill_between(d, [b["exact"]["min"] for b in first["by_depth"]],
                             [b["exact"]["max"] for b in first["by_depth"]], color=scheme_color(s["name"]), alpha=0.2, lw=0)
    ax.axvline(train_len, color="k", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_title("needle exact match vs context length")
    ax2.set_xlabel(f"needle depth (0 = start, 1 = end) at {have[0]['needle']['lengths'][0]['length']} tokens")
    ax2.set_title("needle exact match vs depth")
    for a in (ax, ax2):
        a.set_ylim(-0.02, 1.02)
        a.set_ylabel("exact-match accuracy")
        a.grid(True, alpha=0.3)
        a.legend(fontsize=7)
    return _finish(fig, ax, path)


def plot_pruned_fraction(schemes: list[dict[str, Any]], path: Path) -> str | None:
    have = [s for s in schemes if s.get("pruning")]
    if not have:
        return None
    lengths = sorted({int(k) for s in have for k in s["pruning"]})
    fig, axes = plt.subplots(1, len(lengths), figsize=(5.5 * len(lengths), 4), squeeze=False)
    for ax, length in zip(axes[0], lengths):
        width = 0.8 / len(have)
        for j, s in enumerate(have):
            p = s["pruning"].get(str(length))
            if not p:
                continue
            layers = p["layers"]
            x = [k + (j - (len(have) - 1) / 2) * width for k in range(len(layers))]
            m = [lay["mean"]["mean"] for lay in layers]
            err = [[v - lay["mean"]["min"] for v, lay in zip(m, layers)], [lay["mean"]["max"] - v for v, lay in zip(m, layers)]]
            ax.bar(x, m, width=width, yerr=err, capsize=3, label=s["name"], color=scheme_color(s["name"]))
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([f"layer {k}" for k in range(len(layers))])
        ax.set_ylim(0, 1)
        ax.set_ylabel("pruned fraction of attention pairs")
        ax.set_title(f"{length} tokens")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("ACP: attention pairs skipped per layer (bars: range over seeds)", fontsize=10)
    return _finish(fig, axes[0][0], path)


def long_context_plots(schemes: list[dict[str, Any]], out_dir: Path, train_len: int) -> list[str]:
    out = [plot_fox_vs_rope(schemes, out_dir / "fox_vs_rope.png", train_len),
           plot_needle(schemes, out_dir / "needle.png", train_len),
           plot_pruned_fraction(schemes, out_dir / "pruned_fraction.png")]
    return [p for p in out if p]
