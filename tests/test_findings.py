"""Every verdict compare.md prints, on constructed results where the answer is known, in both directions."""

from __future__ import annotations

import pytest

from xforget.compare.findings import RISE_TOL, check_findings

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
    assert verdict == "not measured" and "eval.position_buckets" in why and "multiples" not in why
    short = verdicts(scheme("fox", [1.0], inside=[2.0], beyond=[2.0], longest=L),
                     scheme("rotary", [1.1], inside=[2.0], beyond=[2.0], longest=L))
    verdict, why = find(short, "Per-position loss beyond")
    assert verdict == "not measured" and "eval.multiples" in why and "position_buckets" not in why
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
    rope = scheme("rotary", [1.3])
    v = verdicts(scheme("fox", [1.2], pruning={L: 0.7}), rope, scheme("fox_pro", [1.1], pruning={L: 0.6}))
    assert find(v, "FoX (Pro) has a lower loss")[0] == "holds"
    assert find(v, "Adaptive computation pruning")[0] == "holds"
    v = verdicts(scheme("fox", [1.2], pruning={L: 0.7}), rope, scheme("fox_pro", [1.25], pruning={L: 0.3}))
    assert find(v, "FoX (Pro) has a lower loss")[0] == "does not hold"
    assert find(v, "Adaptive computation pruning")[0] == "does not hold"
