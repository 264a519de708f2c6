"""Packed documents (DESIGN.md section 7): a packed row equals its documents run alone.

Invariance tests: for every positional scheme and block option, the logits of a row that packs
several documents equal, position by position, the logits of each document run alone, and the
gradients w.r.t. every parameter (the token embedding rows are the inputs' gradients) equal the
sum of the separate runs' gradients, and so do the gradients w.r.t. the embedded inputs, position by
position -- in float64 (tight) and float32.  The op-level tests check
the gradients w.r.t. q, k, v and the gates against the float64 reference run per document.
"""

import numpy as np
import pytest
import torch

from xforget import Decoder, Encoder, TransformerWrapper
from xforget.ops import attend, fold
from xforget.ops.documents import segment_starts, segmented_cumsum
from xforget.ops.prune import collect_pruning

# (name, Decoder options): every scheme, and the blocks that mix tokens or values
SCHEMES = {
    "none": dict(position="none"),
    "absolute": dict(position="absolute"),
    "sinusoidal": dict(position="sinusoidal"),
    "rotary": dict(position="rotary"),
    "xpos": dict(position="rotary", rotary_xpos=True),
    "alibi": dict(position="alibi"),
    "t5": dict(position="t5"),
    "dynamic": dict(position="dynamic"),
    "fox": dict(position="fox", forget_gate_bias_init=0.0),
    "fox_per_row": dict(position="fox_per_row"),
    "fox_pro": dict(position="fox", kv_shift=True, qk_norm=True, output_gate=True, output_norm=True),
    "value_residual": dict(position="fox", value_residual=True, value_residual_mix="learned"),
    "gqa": dict(position=["fox", "rotary"], kv_heads=2),
    "memory": dict(position="fox", num_mem_kv=2),
    "memory_rotary": dict(position="rotary", num_mem_kv=2),
}


def _ids(lengths):
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))


def _model(options, dtype, layers=Decoder, max_seq_len=64, **wrapper_options):
    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=40, max_seq_len=max_seq_len,
                             attn_layers=layers(dim=32, depth=2, heads=4, **options), **wrapper_options)
    return net.to(dtype)


