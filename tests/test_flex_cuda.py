"""The CUDA attention path (FlexAttention, compiled) against float64: forward and every gradient.

Skipped without a CUDA GPU (the CPU CI); `scripts/gpu_check.py` runs it on a GPU machine.  The logic is
tests/attn_precision.py, shared with the CPU tests of tests/test_flex.py (which run the flex forward on the
CPU) and with the precision table of scripts/gpu_check.py.

At 4096 tokens with strong gates |c| reaches the thousands, where the key-channel fold's d log_fgate is
off by 0.21 in bf16 (DESIGN.md section 8); the decay added in fp32 inside the kernel must keep it below
5e-3 and within 1.5x of FLA's kernel on the same inputs (that comparison needs fla-core, the
``xforget[cuda]`` extra, and is skipped without it).  Relative errors are norm-wise, of the output and of
the gradients of ``sum(out * w)`` w.r.t. q, k, v and log f, against the float64 result of the inputs
rounded to the tested dtype.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import attn_precision as P
from xforget.ops import dispatch, forgetting_attention
from xforget.ops.prune import collect_pruning

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

N = 4096
# Relative error limits per dtype for out, dq, dk, dv: ~3x the plain-SDPA floor measured on an H200
# (bf16 2.0e-3 out, 3.0e-3 grads; issue 21); d log f: the target in bf16.
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 2e-4}
TOL_DLOGF = {torch.bfloat16: 5e-3, torch.float16: 2e-3, torch.float32: 1e-3}
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# the precision table's shapes (scripts/gpu_check.py), so that one compiles for the other (inductor's cache)
LAYOUTS = {"mha": dict(h=8, h_kv=8, pad=None), "gqa-left-pad": dict(h=8, h_kv=2, pad="left")}


def flex(q, k, v, lf, mask=None, document_ids=None):
    return forgetting_attention(q, k, v, lf, mask=mask, document_ids=document_ids, backend="flex")


def flex_unpruned(q, k, v, lf, mask=None, document_ids=None):
    return forgetting_attention(q, k, v, lf, mask=mask, document_ids=document_ids, backend="flex", prune=False)


def errors(op, case, dtype):
    ref = P.reference(P.rounded(case, dtype))
    return P.rel_errors(P.run_op(op, case, dtype), ref)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("gates", P.GATES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_flex_forward_and_every_gradient_vs_float64(dtype, gates, layout):
    lay = LAYOUTS[layout]
    case = P.make_case(2, lay["h"], lay["h_kv"], N, 64, gates, pad=lay["pad"], seed=11, device="cuda")
    if gates == "strong":
        assert P.max_abs_c(case) > 1000
    err = errors(flex, case, dtype)
    for name in ("out", "dq", "dk", "dv"):
        assert err[name] < TOL[dtype], (name, err)
    assert err["dlogf"] < TOL_DLOGF[dtype], err


@pytest.mark.skipif(importlib.util.find_spec("fla") is None, reason="fla-core (xforget[cuda]) not installed")
@pytest.mark.parametrize("gates", P.GATES)
def test_dlogf_within_1p5x_of_fla_in_bf16(gates):
    case = P.make_case(2, 4, 4, N, 64, gates, seed=12, device="cuda")
    ours = errors(flex, case, torch.bfloat16)
    theirs = errors(lambda *a, **kw: forgetting_attention(*a, backend="fla", **kw), case, torch.bfloat16)
    assert ours["dlogf"] <= 1.5 * theirs["dlogf"], (ours, theirs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_documents_and_prefill_vs_float64(dtype):
    case = P.make_case(2, 4, 2, 2048, 64, "mixed", pad="holes", documents=5, seed=13, device="cuda")
    err = errors(flex, case, dtype)
    assert max(err.values()) < max(TOL[dtype], TOL_DLOGF[dtype]), err
    pre = P.make_case(2, 4, 2, 2048, 64, "strong", n_q=700, seed=14, device="cuda")
    err = errors(flex, pre, dtype)
    assert max(err.values()) < max(TOL[dtype], TOL_DLOGF[dtype]), err


def test_pruned_within_eps_bound_of_unpruned_every_gradient():
    """fp32, eps = 1e-3: pruned vs unpruned within the bound of xforget/ops/prune.py (derived in
    tests/test_prune.py), plus the fp32 rounding the two runs do not share (1e-5 of each tensor's size)."""
    case = P.make_case(2, 4, 2, N, 64, "mixed", pad="left", seed=15, device="cuda")
    case["q"] = case["q"] * 2
    eps = 1e-3

    def op(prune):
        def run(q, k, v, lf, mask=None, document_ids=None):
            return forgetting_attention(q, k, v, lf, mask=mask, backend="flex", prune=prune, prune_eps=eps)
        return run

    with collect_pruning() as log:
        got = P.run_op(op(True), case, torch.float32)
    ref = P.run_op(op(False), case, torch.float32)
    assert log.records and log.records[0].fraction.max() > 0.5 and log.records[0].fraction[-1] == 0
    q, k, w = (case[key].float().double() for key in ("q", "k", "w"))
    v = case["v"].float().double().repeat_interleave(2, 1)
    n_q, scale = q.shape[2], q.shape[-1] ** -0.5
    G = w.norm(dim=-1).max().item() * v.norm(dim=-1).max().item()
    limits = {
        "out": eps * (v.amax(2) - v.amin(2)).max().item(),
        "dq": 6 * eps * G * scale * k.norm(dim=-1).max().item(),
        "dk": 6 * eps * G * scale * q.norm(dim=-1).max().item() * n_q,
        "dv": 2 * eps * n_q * w.abs().max().item(),
        "dlogf": 6 * eps * G * n_q,
    }
    for name, limit in limits.items():
        diff = (got[name] - ref[name]).abs().max().item()
        assert diff <= limit + 1e-5 * ref[name].abs().max().item(), (name, diff, limit)


def test_auto_on_cuda_is_flex_and_decoding_is_decode(monkeypatch):
    seen = []
    for name in ("flex", "decode"):
        impl = dispatch._IMPLS[name]
        monkeypatch.setitem(dispatch._IMPLS, name, lambda call, impl=impl, name=name: seen.append(name) or impl(call))
    q = torch.randn(1, 2, 256, 32, device="cuda", dtype=torch.bfloat16)
    lf = torch.zeros(1, 2, 256, device="cuda")
    forgetting_attention(q, q, q, lf)
    forgetting_attention(q[:, :, -1:], q, q, lf)
    assert seen == ["flex", "decode"]


def test_decoder_on_cuda_equals_decoder_on_cpu():
    """A FoX decoder on CUDA (flex) gives the CPU (fold) logits and parameter gradients in fp32."""
    from xforget import Decoder, TransformerWrapper

    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=64, max_seq_len=512,
                             attn_layers=Decoder(dim=64, depth=2, heads=4, attn_kv_heads=2, position="fox"))
    x = torch.randint(0, 64, (2, 300))
    cpu = net(x)
    cpu.square().mean().backward()
    g_cpu = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad()
    net.cuda()
    gpu = net(x.cuda())
    gpu.square().mean().backward()
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-4, rtol=2e-4)
    for n, p in net.named_parameters():
        if n in g_cpu:
            torch.testing.assert_close(p.grad.cpu(), g_cpu[n], atol=2e-4, rtol=2e-3, msg=n)
