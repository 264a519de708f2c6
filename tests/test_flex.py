"""The FlexAttention backend on the CPU: its block mask from the pruning plan, its forward vs float64, its refusals.

What runs on the CPU (xforget/ops/flex.py, xforget/ops/block_mask.py):

* the tile plan (which tiles are full, partial, absent) against a dense boolean reference of the same
  tiles written here, and against PyTorch's own ``create_block_mask`` of the same ``mask_mod``;
* the eager FlexAttention forward (no backward exists on the CPU) against the float64 definition
  (tests/attn_precision.py, shared with the CUDA tests): FoX with |c| in the thousands, ALiBi, padding,
  GQA, packed documents, chunked prefill, pruned within its bound of unpruned;
* routing (CUDA -> flex, decoding -> decode) and what the backends refuse.
"""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import pytest
import torch

import attn_precision as P
from xforget.ops import attend, forgetting_attention, rebase, resolve_backend
from xforget.ops.block_mask import block_mask, tile_plan, visibility_mod
from xforget.ops.common import Shapes
from xforget.ops.prune import collect_pruning


# ----------------------------------------------------------------------------- the tile plan


def dense_visible(s: Shapes, mask, docs, starts, q_block):
    """(B, H, n_q, n_k) bool from the definition: causal (lower right), real key, same document, kept prefix."""
    q_pos = torch.arange(s.n_q)[:, None] + s.offset
    k_pos = torch.arange(s.n_k)[None, :]
    ok = (k_pos <= q_pos)[None, None]
    if mask is not None:
        ok = ok & mask[:, None, None, :]
    if docs is not None:
        ok = ok & (docs[:, None, q_pos[:, 0], None] == docs[:, None, None, :])
    if starts is not None:
        per_query = starts.repeat_interleave(q_block, dim=-1)[..., : s.n_q]  # (B, H, n_q)
        ok = ok & (k_pos[None, None] >= per_query[..., None])
    return ok


