"""Collect the runs of a comparison into ``compare.json`` and a Markdown table ``compare.md``.

Per scheme (over seeds): validation bpb at the training context (mean, sample
std, values), bpb at each evaluation length, the mean per-position loss curve
at each length, training tokens/s and peak memory, the training curve, and
synthetic-task accuracy when the data is a task.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from xforget.compare import long_report as lr
from xforget.compare.findings import check_findings, findings_markdown
from xforget.evaluate.core import CANNOT_EXTRAPOLATE, OK, mean_std
from xforget.files import atomic_write_text
from xforget.train.metrics import read_metrics

LN2 = math.log(2.0)


def train_summary(run_dir: Path, cfg) -> dict[str, Any]:
    """Throughput and curves from ``metrics.jsonl``.

    ``tokens_per_s`` is total tokens / total step time over all logged
    windows (each record holds the throughput since the previous one).
    """
    records = read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
    t = cfg.trainer
    per_step = t.batch_size * t.grad_accum * t.seq_len
    tokens = seconds = 0.0
    prev = 0
    for r in records:
        steps = r["step"] - prev
        prev = r["step"]
        tps = r.get("tokens_per_s")
        if isinstance(tps, (int, float)) and tps > 0 and steps > 0:
            tokens += steps * per_step
            seconds += steps * per_step / tps
    return {
        "steps": records[-1]["step"] if records else 0,
        "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
        "final_train_loss": _num(records[-1].get("train_loss")) if records else None,
        "curve": [[r["step"], _num(r.get("train_loss")), _num(r.get("val_bpb"))] for r in records],
    }


def _num(v):
    return float(v) if isinstance(v, (int, float)) else None


def _stat(values: list[float | None], digits: int = 4) -> dict[str, Any]:
    m, s = mean_std([v for v in values if v is not None])
    return {"mean": None if m is None else round(m, digits), "std": None if s is None else round(s, digits),
            "values": values}


def _mean_curves(curves: list[list[float]]) -> list[float]:
    n = min(len(c) for c in curves)
    return [round(sum(c[i] for c in curves) / len(curves), 5) for i in range(n)]


def scheme_summary(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate the runs (all seeds) of one scheme."""
    evals = [r["eval"] for r in runs]
    first = evals[0]
    lengths = []
    per_position: dict[str, list[float]] = {}
    for i, row in enumerate(first["lengths"]):
        rows = [e["lengths"][i] for e in evals]
        status = OK if all(r["status"] == OK for r in rows) else next(r["status"] for r in rows if r["status"] != OK)
        entry: dict[str, Any] = {"length": row["length"], "multiple": row.get("multiple"), "status": status}
        if status == OK:
            entry["bpb"] = _stat([r["bpb"] for r in rows])
            entry["windows"] = rows[0]["windows"]
            if all("per_position" in r for r in rows):
                per_position[str(row["length"])] = _mean_curves([r["per_position"] for r in rows])
        lengths.append(entry)
    # training curve: mean over seeds at the steps every seed logged
    curves = [{c[0]: c for c in r["train"]["curve"]} for r in runs]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    curve = {"step": steps,
             "train_loss": [_avg([c[s][1] for c in curves]) for s in steps],
             "val_bpb": [_avg([c[s][2] for c in curves]) for s in steps],
             "train_loss_min": [_ext(min, [c[s][1] for c in curves]) for s in steps],
             "train_loss_max": [_ext(max, [c[s][1] for c in curves]) for s in steps],
             "val_bpb_min": [_ext(min, [c[s][2] for c in curves]) for s in steps],
             "val_bpb_max": [_ext(max, [c[s][2] for c in curves]) for s in steps]}
    out = {
        "name": name,
        "position": first["position"],
        "params": first["params"],
        "seeds": [r["seed"] for r in runs],
        "val_bpb": _stat([e["val_bpb"] for e in evals]),
        "lengths": lengths,
        "per_position": per_position,
        "tokens_per_s": _stat([r["train"]["tokens_per_s"] for r in runs], 1),
        "peak_rss_mb": _stat([r.get("peak_rss_mb") for r in runs], 1),
        "train_wall_s": _stat([r.get("wall_s") for r in runs], 1),
        "curve": curve,
    }
    out.update(_long_context_summary(evals))
    out["eval_wall_s"] = _stat([e.get("eval_wall_s") for e in evals], 1)
    if all("task" in e for e in evals):
        task_rows = []
        for i, row in enumerate(first["task"]["lengths"]):
            rows = [e["task"]["lengths"][i] for e in evals]
            entry = {"length": row["length"], "status": rows[0]["status"]}
            if all(r["status"] == OK for r in rows):
                entry["accuracy"] = _stat([r["accuracy"] for r in rows])
                entry["by_distance"] = _merge_bins([r["by_distance"] for r in rows])
                entry["by_position"] = _merge_bins([r["by_position"] for r in rows])
            task_rows.append(entry)
        out["task"] = {"name": first["task"]["name"], "lengths": task_rows}
    return out


