"""The pruning bound of xforget/ops/prune.py, term by term, on adversarial inputs (DESIGN.md 3.1).

A query block [i0, i0 + B) may skip the key prefix [0, s) when

    gap = (c_i0 - c_(s-1)) + scale * Q * (Kpre + Kref) <= log(eps) - log(n_k)

(Q: largest query norm of the block; Kpre: largest key norm of the prefix; Kref: a bound on the
norm of each row's reference key, the last real key at or before the query).  Benign inputs
(random q, k, gates) leave so much slack that a bound missing a term still passes; here every
case is built so that one term is TIGHT: the true logit gap of some row to its reference key
equals the bound, so removing or weakening that term (plant_faults.py: ``prune-*``) prunes keys
whose weight is far above eps / n_k.  Each case sweeps the decay L across its switch point and
checks, in float64 from a dense softmax written here:

* every pruned key's weight is below eps / n_k times the row's reference-key weight, and the
  pruned mass of every row is below eps (the two promises of the bound);
* the prefix is pruned exactly when L passes the tight bound (so the test cannot pass by a bound
  that never prunes).

Tiny sizes (64 keys, blocks of 32 queries, prefixes aligned to 16) keep it to a second; the decode
backend (few queries over a KV cache) and the fold are also checked end to end.
"""

from __future__ import annotations

import math

import pytest
import torch

from xforget.ops import forgetting_attention
from xforget.ops.common import check_inputs
from xforget.ops.prune import KEY_ALIGN, PRUNE_BLOCK, block_starts, collect_pruning, key_norms, threshold

from test_ops_forgetting_attention import ref_attention_f64

EPS, N, BLOCK, ALIGN, D = 1e-3, 64, 32, 16, 4
SCALE = 1 / math.sqrt(D)
T = threshold(EPS, N)  # log(eps) - log(n_k) < 0
NORM = 10.0  # the norm term scale * Q * (Kpre + Kref) of the norm cases: tight, and large against |T| ~ 11


def unit(n: int, rows, value: float) -> torch.Tensor:
    """(1, 1, n, D) float64 vectors: ``value`` along the first axis at ``rows`` (a slice or list), 0 elsewhere."""
    t = torch.zeros(1, 1, n, D, dtype=torch.float64)
    t[0, 0, rows, 0] = value
    return t


def drop_at(n: int, pos: int, size: float) -> torch.Tensor:
    """(1, 1, n) log gates: 0 (f = 1) except one strong forget ``-size`` at ``pos``."""
    lf = torch.zeros(1, 1, n, dtype=torch.float64)
    lf[..., pos] = -size
    return lf


def decay(lf: torch.Tensor, mask) -> torch.Tensor:
    return (lf if mask is None else lf.masked_fill(~mask[:, None, :], 0.0)).cumsum(-1)


def pruned_weights(q, k, c, mask, starts, block, offset=0):
    """Float64 per query row: (pruned mass, largest pruned weight / reference-key weight).

    ``starts`` (b, h, n_blocks): first kept key of each block of ``block`` queries; rows without a
    visible real key are left out (NaN).
    """
    b, h, n_q, _ = q.shape
    n_k = k.shape[2]
    pos_q, pos_k = torch.arange(n_q) + offset, torch.arange(n_k)
    real = torch.ones(b, n_k, dtype=torch.bool) if mask is None else mask
    allowed = (pos_k[None, :] <= pos_q[:, None])[None, None] & real[:, None, None, :]
    logits = SCALE * q.double() @ k.double().transpose(-1, -2) + c.double()[..., pos_q, None] - c.double()[..., None, :]
    p = logits.masked_fill(~allowed, -math.inf).softmax(-1)
    start = starts.repeat_interleave(block, dim=-1)[..., :n_q]  # (b, h, n_q)
    pruned = pos_k[None, None, None, :] < start[..., None]
    mass = torch.where(pruned, p, 0.0).sum(-1)
    # reference key: the last real key at or before the query
    idx = torch.where(allowed, pos_k, -1).amax(-1)  # (b, h, n_q)
    p_ref = p.gather(-1, idx.clamp_min(0)[..., None])[..., 0]
    ratio = torch.where(pruned, p, 0.0).amax(-1) / p_ref
    valid = idx >= 0
    return torch.where(valid, mass, math.nan), torch.where(valid, ratio, math.nan)