def _grads(net):
    return {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


class _EmbeddingGrads:
    """Keeps the gradient w.r.t. the embedded inputs (the token embedding's output) of every forward."""

    def __init__(self, net):
        self.outputs = []
        self.handle = net.token_emb.register_forward_hook(self._keep)

    def _keep(self, module, args, out):
        out.retain_grad()
        self.outputs.append(out)

    def grads(self):
        grads = [out.grad for out in self.outputs]
        self.outputs.clear()
        return grads


def _check_packed_equals_separate(net, lengths, dtype, tol, pad=0, grad_tol=None):
    """Row 0 packs ``lengths`` (plus ``pad`` pads at the end); logits (to ``tol``), parameter gradients and
    the gradients w.r.t. the embedded inputs (to ``grad_tol``, default ``10 * tol``, relative to the largest
    gradient for parameters) match, position by position. Returns the largest errors (logits, parameter
    gradients, input gradients)."""
    grad_tol = tol * 10 if grad_tol is None else grad_tol
    n = sum(lengths)
    tokens = torch.randint(0, 40, (1, n + pad))
    docs = torch.cat((_ids(lengths), torch.full((pad,), len(lengths) - 1)))[None]
    mask = None if not pad else torch.arange(n + pad)[None] < n
    weights = torch.randn(1, n + pad, 40, dtype=dtype)  # a loss that touches every logit
    inputs = _EmbeddingGrads(net)
    net.zero_grad()
    packed = net(tokens, document_ids=docs, mask=mask)
    (packed[:, :n] * weights[:, :n]).sum().backward()
    g_packed, (x_packed,) = _grads(net), inputs.grads()
    net.zero_grad()
    start, logit_err, input_err = 0, 0.0, 0.0
    for length in lengths:
        alone = net(tokens[:, start:start + length])
        torch.testing.assert_close(packed[:, start:start + length], alone, atol=tol, rtol=0)
        logit_err = max(logit_err, (packed[:, start:start + length] - alone).abs().max().item())
        (alone * weights[:, start:start + length]).sum().backward()
        (x_alone,) = inputs.grads()
        err = (x_packed[:, start:start + length] - x_alone).abs().max().item()
        assert err <= grad_tol * (1 + x_alone.abs().max().item()), ("inputs", start, err)
        input_err = max(input_err, err)
        start += length
    inputs.handle.remove()
    g_alone = _grads(net)
    assert g_packed.keys() == g_alone.keys()
    param_err = 0.0
    for k in g_packed:
        err = (g_packed[k] - g_alone[k]).abs().max().item()
        assert err <= grad_tol * (1 + g_alone[k].abs().max().item()), (k, err)
        param_err = max(param_err, err)
    return logit_err, param_err, input_err


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_packed_row_equals_documents_alone(scheme, dtype, tol):
    net = _model(SCHEMES[scheme], dtype)
    _check_packed_equals_separate(net, [1, 9, 5, 1, 16], dtype, tol)


@pytest.mark.parametrize("scheme", ["rotary", "fox", "fox_pro", "t5", "absolute"])
def test_padding_on_top_and_a_document_that_fills_the_window(scheme):
    net = _model(SCHEMES[scheme], torch.float64)
    _check_packed_equals_separate(net, [3, 1, 7], torch.float64, 1e-10, pad=5)
    _check_packed_equals_separate(net, [32], torch.float64, 1e-10)


@pytest.mark.parametrize("scheme", ["fox", "t5", "rotary", "alibi"])
def test_encoder_packed_row_is_block_diagonal(scheme):
    net = _model(SCHEMES[scheme], torch.float64, layers=Encoder)
    _check_packed_equals_separate(net, [4, 1, 11], torch.float64, 1e-10)


@pytest.mark.parametrize("scheme", ["fox", "none", "alibi", "fox_pro"])
def test_long_packed_rows_through_the_blocked_fold(scheme, monkeypatch):
    """Long rows: the fold runs per query block from each block's document start (threshold lowered here)."""
    monkeypatch.setattr(fold, "DOC_BLOCKED_MIN_KEYS", 512)
    net = _model(SCHEMES[scheme], torch.float64, max_seq_len=700)
    _check_packed_equals_separate(net, [300, 1, 150, 189], torch.float64, 1e-9)


def test_batch_rows_with_different_layouts_and_padding():
    net = _model(SCHEMES["fox_pro"], torch.float64)
    tokens = torch.randint(0, 40, (2, 20))
    docs = torch.stack((_ids([6, 14]), _ids([1, 1, 10, 8])))
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 18:] = False
    out = net(tokens, document_ids=docs, mask=mask)
    for row, lengths in ((0, [6, 14]), (1, [1, 1, 10, 6])):
        start = 0
        for length in lengths:
            alone = net(tokens[row:row + 1, start:start + length])
            torch.testing.assert_close(out[row:row + 1, start:start + length], alone, atol=1e-10, rtol=0)
            start += length


@pytest.mark.parametrize("scheme", ["fox_pro", "rotary", "t5", "alibi", "memory"])
def test_cached_generation_inside_a_packed_prompt(scheme):
    """Prefill a packed prompt, then decode: each step equals the last document run alone."""
    net = _model(SCHEMES[scheme], torch.float64)
    first, second = torch.randint(0, 40, (1, 9)), torch.randint(0, 40, (1, 12))
    prompt = torch.cat((first, second[:, :5]), dim=1)
    docs = torch.cat((torch.zeros(1, 9, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)), dim=1)
    logits, cache = net(prompt, document_ids=docs, return_cache=True)
    full = net(second)
    torch.testing.assert_close(logits[:, 9:], full[:, :5], atol=1e-10, rtol=0)
    for t in range(5, 12):  # new tokens without ids continue the last cached document
        step, cache = net(second[:, t:t + 1], cache=cache, return_cache=True)
        torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-10, rtol=0)
    fresh, _ = net(second[:, :1], cache=cache, document_ids=torch.full((1, 1), 2), return_cache=True)
    torch.testing.assert_close(fresh[:, 0], net(second[:, :1])[:, 0], atol=1e-10, rtol=0)  # a new document


def test_none_and_one_document_agree():
    net = _model(SCHEMES["fox_pro"], torch.float32)
    tokens = torch.randint(0, 40, (2, 30))
    torch.testing.assert_close(net(tokens, document_ids=torch.zeros(2, 30, dtype=torch.long)), net(tokens),
                               atol=2e-6, rtol=0)


