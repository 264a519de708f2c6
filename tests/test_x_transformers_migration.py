"""x-transformers options a migrating user looks for: TransformerWrapper(emb_dropout=, l2norm_embed=, logits_dim=),
AutoregressiveWrapper(pad_value=), generate(filter_logits_fn=, filter_kwargs=); the rest refused by name."""

from __future__ import annotations

import pytest
import torch

from xforget import AutoregressiveWrapper, Decoder, TransformerWrapper
from xforget.models.sampling import SamplingOptions, min_p_filter, top_k_filter, top_p_filter, x_transformers_filter

xt_ar = pytest.importorskip("x_transformers.autoregressive_wrapper")


def net(**kw):
    torch.manual_seed(0)
    return TransformerWrapper(num_tokens=50, max_seq_len=64, attn_layers=Decoder(dim=32, depth=1, heads=2), **kw)


def test_emb_dropout_drops_in_training_and_not_in_eval():
    model = net(emb_dropout=0.5)
    x = torch.randint(0, 50, (2, 9))
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    a = model(x)
    assert not torch.allclose(a, model.eval()(x))
    with pytest.raises(ValueError, match="emb_dropout"):
        net(emb_dropout=1.0)


def test_l2norm_embed_gives_unit_embeddings():
    model = net(l2norm_embed=True)
    e = model.token_emb(torch.arange(50))
    torch.testing.assert_close(e.double().norm(dim=-1), torch.ones(50, dtype=torch.float64))
    assert model.token_emb.emb.weight.std() < 1e-4  # x-transformers' init, std 1e-5


def test_logits_dim():
    assert net(logits_dim=3)(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5, 3)
    with pytest.raises(ValueError, match="logits_dim"):
        net(logits_dim=3, tie_embedding=True)


@pytest.mark.parametrize("option", ["return_only_embed", "cls_token"])
def test_options_without_an_equivalent_are_named(option):
    with pytest.raises(TypeError, match=f"{option}.*migration table"):
        net(**{option: 2})


@pytest.mark.parametrize("name, kwargs", [("top_k", {"k": 5}), ("top_k", {"frac_num_tokens": 0.25}), ("top_p", {"thres": 0.7}),
                                          ("min_p", {"min_p": 0.2}), ("top_p", {}), ("min_p", {})])
def test_filter_logits_fn_keeps_what_x_transformers_keeps(name, kwargs):
    """The same tokens survive as with x-transformers' own filter functions (names and the functions alike)."""
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(3)) * 3
    theirs = xt_ar.FILTER_LOGITS_FN[name](logits.clone(), **kwargs)
    for fn in (name, xt_ar.FILTER_LOGITS_FN[name]):
        s = x_transformers_filter(SamplingOptions(), fn, kwargs, 50)
        ours = min_p_filter(top_p_filter(top_k_filter(logits, s.top_k), s.top_p), s.min_p)
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs)), (name, kwargs)


def test_filter_logits_fn_refusals():
    with pytest.raises(TypeError, match="top_a.*supported"):
        x_transformers_filter(SamplingOptions(), "top_a", None, 50)
    with pytest.raises(TypeError, match="supported"):
        x_transformers_filter(SamplingOptions(), lambda logits: logits, None, 50)
    with pytest.raises(ValueError, match="filters before the temperature"):
        x_transformers_filter(SamplingOptions(temperature=0.7), "top_p", {"thres": 0.9}, 50)
    assert x_transformers_filter(SamplingOptions(temperature=0.7), "top_k", {"k": 3}, 50).top_k == 3
    with pytest.raises(TypeError, match="unknown filter_kwargs"):
        x_transformers_filter(SamplingOptions(), "top_k", {"kk": 3}, 50)


def test_generate_with_filter_logits_fn_and_pad_value():
    ar = AutoregressiveWrapper(net(), pad_value=7)
    prompt = torch.randint(0, 50, (2, 4))
    greedy = ar.generate(prompt, 6, temperature=0)
    assert torch.equal(ar.generate(prompt, 6, filter_logits_fn="top_k", filter_kwargs={"k": 1},
                                   generator=torch.Generator().manual_seed(0)), greedy)
    eos = int(greedy[0, 2])
    out = ar.generate(prompt, 6, temperature=0, eos_token=eos)
    first = int((greedy[0] == eos).nonzero()[0])
    assert torch.equal(out[0, :first + 1], greedy[0, :first + 1]) and bool((out[0, first + 1:] == 7).all())
    no_pad = AutoregressiveWrapper(ar.net).generate(prompt, 6, temperature=0, eos_token=eos)
    assert bool((no_pad[0, first:] == eos).all())
    with pytest.raises(ValueError, match="pad_value"):
        AutoregressiveWrapper(ar.net, pad_value=50)


def test_pad_value_feeds_ignored_inputs_as_pad():
    ar = AutoregressiveWrapper(net(), pad_value=0)
    tokens = torch.randint(1, 50, (2, 8))
    padded = tokens.clone()
    padded[:, -3:] = -100
    expected = tokens.clone()
    expected[:, -3:] = 0
    per = ar(padded, reduction="none")
    ref = AutoregressiveWrapper(ar.net)(expected, reduction="none")
    torch.testing.assert_close(per[:, :-3], ref[:, :-3])
    assert bool((per[:, -3:] == 0).all())
    with pytest.raises(ValueError, match="out of range"):  # without pad_value an ignored input is no token
        AutoregressiveWrapper(ar.net)(padded)


