"""Every verdict compare.md prints, on constructed results where the answer is known, in both directions."""

from __future__ import annotations

import pytest

from xforget.compare.findings import MIN_SEEDS, RISE_TOL, check_findings

L = 64


def scheme(name, bpb, inside=None, beyond=None, longest=4 * L, needle=None, pruning=None):
    """A scheme summary as compare/report.py builds it: per-seed values only where given."""
    s = {"name": name, "val_bpb": {"values": list(bpb)}}
    if inside is not None:
        octaves = [{"lo": L // 2 + 1, "hi": L, "values": list(inside), "se_mean": 0.01},
                   {"lo": longest // 2 + 1, "hi": longest, "values": list(beyond), "se_mean": 0.01}]
        s["position_loss"] = {"length": longest, "octaves": octaves}
    if needle is not None:
        s["needle"] = {"lengths": [{"length": L, "status": "ok", "exact": {"values": list(needle)}}]}
    if pruning is not None:
        s["pruning"] = {str(k): {"mean": {"mean": v}} for k, v in pruning.items()}
    return s


def verdicts(*schemes):
    return {f["claim"]: (f["verdict"], f["evidence"]) for f in check_findings(list(schemes), L)}


def find(v, start):
    return next(val for key, val in v.items() if key.startswith(start))


def test_loss_within_context_holds_does_not_hold_and_is_inconclusive():
    assert find(verdicts(scheme("fox", [1.0, 1.1]), scheme("rotary", [1.2, 1.3])), "FoX has a lower loss")[0] == "holds"
    assert find(verdicts(scheme("fox", [1.4, 1.5]), scheme("rotary", [1.2, 1.3])), "FoX has a lower loss")[0] == \
        "does not hold"
    assert find(verdicts(scheme("fox", [1.0, 1.25]), scheme("rotary", [1.2, 1.3])), "FoX has a lower loss")[0] == \
        "inconclusive"


def test_long_context_and_extrapolation_both_directions():
    fox = scheme("fox", [1.0], inside=[2.0, 2.0], beyond=[1.9, 1.95])
    rope = scheme("rotary", [1.0], inside=[2.0, 2.0], beyond=[3.0, 3.2])
    v = verdicts(fox, rope)
    assert find(v, "FoX has a lower per-position loss")[0] == "holds"
    assert find(v, "Length extrapolation")[0] == "holds"
    v = verdicts(scheme("fox", [1.0], inside=[2.0, 2.0], beyond=[3.5, 3.6]), rope)  # FoX rises, above RoPE
    assert find(v, "FoX has a lower per-position loss")[0] == "does not hold"
    assert find(v, "Length extrapolation")[0] == "does not hold"
    flat = scheme("rotary", [1.0], inside=[2.0, 2.0], beyond=[2.0 + RISE_TOL / 2] * 2)
    v = verdicts(fox, flat)
    assert find(v, "Length extrapolation")[0] == "partly: FoX does not rise, but neither does RoPE"


def test_not_measured_names_the_missing_setting():
    """Before: 'no evaluation at 2x ... (eval.multiples)' even when the multiples were there and
    eval.position_buckets was what was missing."""
    no_buckets = verdicts(scheme("fox", [1.0]), scheme("rotary", [1.1]))
    verdict, why = find(no_buckets, "Per-position loss beyond")
    assert verdict == "not measured" and "eval.position_buckets=4" in why and "multiples" not in why
    short = verdicts(scheme("fox", [1.0], inside=[2.0], beyond=[2.0], longest=L),
                     scheme("rotary", [1.1], inside=[2.0], beyond=[2.0], longest=L))
    verdict, why = find(short, "Per-position loss beyond")
    assert verdict == "not measured" and "eval.multiples=[1,2]" in why and "position_buckets" not in why
    assert find(no_buckets, "Needle retrieval") == ("not measured", "eval.needle_examples=0")
    verdict, why = find(no_buckets, "Adaptive computation pruning")
    assert verdict == "not measured" and "no pruning measured" in why
    verdict, why = find(verdicts(scheme("fox", [1.0], pruning={4 * L: 0.6}), scheme("rotary", [1.1])),
                        "Adaptive computation pruning")
    assert verdict == "not measured" and "512 keys" in why
    assert check_findings([scheme("fox", [1.0])], L)[0]["verdict"] == "not measured"


@pytest.mark.parametrize("fox_exact, rope_exact, expected", [([0.9, 0.8], [0.85, 0.9], "holds"),
                                                             ([0.5, 0.5], [0.9, 0.9], "does not hold"),
                                                             ([0.1, 0.2], [0.15, 0.1], "inconclusive")])
def test_needle_verdicts(fox_exact, rope_exact, expected):
    v = verdicts(scheme("fox", [1.0], needle=fox_exact), scheme("rotary", [1.1], needle=rope_exact))
    assert find(v, "Needle retrieval")[0] == expected


def test_pro_and_pruning_verdicts_both_directions():
    rope = scheme("rotary", [1.3, 1.31])
    v = verdicts(scheme("fox", [1.2, 1.21], pruning={L: 0.7}), rope, scheme("fox_pro", [1.1, 1.11], pruning={L: 0.6}))
    assert find(v, "FoX (Pro) has a lower loss")[0] == "holds"
    assert find(v, "Adaptive computation pruning")[0] == "holds"
    v = verdicts(scheme("fox", [1.2, 1.21], pruning={L: 0.7}), rope,
                 scheme("fox_pro", [1.25, 1.26], pruning={L: 0.3}))
    assert find(v, "FoX (Pro) has a lower loss")[0] == "does not hold"
    assert find(v, "Adaptive computation pruning")[0] == "does not hold"


def test_a_scheme_keeps_its_colour_in_every_plot(tmp_path, monkeypatch):
    """Before: colours were numbered per plot (C0, C1 over the schemes each plot drew; fixed C3/C0 in the
    FoX-vs-RoPE plot; C{j+3} for pruning), so a scheme changed colour between the plots of one comparison."""
    import matplotlib.figure

    from xforget.compare.colors import scheme_color
    from xforget.compare.plots import plot_loss_vs_step
    from xforget.compare.plots_long import plot_needle, plot_prefix_bpb

    seen: dict[str, set] = {}

    def record(fig, *args, **kwargs):
        for ax in fig.axes:
            for line in ax.get_lines():
                name = line.get_label().split(" ")[0]
                if not name.startswith("_"):
                    seen.setdefault(name, set()).add(matplotlib.colors.to_hex(line.get_color()))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    band = {"mean": 1.0, "min": 0.9, "max": 1.1, "values": [1.0]}
    schemes = [{"name": n, "curve": {"step": [1, 2], "train_loss": [2.0, 1.5], "val_bpb": [None, 2.0]},
                "prefix_bpb": {"64": band, "128": band}} for n in ("alibi", "rotary", "fox")]
    needle_rows = {"lengths": [{"length": 64, "exact": band, "by_depth": [{"depth": 0.5, "exact": band}]}]}
    plot_loss_vs_step(schemes, tmp_path / "a.png")
    plot_prefix_bpb(schemes, tmp_path / "b.png", 64)
    plot_needle([{**schemes[2], "needle": needle_rows}], tmp_path / "c.png", 64)  # only fox has needle data
    import matplotlib.colors

    for name in ("alibi", "rotary", "fox"):
        assert seen[name] == {matplotlib.colors.to_hex(scheme_color(name))}, (name, seen[name])
    assert len({scheme_color(n) for n in ("alibi", "rotary", "fox", "fox_pro", "t5", "none")}) == 6


SUGGESTED = f"(one seed; a verdict needs >= {MIN_SEEDS} seeds per side)"


@pytest.mark.parametrize("fox, rope, verdict", [([1.0], [1.2], "holds"), ([1.4], [1.2], "does not hold")])
def test_one_seed_only_suggests_a_verdict_in_both_directions(fox, rope, verdict):
    """Before: 'holds' from one seed of near-untrained models. One seed on either side: suggested only."""
    assert find(verdicts(scheme("fox", fox), scheme("rotary", rope)), "FoX has a lower loss")[0] == \
        f"suggested: {verdict} {SUGGESTED}"
    two = verdicts(scheme("fox", fox), scheme("rotary", [r + d for r in rope for d in (0.0, 0.01)]))
    assert find(two, "FoX has a lower loss")[0].startswith(f"suggested: {verdict} (one seed")  # fox: one seed
    pro = verdicts(scheme("fox", rope), scheme("rotary", [1.3]), scheme("fox_pro", fox))
    assert find(pro, "FoX (Pro) has a lower loss")[0] == f"suggested: {verdict} {SUGGESTED}"


def test_one_seed_per_position_and_needle_verdicts_are_suggested():
    fox = scheme("fox", [1.0], inside=[2.0], beyond=[1.9], needle=[0.9])
    rope = scheme("rotary", [1.1], inside=[2.0], beyond=[3.0], needle=[0.85])
    v = verdicts(fox, rope)
    for claim in ("FoX has a lower per-position loss", "Length extrapolation", "Needle retrieval"):
        assert find(v, claim)[0] == f"suggested: holds {SUGGESTED}", claim
    tie = verdicts(scheme("fox", [1.0]), scheme("rotary", [1.0]))  # overlap: inconclusive at any seed count
    assert find(tie, "FoX has a lower loss")[0] == "inconclusive"