@pytest.mark.parametrize("bad,why", [
    (torch.tensor([[0, 1, 1, 0]]), "non-decreasing .* row 0 goes from 1 at position 2 to 0 at 3"),
    (torch.zeros(1, 4), "int64"),
    (np.zeros((1, 4), dtype=np.int64), "torch integer tensor .* numpy.ndarray"),
    (torch.zeros(2, 4, dtype=torch.long), "shape"),
])
def test_bad_document_ids_are_refused(bad, why):
    net = _model(SCHEMES["fox"], torch.float32)
    with pytest.raises(ValueError, match=why):
        net(torch.zeros(1, 4, dtype=torch.long), document_ids=bad)


# ----------------------------------------------------------------------------- the ops


def _op_case(n, lengths, h=4, h_kv=2, d=8, dtype=torch.float64, decay=True):
    q = torch.randn(1, h, n, d, dtype=dtype)
    k, v = torch.randn(1, h_kv, n, d, dtype=dtype), torch.randn(1, h_kv, n, d, dtype=dtype)
    g = torch.nn.functional.logsigmoid(2 * torch.randn(1, h, n, dtype=dtype)) if decay else None
    return q, k, v, g, _ids(lengths)[None]


@pytest.mark.parametrize("backend", ["auto", "reference", "chunked", "fold", "decode"])
@pytest.mark.parametrize("n,lengths,blocked", [(40, [1, 10, 29], 2048), (700, [1, 300, 150, 249], 2048),
                                               (700, [1, 300, 150, 249], 512)])
@pytest.mark.parametrize("decay", [True, False])
def test_op_gradients_equal_documents_alone(backend, n, lengths, blocked, decay, monkeypatch):
    """Outputs and gradients w.r.t. q, k, v and the gate vs the float64 reference per document."""
    monkeypatch.setattr(fold, "DOC_BLOCKED_MIN_KEYS", blocked)  # 512: the blocked fold (skips earlier documents)
    q, k, v, g, docs = _op_case(n, lengths, decay=decay)
    leaves = [t.requires_grad_() for t in (q, k, v, g) if t is not None]
    out = attend(q, k, v, causal=True, log_fgate=g, document_ids=docs, backend=backend)
    dout = torch.randn_like(out)
    packed = torch.autograd.grad(out, leaves, dout)
    start = 0
    for length in lengths:
        sl = slice(start, start + length)
        parts = [t.detach()[..., sl, :].requires_grad_() for t in (q, k, v)]
        gs = None if g is None else g.detach()[..., sl].requires_grad_()
        alone = attend(*parts, causal=True, log_fgate=gs, backend="reference")
        grads = torch.autograd.grad(alone, parts + ([] if gs is None else [gs]), dout[:, :, sl])
        torch.testing.assert_close(out[:, :, sl], alone, atol=1e-12, rtol=0)
        for gp, ga in zip(packed[:3], grads[:3]):
            torch.testing.assert_close(gp[:, :, sl], ga, atol=1e-11, rtol=0)
        if gs is not None:
            torch.testing.assert_close(packed[3][..., sl], grads[3], atol=1e-11, rtol=0)
        start += length


def test_other_documents_get_exactly_zero_weight():
    """A huge value in another document cannot leak, not even as 1e-30 of a row."""
    q, k, v, g, docs = _op_case(600, [300, 300], dtype=torch.float32)
    v[:, :, :300] = 1e30
    for backend in ("fold", "chunked", "reference"):
        out = attend(q, k, v, causal=True, log_fgate=g, document_ids=docs, backend=backend)
        assert out[:, :, 300:].abs().max() < 10, backend


def test_decays_are_cumulated_per_document_without_growing():
    """|c| restarts with every document: the 1000th document's decay carries no earlier digits."""
    g = torch.full((1, 1, 100_000), -0.37)
    starts = segment_starts(_ids([100] * 1000)[None])
    c = segmented_cumsum(g, starts)
    assert c.abs().max() <= 0.37 * 100 + 1e-3
    torch.testing.assert_close(c[..., -100:], torch.cumsum(g[..., :100].double(), -1).float(), atol=0, rtol=0)