def test_return_outputs_gives_the_logits_and_last_hidden_of_the_loss():
    """forward(..., return_outputs=True): (loss, (logits, Intermediates(last_hidden))) from one pass; the loss is
    the float64 cross-entropy of those logits, the logits are the net's, the hidden states its embeddings."""
    ar = AutoregressiveWrapper(net())
    tokens = torch.randint(0, 50, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :2] = False
    loss, (logits, inter) = ar(tokens, mask=mask, return_outputs=True)
    assert logits.shape == (2, 8, 50) and inter.last_hidden.shape == (2, 8, 32)
    torch.testing.assert_close(loss, ar(tokens, mask=mask))
    torch.testing.assert_close(logits, ar.net(tokens[:, :-1], mask=mask[:, :-1]))
    torch.testing.assert_close(inter.last_hidden, ar.net(tokens[:, :-1], mask=mask[:, :-1], return_embeddings=True))
    logp = logits.double().log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
    real = mask[:, 1:]
    torch.testing.assert_close(loss.double(), -(logp * real).sum() / real.sum(), rtol=1e-6, atol=1e-6)
    (loss + inter.last_hidden.square().mean()).backward()  # both parts carry gradients
    assert ar.net.token_emb.emb.weight.grad.abs().sum() > 0
    from xforget.models.packing import packed  # training's net: packed documents (data.pack_documents)

    packed_ar = AutoregressiveWrapper(packed(ar.net, eot_id=3))
    tokens[:, 4] = 3
    loss, (logits, _) = packed_ar(tokens, return_outputs=True)
    torch.testing.assert_close(loss, packed_ar(tokens))
    torch.testing.assert_close(logits, packed_ar.net(tokens[:, :-1]))


def test_return_outputs_equals_x_transformers():
    """The same loss, logits and last_hidden as x-transformers 2.31.10's AutoregressiveWrapper on copied weights."""
    try:  # x-transformers logs a warning for small rotary dims
        from loguru import logger

        logger.disable("x_transformers")
    except ImportError:  # pragma: no cover
        pass
    xt = pytest.importorskip("x_transformers")
    from xforget.integrations.interop import from_x_transformers

    torch.manual_seed(0)
    theirs = xt.TransformerWrapper(num_tokens=40, max_seq_len=32, attn_layers=xt.Decoder(
        dim=32, depth=2, heads=2, attn_dim_head=16, rotary_pos_emb=True)).eval()
    tokens = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        loss_t, (logits_t, cache_t) = xt_ar.AutoregressiveWrapper(theirs)(tokens, return_outputs=True)
        loss_o, (logits_o, inter) = AutoregressiveWrapper(from_x_transformers(theirs))(tokens, return_outputs=True)
    torch.testing.assert_close(loss_o, loss_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_o, logits_t, rtol=1e-5, atol=1e-5)
    # x-transformers runs all n+1 tokens (its last_hidden has one more position, the last token's); ours the n inputs
    torch.testing.assert_close(inter.last_hidden, cache_t.last_hidden[:, :-1], rtol=1e-5, atol=1e-5)


def test_return_intermediates_is_refused_naming_the_alternatives():
    """x-transformers' forward(return_intermediates=True): no equivalent of its per-layer intermediates here;
    the refusal names what gives the final hidden states instead (and the migration table)."""
    model = net()
    x = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(TypeError, match="return_embeddings=True.*return_outputs=True.*migration table"):
        model(x, return_intermediates=True)
    assert model(x, return_intermediates=False).shape == model(x).shape


def test_pad_value_equals_x_transformers():
    """AutoregressiveWrapper(pad_value=P) as x-transformers 2.31.10's on copied weights: the loss with ignored
    inputs fed as P, and greedy generation whose tokens after a row's eos become P (x-transformers returns
    fewer tokens when every row has ended; the tokens it returns are ours)."""
    xt = pytest.importorskip("x_transformers")
    from xforget.integrations.interop import from_x_transformers

    torch.manual_seed(0)
    theirs = xt.TransformerWrapper(num_tokens=40, max_seq_len=32, attn_layers=xt.Decoder(
        dim=32, depth=1, heads=2, attn_dim_head=16)).eval()
    ours = from_x_transformers(theirs)
    ar_t, ar_o = xt_ar.AutoregressiveWrapper(theirs, pad_value=7), AutoregressiveWrapper(ours, pad_value=7)
    tokens = torch.randint(0, 40, (2, 12))
    tokens[:, -3:] = -100  # ignored: fed as the pad value, no loss
    with torch.no_grad():
        torch.testing.assert_close(ar_o(tokens), ar_t(tokens), rtol=1e-5, atol=1e-5)
        prompt = torch.randint(0, 40, (2, 4))
        greedy = ar_o.generate(prompt, 8, temperature=0)
        eos = int(greedy[0, 2])  # an eos the first row reaches mid-way
        out_t = ar_t.generate(prompt, 8, temperature=0., eos_token=eos)
        out_o = ar_o.generate(prompt, 8, temperature=0, eos_token=eos)
    first = int((greedy[0] == eos).nonzero()[0])
    n = out_t.shape[1]  # x-transformers stops once every row has ended; we return all 8 tokens, the rest P
    assert torch.equal(out_o[:, :n], out_t) and bool((out_o[:, n:] == 7).all())
    assert bool((out_o[0, first + 1:] == 7).all())