def dense_tiles(ok, q_block, kv_block):
    """(partial, full) per tile of a dense visibility: padded with False like ``create_block_mask``."""
    B, H, n_q, n_k = ok.shape
    nqb, nkb = -(-n_q // q_block), -(-n_k // kv_block)
    padded = torch.zeros(B, H, nqb * q_block, nkb * kv_block, dtype=torch.bool)
    padded[..., :n_q, :n_k] = ok
    t = padded.view(B, H, nqb, q_block, nkb, kv_block)
    anyv, allv = t.any(5).any(3), t.all(5).all(3)
    return anyv & ~allv, allv


def random_starts(s: Shapes, q_block, kv_block, gen, per_batch=True):
    """A random pruning plan: per (batch, head, query block) a multiple of kv_block at or before the block."""
    nqb = -(-s.n_q // q_block)
    first = torch.arange(nqb) * q_block + s.offset
    top = first // kv_block + 1
    u = torch.rand(s.b if per_batch else 1, s.h, nqb, generator=gen)
    return (u * top).long() * kv_block


PLAN_CASES = [
    # id, b, h, n_q, n_k, q_block, kv_block, pad, documents, pruned
    ("causal-odd", 1, 1, 301, 301, 32, 32, None, 0, False),
    ("prefill-odd", 2, 3, 77, 301, 16, 32, None, 0, True),
    ("left-pad-pruned", 2, 4, 257, 257, 32, 16, "left", 0, True),
    ("holes-docs-pruned", 2, 2, 290, 290, 16, 16, "holes", 5, True),
    ("docs-prefill", 3, 2, 100, 333, 32, 64, None, 7, False),
    ("default-tiles", 1, 2, 700, 700, 128, 128, "holes", 3, True),
]


@pytest.mark.parametrize("case", PLAN_CASES, ids=[c[0] for c in PLAN_CASES])
def test_tile_plan_matches_dense_tiles(case):
    """Full / partial / absent tiles from tile arithmetic == the same tiles of the dense boolean mask."""
    _, b, h, n_q, n_k, qb, kb, pad, ndocs, pruned = case
    gen = torch.Generator().manual_seed(len(case[0]))
    c = P.make_case(b, h, h, n_k, 8, "strong", pad=pad, documents=ndocs, seed=n_k)
    s = Shapes(b, h, h, n_q, n_k, 8, 8)
    starts = random_starts(s, qb, kb, gen) if pruned else None
    plan = tile_plan(s, "cpu", mask=c["mask"], document_ids=c["docs"], starts=starts, q_block=qb, kv_block=kb)
    want_partial, want_full = dense_tiles(dense_visible(s, c["mask"], c["docs"], starts, qb), qb, kb)
    B, H = want_partial.shape[:2]
    assert torch.equal(plan.partial.expand(B, H, -1, -1), want_partial)
    assert torch.equal(plan.full.expand(B, H, -1, -1), want_full)
    assert want_partial.any() and (ndocs or want_full.any())
    if pruned:  # the random plan dropped tiles that causality alone keeps
        unpruned = tile_plan(s, "cpu", mask=c["mask"], document_ids=c["docs"], q_block=qb, kv_block=kb)
        kept = lambda p: (p.partial | p.full).expand(B, H, -1, -1).sum().item()  # noqa: E731
        assert kept(plan) < kept(unpruned)


@pytest.mark.parametrize("case", PLAN_CASES[2:4] + PLAN_CASES[:1], ids=["left-pad", "holes-docs", "causal"])
def test_block_mask_equals_torch_create_block_mask(case):
    """The BlockMask from the plan lists the same full and partial key blocks, in the same order, as
    PyTorch's ``create_block_mask`` evaluating our ``mask_mod`` on every pair (an independent construction)."""
    from torch.nn.attention.flex_attention import create_block_mask

    _, b, h, n_q, n_k, qb, kb, pad, ndocs, pruned = case
    c = P.make_case(b, h, h, n_k, 8, "strong", pad=pad, documents=ndocs, seed=3)
    s = Shapes(b, h, h, n_q, n_k, 8, 8)
    starts = random_starts(s, qb, kb, torch.Generator().manual_seed(1)) if pruned else None
    plan = tile_plan(s, "cpu", mask=c["mask"], document_ids=c["docs"], starts=starts, q_block=qb, kv_block=kb)
    mod = visibility_mod(s, mask=c["mask"], document_ids=c["docs"], starts=starts, q_block=qb)
    ours = block_mask(plan, s, mod)
    theirs = create_block_mask(mod, b, h, n_q, n_k, device="cpu", BLOCK_SIZE=(qb, kb))
    for name in ("kv_num_blocks", "full_kv_num_blocks"):
        assert torch.equal(getattr(ours, name).expand_as(getattr(theirs, name)), getattr(theirs, name)), name
    for num, idx in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
        counts, a, t = getattr(theirs, num), getattr(ours, idx).expand_as(getattr(theirs, idx)), getattr(theirs, idx)
        listed = torch.arange(t.shape[-1]) < counts[..., None]
        assert torch.equal(a[listed], t[listed]), idx
    assert torch.equal(ours.to_dense().expand_as(theirs.to_dense()), theirs.to_dense())


def test_heads_that_never_forget_keep_every_causal_tile():
    """The pruning plan of a head with f = 1 is the plain causal block mask; strong heads drop most tiles."""
    b, h, n = 1, 3, 2048
    c = P.make_case(b, h, h, n, 16, "strong", seed=1)
    c["lf"][:, 1] = 0.0
    with collect_pruning() as log, torch.no_grad():
        forgetting_attention(c["q"].float(), c["k"].float(), c["v"].float(), c["lf"].float(), backend="flex")
    frac = log.records[0].fraction
    assert log.records[0].backend == "flex"
    assert frac[1] == 0.0 and frac[0] > 0.5 and frac[2] > 0.5
    from xforget.ops.flex import pruning_starts
    from xforget.ops.backend import checked_call

    call = checked_call(c["q"].float(), c["k"].float(), c["v"].float(), causal=True, log_fgate=c["lf"].float())
    starts = pruning_starts(call, call.forward_decay(), 128, 128)
    s = call.shapes
    pruned, plain = tile_plan(s, "cpu", starts=starts), tile_plan(s, "cpu")
    assert torch.equal(pruned.partial[:, 1], plain.partial[0]) and torch.equal(pruned.full[:, 1], plain.full[0])
    assert (pruned.full[:, 0].sum() < plain.full.sum() / 2) and (pruned.full[:, 2].sum() < plain.full.sum() / 2)


# ----------------------------------------------------------------------------- the forward vs float64


def flex_op(**kw):
    def op(q, k, v, lf, mask=None, document_ids=None):
        return forgetting_attention(q, k, v, lf, mask=mask, document_ids=document_ids, backend="flex", **kw)
    return op


FORWARD_CASES = [
    # id, b, h, h_kv, n, n_q, d, gates, pad, documents
    ("strong-c-thousands", 1, 2, 2, 1536, None, 16, "strong", None, 0),
    ("mixed-gqa-left-pad", 2, 4, 2, 400, None, 16, "mixed", "left", 0),
    ("weak-holes-prefill", 2, 2, 1, 333, 100, 8, "weak", "holes", 0),
    ("strong-prefill", 1, 2, 1, 1400, 300, 16, "strong", None, 0),  # chunked prefill with |c| in the thousands
    ("strong-documents-pad", 2, 2, 2, 300, None, 16, "strong", "holes", 4),
]


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize("case", FORWARD_CASES, ids=[c[0] for c in FORWARD_CASES])
def test_flex_forward_matches_float64(case, prune, monkeypatch):
    """fp32 inputs: the eager flex forward is within fp32 rounding of the float64 definition
    (the decay rounds to ~6e-8 |c| per logit), as close as the single-channel fold on the same inputs
    (the CPU fold's exact channels, xforget/ops/rebase.py, are switched off for the comparison: they
    bring the fold to ~1e-7 whatever |c|)."""
    monkeypatch.setattr(rebase, "ENABLED", False)
    _, b, h, h_kv, n, n_q, d, gates, pad, ndocs = case
    c = P.make_case(b, h, h_kv, n, d, gates, pad=pad, n_q=n_q, documents=ndocs, seed=n)
    if gates == "strong" and ndocs == 0:
        assert P.max_abs_c(c) > 1000
    ref = P.reference(P.rounded(c, torch.float32), grads=False)
    got = P.run_op(flex_op(prune=prune), c, torch.float32, grads=False)
    fold = P.run_op(lambda *a, **kw: forgetting_attention(*a, backend="fold", prune=False, **kw), c, torch.float32,
                    grads=False)
    err, err_fold = P.rel_errors(got, ref)["out"], P.rel_errors(fold, ref)["out"]
    assert err < 1e-6 + 2e-8 * P.max_abs_c(c), err
    assert err <= 2 * err_fold + 2e-6, (err, err_fold)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_flex_half_precision_forward_is_at_the_dtype_floor(dtype):
    """bf16/fp16 inputs with |c| ~ 1400: the output is the float64 result of the rounded inputs to within
    the output dtype's rounding (the decay never passes through the half dtype)."""
    c = P.make_case(1, 2, 2, 1536, 16, "strong", seed=5)
    ref = P.reference(P.rounded(c, dtype), grads=False)
    got = P.run_op(flex_op(), c, dtype, grads=False)
    unit = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}[dtype]
    assert P.rel_errors(got, ref)["out"] < unit, P.rel_errors(got, ref)


def test_alibi_as_constant_gate():
    """ALiBi (log f = -slope, Press et al. 2022) through the flex score_mod: slope * (j - i) added to the scores."""
    b, h, n, d = 1, 4, 300, 16
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(b, h, n, d, generator=g) for _ in range(3))
    slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)])
    lf = (-slopes)[None, :, None].expand(b, h, n)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    bias = (slopes[:, None, None] * (j - i)).double()[None]
    logits = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(d) + bias
    want = logits.masked_fill(j > i, -math.inf).softmax(-1) @ v.double()
    with torch.no_grad():
        got = forgetting_attention(q, k, v, lf, backend="flex")
    assert (got.double() - want).abs().max() < 1e-5


