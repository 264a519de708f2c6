"""Memory tokens (``num_memory_tokens``) with packed documents (``document_ids``).

Invariance: in a causal decoder, a packed row of documents gives for every document exactly what
that document gives alone with the same memory tokens in front of it -- logits position by
position, and gradients w.r.t. every parameter (the memory's summed over the documents) and w.r.t.
the embedded inputs -- for every positional scheme and block option, in float64 and float32, with
padding on top and through a KV cache.  Bidirectional encoders refuse (the memory would see every
document).  The harness is tests/test_documents.py's.
"""

import pytest
import torch

from test_documents import SCHEMES, _check_packed_equals_separate, _ids, _model
from xforget import Encoder
from xforget.ops import dispatch
from xforget.ops.documents import MEMORY_DOCUMENT


# Every block computes in float64 in a float64 model (rotary, the T5 and dynamic tables, the per-row gates):
# a float32 step there once cost the memory keys' gradient its float64 digits (1e-8 relative).


def _memory_model(scheme, dtype, memory=3, **kwargs):
    net = _model(SCHEMES[scheme], dtype, num_memory_tokens=memory, **kwargs)
    with torch.no_grad():  # memory vectors as large as token embeddings: their effect is not lost in rounding
        net.memory_tokens.normal_()
    return net


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("memory", [2, 3])
def test_packed_row_with_memory_equals_documents_alone(scheme, dtype, tol, memory):
    net = _memory_model(scheme, dtype, memory)
    grad_tol = tol * 10
    _check_packed_equals_separate(net, [5, 1, 9], dtype, tol, grad_tol=grad_tol)