def _band(values: list[float]) -> dict[str, Any]:
    """Mean, min and max over seeds (the band the plots shade), and the values."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "min": None, "max": None, "values": values}
    return {"mean": round(sum(vals) / len(vals), 6), "min": round(min(vals), 6), "max": round(max(vals), 6),
            "values": [round(v, 6) for v in vals]}


def _bucket_band(per_seed: list[list[dict]]) -> list[dict[str, Any]]:
    """Seed band of per-position buckets; ``se`` per seed and ``se_mean``, the standard error of the seed mean
    (sqrt(sum se_i^2) / seeds: seeds are independent)."""
    rows = []
    for i, b in enumerate(per_seed[0]):
        col = [s[i] for s in per_seed]
        ses = [c["se"] for c in col]
        se_mean = (math.sqrt(sum(x * x for x in ses)) / len(ses)) if all(x is not None for x in ses) else None
        rows.append({"lo": b["lo"], "hi": b["hi"], **_band([c["mean"] for c in col]),
                     "se": ses, "se_mean": None if se_mean is None else round(se_mean, 6), "windows": b["windows"]})
    return rows


def _long_context_summary(evals: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-position buckets (seed bands, standard errors), prefix bpb, needle accuracy and pruned fraction."""
    out: dict[str, Any] = {}
    ok = [[r for r in e["lengths"] if r["status"] == OK and "buckets" in r] for e in evals]
    if all(ok):
        longest = min(max(r["length"] for r in rows) for rows in ok)
        rows = [next(r for r in e["lengths"] if r["length"] == longest) for e in evals]
        out["position_loss"] = {"length": longest, "windows": rows[0]["windows"],
                                "buckets": _bucket_band([r["buckets"] for r in rows]),
                                "octaves": _bucket_band([r["octaves"] for r in rows])}
        out["prefix_bpb"] = {k: _band([r["prefix_bpb"][k] for r in rows]) for k in rows[0]["prefix_bpb"]}
    if all("needle" in e for e in evals):
        lens = []
        for i, row in enumerate(evals[0]["needle"]["lengths"]):
            rows = [e["needle"]["lengths"][i] for e in evals]
            entry: dict[str, Any] = {"length": row["length"], "status": row["status"]}
            if all(r["status"] == OK for r in rows):
                entry["exact"] = _band([r["exact"] for r in rows])
                entry["token_accuracy"] = _band([r["token_accuracy"] for r in rows])
                entry["examples"] = sum(r["examples"] for r in rows)
                entry["by_depth"] = [{"depth": d["depth"], "exact": _band([r["by_depth"][j]["exact"] for r in rows]),
                                      "token_accuracy": _band([r["by_depth"][j]["token_accuracy"] for r in rows])}
                                     for j, d in enumerate(row["by_depth"])]
            lens.append(entry)
        out["needle"] = {"depths": evals[0]["needle"]["depths"], "per_depth": evals[0]["needle"]["per_depth"],
                         "lengths": lens}
    if all(e.get("pruning_by_length") for e in evals):
        pr = {}
        for key, first in evals[0]["pruning_by_length"].items():
            reps = [e["pruning_by_length"].get(key) for e in evals]
            if not first.get("layers") or any(r is None or not r.get("layers") for r in reps):
                continue
            pr[key] = {"mean": _band([r["mean"] for r in reps]),
                       "layers": [{"layer": lay["layer"], "mean": _band([r["layers"][j]["mean"] for r in reps])}
                                  for j, lay in enumerate(first["layers"])]}
        if pr:
            out["pruning"] = pr
    return out


