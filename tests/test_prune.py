"""Adaptive computation pruning (DESIGN.md 3.1; arXiv 2504.06949) against the unpruned op and float64.

The bound under test (xforget/ops/prune.py): every skipped weight is below
eps / n_k of the row's reference key, so the pruned mass of a row is < eps,
each output channel moves by at most eps * (max v - min v) <= 2 eps max|v|,
and the gradients move by at most (derived from sum_j |dp_ij| <= 2 eps):
    dv: 2 eps n_q max|dO|;  dq: 6 eps G scale max|k|;  dk: 6 eps G scale max|q| n_q;
    d log f: 6 eps G n_q;   with G = max|dO_i|_2 * max|v_j|_2.
fp64 inputs and gates isolate the pruning from rounding; the large eps = 1e-2
makes the pruning visible so the bound itself is exercised.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xforget import Decoder, TransformerWrapper
from xforget.ops import attend, forgetting_attention
from xforget.ops.common import check_inputs
from xforget.ops.prune import block_starts, collect_pruning, key_norms

from test_ops_forgetting_attention import ref_attention_f64


def gates(b, h, n, kind, dtype=torch.float64, seed=0):
    """Per-head log f: 'strong' (f ~ 0.5), 'weak' (f ~ 0.99), 'mixed' (strong .. never forgetting)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "strong":
        offs = torch.zeros(h)
    elif kind == "weak":
        offs = torch.full((h,), 4.5)
    else:
        offs = torch.linspace(-1.0, 6.0, h)
    lf = F.logsigmoid(torch.randn(b, h, n, generator=g) + offs[None, :, None])
    if kind == "mixed":
        lf[:, -1] = 0.0  # a head that never forgets
    return lf.to(dtype)