def check_safe(q, k, c, mask, starts, block, n_k, eps=EPS, offset=0):
    mass, ratio = pruned_weights(q, k, c, mask, starts, block, offset)
    worst_ratio, worst_mass = ratio.nan_to_num(0.0).max().item(), mass.nan_to_num(0.0).max().item()
    assert worst_ratio < eps / n_k, f"a pruned weight is {worst_ratio:.3g} of its reference key (> eps/n_k)"
    assert worst_mass < eps, f"pruned mass {worst_mass:.3g} > eps"


def starts_for(q, k, lf, mask):
    s = check_inputs(q, k, k)
    return block_starts(q, key_norms(k, 1, mask), decay(lf, mask), mask, s, SCALE, EPS, block=BLOCK, align=ALIGN)


def case_threshold(L):
    """q = k = 0: the gap is the decay alone, -L for the prefix before a forget at the block start."""
    return unit(N, [], 0.0), unit(N, [], 0.0), drop_at(N, BLOCK, L), None, 0.0


def case_query_norm(L):
    """One query of block 1 (position 40) has norm a; prefix keys +K, block keys (references) -K."""
    a = K = math.sqrt(NORM / 2 / SCALE)
    k = unit(N, slice(0, BLOCK), K) - unit(N, slice(BLOCK, N), K)
    return unit(N, [40], a), k, drop_at(N, BLOCK, L), None, NORM


def case_prefix_key_norm(L):
    """Every query has norm a; only the FIRST prefix key has a norm (K): the prefix's last key is 0."""
    a = K = math.sqrt(NORM / SCALE)
    return unit(N, slice(0, N), a), unit(N, [0], K), drop_at(N, BLOCK, L), None, NORM


def case_reference_key_norm(L):
    """Queries of norm a; prefix keys 0; the block's own keys (each row's reference) are -K."""
    a = K = math.sqrt(NORM / SCALE)
    return unit(N, slice(0, N), a), -unit(N, slice(BLOCK, N), K), drop_at(N, BLOCK, L), None, NORM


def case_reference_key_far(L):
    """Padding: block 1 opens with pad tokens (32..40), whose reference key is the last real key
    before the block (31, norm K, anti-aligned); the block's own keys are pads and zero-norm keys.
    The forget at 16 (real) decays the prefix [0, 16) for every row of block 1."""
    a = K = math.sqrt(NORM / SCALE)
    mask = torch.ones(1, N, dtype=torch.bool)
    mask[0, BLOCK:BLOCK + 9] = False
    k = -unit(N, slice(ALIGN, BLOCK), K)
    return unit(N, slice(0, N), a), k, drop_at(N, ALIGN, L), mask, NORM


def case_decay_inside_block(L):
    """q = k = 0, the forget at the LAST query of block 1: the block's other rows keep the prefix."""
    return unit(N, [], 0.0), unit(N, [], 0.0), drop_at(N, N - 1, L), None, math.inf


def case_decay_inside_prefix(L):
    """q = k = 0, the forget at the LAST key of the first candidate prefix [0, 16): key 15 then
    decays no more than the block's own keys, so [0, 16) must stay."""
    return unit(N, [], 0.0), unit(N, [], 0.0), drop_at(N, ALIGN - 1, L), None, math.inf


