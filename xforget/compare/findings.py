"""Which findings of the FoX papers hold in a comparison: each claim, a rule, the numbers, a verdict.

Claims (Lin, Nikishin, He, Courville, "Forgetting Transformer", ICLR 2025; Lin,
Obando-Ceron, He, Courville, "Adaptive Computation Pruning for the Forgetting
Transformer", COLM 2025):

1. FoX has a lower language-modelling loss than the RoPE Transformer (within
   the training context).
2. FoX has a lower per-position loss than the RoPE Transformer at long context
   (here: the last doubling of the longest evaluation, ``(4L, 8L]``).
3. Length extrapolation: FoX's per-position loss does not rise beyond the
   training context, the RoPE Transformer's does.
4. Needle retrieval ("easy mode") within the training context: FoX is about as
   good as the RoPE Transformer.
5. The Pro block improves FoX (FoX (Pro) has a lower loss than FoX (LLaMA)).
6. ACP prunes a large share (about 70% in the paper) of a trained FoX model's
   attention FLOPs.

The rule with seeds: "A < B on every seed" when the largest seed value of A is
below the smallest of B (the seed bands do not overlap); "within the seed
spread" otherwise. Losses are nats per token unless said otherwise. Verdicts:
``holds``, ``does not hold``, ``inconclusive`` (seed bands overlap), ``partly: ...``
(claim 3 when RoPE does not rise either) or ``not measured``. Claims 1-5 compare seeds, so a verdict
needs at least :data:`MIN_SEEDS` seeds on each side; with fewer, the verdict is only suggested:
``suggested: holds (one seed; a verdict needs >= 2 seeds per side)`` (:func:`_seeded`). Claim 6 is a
measured fraction, not a comparison, and is judged from any number of seeds.
"""

from __future__ import annotations

from typing import Any

from xforget.ops.prune import PRUNE_MIN_KEYS

RISE_TOL = 0.02  # nats per token: a change smaller than this is "flat"
MIN_SEEDS = 2  # per side, for a comparison's verdict: one seed cannot tell a difference from seed noise


def _by_name(schemes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in schemes}


def _order(a: list[float], b: list[float]) -> str:
    """'lower' (a below b on every seed), 'higher', or 'overlap'."""
    if max(a) < min(b):
        return "lower"
    if min(a) > max(b):
        return "higher"
    return "overlap"


def _fmt(vals: list[float], digits: int = 3) -> str:
    m = sum(vals) / len(vals)
    return f"{m:.{digits}f} (seeds {', '.join(f'{v:.{digits}f}' for v in vals)})"


def _octave(s: dict[str, Any], lo: int, hi: int) -> dict[str, Any] | None:
    pl = s.get("position_loss")
    if not pl:
        return None
    return next((b for b in pl["octaves"] if b["lo"] == lo and b["hi"] == hi), None)


def _seeded(verdict: str, *sides: list[float]) -> str:
    """``verdict`` when every side has at least :data:`MIN_SEEDS` seeds (or nothing was decided), else the
    verdict marked as suggested only: ``suggested: holds (one seed; a verdict needs >= 2 seeds per side)``."""
    fewest = min(len(v) for v in sides)
    if verdict in ("inconclusive", "not measured") or fewest >= MIN_SEEDS:
        return verdict
    seeds = "one seed" if fewest == 1 else f"{fewest} seeds"
    return f"suggested: {verdict} ({seeds}; a verdict needs >= {MIN_SEEDS} seeds per side)"


def _verdict(order: str) -> str:
    """The verdict on "the first side has the lower loss" from :func:`_order`."""
    return {"lower": "holds", "higher": "does not hold"}.get(order, "inconclusive")


def _lower_bpb_claim(claim: str, name_a: str, a: dict[str, Any], name_b: str, b: dict[str, Any],
                     train_len: int) -> dict[str, str]:
    """The claim "scheme a has a lower validation bpb than scheme b", judged over their seeds."""
    va, vb = a["val_bpb"]["values"], b["val_bpb"]["values"]
    return _claim(claim, _seeded(_verdict(_order(va, vb)), va, vb),
                  f"validation bpb at {train_len} tokens: {name_a} {_fmt(va, 4)} vs {name_b} {_fmt(vb, 4)}",
                  f"every {name_a} seed below every {name_b} seed")