def _ext(fn, vals):
    vals = [v for v in vals if v is not None]
    return round(fn(vals), 5) if vals else None


def _avg(vals):
    vals = [v for v in vals if v is not None]
    return round(sum(vals) / len(vals), 5) if vals else None


def _merge_bins(bin_lists: list[list[dict]]) -> list[dict]:
    merged: dict[tuple, list[int | float]] = {}
    for bins in bin_lists:
        for b in bins:
            acc = merged.setdefault((b["lo"], b["hi"]), [0, 0.0])
            acc[0] += b["n"]
            acc[1] += b["n"] * b["accuracy"]
    return [{"lo": lo, "hi": hi, "n": n, "accuracy": round(c / n, 6)} for (lo, hi), (n, c) in sorted(merged.items())]


def build_report(runs: list[dict[str, Any]], *, meta: dict[str, Any], findings: bool = True) -> dict[str, Any]:
    """The ``compare.json`` object: ``meta``, ``schemes`` (aggregates), ``runs`` (one per scheme and seed) and
    ``findings`` (:mod:`.findings`: the FoX paper's claims checked, when ``fox`` and ``rotary`` were compared)."""
    order: list[str] = []
    for r in runs:
        if r["scheme"] not in order:
            order.append(r["scheme"])
    schemes = [scheme_summary(name, [r for r in runs if r["scheme"] == name]) for name in order]
    slim_runs = []
    for r in runs:
        e = r["eval"]
        slim_runs.append({
            "scheme": r["scheme"], "seed": r["seed"], "run_dir": r["run_dir"], "reused": r["reused"],
            "checkpoint_step": e["checkpoint_step"], "val_bpb": e["val_bpb"], "val_loss": e["val_loss"],
            "lengths": [{k: v for k, v in row.items() if k != "per_position"} for row in e["lengths"]],
            "tokens_per_s": r["train"]["tokens_per_s"], "peak_rss_mb": r.get("peak_rss_mb"), "wall_s": r.get("wall_s"),
            "process_wall_s": r.get("process_wall_s"), "eval_wall_s": r.get("eval_wall_s"),
            "resumed": bool(r.get("resumed")),
            "final_train_loss": r["train"]["final_train_loss"],
            **({"task": e["task"]} if "task" in e else {}),
        })
    report = {"meta": {**meta, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, "schemes": schemes, "runs": slim_runs}
    if findings:
        report["findings"] = check_findings(schemes, meta["train_seq_len"])
    return report


# ----------------------------------------------------------------------------- markdown


def _pm(stat: dict[str, Any] | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    if len([v for v in stat["values"] if v is not None]) < 2:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _position_bins(n: int, longest: int) -> list[tuple[int, int]]:
    """1-based inclusive token-index ranges: within the context (3 log-ish bins), then each doubling beyond it."""
    edges = sorted({1, max(1, n // 16), max(1, n // 4), n})
    bins = [(1, edges[1])] if len(edges) > 1 else [(1, n)]
    for lo, hi in zip(edges[1:-1], edges[2:]):
        bins.append((lo + 1, hi))
    hi = n
    while hi < longest:
        bins.append((hi + 1, min(2 * hi, longest)))
        hi *= 2
    return bins


def write_markdown(report: dict[str, Any], path: Path, plots: list[str]) -> str:
    meta, schemes = report["meta"], report["schemes"]
    n = meta["train_seq_len"]
    unit = "tokens" if str(meta.get("data", "")).startswith("tokens") else "bytes"  # data=tokens: prepared token ids
    lens = [row for row in schemes[0]["lengths"]] if schemes else []
    head = ["scheme", "params", f"val bpb @{n}"]
    head += [f"bpb @{r['length']}" for r in lens if r["length"] != n]
    head += ["train tok/s", "peak RSS MB", "train wall s"]
    lines = [
        "# Positional schemes compared",
        "",
        f"Data **{meta['data']}**; model {meta['model']}; {meta['budget']}; seeds {meta['seeds']}. "
        f"Values are mean ± sample std over seeds; bpb = bits per byte on the validation split "
        f"(lower is better), evaluated at 1x..{lens[-1]['length'] // n if lens else 1}x the training context of {n} {unit}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for s in schemes:
        cells = [f"`{s['name']}`", f"{s['params'] / 1e6:.2f}M", _pm(s["val_bpb"])]
        for row in s["lengths"]:
            if row["length"] == n:
                continue
            cells.append(_pm(row["bpb"]) if row["status"] == OK else
                         ("cannot extrapolate" if row["status"] == CANNOT_EXTRAPOLATE else row["status"]))
        cells += [_pm(s["tokens_per_s"], 0), _pm(s["peak_rss_mb"], 0), _pm(s["train_wall_s"], 0)]
        lines.append("| " + " | ".join(cells) + " |")

    lines += ["", "train wall s: the training loop's wall-clock time from step 0 to the end (evaluations and "
                  "checkpoints included, start-up excluded), summed over the parts of an interrupted and resumed run.",
              ""]

    lines[4:4] = lr.setup_lines(meta)

    # per-position loss table (mean loss in bits per byte over token-index ranges, longest evaluated length)
    longest = max((int(k) for s in schemes for k in s["per_position"]), default=0)
    if longest:
        bins = _position_bins(n, longest)
        lines += ["", f"Mean loss (bits/{unit[:-1]}) by token position, from windows of up to {longest} {unit} "
                      f"(positions past {n} are beyond the training context):", "",
                  "| scheme | " + " | ".join(f"{lo}–{hi}" for lo, hi in bins) + " |",
                  "|---|" + "---:|" * len(bins)]
        for s in schemes:
            if not s["per_position"]:
                continue
            curve = s["per_position"][str(max(int(k) for k in s["per_position"]))]
            cells = []
            for lo, hi in bins:
                seg = curve[lo - 1:hi]
                cells.append(f"{sum(seg) / len(seg) / LN2:.3f}" if hi <= len(curve) and seg else "—")
            lines.append(f"| `{s['name']}` | " + " | ".join(cells) + " |")

    if any("task" in s for s in schemes):
        task = next(s["task"]["name"] for s in schemes if "task" in s)
        tlens = next(s["task"]["lengths"] for s in schemes if "task" in s)
        lines += ["", f"Answer accuracy on the synthetic `{task}` task (top-1, teacher forced) by evaluation length:", "",
                  "| scheme | " + " | ".join(str(r["length"]) for r in tlens) + " |",
                  "|---|" + "---:|" * len(tlens)]
        for s in schemes:
            if "task" in s:
                cells = [_pm(r.get("accuracy")) if r["status"] == OK else r["status"] for r in s["task"]["lengths"]]
                lines.append(f"| `{s['name']}` | " + " | ".join(cells) + " |")

    if report.get("findings"):
        lines += [""] + findings_markdown(report["findings"])
    lines += [""] + lr.wall_lines(schemes, report["runs"]) + lr.prefix_lines(schemes, unit)
    lines += lr.position_lines(schemes, n, unit) + lr.needle_lines(schemes) + lr.pruning_lines(schemes)
    lines += ["", "Runs:", ""]
    for r in report["runs"]:
        lines.append(f"* `{r['scheme']}` seed {r['seed']}: `{r['run_dir']}`"
                     f"{' (re-used)' if r['reused'] else ''}{' (interrupted and resumed)' if r.get('resumed') else ''}"
                     f", val bpb {r['val_bpb']:.4f}")
    if plots:
        lines += [""] + [f"![{Path(p).stem.replace('_', ' ')}]({Path(p).name})" for p in plots]
    if meta.get("command"):
        lines += ["", "Command:", "", "```", meta["command"], "```"]
    text = "\n".join(lines) + "\n"
    atomic_write_text(path, text)
    return text


def write_json(report: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(report, indent=1) + "\n")
