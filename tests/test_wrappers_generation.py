"""ContinuousTransformerWrapper memory tokens and the same generation options on every generating wrapper."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from xforget import ContinuousTransformerWrapper, Decoder, Encoder, TransformerWrapper
from xforget.models.autoregressive import AutoregressiveWrapper
from xforget.models.sampling import sample_next
from xforget.models.xtransformer import XTransformer

M = 3  # memory tokens


def _pair(position, layers=Decoder, max_seq_len=32):
    """A model with memory tokens and the same model without them (shared layers, same position table)."""
    torch.manual_seed(0)
    with_mem = ContinuousTransformerWrapper(attn_layers=layers(dim=16, depth=2, heads=2, position=position),
                                            max_seq_len=max_seq_len, num_memory_tokens=M).eval()
    plain = ContinuousTransformerWrapper(attn_layers=with_mem.attn_layers, max_seq_len=max_seq_len).eval()
    if with_mem.pos_emb is not None:
        plain.pos_emb.load_state_dict(with_mem.pos_emb.state_dict())
    return with_mem, plain


def _reference(with_mem, plain, x, mask=None):
    """The definition (x-transformers'): the frames get the absolute table's rows 0.. (frames only), then the
    memory vectors are concatenated before them and the layers run over both; the memory outputs are dropped."""
    b, n = x.shape[:2]
    if with_mem.pos_emb is not None:  # rows of the frames; the layers below then run without a table
        assert mask is None
        x = x + with_mem.pos_emb(torch.arange(n))
        plain = copy.copy(plain)
        plain.pos_emb = None
    mem = with_mem.memory_tokens[None].expand(b, -1, -1)
    full_mask = None if mask is None else torch.cat((torch.ones(b, M, dtype=torch.bool), mask), dim=1)
    return plain(torch.cat((mem, x), dim=1), mask=full_mask)[:, M:]


@pytest.mark.parametrize("position", ["fox", "rotary", "alibi", "absolute", "none"])
def test_memory_tokens_are_the_first_frames_of_the_sequence(position):
    with_mem, plain = _pair(position)
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(with_mem(x), _reference(with_mem, plain, x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(with_mem(x), plain(x), atol=1e-3)  # they do change the output


@pytest.mark.parametrize("layers", [Decoder, Encoder])
def test_masks_extend_over_memory_tokens(layers):
    with_mem, plain = _pair("fox", layers)
    x = torch.randn(2, 6, 16)
    mask = torch.tensor([[True] * 6, [False, False, True, True, True, True]])  # row 1: two pads in front
    out = with_mem(x, mask=mask)
    torch.testing.assert_close(out, _reference(with_mem, plain, x, mask), rtol=1e-5, atol=1e-5)
    alone = with_mem(x[1:, 2:])  # the padded row equals its own unpadded run
    torch.testing.assert_close(out[1:, 2:], alone, rtol=1e-5, atol=1e-5)


def test_every_frame_sees_the_memory_tokens():
    with_mem, _ = _pair("fox")
    x = torch.randn(1, 5, 16)
    # the first frame of a causal decoder attends to the memory only; a random projection of it, not its sum:
    # the sum of a LayerNorm output with unit gains is constant, so its gradient is 0 up to rounding
    (with_mem(x)[0, 0] * torch.randn(16)).sum().backward()
    assert with_mem.memory_tokens.grad.abs().sum() > 0


@pytest.mark.parametrize("position", ["fox", "rotary", "absolute"])
def test_memory_tokens_with_the_kv_cache_equal_the_full_forward(position):
    with_mem, _ = _pair(position)
    _assert_cached_steps_equal_full(with_mem, torch.randn(2, 8, 16), prompt=5)


@torch.no_grad()
def _assert_cached_steps_equal_full(model, x, prompt):
    """The prompt in one call (the memory prepended there), then one cached step per input: = the full forward."""
    out, cache = model(x[:, :prompt], return_cache=True)
    steps = [out]
    for i in range(prompt, x.shape[1]):
        out, cache = model(x[:, i:i + 1], cache=cache, return_cache=True)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=1), model(x), rtol=1e-5, atol=1e-5)
    assert cache.length == M + x.shape[1]


def test_memory_tokens_bad_count():
    with pytest.raises(ValueError, match="num_memory_tokens must be >= 0"):
        ContinuousTransformerWrapper(attn_layers=Decoder(dim=16, depth=1, heads=2), num_memory_tokens=-1)


# --------------------------------------------------------------------------- TransformerWrapper memory tokens


def _token_model(position, **kw):
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=30, max_seq_len=32, num_memory_tokens=M,
                               attn_layers=Decoder(dim=16, depth=2, heads=2, position=position, **kw)).eval()
    with torch.no_grad():
        model.memory_tokens.normal_()  # x-transformers' scale: large enough to matter at every position
    return model


def _token_reference(model, x):
    """The definition, built here from the parts: embed the tokens (table rows 0..n-1 for the tokens), concatenate
    the memory vectors before them, run the layer stack over positions 0..M+n-1, drop the first M outputs."""
    b, n = x.shape
    h = model.token_emb(x)
    if model.pos_emb is not None:
        h = h + model.pos_emb(torch.arange(n))
    h = torch.cat((model.memory_tokens[None].expand(b, -1, -1), h), dim=1)
    out = model.attn_layers(h, positions=torch.arange(M + n))
    out = out[0] if isinstance(out, tuple) else out
    return model.to_logits(out[:, M:])


@pytest.mark.parametrize("position", ["fox", "rotary", "alibi", "absolute", "none"])
def test_token_memory_tokens_are_concatenated_before_the_embedded_tokens(position):
    model = _token_model(position)
    x = torch.randint(0, 30, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(x), _token_reference(model, x), rtol=1e-5, atol=1e-5)
        plain = TransformerWrapper(num_tokens=30, max_seq_len=32, attn_layers=model.attn_layers).eval()
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "memory_tokens"})
        assert not torch.allclose(model(x), plain(x), atol=1e-3)  # they do change the logits
    (model(x)[0, 0] * torch.randn(30)).sum().backward()  # the first token sees the memory
    assert model.memory_tokens.grad.abs().sum() > 0


@pytest.mark.parametrize("position", ["fox", "rotary", "absolute"])
def test_token_memory_tokens_cached_generation_equals_the_full_forward(position):
    model = _token_model(position)
    _assert_cached_steps_equal_full(model, torch.randint(0, 30, (2, 10)), prompt=6)
    ar = AutoregressiveWrapper(model)
    prompts = [torch.randint(0, 30, (4,)), torch.randint(0, 30, (7,))]  # left-padded: masks extend over the memory
    cached = ar.generate(prompts, 6, temperature=0.0, cache_kv=True)
    uncached = ar.generate(prompts, 6, temperature=0.0, cache_kv=False)
    assert torch.equal(cached, uncached)
    for row, p in enumerate(prompts):  # each row equals its own unbatched run
        assert torch.equal(cached[row], ar.generate(p[None], 6, temperature=0.0, cache_kv=True)[0])


def test_token_memory_tokens_refusals():
    with pytest.raises(ValueError, match="num_memory_tokens must be >= 0"):
        TransformerWrapper(num_tokens=30, max_seq_len=8, num_memory_tokens=-1, attn_layers=Decoder(dim=16, depth=1, heads=2))
    encoder = TransformerWrapper(num_tokens=30, max_seq_len=8, num_memory_tokens=2,
                                 attn_layers=Encoder(dim=16, depth=1, heads=2))
    with pytest.raises(ValueError, match="document_ids.*num_memory_tokens.*bidirectional"):
        encoder(torch.zeros(1, 4, dtype=torch.long), document_ids=torch.tensor([[0, 0, 1, 1]]))


# --------------------------------------------------------------------------- generation options


def _options(fn, skip=()):
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.kind is p.KEYWORD_ONLY and name not in skip}


def test_every_generating_wrapper_takes_the_same_options():
    reference = _options(AutoregressiveWrapper.generate)
    assert set(reference) >= {"temperature", "top_k", "top_p", "min_p", "eos_token", "cache_kv", "generator"}
    assert _options(AutoregressiveWrapper.stream) == reference
    assert _options(XTransformer.generate, skip=("src_mask",)) == reference


def _xt():
    torch.manual_seed(0)
    return XTransformer(dim=32, enc_num_tokens=20, enc_max_seq_len=16, enc_depth=1, enc_heads=2,
                        dec_num_tokens=20, dec_max_seq_len=32, dec_depth=2, dec_heads=2, dec_position="fox").eval()


@pytest.mark.parametrize("options", [dict(temperature=0.7, min_p=0.2), dict(temperature=1.0, top_k=5, top_p=0.9),
                                     dict(temperature=0.0)])
def test_xtransformer_generate_equals_a_plain_sampling_loop(options):
    model = _xt()
    src = torch.randint(0, 20, (3, 9))
    src_mask = torch.ones(3, 9, dtype=torch.bool)
    src_mask[2, 6:] = False
    start = torch.randint(0, 20, (3, 2))
    # the plain loop: whole target recomputed every step, sample_next with the same options and generator
    g = torch.Generator().manual_seed(7)
    context, out = model.encode(src, src_mask), start
    with torch.no_grad():
        for _ in range(10):
            logits = model.decode(out, context, context_mask=src_mask)[:, -1]
            out = torch.cat((out, sample_next(logits, generator=g, **options)[:, None]), dim=1)
    for cache_kv in (True, False):
        got = model.generate(src, start, 10, src_mask=src_mask, cache_kv=cache_kv,
                             generator=torch.Generator().manual_seed(7), **options)
        assert torch.equal(got, out[:, 2:]), cache_kv


def test_xtransformer_min_p_keeps_only_tokens_above_the_threshold():
    model = _xt()
    src, start = torch.randint(0, 20, (4, 9)), torch.randint(0, 20, (4, 1))
    with torch.no_grad():
        probs = model.decode(start, model.encode(src), context_mask=None)[:, -1].softmax(-1)
    first = model.generate(src, start, 1, min_p=0.5, temperature=1.0, generator=torch.Generator().manual_seed(1))[:, 0]
    for row, token in enumerate(first.tolist()):  # min_p=0.5: only tokens with p >= 0.5 * max p survive
        assert probs[row, token] >= 0.5 * probs[row].max() - 1e-6