def test_pruned_within_eps_bound_of_unpruned():
    """With a large eps the pruning is visible and stays within the bound: each output channel moves by at most
    eps * (max v - min v) (xforget/ops/prune.py), float64 inputs so that no rounding hides it."""
    c = P.make_case(2, 4, 2, 800, 16, "mixed", pad="left", seed=2)
    q, k, v, lf, mask = (c[key] for key in ("q", "k", "v", "lf", "mask"))
    q = q * 2
    for eps in (1e-6, 1e-2):
        with collect_pruning() as log, torch.no_grad():
            out = forgetting_attention(q, k, v, lf, mask=mask, backend="flex", prune_eps=eps)
            ref = forgetting_attention(q, k, v, lf, mask=mask, backend="flex", prune=False)
        frac = log.records[0].fraction
        assert frac.max() > 0.3 and frac[-1] == 0.0  # the last head never forgets
        vrange = (v.amax(2) - v.amin(2)).max().item()
        assert (out - ref).abs().max().item() <= eps * vrange + 1e-12


def math_flex_op(prune: bool, block: int = 32):
    """Our score_mod and block mask (``flex_inputs``, what the backend passes to the kernel) through FlexAttention's
    own differentiable reference implementation (``math_attention``): gradients of the flex inputs on the CPU."""
    from torch._higher_order_ops.flex_attention import math_attention

    from xforget.ops.backend import checked_call
    from xforget.ops.flex import flex_inputs

    def op(q, k, v, lf, mask=None, document_ids=None):
        call = checked_call(q, k, v, causal=True, log_fgate=lf, mask=mask, document_ids=document_ids, prune=prune,
                            prune_eps=1e-2)
        score_mod, bm = flex_inputs(call, q_block=block, kv_block=block)
        out, _, _ = math_attention(q, k, v, score_mod, bm.as_tuple(), call.scale, {}, (), ())
        return call.finish(out)
    return op