def _claim(claim: str, verdict: str, evidence: str, rule: str) -> dict[str, str]:
    return {"claim": claim, "verdict": verdict, "evidence": evidence, "rule": rule}


def check_findings(schemes: list[dict[str, Any]], train_len: int) -> list[dict[str, str]]:
    """The claims above checked on the scheme summaries of a comparison (``compare.json`` ``schemes``)."""
    s = _by_name(schemes)
    fox, rope = s.get("fox"), s.get("rotary")
    out = []
    if fox is None or rope is None:
        return [_claim("FoX vs the RoPE Transformer", "not measured", "needs schemes fox and rotary", "")]
    L = train_len

    # 1. loss within the training context (val bpb at 1x, the standard validation windows)
    out.append(_lower_bpb_claim("FoX has a lower loss than the RoPE Transformer within the training context",
                                "fox", fox, "rotary", rope, L))

    pl_f, pl_r = fox.get("position_loss"), rope.get("position_loss")
    longest = min(pl_f["length"], pl_r["length"]) if pl_f and pl_r else None
    lo_hi = (longest // 2 + 1, longest) if longest else None
    if not (pl_f and pl_r):
        missing = "no per-position loss buckets (eval.position_buckets=0): set eval.position_buckets=4"
    elif longest < 2 * L:
        missing = (f"the longest evaluation ({longest} tokens) is under 2x the training context ({2 * L}): "
                   "set eval.multiples=[1,2] (or any list with a multiple of 2 or more)")
    elif not (_octave(fox, *lo_hi) and _octave(rope, *lo_hi)):
        missing = f"no per-position bucket for positions {lo_hi[0]}-{lo_hi[1]} in both schemes"
    else:
        missing = None
    if missing is None:
        bf, br = _octave(fox, *lo_hi), _octave(rope, *lo_hi)
        order = _order(bf["values"], br["values"])
        out.append(_claim(
            f"FoX has a lower per-position loss than the RoPE Transformer at long context "
            f"(positions {lo_hi[0]}-{lo_hi[1]}, {longest // L}x the training context)",
            _seeded(_verdict(order), bf["values"], br["values"]),
            f"mean loss there: fox {_fmt(bf['values'])} ± {bf['se_mean']:.3f} (standard error over windows) vs "
            f"rotary {_fmt(br['values'])} ± {br['se_mean']:.3f} nats/token",
            "every fox seed below every rotary seed"))
        inside = (L // 2 + 1, L)
        rises = {}
        for name, sch in (("fox", fox), ("rotary", rope)):
            a, b = _octave(sch, *inside), _octave(sch, *lo_hi)
            if a and b:
                rises[name] = [y - x for x, y in zip(a["values"], b["values"])]
        if len(rises) == 2:
            fox_flat = max(rises["fox"]) <= RISE_TOL
            rope_rises = min(rises["rotary"]) > RISE_TOL
            verdict = ("holds" if fox_flat and rope_rises else "does not hold" if not fox_flat
                       else "partly: FoX does not rise, but neither does RoPE")
            out.append(_claim(
                "Length extrapolation: FoX's per-position loss does not rise beyond the training context; the RoPE "
                "Transformer's does",
                _seeded(verdict, rises["fox"], rises["rotary"]),
                f"loss at positions {lo_hi[0]}-{lo_hi[1]} minus loss at {inside[0]}-{inside[1]}: fox "
                f"{_fmt(rises['fox'])}, rotary {_fmt(rises['rotary'])} nats/token",
                f"fox's change <= {RISE_TOL} on every seed and rotary's > {RISE_TOL} on every seed"))
        else:
            out.append(_claim("Length extrapolation", "not measured",
                              f"no per-position bucket for positions {inside[0]}-{inside[1]} in both schemes", ""))
    else:
        out.append(_claim("Per-position loss beyond the training context", "not measured", missing, ""))

    # 4. needle at 1x
    nf, nr = fox.get("needle"), rope.get("needle")
    row_f = next((x for x in nf["lengths"] if x["length"] == L and x["status"] == "ok"), None) if nf else None
    row_r = next((x for x in nr["lengths"] if x["length"] == L and x["status"] == "ok"), None) if nr else None
    if not (nf and nr):
        out.append(_claim("Needle retrieval", "not measured", "eval.needle_examples=0", ""))
    elif not (row_f and row_r):
        out.append(_claim("Needle retrieval", "not measured",
                          f"no needle evaluation at the training context ({L} tokens) in both schemes "
                          "(eval.needle_multiples without 1, or the validation split too short)", ""))
    else:
        ef, er = row_f["exact"]["values"], row_r["exact"]["values"]
        gap = sum(ef) / len(ef) - sum(er) / len(er)
        good = min(ef) >= 0.5
        verdict = ("holds" if gap >= -0.1 and good else "does not hold" if gap < -0.1 else "inconclusive")
        longest_f = nf["lengths"][-1]
        longest_r = nr["lengths"][-1]
        tail = ""
        if longest_f.get("exact") and longest_r.get("exact") and longest_f["length"] > L:
            tail = (f"; at {longest_f['length']} tokens: fox {_fmt(longest_f['exact']['values'], 2)}, "
                    f"rotary {_fmt(longest_r['exact']['values'], 2)}")
        out.append(_claim(
            "Needle retrieval (easy mode) within the training context: FoX about as good as the RoPE Transformer",
            _seeded(verdict, ef, er),
            f"exact-match accuracy at {L} tokens: fox {_fmt(ef, 2)} vs rotary {_fmt(er, 2)}{tail}",
            "fox's mean within 0.1 of rotary's (or above) and fox >= 0.5 on every seed; "
            "'inconclusive' when neither model retrieves"))

    # 5. Pro
    pro = s.get("fox_pro")
    if pro is not None:
        out.append(_lower_bpb_claim("FoX (Pro) has a lower loss than FoX (LLaMA)", "fox_pro", pro, "fox", fox, L))

    # 6. ACP
    rows = []
    for name in ("fox", "fox_pro", "fox_value_residual"):
        sch = s.get(name)
        if sch and sch.get("pruning"):
            parts = [f"{k} tokens {v['mean']['mean']:.2f}" for k, v in sorted(sch["pruning"].items(), key=lambda kv: int(kv[0]))]
            rows.append((name, sch["pruning"], f"{name}: " + ", ".join(parts)))
    acp = "Adaptive computation pruning skips a large share (paper: about 70%) of FoX's attention FLOPs"
    at_1x = [p[str(L)]["mean"]["mean"] for _, p, _ in rows if str(L) in p]
    if not rows:
        out.append(_claim(acp, "not measured", "no pruning measured for any FoX variant (no eval.pruning_windows, "
                          "or attn_prune=false)", ""))
    elif not at_1x:
        why = f": the fold prunes from {PRUNE_MIN_KEYS} keys on" if L < PRUNE_MIN_KEYS else ""
        out.append(_claim(acp, "not measured", f"no pruning at the training context ({L} tokens){why}", ""))
    else:
        verdict = "holds" if min(at_1x) >= 0.5 else "does not hold"
        out.append(_claim(
            acp,
            verdict,
            "pruned fraction of causal attention pairs (mean over layers and seeds): " + "; ".join(t for *_, t in rows),
            "mean pruned fraction >= 0.5 at the training context for every FoX variant"))
    return out


def findings_markdown(findings: list[dict[str, str]]) -> list[str]:
    """Lines of the ``compare.md`` section."""
    lines = ["## Which findings of the FoX paper hold at this scale", "",
             "| claim (Lin et al. 2025) | verdict | numbers | rule |", "|---|---|---|---|"]
    for f in findings:
        lines.append(f"| {f['claim']} | **{f['verdict']}** | {f['evidence']} | {f['rule']} |")
    return lines