CASES = {
    "threshold": case_threshold,  # log(eps) - log(n_k): drop the log(n_k) and single weights < eps prune
    "query-norm": case_query_norm,  # Q: the block's largest query norm
    "prefix-key-norm": case_prefix_key_norm,  # Kpre: the prefix's largest key norm (a running max)
    "reference-key-norm": case_reference_key_norm,  # Kref: the row's reference key
    "reference-key-far": case_reference_key_far,  # Kref with padding: the reference lies before the block
    "decay-inside-block": case_decay_inside_block,  # c_i0: the decay from the block's FIRST query
    "decay-inside-prefix": case_decay_inside_prefix,  # c_(s-1): the decay to the prefix's LAST key
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_term_of_the_bound_is_needed_and_tight(name):
    """Sweep the decay L past the switch point -T + norm term; float64 mass and weights stay in bound."""
    make = CASES[name]
    switch = -T + make(1.0)[4]  # the prefix may go from L = switch on (inf: never)
    grid = [-T + t for t in (-3.0, -1.0, -0.05, 0.05, 1.0, 2.5, 5.0, 7.5, 9.0, 9.95, 10.05, 12.0, 20.0)]
    pruned_at = []
    for L in grid:
        q, k, lf, mask, _ = make(L)
        starts = starts_for(q, k, lf, mask)
        check_safe(q, k, decay(lf, mask), mask, starts, BLOCK, N)
        assert (starts[..., 0] == 0).all()  # block 0 has no keys before it
        if starts[..., 1].item() > 0:
            pruned_at.append(L)
    expected = [L for L in grid if L >= switch]
    assert pruned_at == expected, f"pruned at L - |T| = {[round(L + T, 2) for L in pruned_at]}"


def test_decode_path_prunes_within_the_bound_and_a_kv_head_serves_its_whole_group():
    """The decode backend (4 queries over 96 cached keys, float64): a tight query-norm case per head,
    checked through the starts the backend records and a float64 softmax; with grouped kv heads a
    head that never forgets keeps every key of the kv head it shares."""
    n_k, n_q, h = 96, 4, 2
    a = K = math.sqrt(NORM / 2 / SCALE)
    k = unit(n_k, slice(0, 80), K) - unit(n_k, slice(80, n_k), K)  # prefix +K, last 16 keys (references) -K
    q = unit(n_q, [3], a).expand(1, h, n_q, D).clone()
    v = torch.randn(1, 1, n_k, D, dtype=torch.float64)
    t_dec = threshold(EPS, n_k)
    for h_kv in (2, 1):
        for L in (-t_dec + NORM - 0.05, -t_dec + NORM + 0.05):
            lf = drop_at(n_k, 80, L).expand(1, h, n_k).clone()
            lf[:, 1] = 0.0  # head 1 never forgets
            kk, vv = k.expand(1, h_kv, n_k, D), v.expand(1, h_kv, n_k, D)
            with collect_pruning() as log:
                out = forgetting_attention(q, kk, vv, lf, backend="decode", prune_eps=EPS)
            (rec,) = log.records
            starts = (rec.pruned / n_q).long().view(1, h, 1)
            check_safe(q, kk.expand(1, h, n_k, D), decay(lf, None), None, starts, n_q, n_k, offset=n_k - n_q)
            assert starts[0, 1].item() == 0  # head 1 never forgets
            pruned = starts[0, 0].item() > 0
            assert pruned == (h_kv == 2 and L > -t_dec + NORM), (h_kv, L + t_dec, starts)
            ref = ref_attention_f64(q, kk, vv, lf, scale=SCALE)
            vrange = (v.amax(2) - v.amin(2)).max().item()
            assert (out - ref).abs().max().item() <= EPS * vrange + 1e-12


def test_fold_prunes_within_the_bound_end_to_end():
    """The fold's own plan (blocks of 128 queries, prefixes aligned to 64) on 1024 tokens with a steady
    decay, queries of norm a and keys of norm K whose sign flips every 64 keys (a row's reference
    key anti-aligned with half of its prefix): float64 pruned mass in bound, most pairs skipped, and
    the output within eps * (max v - min v) of float64."""
    n = 1024
    a = K = math.sqrt(NORM / 2 / SCALE)
    sign = 1.0 - 2.0 * ((torch.arange(n) // KEY_ALIGN) % 2).double()
    q, k = unit(n, slice(0, n), a), unit(n, slice(0, n), K) * sign[None, None, :, None]
    lf = torch.full((1, 1, n), -0.5, dtype=torch.float64)
    v = torch.randn(1, 1, n, D, dtype=torch.float64)
    s = check_inputs(q, k, v)
    starts = block_starts(q, key_norms(k, 1, None), decay(lf, None), None, s, SCALE, EPS)
    check_safe(q, k, decay(lf, None), None, starts, PRUNE_BLOCK, n)
    with collect_pruning() as log:
        out = forgetting_attention(q, k, v, lf, backend="fold", prune_eps=EPS)
    assert log.records[0].fraction.max() > 0.5
    ref = ref_attention_f64(q, k, v, lf, scale=SCALE)
    assert (out - ref).abs().max().item() <= EPS * (v.amax(2) - v.amin(2)).max().item() + 1e-12
