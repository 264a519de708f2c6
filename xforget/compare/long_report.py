"""Markdown sections of ``compare.md`` for the long-context evidence (token data, needle, pruning, wall time).

Reads the scheme summaries of :mod:`.report` (``position_loss``, ``prefix_bpb``,
``needle``, ``pruning``); every section is skipped when its data is absent.
Losses per position are nats per token (the FoX paper's unit); ``±`` after a
mean is the standard error of the seed mean over validation windows, and
``[a, b]`` the range over seeds.
"""

from __future__ import annotations

from typing import Any


def _band(b: dict[str, Any] | None, digits: int = 3) -> str:
    if not b or b.get("mean") is None:
        return "n/a"
    if len(b["values"]) < 2:
        return f"{b['mean']:.{digits}f}"
    return f"{b['mean']:.{digits}f} [{b['min']:.{digits}f}, {b['max']:.{digits}f}]"


def _table_head(columns) -> list[str]:
    """The header and alignment lines of a markdown table: a ``scheme`` column, then ``columns`` (right-aligned)."""
    columns = list(columns)
    return ["| scheme | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]


def _row(name: str, cells) -> str:
    """One scheme's row of a table from :func:`_table_head`."""
    return f"| `{name}` | " + " | ".join(cells) + " |"


def setup_lines(meta: dict[str, Any]) -> list[str]:
    d = meta.get("prepared_data")
    lines = []
    if d:
        how = "re-used" if d.get("reused") else f"prepared in {d.get('wall_s') or 0:.0f} s"
        lines += [f"Data: {d['tokenizer']} (vocabulary {d['vocab_size']}) on the prepared corpus `{d['path']}` "
                  f"({d['train_tokens']:,} training / {d['val_tokens']:,} validation tokens, "
                  f"{d['bytes_per_token']:.3f} validation bytes per token; "
                  f"{how}).", ""]
    w = meta.get("wall_s") or {}
    if w.get("total") is not None:
        lines += [f"Wall time of this command: **{w['total'] / 60:.1f} min** (data {(w.get('prepare') or 0):.0f} s, "
                  f"training {w.get('train', 0):.0f} s with {meta.get('jobs', 1)} run(s) at a time and "
                  f"{meta.get('threads_per_run') or 'all'} thread(s) each, evaluation {w.get('evaluate', 0):.0f} s, "
                  f"report {w.get('report', 0):.0f} s). Runs re-used from an earlier command count 0 here.", ""]
    return lines


def wall_lines(schemes: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[str]:
    if not runs:
        return []
    lines = ["Time per scheme (seconds per run, one entry per seed; training loop = step 0 to the end, training "
             "process = the same plus start-up; evaluation = all evaluations of the run):", "",
             "| scheme | training loop s | training process s | evaluation s | all seeds, process + evaluation s |",
             "|---|---:|---:|---:|---:|"]
    for s in schemes:
        rs = [r for r in runs if r["scheme"] == s["name"]]
        tr = [r.get("wall_s") or 0 for r in rs]
        pr = [r.get("process_wall_s") or 0 for r in rs]
        ev = [r.get("eval_wall_s") or 0 for r in rs]
        lines.append(f"| `{s['name']}` | {' / '.join(f'{v:.0f}' for v in tr)} | {' / '.join(f'{v:.0f}' for v in pr)} "
                     f"| {' / '.join(f'{v:.0f}' for v in ev)} | {sum(pr) + sum(ev):.0f} |")
    return lines + [""]


def prefix_lines(schemes: list[dict[str, Any]], unit: str) -> list[str]:
    have = [s for s in schemes if s.get("prefix_bpb")]
    if not have:
        return []
    keys = sorted(have[0]["prefix_bpb"], key=int)
    longest = have[0]["position_loss"]["length"]
    lines = [f"bpb of the first L {unit} of the {longest}-{unit[:-1]} windows ({have[0]['position_loss']['windows']} "
             f"windows; a causal model scores positions 1..L the same whatever follows; mean [seed range]):", "",
             *_table_head(f"L = {k}" for k in keys)]
    for s in have:
        lines.append(_row(s["name"], (_band(s["prefix_bpb"].get(k), 4) for k in keys)))
    return lines + [""]


def position_lines(schemes: list[dict[str, Any]], train_len: int, unit: str) -> list[str]:
    have = [s for s in schemes if s.get("position_loss")]
    if not have:
        return []
    octs = [b for b in have[0]["position_loss"]["octaves"] if b["hi"] >= min(64, train_len)]
    lines = [f"Per-position loss (nats per {unit[:-1]}) by doubling position ranges, mean over seeds ± the standard "
             f"error over {have[0]['position_loss']['windows']} windows (of the seed mean), [seed range]; positions "
             f"past {train_len} are beyond the training context:", "",
             *_table_head(f"{b['lo']}–{b['hi']}" for b in octs)]
    for s in have:
        by = {(b["lo"], b["hi"]): b for b in s["position_loss"]["octaves"]}
        cells = []
        for o in octs:
            b = by.get((o["lo"], o["hi"]))
            if not b:
                cells.append("—")
                continue
            se = f" ± {b['se_mean']:.3f}" if b.get("se_mean") is not None else ""
            rng = f" [{b['min']:.3f}, {b['max']:.3f}]" if len(b["values"]) > 1 else ""
            cells.append(f"{b['mean']:.3f}{se}{rng}")
        lines.append(_row(s["name"], cells))
    return lines + [""]


def needle_lines(schemes: list[dict[str, Any]]) -> list[str]:
    have = [s for s in schemes if s.get("needle")]
    if not have:
        return []
    n0 = have[0]["needle"]
    lens = [r["length"] for r in n0["lengths"]]
    lines = [f"Needle in a haystack (easy mode: a line `secret = NNNNN` in validation text, the prompt ends with "
             f"`secret =`; {n0['per_depth']} examples per depth and length per seed at depths {n0['depths']}): "
             "exact-match accuracy of the whole answer (= greedy decoding gets it right) by context length, mean "
             "[seed range]; token accuracy in parentheses:", "",
             *_table_head(str(n) for n in lens)]
    for s in have:
        cells = []
        for r in s["needle"]["lengths"]:
            cells.append(f"{_band(r.get('exact'), 2)} ({r['token_accuracy']['mean']:.2f})" if r.get("exact")
                         else r["status"])
        lines.append(_row(s["name"], cells))
    depths = n0["depths"]
    lines += ["", f"Exact match by needle depth (0 = start of the context, 1 = just before the question), "
                  f"mean over seeds, at {lens[0]} / {lens[-1]} tokens:", "",
              *_table_head(f"depth {d:g}" for d in depths)]
    for s in have:
        first, last = s["needle"]["lengths"][0], s["needle"]["lengths"][-1]
        cells = []
        for j in range(len(depths)):
            a = first["by_depth"][j]["exact"]["mean"] if first.get("by_depth") else None
            b = last["by_depth"][j]["exact"]["mean"] if last.get("by_depth") else None
            cells.append(f"{'n/a' if a is None else f'{a:.2f}'} / {'n/a' if b is None else f'{b:.2f}'}")
        lines.append(_row(s["name"], cells))
    return lines + [""]


def pruning_lines(schemes: list[dict[str, Any]]) -> list[str]:
    have = [s for s in schemes if s.get("pruning")]
    if not have:
        return []
    lines = ["Adaptive computation pruning (Lin et al., COLM 2025): fraction of the causal query-key pairs whose "
             "attention weight is provably below 1e-6 of the row's, skipped per layer, mean [seed range]:", "",
             "| scheme | length | " + " | ".join(f"layer {i}" for i in range(len(have[0]["pruning"][next(iter(have[0]['pruning']))]["layers"]))) + " | mean |",
             "|---|---:|" + "---:|" * (len(have[0]["pruning"][next(iter(have[0]['pruning']))]["layers"]) + 1)]
    for s in have:
        for key in sorted(s["pruning"], key=int):
            p = s["pruning"][key]
            lines.append(f"| `{s['name']}` | {key} | " + " | ".join(_band(l["mean"], 2) for l in p["layers"])
                         + f" | {_band(p['mean'], 2)} |")
    return lines + [""]