def test_packed_fold_skips_every_tile_of_earlier_documents(monkeypatch):
    """The recorded skipped fraction covers at least every (128 x 64) tile wholly in earlier documents."""
    monkeypatch.setattr(fold, "DOC_BLOCKED_MIN_KEYS", 1024)
    lengths = [[100, 400, 300, 224], [700, 324]]
    n = 1024
    q = torch.randn(2, 2, n, 8)
    k, v = torch.randn(2, 2, n, 8), torch.randn(2, 2, n, 8)
    docs = torch.stack([_ids(row) for row in lengths])
    with collect_pruning() as log:
        attend(q, k, v, causal=True, document_ids=docs, backend="fold")
    (rec,) = log.records
    layout = 0
    for row in lengths:
        bounds = torch.cumsum(torch.tensor([0] + row), 0)
        for m0 in range(0, n, 128):
            doc_start = int(bounds[bounds <= m0].max())  # first query's document starts here
            tiles = doc_start // 64  # key tiles of 64 wholly before it
            layout += tiles * 64 * 128
    assert float(rec.pruned[0]) >= layout
    total = n * (n + 1) // 2 * 2
    assert float(rec.fraction[0]) >= layout / total > 0.2


def test_total_forget_gives_exactly_zero_weight_against_huge_logits():
    """The fp32 fold writes each boundary into c as a jump of 2 max|q| max|k| scale + 1e4: a key of an
    earlier document aligned with the query (q . k ~ 5e4 above the query's own key) still gets weight 0."""
    n, cut = 600, 300
    q, k, v, g, docs = _op_case(n, [cut, n - cut], h=2, h_kv=2, dtype=torch.float32)
    k[:, :, :cut] = 2000 * q[:, :, cut:cut + 1]  # earlier document: keys along the later queries
    q[:, :, cut:] = 10 * q[:, :, cut:cut + 1]
    v[:, :, :cut] = 1e30
    out = attend(q, k, v, causal=True, log_fgate=g, document_ids=docs, backend="fold")
    alone = attend(q[:, :, cut:].double(), k[:, :, cut:].double(), v[:, :, cut:].double(), causal=True,
                   log_fgate=g[..., cut:].double(), backend="reference")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :, cut:].double(), alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prune", [True, False])
def test_fox_packed_fold_prunes_earlier_documents_as_forgotten_keys(prune):
    """FoX / ALiBi in fp32: a boundary is a total forget in the decay, so the pruning bound skips earlier
    documents like strongly forgotten keys.  8 documents of 128 tokens in 1024 with a gate that forgets
    almost nothing: unpacked prunes nothing, packed skips every (128 x 64) tile of earlier documents."""
    n = 1024
    q, k, v = torch.randn(1, 2, n, 8), torch.randn(1, 2, n, 8), torch.randn(1, 2, n, 8)
    g = torch.full((1, 2, n), -1e-4)
    docs = _ids([128] * 8)[None]
    with collect_pruning() as log:
        packed = attend(q, k, v, causal=True, log_fgate=g, document_ids=docs, backend="fold", prune=prune)
        attend(q, k, v, causal=True, log_fgate=g, backend="fold", prune=prune)
    layout = sum(m0 * 128 for m0 in range(0, n, 128))  # every key before the block's document
    if prune:
        rec_packed, rec_plain = log.records
        assert float(rec_packed.pruned.min()) >= layout
        assert float(rec_plain.pruned.max()) == 0
    else:
        assert not log.records
    for t in range(8):  # and the result is each document alone
        sl = slice(128 * t, 128 * (t + 1))
        alone = attend(q[:, :, sl].double(), k[:, :, sl].double(), v[:, :, sl].double(), causal=True,
                       log_fgate=g[..., sl].double(), backend="reference")
        torch.testing.assert_close(packed[:, :, sl].double(), alone, atol=2e-6, rtol=0)


def test_document_layout_is_computed_once_per_forward(monkeypatch):
    """Every layer reads the segment starts/ends computed once for the ids tensor; a changed tensor recomputes."""
    from xforget.ops import documents

    calls = []
    real = documents._starts
    monkeypatch.setattr(documents, "_starts", lambda d: calls.append(1) or real(d))
    documents._LAYOUT.clear()
    net = _model(SCHEMES["fox_pro"], torch.float32)  # two layers
    tokens = torch.randint(0, 40, (2, 30))
    docs = torch.stack((_ids([6, 24]), _ids([1, 1, 10, 18])))
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 27:] = False
    net(tokens, document_ids=docs, mask=mask)
    assert 1 <= len(calls) <= 2  # the starts (and the ends, where a path needs them), for both layers
    starts = documents.segment_starts(docs)
    assert documents.segment_starts(docs) is starts
    docs[1, 20:] = 4  # in place: the cached layout is stale and recomputed
    assert documents.segment_starts(docs)[1].tolist() == [0, 1] + [2] * 10 + [12] * 8 + [20] * 10