MATH_CASES = [
    # id, b, h, h_kv, n, n_q, gates, pad, documents
    ("gqa-left-pad-documents", 2, 4, 2, 300, None, "strong", "left", 3),
    ("holes-prefill", 2, 2, 1, 333, 150, "mixed", "holes", 0),
]


@pytest.mark.parametrize("case", MATH_CASES, ids=[c[0] for c in MATH_CASES])
def test_flex_inputs_every_gradient_vs_float64(case):
    """Forward and the gradients w.r.t. q, k, v and log f of the flex score_mod (row side detached) and block mask,
    in float64: equal to the definition unpruned, within the pruning bound pruned (eps = 1e-2, bound of
    tests/test_prune.py). The fused CUDA kernel runs the same inputs (tests/test_flex_cuda.py)."""
    _, b, h, h_kv, n, n_q, gates, pad, ndocs = case
    c = P.make_case(b, h, h_kv, n, 16, gates, pad=pad, n_q=n_q, documents=ndocs, seed=4)
    c["q"] = c["q"] * 2
    f64 = dict(gate_dtype=torch.float64)
    ref = P.reference(P.rounded(c, torch.float64, **f64))
    exact = P.run_op(math_flex_op(False), c, torch.float64, **f64)
    for name, err in P.rel_errors(exact, ref).items():
        assert err < 1e-12, (name, err)
    with collect_pruning() as log:
        pruned = P.run_op(math_flex_op(True), c, torch.float64, **f64)
    assert log.records[0].fraction.max() > 0.3
    eps, n_q = 1e-2, c["q"].shape[2]
    q, k, w = c["q"], c["k"], c["w"]
    v = c["v"].repeat_interleave(h // h_kv, 1)
    G = w.norm(dim=-1).max().item() * v.norm(dim=-1).max().item()
    limits = {"out": eps * (v.amax(2) - v.amin(2)).max().item(), "dq": 6 * eps * G * k.norm(dim=-1).max().item() / 4,
              "dk": 6 * eps * G * q.norm(dim=-1).max().item() * n_q / 4, "dv": 2 * eps * n_q * w.abs().max().item(),
              "dlogf": 6 * eps * G * n_q}
    for name, limit in limits.items():
        assert (pruned[name] - exact[name]).abs().max().item() <= limit, name


def test_compiled_kernel_is_reused_by_eager_calls_with_new_closures(monkeypatch):
    """In an eager model on CUDA every call makes a new score_mod, mask_mod and BlockMask and hands them to the
    kernel compiled once (``flex_kernel``): they must not recompile it (dynamo guards on their code, not their
    identity). Checked with the aot_eager backend on the CPU, the same dynamo front end as CUDA's inductor."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    from torch.nn.attention.flex_attention import flex_attention

    import xforget.ops.flex as fx

    torch._dynamo.reset()
    compiled = torch.compile(flex_attention, backend="aot_eager")
    monkeypatch.setattr(fx, "flex_kernel", lambda device: compiled)
    graphs = []
    for seed in range(3):
        c = P.make_case(1, 2, 2, 600, 16, "strong", pad="left", seed=seed)
        args = [c[key].float() for key in ("q", "k", "v", "lf")]
        with torch.no_grad():
            out = forgetting_attention(*args, mask=c["mask"], backend="flex")
        graphs.append(counters["stats"]["unique_graphs"])
        assert torch.isfinite(out).all()
    assert graphs[0] >= 1 and graphs[1] == graphs[0] and graphs[2] == graphs[0], graphs
    torch._dynamo.reset()


def test_row_side_of_the_decay_has_zero_gradient():
    """Why the flex score_mod may detach c_i: every row of dS sums to zero, so d c_i = sum_j dS_ij = 0 and the
    gate gradient with the row side detached equals the full one (float64 autograd of the definition, with
    padding, a fully masked row and a pruned-like masked prefix)."""
    b, h, n, d = 2, 2, 40, 8
    c = P.make_case(b, h, h, n, d, "strong", pad="left", seed=9)
    allowed = torch.ones(n, n, dtype=torch.bool).tril()[None, None] & c["mask"][:, None, None, :]
    allowed = allowed & (torch.arange(n)[None, :] >= (torch.arange(n)[:, None] - 9))  # a band: keys pruned
    grads = []
    for detach in (False, True):
        lf = c["lf"].clone().requires_grad_(True)
        cs = torch.where(c["mask"][:, None, :], lf, 0.0).cumsum(-1)
        row = cs.detach() if detach else cs
        logits = c["q"] @ c["k"].transpose(-1, -2) / math.sqrt(d) + row[..., :, None] - cs[..., None, :]
        p = logits.masked_fill(~allowed, -math.inf).softmax(-1).nan_to_num(0.0)
        (p @ c["v"] * c["w"]).sum().backward()
        grads.append(lf.grad)
    assert grads[0].abs().max() > 1e-2
    torch.testing.assert_close(grads[1], grads[0], atol=1e-12, rtol=0)


def test_flex_traces_as_one_graph_and_new_calls_do_not_recompile():
    """Under torch.compile(fullgraph=True) the whole flex path (pruning plan, tile plan, BlockMask, score_mod and
    mask_mod closures made per call) is one graph without breaks, and a second call with new data of the same
    shapes reuses it (what the compiled CUDA kernel relies on; traced here with the aot_eager backend because
    inductor's CPU template does not take this call)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    def fn(q, k, v, lf, mask):  # (document_ids: their checks are data-dependent, a graph break of their own)
        return forgetting_attention(q, k, v, lf, mask=mask, backend="flex")

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for seed in (0, 1):
        c = P.make_case(2, 2, 1, 600, 16, "strong", pad="holes", seed=seed)
        args = [c[key].float() for key in ("q", "k", "v", "lf")] + [c["mask"]]
        with torch.no_grad():
            torch.testing.assert_close(compiled(*args), fn(*args), atol=1e-6, rtol=0)
        if seed == 0:
            graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs
    torch._dynamo.reset()


@pytest.mark.parametrize("layers", [
    dict(position="fox", kv_heads=2, forget_gate_bias_init=0.0),
    dict(position="alibi"),
    dict(position="fox", forget_gate_divisor=1.0, forget_gate_bias_init=0.0, qk_norm=True, output_gate=True,
         kv_shift=True, output_norm=True, norm="rmsnorm", ff_activation="swiglu", value_residual=True),
], ids=["fox-gqa", "alibi", "fox_pro-value-residual"])
def test_model_with_flex_equals_model_with_the_fold(layers):
    """A whole model with attn_backend='flex' (inference on the CPU) gives the fold's logits, padded batch included:
    equal in float64 without pruning; with pruning (each path its own tiles) in fp32 within fp32 rounding at |c| ~ 500
    (~6e-8 |c| per logit: measured 5e-5)."""
    from xforget import Decoder, TransformerWrapper

    def pair(**kw):
        torch.manual_seed(0)
        dec = dict(dim=32, depth=1, heads=4, **layers, **kw)
        net = TransformerWrapper(num_tokens=64, max_seq_len=600, attn_layers=Decoder(**dec))
        flex = TransformerWrapper(num_tokens=64, max_seq_len=600, attn_layers=Decoder(attn_backend="flex", **dec))
        flex.load_state_dict(net.state_dict())
        return net.eval(), flex.eval()

    x = torch.randint(0, 64, (2, 600))
    mask = torch.ones(2, 600, dtype=torch.bool)
    mask[1, :50] = False
    with torch.no_grad():
        for (net, flex), dtype, tol in ((pair(attn_prune=False), torch.float64, 1e-10), (pair(), torch.float32, 2e-4)):
            net, flex = net.to(dtype), flex.to(dtype)
            for m in (None, mask):
                torch.testing.assert_close(flex(x, mask=m), net(x, mask=m), atol=tol, rtol=0)


# ----------------------------------------------------------------------------- routing and refusals


def fake_q(device: str, dtype=torch.float32, n_q=64):
    return SimpleNamespace(is_cuda=device == "cuda", dtype=dtype, shape=(1, 2, n_q, 16))


def test_auto_routes_cuda_to_flex_and_decoding_to_decode():
    assert resolve_backend(None, q=fake_q("cuda"), causal=True, n_k=64) == "flex"
    assert resolve_backend(None, q=fake_q("cuda", torch.bfloat16), causal=True, n_k=64) == "flex"
    assert resolve_backend(None, q=fake_q("cuda", torch.float64), causal=True, n_k=64) == "cuda"
    assert resolve_backend(None, q=fake_q("cuda", n_q=1), causal=True, n_k=64) == "decode"
    assert resolve_backend(None, q=fake_q("cuda"), causal=False, n_k=64) == "chunked"
    assert resolve_backend(None, q=fake_q("cpu"), causal=True, n_k=64) == "fold"


def test_flex_refusals():
    q = torch.randn(1, 2, 8, 16)
    lf = torch.zeros(1, 2, 8, requires_grad=True)
    with pytest.raises(ValueError, match="forward-only.*'fold'"):
        forgetting_attention(q, q, q, lf, backend="flex")
    with pytest.raises(ValueError, match="causal"):
        forgetting_attention(q, q, q, lf.detach(), causal=False, backend="flex")
    with pytest.raises(ValueError, match="dense bias"):
        attend(q, q, q, causal=True, log_fgate=lf.detach(), bias=torch.zeros(1, 1, 8, 8), backend="flex")
    with torch.no_grad():  # the same call without a gradient runs
        out = forgetting_attention(q, q, q, lf, backend="flex")
    assert out.shape == q.shape


def test_fla_refusals(monkeypatch):
    """'fla' needs CUDA tensors and the fla-core package; a missing package names the extra (one line)."""
    from xforget.ops import fla

    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="CUDA"):
        forgetting_attention(q, q, q, torch.zeros(1, 2, 8), backend="fla")
    monkeypatch.setitem(sys.modules, "fla", None)  # importing it now raises ImportError
    with pytest.raises(ValueError, match=r"fla-core.*xforget\[cuda\]") as err:
        fla.fla_kernel()
    assert "\n" not in str(err.value)
    monkeypatch.setattr("xforget.models.validate.fla_available", lambda: False)
    from xforget import Decoder

    with pytest.raises(ValueError, match=r"attn_backend.*fla.*xforget\[cuda\]"):
        Decoder(dim=16, depth=1, heads=2, attn_backend="fla")
    with pytest.raises(ValueError, match="causal"):
        Decoder(dim=16, depth=1, heads=2, attn_backend="flex", position="t5")
