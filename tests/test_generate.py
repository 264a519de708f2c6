"""Generation: eos stopping that actually samples eos, and an encoder-decoder that reads its encoder."""

import pytest
import torch

from xforget import AutoregressiveWrapper, Decoder, TransformerWrapper
from xforget.models.xtransformer import XTransformer


def _lm(vocab=16):
    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=vocab, max_seq_len=64, attn_layers=Decoder(dim=32, depth=1, heads=4,
                                                                                    position="fox"))
    return AutoregressiveWrapper(net).eval()


def _after_first(row: torch.Tensor, eos: int) -> torch.Tensor:
    """The row with everything after its first eos replaced by eos (the reference of eos stopping)."""
    hits = (row == eos).nonzero()
    out = row.clone()
    if len(hits):
        out[hits[0, 0]:] = eos
    return out


def test_eos_is_sampled_then_rows_stop_and_streaming_ends():
    lm, steps = _lm(), 12
    prompts = torch.randint(0, 16, (3, 4))
    free = lm.generate(prompts, steps, temperature=1.0, generator=torch.Generator().manual_seed(1))
    k = next(k for k in range(2, steps) if int(free[0, k]) not in free[0, :k].tolist())
    eos = int(free[0, k])  # a token row 0 really samples, first at step k >= 2
    firsts = [int((row == eos).nonzero()[0, 0]) if (row == eos).any() else steps for row in free]
    assert max(firsts) > k, (free, eos)  # some row goes on after row 0 stopped

    out = lm.generate(prompts, steps, temperature=1.0, eos_token=eos, generator=torch.Generator().manual_seed(1))
    expected = torch.stack([_after_first(row, eos) for row in free])
    assert torch.equal(out, expected)  # same draws up to each row's eos, then eos only

    one = lm.generate(prompts[:1], steps, temperature=1.0, generator=torch.Generator().manual_seed(2))[0]
    j = next(j for j in range(2, steps) if int(one[j]) not in one[:j].tolist())
    streamed = list(lm.stream(prompts[:1], steps, temperature=1.0, eos_token=int(one[j]),
                              generator=torch.Generator().manual_seed(2)))
    assert torch.equal(torch.cat(streamed), one[:j + 1])  # stops right after the only row samples eos


# --------------------------------------------------------------------------- XTransformer reads the encoder


def _copy_batch(b: int, n: int, vocab: int, generator: torch.Generator):
    src = torch.randint(2, vocab, (b, n), generator=generator)
    tgt = torch.cat((torch.ones(b, 1, dtype=torch.long), src), dim=1)  # 1 = start token, then the source copied
    return src, tgt


N, STEPS = 6, 150


@pytest.fixture(scope="module")
def copy_model():
    torch.manual_seed(0)
    model = XTransformer(dim=32, enc_num_tokens=12, enc_max_seq_len=8, enc_depth=1, enc_heads=4,
                         dec_num_tokens=12, dec_max_seq_len=8, dec_depth=1, dec_heads=4, enc_position="absolute",
                         dec_position="absolute")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and stays fast on a busy machine
    try:
        for _ in range(STEPS):
            src, tgt = _copy_batch(32, N, 12, g)
            loss = model(src, tgt)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def test_trained_xtransformer_copies_the_source_greedily(copy_model):
    src, tgt = _copy_batch(64, N, 12, torch.Generator().manual_seed(123))
    start = torch.ones(64, 1, dtype=torch.long)
    out = copy_model.generate(src, start, N, temperature=0.0)
    accuracy = (out == src).double().mean().item()
    # a decoder that ignored the encoder could do no better than chance (1/10 per token)
    assert accuracy > 0.9, accuracy
    blind = copy_model.generate(torch.full_like(src, 2), start, N, temperature=0.0)  # another source
    assert (blind == src).double().mean().item() < 0.3


def test_xtransformer_generation_equals_greedy_decoding_of_the_full_forward(copy_model):
    src, _ = _copy_batch(4, N, 12, torch.Generator().manual_seed(7))
    start = torch.ones(4, 1, dtype=torch.long)
    out = copy_model.generate(src, start, N - 1, temperature=0.0)
    seq = torch.cat((start, out), dim=1)
    context = copy_model.encode(src)
    logits = copy_model.decode(seq[:, :-1], context)
    assert torch.equal(logits.argmax(-1), out)
