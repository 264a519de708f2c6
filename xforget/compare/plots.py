"""PNG plots of a comparison (matplotlib, Agg backend: no display needed).

* ``loss_vs_step.png``      -- training loss (bits per byte) and validation bpb vs step, mean over seeds.
Every loss is in bits per byte (nats / ln 2), the unit of the tables.

* ``loss_vs_position.png``  -- per-position loss (bits per byte) vs token index (log-spaced bins) at the longest
  length each scheme was evaluated at; the dashed line marks the training context.
* ``bpb_vs_length.png``     -- validation bpb vs evaluation length (error bars: std over seeds).
* ``task_accuracy.png``     -- synthetic-task answer accuracy vs evaluation length (when present).

With per-position buckets (``eval.position_buckets``; token data) the position
plot shows log-spaced bucket means in nats per token with a shaded band over
seeds (min to max), the length plot the bpb of the first L tokens, and
(:mod:`.plots_long`) ``fox_vs_rope.png``, ``needle.png`` and
``pruned_fraction.png`` are added. Every band is the range over seeds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

from xforget.compare.colors import scheme_color
from xforget.compare.plots_long import long_context_plots, plot_position_buckets, plot_prefix_bpb

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from xforget.evaluate.metrics import bin_curve  # noqa: E402

LN2 = math.log(2.0)


def _finish(fig, ax, path: Path, title: str) -> str:
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def plot_loss_vs_step(schemes: list[dict[str, Any]], path: Path, tokens_per_byte: float = 1.0) -> str:
    """``tokens_per_byte`` converts the training loss (per token) into bits per byte, the unit of val_bpb."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    k = tokens_per_byte / LN2
    for s in schemes:
        c = s["curve"]
        _curve_with_band(ax, c, "train_loss", k, scheme_color(s["name"]), dict(label=f"{s['name']} train", alpha=0.8))
        _curve_with_band(ax, c, "val_bpb", 1.0, scheme_color(s["name"]), dict(fmt="o--", ms=4, label=f"{s['name']} val"))
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (bits per byte)")
    return _finish(fig, ax, path, "Loss vs training step")


def _curve_with_band(ax, curve: dict[str, list], key: str, factor: float, color: str, style: dict) -> None:
    """``curve[key]`` against ``curve["step"]`` (times ``factor``), with the seeds' min-max band
    (``key_min`` / ``key_max``) shaded when there are several seeds; missing points are skipped."""
    style = dict(style)
    fmt = style.pop("fmt", "-")
    pts = [(st, v * factor) for st, v in zip(curve["step"], curve[key]) if v is not None]
    if not pts:
        return
    ax.plot(*zip(*pts), fmt, color=color, **style)
    band = [(st, lo * factor, hi * factor) for st, lo, hi in zip(curve["step"], curve.get(f"{key}_min", []),
                                                                   curve.get(f"{key}_max", []))
            if lo is not None and hi is not None]
    if band:
        x, lo, hi = zip(*band)
        ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)


def plot_loss_vs_position(schemes: list[dict[str, Any]], path: Path, train_seq_len: int) -> str:
    if any(s.get("position_loss") for s in schemes):
        return plot_position_buckets(schemes, path, train_seq_len)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for s in schemes:
        if not s["per_position"]:
            continue
        longest = max(s["per_position"], key=int)
        x, y = bin_curve([v / LN2 for v in s["per_position"][longest]], bins=48, log=True)  # nats -> bits
        ax.plot(x, y, color=scheme_color(s["name"]), label=f"{s['name']} (to {longest})")
    ax.axvline(train_seq_len, color="k", ls="--", lw=1, label=f"training context {train_seq_len}")
    ax.set_xscale("log")
    ax.set_xlabel("token position")
    ax.set_ylabel("loss (bits per byte)")
    return _finish(fig, ax, path, "Loss vs token position")


def plot_bpb_vs_length(schemes: list[dict[str, Any]], path: Path, train_seq_len: int) -> str:
    if any(s.get("prefix_bpb") for s in schemes):
        return plot_prefix_bpb(schemes, path, train_seq_len)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for s in schemes:
        rows = [r for r in s["lengths"] if r["status"] == "ok"]
        if not rows:
            continue
        x = [r["length"] for r in rows]
        y = [r["bpb"]["mean"] for r in rows]
        err = [r["bpb"]["std"] or 0.0 for r in rows]
        ax.errorbar(x, y, yerr=err, fmt="o-", color=scheme_color(s["name"]), capsize=3, label=s["name"])
    ax.axvline(train_seq_len, color="k", ls="--", lw=1, label=f"training context {train_seq_len}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("evaluation length (bytes)")
    ax.set_ylabel("validation bits per byte")
    return _finish(fig, ax, path, "bpb vs evaluation length")


def plot_task_accuracy(schemes: list[dict[str, Any]], path: Path) -> str | None:
    """Left: accuracy vs evaluation length. Right: accuracy vs answer-to-source distance at the longest length."""
    have = [s for s in schemes if "task" in s]
    if not have:
        return None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for s in have:
        rows = [r for r in s["task"]["lengths"] if r["status"] == "ok"]
        if not rows:
            continue
        ax.plot([r["length"] for r in rows], [r["accuracy"]["mean"] for r in rows], "o-", color=scheme_color(s["name"]),
                label=s["name"])
        bins = rows[-1].get("by_distance") or []
        ax2.plot([(b["lo"] + b["hi"]) / 2 for b in bins], [b["accuracy"] for b in bins], "o-", color=scheme_color(s["name"]),
                 label=f"{s['name']} (length {rows[-1]['length']})")
    ax.set_xscale("log", base=2)
    for a in (ax, ax2):
        a.set_ylim(-0.02, 1.02)
        a.set_ylabel("answer accuracy")
    ax.set_xlabel("evaluation length (bytes)")
    ax2.set_xlabel("distance from answer back to its source (bytes)")
    ax2.set_title("accuracy by distance")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    return _finish(fig, ax, path, f"{have[0]['task']['name']} accuracy vs length")


def write_plots(report: dict[str, Any], out_dir: Path) -> list[str]:
    """All plots for ``report`` (the compare.json object) into ``out_dir``; returns their paths."""
    schemes, n = report["schemes"], report["meta"]["train_seq_len"]
    paths = [
        plot_loss_vs_step(schemes, out_dir / "loss_vs_step.png",
                          1.0 / ((report["meta"].get("prepared_data") or {}).get("bytes_per_token") or 1.0)),
        plot_loss_vs_position(schemes, out_dir / "loss_vs_position.png", n),
        plot_bpb_vs_length(schemes, out_dir / "bpb_vs_length.png", n),
    ]
    task = plot_task_accuracy(schemes, out_dir / "task_accuracy.png")

    return paths + ([task] if task else []) + long_context_plots(schemes, out_dir, n)