@pytest.mark.parametrize("scheme", ["none", "absolute", "rotary", "alibi", "t5", "fox", "fox_pro", "value_residual",
                                    "gqa", "memory"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_documents_that_fill_the_window_and_padding_on_top(scheme, dtype, tol):
    net = _memory_model(scheme, dtype, 2)
    grad_tol = tol * 10
    _check_packed_equals_separate(net, [64], dtype, tol, grad_tol=grad_tol)  # one document as long as the table
    _check_packed_equals_separate(net, [20, 1, 43], dtype, tol, grad_tol=grad_tol)
    _check_packed_equals_separate(net, [3, 1, 7], dtype, tol, pad=5, grad_tol=grad_tol)


@pytest.mark.parametrize("scheme", ["fox_pro", "rotary", "absolute", "t5", "alibi"])
def test_pads_inside_documents_and_rows_with_other_layouts(scheme):
    """Pads at a document's start and inside it: each document equals its own padded run alone."""
    net = _memory_model(scheme, torch.float64, 2)
    tokens = torch.randint(0, 40, (2, 20))
    layouts = ([6, 14], [1, 2, 10, 7])
    docs = torch.stack([_ids(lengths) for lengths in layouts])
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[0, 6:8] = False  # the second document of row 0 starts with two pads
    mask[1, [1, 5, 19]] = False  # a one-token document that is a pad, a pad inside, a pad at the end
    out = net(tokens, document_ids=docs, mask=mask)
    for row, lengths in enumerate(layouts):
        start = 0
        for length in lengths:
            part = slice(start, start + length)
            alone = net(tokens[row:row + 1, part], mask=mask[row:row + 1, part])
            real = mask[row, part]
            torch.testing.assert_close(out[row, part][real], alone[0][real], atol=1e-10, rtol=0)
            start += length


@pytest.mark.parametrize("scheme", ["fox_pro", "rotary", "t5", "alibi", "memory", "absolute"])
def test_cached_generation_continues_and_starts_documents(scheme):
    """Prefill a packed prompt, decode the last document, then start a new document on the cache:
    each step equals the document run alone (the KV-shift of the new document reads the memory)."""
    net = _memory_model(scheme, torch.float64, 2)
    first, second, third = (torch.randint(0, 40, (1, k)) for k in (9, 12, 4))
    prompt = torch.cat((first, second[:, :5]), dim=1)
    logits, cache = net(prompt, document_ids=_ids([9, 5])[None], return_cache=True)
    full = net(second)
    torch.testing.assert_close(logits[:, 9:], full[:, :5], atol=1e-10, rtol=0)
    for t in range(5, 12):  # new tokens without ids continue the last cached document
        step, cache = net(second[:, t:t + 1], cache=cache, return_cache=True)
        torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-10, rtol=0)
    fresh, cache = net(third[:, :2], cache=cache, document_ids=torch.full((1, 2), 7), return_cache=True)
    alone = net(third)
    torch.testing.assert_close(fresh, alone[:, :2], atol=1e-10, rtol=0)  # a new document sees the memory
    for t in range(2, 4):
        step, cache = net(third[:, t:t + 1], cache=cache, return_cache=True)
        torch.testing.assert_close(step[:, 0], alone[:, t], atol=1e-10, rtol=0)


@pytest.mark.parametrize("scheme", ["fox_pro", "rotary"])
def test_a_cache_without_ids_continues_one_document_only(scheme):
    net = _memory_model(scheme, torch.float64, 2)
    x = torch.randint(0, 40, (1, 8))
    _, cache = net(x[:, :5], return_cache=True)  # one document: the memory is part of it
    step = net(x[:, 5:8], cache=cache, document_ids=torch.zeros(1, 3, dtype=torch.long))
    torch.testing.assert_close(step, net(x)[:, 5:], atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="cache built without document_ids"):
        net(x[:, 5:8], cache=cache, document_ids=torch.tensor([[0, 1, 1]]))
    _, cache = net(x[:, 5:6], cache=cache, document_ids=torch.zeros(1, 1, dtype=torch.long), return_cache=True)
    step = net(x[:, 6:8], cache=cache)  # the cache has ids now, the memory among them as part of the document
    torch.testing.assert_close(step, net(x)[:, 6:], atol=1e-10, rtol=0)


def test_the_dense_path_serves_it_and_none_stays_on_its_path(monkeypatch):
    net = _memory_model("fox", torch.float32, 2)
    called = []
    for name in ("dense", "fold"):
        real = dispatch._IMPLS[name]
        monkeypatch.setitem(dispatch._IMPLS, name, lambda call, real=real, name=name: called.append(name) or real(call))
    x = torch.randint(0, 40, (1, 12))
    net(x, document_ids=_ids([4, 8])[None])
    assert called == ["dense", "dense"]  # two layers, O(n^2) logits
    called.clear()
    net(x)
    assert called == ["fold", "fold"]  # no documents: today's path


def test_encoders_refuse_memory_tokens_with_documents():
    net = _model(SCHEMES["fox"], torch.float64, layers=Encoder, num_memory_tokens=2)
    with pytest.raises(ValueError, match="bidirectional.*every document"):
        net(torch.randint(0, 40, (1, 6)), document_ids=_ids([2, 4])[None])
    net(torch.randint(0, 40, (1, 6)))  # one document per row stays fine


def test_the_memory_document_id_is_reserved():
    net = _memory_model("fox", torch.float32, 2)
    docs = torch.tensor([[MEMORY_DOCUMENT, 0, 0]])
    with pytest.raises(ValueError, match="reserved"):
        net(torch.randint(0, 40, (1, 3)), document_ids=docs)


def test_fullgraph_traces_memory_tokens_with_documents():
    """The host checks of the ids are skipped while tracing: torch.compile(fullgraph=True) takes the forward."""
    net = _memory_model("fox_pro", torch.float32, 2)
    x, docs = torch.randint(0, 40, (1, 15)), _ids([5, 1, 9])[None]
    compiled = torch.compile(net, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, document_ids=docs), net(x, document_ids=docs), atol=0, rtol=0)


def test_long_fp32_documents_with_memory_stay_exact():
    """FoX with memory tokens and two documents of 512 in fp32 vs the same model in float64: the dense
    path takes its decay differences in float64 (an fp32 cumsum was 2.6e-5 off at 1024 tokens)."""
    torch.manual_seed(0)
    net = _memory_model("fox", torch.float64, 2, max_seq_len=1024)
    tokens = torch.randint(0, 40, (1, 1024))
    docs = _ids([512, 512])[None]
    want = net(tokens, document_ids=docs)
    got = net.float()(tokens, document_ids=docs)
    err = (got.double() - want).abs().max().item()
    assert err <= 4e-6 * (1 + want.abs().max().item()), err


def test_narrow_integer_ids_with_memory_tokens():
    """int32 ids are accepted like int64 (all zeros is not the reserved memory id)."""
    net = _memory_model("fox", torch.float64, 2)
    tokens = torch.randint(0, 40, (2, 20))
    docs = torch.stack((_ids([5, 15]), _ids([20])))
    torch.testing.assert_close(net(tokens, document_ids=docs.int()), net(tokens, document_ids=docs), atol=0, rtol=0)
    torch.testing.assert_close(net(tokens, document_ids=torch.zeros(2, 20, dtype=torch.int32)), net(tokens),
                               atol=1e-12, rtol=0)