def make(b, h, h_kv, n_q, n_k, d=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n_q, d, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(b, h_kv, n_k, d, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(b, h_kv, n_k, d, generator=g, dtype=torch.float64).to(dtype)
    return q, k, v


def padding(b, n, kind):
    if kind is None:
        return None
    m = torch.ones(b, n, dtype=torch.bool)
    if kind == "left":
        m[0, :37] = False
    else:  # holes, including a run of pad queries inside a block
        m[0, 300:331] = False
        m[-1, ::7] = False
    return m


def run(q, k, v, lf, mask, backend, prune, eps, w):
    ins = [t.detach().clone().requires_grad_(True) for t in (q, k, v, lf)]
    with collect_pruning() as log:
        out = forgetting_attention(*ins, mask=mask, backend=backend, prune=prune, prune_eps=eps)
    (out * w).sum().backward()
    frac = torch.stack([r.fraction for r in log.records]).max().item() if log.records else 0.0
    return out, [t.grad for t in ins], frac


def check_bound(q, k, v, w, eps, out, ref_out, grads, ref_grads):
    n_q = q.shape[2]
    scale = 1 / math.sqrt(q.shape[-1])
    G = w.norm(dim=-1).max().item() * v.norm(dim=-1).max().item()
    vrange = (v.amax(2) - v.amin(2)).max().item()
    limits = {
        "out": eps * vrange,
        "dq": 6 * eps * G * scale * k.norm(dim=-1).max().item(),
        "dk": 6 * eps * G * scale * q.norm(dim=-1).max().item() * n_q,
        "dv": 2 * eps * n_q * w.abs().max().item(),
        "dlog_f": 6 * eps * G * n_q,
    }
    diffs = {"out": (out - ref_out).abs().max().item()}
    for name, g, gr in zip(["dq", "dk", "dv", "dlog_f"], grads, ref_grads):
        diffs[name] = (g - gr).abs().max().item()
    for name, lim in limits.items():
        assert diffs[name] <= lim + 1e-10, f"{name}: {diffs[name]:.3g} > bound {lim:.3g}"
    return diffs


CASES = [
    # id, b, h, h_kv, n_q, n_k, gate kind, padding
    ("strong", 2, 4, 4, 1031, 1031, "strong", None),
    ("weak", 1, 4, 4, 1031, 1031, "weak", None),
    ("mixed-gqa", 2, 6, 2, 777, 777, "mixed", None),
    ("mixed-left-pad", 2, 4, 4, 1100, 1100, "mixed", "left"),
    ("strong-holes-prefill", 2, 4, 2, 300, 1100, "strong", "holes"),
    ("decode-steps", 2, 4, 2, 3, 1500, "mixed", "holes"),
]


@pytest.mark.parametrize("eps", [1e-6, 1e-2])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_pruned_within_bound_of_unpruned_fp64(case, eps):
    _, b, h, h_kv, n_q, n_k, kind, pad = case
    q, k, v = make(b, h, h_kv, n_q, n_k)
    q = q * 2  # sharper logits: a larger score bound to beat
    lf = gates(b, h, n_k, kind)
    mask = padding(b, n_k, pad)
    w = torch.randn(b, h, n_q, q.shape[-1], dtype=torch.float64)
    backend = "decode" if n_q <= 16 else "fold"
    out, grads, frac = run(q, k, v, lf, mask, backend, True, eps, w)
    ref_out, ref_grads, frac0 = run(q, k, v, lf, mask, backend, False, eps, w)
    assert frac0 == 0.0
    if kind != "weak":
        assert frac > 0.3, f"pruning should skip most of this case, skipped {frac:.2f}"
    else:
        assert frac < 0.5
    vv = v.repeat_interleave(h // h_kv, dim=1)
    check_bound(q, k, vv, w, eps, out, ref_out, grads, ref_grads)
    # and the unpruned fp64 op is the float64 definition
    torch.testing.assert_close(ref_out, ref_attention_f64(q, k, v, lf, mask=mask), atol=1e-10, rtol=0)


@pytest.mark.parametrize("kind", ["strong", "mixed"])
def test_pruned_fp32_within_1e5_of_unpruned_and_f64(kind):
    """Default eps in fp32: pruned == unpruned within 1e-5 (moderate |c|, where fp32 rounding is below that)."""
    b, h, n = 1, 4, 1300
    q, k, v = make(b, h, h, n, n, dtype=torch.float32)
    lf = gates(b, h, n, kind, dtype=torch.float32) * 0.15  # |c| <= ~120: fp32 logit rounding ~1e-5
    w = torch.randn(b, h, n, 16)
    out, grads, frac = run(q, k, v, lf, None, "fold", True, 1e-6, w)
    ref_out, ref_grads, _ = run(q, k, v, lf, None, "fold", False, 1e-6, w)
    assert frac > 0.3
    assert (out - ref_out).abs().max() <= 1e-5
    f64 = ref_attention_f64(q, k, v, lf)
    assert (out.double() - f64).abs().max() <= (ref_out.double() - f64).abs().max() + 1e-5
    for g, gr in zip(grads, ref_grads):
        torch.testing.assert_close(g, gr, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_pruned_half_precision_keeps_the_split_channel_accuracy(dtype):
    """bf16/fp16 with |c| ~ 1000: the pruned op is as close to float64 as the unpruned fold."""
    b, h, n = 1, 4, 2100
    q, k, v = make(b, h, h, n, n, dtype=torch.float32)
    lf = gates(b, h, n, "mixed", dtype=torch.float32)
    assert lf.cumsum(-1).abs().max() > 1000
    qh, kh, vh = q.to(dtype), k.to(dtype), v.to(dtype)
    f64 = ref_attention_f64(qh, kh, vh, lf)
    with collect_pruning() as log, torch.no_grad():
        out = forgetting_attention(qh, kh, vh, lf, backend="fold")
        ref = forgetting_attention(qh, kh, vh, lf, backend="fold", prune=False)
    assert log.records[0].fraction.max() > 0.5
    err, err0 = (out.double() - f64).abs().max().item(), (ref.double() - f64).abs().max().item()
    assert err <= 1.5 * err0 + 1e-3, f"pruned {err:.3g} vs unpruned {err0:.3g}"


def test_head_that_never_forgets_equals_unpruned_exactly():
    """f = 1 in one head (log f = 0): that head is not pruned and its result is bit-identical."""
    b, h, n = 1, 3, 1500
    q, k, v = make(b, h, h, n, n, dtype=torch.float32)
    lf = gates(b, h, n, "strong", dtype=torch.float32)
    lf[:, 1] = 0.0
    ins = [t.clone().requires_grad_(True) for t in (q, k, v, lf)]
    ins0 = [t.clone().requires_grad_(True) for t in (q, k, v, lf)]
    with collect_pruning() as log:
        out = forgetting_attention(*ins, backend="fold")
    out0 = forgetting_attention(*ins0, backend="fold", prune=False)
    frac = log.records[0].fraction
    assert frac[1] == 0 and frac[0] > 0.5 and frac[2] > 0.5
    assert torch.equal(out[:, 1], out0[:, 1])
    out[:, 1].sum().backward()
    out0[:, 1].sum().backward()
    for a, b_ in zip(ins, ins0):
        assert torch.equal(a.grad[:, 1], b_.grad[:, 1])
    # all heads open: the op is the unpruned op
    lf_open = torch.zeros(b, h, n)
    assert torch.equal(forgetting_attention(q, k, v, lf_open), forgetting_attention(q, k, v, lf_open, prune=False))


@pytest.mark.parametrize("pad", [None, "holes"])
def test_block_starts_are_safe_against_float64_weights(pad):
    """Independent check of the threshold: every key before a block's start has weight < eps / n_k."""
    b, h, n, eps = 2, 4, 900, 1e-4
    q, k, v = make(b, h, h, n, n)
    q = q * 3
    lf = gates(b, h, n, "mixed")
    mask = padding(b, n, pad)
    s = check_inputs(q, k, v)
    c = torch.where(mask[:, None, :], lf, 0.0).cumsum(-1) if mask is not None else lf.cumsum(-1)
    starts = block_starts(q, key_norms(k, h, mask), c, mask, s, 1 / math.sqrt(16), eps, block=128, align=64)
    assert (starts > 0).any()
    logits = torch.einsum("bhid,bhjd->bhij", q, k) / 4 + c[..., :, None] - c[..., None, :]
    allowed = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    p = logits.masked_fill(~allowed, -math.inf).softmax(-1)
    for t in range(starts.shape[-1]):
        rows = p[:, :, t * 128:(t + 1) * 128]
        for bi in range(b):
            for hi in range(h):
                st = int(starts[bi, hi, t])
                if st:
                    assert rows[bi, hi, :, :st].max() < eps / n


def test_alibi_gets_its_band_and_matches_unpruned():
    torch.manual_seed(0)
    kw = dict(num_tokens=64, max_seq_len=2048)
    net = TransformerWrapper(**kw, attn_layers=Decoder(dim=32, depth=2, heads=4, position="alibi")).eval()
    net0 = TransformerWrapper(**kw, attn_layers=Decoder(dim=32, depth=2, heads=4, position="alibi", attn_prune=False)).eval()
    net0.load_state_dict(net.state_dict())
    x = torch.randint(0, 64, (1, 1600))
    with collect_pruning() as log, torch.no_grad():
        out = net(x)
    with torch.no_grad():
        out0 = net0(x)
    fracs = torch.stack([r.fraction for r in log.records])
    # slopes 1/4, 1/16, 1/64, 1/256: steep heads prune most, the shallowest nothing
    assert fracs[:, 0].min() > 0.5 and fracs[:, 3].max() == 0
    assert (out - out0).abs().max() < 1e-4


def test_cached_decoding_pruned_equals_unpruned_and_full_forward():
    """A fast-forgetting FoX model (gate bias 0, f ~ 0.5): prefill + decoding steps, pruned vs exact."""
    torch.manual_seed(0)
    kw = dict(num_tokens=64, max_seq_len=4096)
    layers = dict(dim=32, depth=2, heads=4, kv_heads=2, position="fox", forget_gate_bias_init=0.0)
    net = TransformerWrapper(**kw, attn_layers=Decoder(**layers)).eval()
    net0 = TransformerWrapper(**kw, attn_layers=Decoder(**layers, attn_prune=False)).eval()
    net0.load_state_dict(net.state_dict())
    x = torch.randint(0, 64, (2, 700))
    with torch.no_grad(), collect_pruning() as log:
        logits, cache = net(x[:, :600], return_cache=True)
        steps = [logits]
        for t in range(600, 700):
            logits, cache = net(x[:, t:t + 1], cache=cache, return_cache=True)
            steps.append(logits)
    with torch.no_grad():
        full0 = net0(x)
        logits0, cache0 = net0(x[:, :600], return_cache=True)
        steps0 = [logits0]
        for t in range(600, 700):
            logits0, cache0 = net0(x[:, t:t + 1], cache=cache0, return_cache=True)
            steps0.append(logits0)
    assert any(r.backend == "decode" and r.fraction.max() > 0.5 for r in log.records)
    # |c| ~ 500 here: exact cached decoding and the full pass differ by fp32 rounding (~3e-5) already;
    # pruned vs exact decoding (same kernel, fewer keys summed): measured 1.2e-5 on the logits
    torch.testing.assert_close(torch.cat(steps, 1), torch.cat(steps0, 1), atol=3e-5, rtol=0)
    torch.testing.assert_close(torch.cat(steps, 1), full0, atol=1e-4, rtol=0)
    assert cache.layers[0].k_norm is not None and cache.layers[0].k_norm.shape[-1] == 700


# ----------------------------------------------------------------------------- autocast (DESIGN.md 4.11)


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend", ["reference", "fold", "chunked", "decode", "attend"])
def test_ops_keep_precision_under_autocast(backend, amp):
    """q = k = 0, v random, log f = -0.5 over 2048 tokens (|c| ~ 1000): autocast used to give 2.27."""
    n = 2048
    n_q = 8 if backend == "decode" else n
    torch.manual_seed(0)
    q, k = torch.zeros(1, 1, n_q, 16), torch.zeros(1, 1, n, 16)
    v = torch.randn(1, 1, n, 16)
    lf = torch.full((1, 1, n), -0.5)
    ref = ref_attention_f64(q, k, v.to(amp), lf)  # the op rounds v to the autocast dtype, nothing more
    with torch.autocast("cpu", dtype=amp):
        if backend == "attend":
            out = attend(q, k, v, causal=True, log_fgate=lf)
        else:
            out = forgetting_attention(q, k, v, lf, backend=backend)
    tol = {torch.bfloat16: 2e-2, torch.float16: 2.5e-3}[amp]
    err = (out.double() - ref).abs().max().item()
    assert err < tol, f"{backend} under autocast {amp}: error {err:.3g}"


def test_config_prune_flag_and_errors():
    from xforget.models.wrapper import build_model

    net = build_model(dict(position="fox", attn_prune=False, dim=32, heads=4, depth=1))
    assert all(not m.prune for m in net.modules() if hasattr(m, "prune_eps"))
    with pytest.raises(ValueError, match="attn_prune_eps"):
        build_model(dict(position="fox", attn_prune_eps=2.0, dim=32, heads=4, depth=1))
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="prune_eps"):
        forgetting_attention(q, q, q, None, prune_eps=0.0)


# ----------------------------------------------------------------------------- eviction


@pytest.mark.slow
def test_decoding_with_eviction_equals_without_over_2000_steps():
    """Fast-forgetting FoX (gate bias -1: f ~ 0.27): evicting every step keeps the cache short and the
    logits equal to decoding with the full cache within the bound (eps = 1e-6).  float64, because over
    2000 steps |c| reaches ~2600, where the full cache's fp32 decay bias alone is off by ~2e-4."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2000 tiny steps: thread hand-offs would dominate on a shared CPU
    try:
        layers = dict(dim=32, depth=2, heads=4, kv_heads=2, position="fox", forget_gate_bias_init=-1.0)
        net = TransformerWrapper(num_tokens=64, max_seq_len=4096, attn_layers=Decoder(**layers)).eval().double()
        x = torch.randint(0, 64, (2, 2016))
        with torch.no_grad():
            _, full = net(x[:, :16], return_cache=True)
            ev = full
            longest, worst = 0, 0.0
            for t in range(16, 2016):
                a, full = net(x[:, t:t + 1], cache=full, return_cache=True)
                b_, ev = net(x[:, t:t + 1], cache=ev, return_cache=True)
                ev = ev.evict_forgotten(net, eps=1e-6)
                longest = max(longest, ev.length)
                worst = max(worst, (a - b_).abs().max().item())
        assert full.length == 2016
        assert longest < 300, f"cache grew to {longest}"
        assert ev.layers[0].evicted is not None and (ev.layers[0].evicted <= math.log(1e-6)).all()
        assert worst < 1e-8, f"max logit difference {worst:.3g}"
    finally:
        torch.set_num_threads(threads)


def test_eviction_refuses_what_it_cannot_bound():
    net = TransformerWrapper(num_tokens=64, max_seq_len=64,
                             attn_layers=Decoder(dim=32, depth=1, heads=4, position="rotary")).eval()
    _, cache = net(torch.randint(0, 64, (1, 8)), return_cache=True)
    with pytest.raises(ValueError, match="decay bias"):
        cache.evict_forgotten(net)
    post = TransformerWrapper(num_tokens=64, max_seq_len=64,
                              attn_layers=Decoder(dim=32, depth=1, heads=4, position="fox", norm_style="post")).eval()
    _, cache = post(torch.randint(0, 64, (1, 8)), return_cache=True)
    with pytest.raises(ValueError, match="pre-norm"):
        cache.evict_forgotten(post)


def test_no_pruning_below_min_keys():
    """Below PRUNE_MIN_KEYS keys the fold makes no pruning plan (it would cost more than it saves),
    and from there on a strongly decaying gate does prune."""
    from xforget.ops.prune import PRUNE_MIN_KEYS

    for n, expect_pruned in ((PRUNE_MIN_KEYS - 1, False), (PRUNE_MIN_KEYS, True)):
        q, k, v = make(1, 4, 4, n, n, dtype=torch.float32)
        lf = gates(1, 4, n, "strong", dtype=torch.float32)
        w = torch.randn(1, 4, n, 16)
        out, _, frac = run(q, k, v, lf, None, "fold", True, 1e-6, w)
        ref_out, _, _ = run(q, k, v, lf, None, "fold", False, 1e-6, w)
        assert (frac > 0) == expect_pruned, (n, frac)
        if not expect_pruned:
            assert torch.equal(out, ref_out)  # the very same fused call
