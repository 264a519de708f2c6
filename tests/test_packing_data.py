"""``data.pack_documents=true``: windows of a prepared dataset carry their documents (DESIGN.md section 7).

The test writes documents whose token lengths it knows, so the ids of a window are checked
against a direct count of document boundaries (not against the end-of-text tokens the code reads).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_prepare import make_docs, prep, split_docs, tiny_cfg, write_corpus
from xforget.compare.pipeline import data_label, partition_overrides
from xforget.data import TrainBatches
from xforget.data.corpus import DataError
from xforget.data.tokenizer import load_tokenizer
from xforget.data.tokens import load_tokens
from xforget.errors import ConfigError
from xforget.models.packing import PackedDocuments, eot_documents
from xforget.train import train

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    docs = make_docs(50, seed=11)
    return prep(write_corpus("jsonl", root, docs), root / "prep", tokenizer="bpe", vocab_size=300), docs


def test_window_document_ids_match_a_direct_count(prepared):
    out, docs = prepared
    tok, data = load_tokenizer(out), load_tokens(out)
    # the training documents in shard order, and their token counts from the tokenizer alone
    order = split_docs(np.asarray(data.train), tok)
    assert sorted(order) == sorted(d for d in docs if d in order)
    lengths = [len(tok.encode(d)) + 1 for d in order]  # + its end-of-text token, which belongs to it
    doc_of = np.repeat(np.arange(len(order)), lengths)  # document of every train position, counted
    assert len(doc_of) == len(data.train)
    windows = TrainBatches(data.train, 64, 8, seed=5)(3)[0]  # (8, 65)
    starts = [int(np.flatnonzero((np.lib.stride_tricks.sliding_window_view(np.asarray(data.train), 65)
                                  == w.numpy()).all(1))[0]) for w in windows]
    ids = eot_documents(windows, tok.eot_id)
    for w, s in enumerate(starts):
        expected = doc_of[s:s + 65] - doc_of[s]
        assert ids[w].tolist() == expected.tolist()
    assert int(ids.max()) >= 1  # windows do cross documents at this length


def test_packed_model_reads_the_ids_of_its_inputs(prepared):
    out, _ = prepared
    eot = load_tokenizer(out).eot_id
    from xforget import Decoder, TransformerWrapper

    net = TransformerWrapper(num_tokens=300, max_seq_len=64, attn_layers=Decoder(dim=16, depth=1, heads=2,
                                                                                 position="rotary"))
    x = torch.tensor([[5, 6, eot, 7, 8, eot, eot, 9]])
    got = PackedDocuments(net, eot)(x)
    torch.testing.assert_close(got, net(x, document_ids=torch.tensor([[0, 0, 0, 1, 1, 1, 2, 3]])))
    torch.testing.assert_close(got[:, 3:5], net(x[:, 3:5]), atol=1e-6, rtol=0)  # the second document alone


@pytest.mark.parametrize("position", ["fox_pro", "rotary", "absolute"])
def test_packed_cached_decoding_equals_the_full_window_across_end_of_text(position):
    # the ids of a cached step depend on the token before it: a cache that ended with the end-of-text
    # token starts a new document, so every split of the row gives the full window's logits
    from xforget import AutoregressiveWrapper, Decoder, TransformerWrapper

    torch.manual_seed(0)
    eot = 3
    kw = (dict(position="fox", kv_shift=True, qk_norm=True, output_gate=True, output_norm=True)
          if position == "fox_pro" else dict(position=position))
    net = TransformerWrapper(num_tokens=16, max_seq_len=32, attn_layers=Decoder(dim=32, depth=2, heads=2, **kw))
    net.eval()
    packed_net = PackedDocuments(net, eot)
    x = torch.tensor([[1, 2, 5, eot, 6, 7, eot, eot, 8, 9, eot], [4, eot, 5, 6, 7, 8, eot, 9, 1, 2, 4]])
    full = packed_net(x)
    for cuts in ([4], [3, 4, 7], list(range(1, 11))):  # the cache ends on, before and after end-of-text tokens
        cache, pieces, start = None, [], 0
        for stop in [*cuts, x.shape[1]]:
            logits, cache = packed_net(x[:, start:stop], cache=cache, return_cache=True)
            pieces.append(logits)
            start = stop
        torch.testing.assert_close(torch.cat(pieces, 1), full, atol=2e-5, rtol=0)
    # generation: cached == uncached, and after an end-of-text token the same as the new document alone
    lm = AutoregressiveWrapper(packed_net)
    prompt = torch.tensor([[1, 2, 5, eot, 6]])
    cached = lm.generate(prompt, 8, temperature=0.0, cache_kv=True)
    assert torch.equal(cached, lm.generate(prompt, 8, temperature=0.0, cache_kv=False))
    assert torch.equal(cached, AutoregressiveWrapper(net).generate(prompt[:, 4:], 8, temperature=0.0))
    with pytest.raises(ValueError, match="continues only a cache it made"):
        _, bare = net(x[:, :4], return_cache=True)
        packed_net(x[:, 4:], cache=bare)


def test_resume_stays_exact_with_packing_and_eval_agrees(prepared, tmp_path):
    from safetensors.torch import load_file

    from xforget.evaluate.config import EvalConfig
    from xforget.evaluate.core import evaluate_run

    out, _ = prepared
    args = ["data=tokens", f"data.path={out}", "data.pack_documents=true", "trainer.max_steps=6",
            "trainer.checkpoint_every=3", "trainer.eval_every=3", "model.position=fox"]
    full = train(tiny_cfg(*args), tmp_path / "full")
    part = train(tiny_cfg(*args), tmp_path / "resumed", stop_after_step=3)
    rest = train(tiny_cfg(*args), tmp_path / "resumed")
    assert {**part.losses, **rest.losses} == full.losses
    assert rest.val_bpb == full.val_bpb
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    unpacked = train(tiny_cfg(*args[:2], *args[3:]), tmp_path / "unpacked")
    assert unpacked.losses[1] != full.losses[1]  # the switch is live: the first step already differs
    ev = evaluate_run(tmp_path / "full", EvalConfig(multiples=[1], threads=1, device="cpu"))
    assert ev["data"]["pack_documents"] is True
    assert ev["val_bpb"] == pytest.approx(full.val_bpb, abs=1e-5)  # xforget-eval scores with the same rule


def test_autoregressive_loss_takes_document_ids_like_the_packed_wrapper():
    from xforget import AutoregressiveWrapper, Decoder, TransformerWrapper

    torch.manual_seed(0)
    eot = 3
    net = TransformerWrapper(num_tokens=16, max_seq_len=32, attn_layers=Decoder(dim=32, depth=1, heads=2,
                                                                                position="rotary"))
    x = torch.tensor([[1, 2, 5, eot, 6, 7, eot, 8, 9], [4, eot, 5, 6, 7, 8, eot, 9, 1]])
    ids = eot_documents(x, eot)
    lm = AutoregressiveWrapper(net)
    for kw in ({}, {"reduction": "none"}):
        got = lm(x, document_ids=ids, **kw)
        torch.testing.assert_close(got, AutoregressiveWrapper(PackedDocuments(net, eot))(x, **kw), atol=0, rtol=0)
    assert not torch.allclose(lm(x, document_ids=ids), lm(x))
    loss, (logits, _) = lm(x, document_ids=ids, return_outputs=True)
    torch.testing.assert_close(logits, net(x[:, :-1], document_ids=ids[:, :-1]))
    with pytest.raises(ValueError, match="shaped like tokens"):
        lm(x, document_ids=ids[:, :-1])


def test_bad_inputs_to_the_packed_wrappers_name_the_value():
    import numpy as np

    from xforget import AutoregressiveWrapper, Decoder, TransformerWrapper

    net = TransformerWrapper(num_tokens=16, max_seq_len=32, attn_layers=Decoder(dim=16, depth=1, heads=2))
    for eot in (3.5, -1, 16, None, True, "3"):
        with pytest.raises(ValueError, match=r"eot_id must be the end-of-text token's id, an integer in 0\.\.15"):
            PackedDocuments(net, eot)
    assert PackedDocuments(net, np.int64(3)).eot_id == 3
    x = torch.randint(0, 16, (2, 9))
    with pytest.raises(ValueError, match="derives document_ids from the end-of-text tokens itself"):
        PackedDocuments(net, 3)(x, document_ids=torch.zeros_like(x))
    with pytest.raises(ValueError, match="got a numpy.ndarray"):
        AutoregressiveWrapper(net)(x, document_ids=np.zeros((2, 9), dtype=np.int64))
    for prompts in (np.array([[1, 2]]), [np.array([1, 2])], [[1, 2]]):
        with pytest.raises(ValueError, match="prompts must be a torch int64 tensor"):
            AutoregressiveWrapper(net).generate(prompts, 2)


def test_generate_cli_on_a_packed_run_starts_a_document_after_end_of_text(prepared, tmp_path, capsys):
    # xforget-generate samples a packed run with its training rule: the prompt's text after the
    # end-of-text token is a new document, so the continuation is that of the text alone
    from xforget.commands.generate import main as generate_main
    from xforget.models.autoregressive import AutoregressiveWrapper
    from xforget.train.loading import load_trained

    out, _ = prepared
    run = tmp_path / "run"
    train(tiny_cfg("data=tokens", f"data.path={out}", "data.pack_documents=true", "trainer.max_steps=3",
                   "model.position=rotary"), run)
    loaded = load_trained(run)
    tok, model = loaded.tokenizer, loaded.model
    before, after = "the quick brown fox", "def main("
    assert tok.encode(before + "<|endoftext|>" + after)[-len(tok.encode(after)):] == tok.encode(after)
    alone = AutoregressiveWrapper(model).generate(torch.tensor([tok.encode(after)]), 12, temperature=0.0)[0]
    crossing = torch.tensor([tok.encode(before + "<|endoftext|>" + after)])
    with torch.no_grad():  # the earlier document does change an unpacked reading (greedy text may still agree)
        gap = (model(crossing)[0, -1] - model(torch.tensor([tok.encode(after)]))[0, -1]).abs().max()
        assert gap > 1e-3, gap
        same = (PackedDocuments(model, tok.eot_id)(crossing)[0, -1] - model(torch.tensor([tok.encode(after)]))[0, -1])
        assert same.abs().max() < 1e-4
    generate_main([f"checkpoint={run}", f"prompt={before}<|endoftext|>{after}", "max_new_tokens=12",
                   "temperature=0"])
    assert capsys.readouterr().out == before + "<|endoftext|>" + after + tok.decode(alone.tolist()) + "\n"


def test_packing_needs_an_end_of_text_token(tmp_path):
    out = prep(write_corpus("jsonl", tmp_path, make_docs(20, seed=2)), tmp_path / "bytes", tokenizer="bytes")
    with pytest.raises(DataError, match="pack_documents"):
        train(tiny_cfg("data=tokens", f"data.path={out}", "data.pack_documents=true", "trainer.max_steps=1"),
              tmp_path / "run")
    with pytest.raises(ConfigError, match="pack_documents"):
        train(tiny_cfg("data.pack_documents=true", "trainer.max_steps=1"), tmp_path / "run2")


def test_compare_passes_the_switch_to_training(prepared):
    mine, train_args = partition_overrides(["positions=[fox,rotary]", "data.pack_documents=true"])
    assert train_args == ["data.pack_documents=true"] and mine == ["positions=[fox,rotary]"]
    path = prepared[0]
    packed_cfg = tiny_cfg("data=tokens", f"data.path={path}", "data.pack_documents=true").data
    assert data_label(packed_cfg) == f"tokens ({path.name}), packed documents"  # the report's first line says so
    assert data_label(tiny_cfg("data=tokens", f"data.path={path}").data) == f"tokens ({path.name})"


def test_packing_refuses_a_single_document_dataset(tmp_path):
    # one text file is one document split by bytes: its shards hold no end-of-text token, so packing
    # would silently train and score exactly as unpacked (the stdlib blob of experiment=fox_vs_rope)
    text = tmp_path / "one.txt"
    text.write_text("\n".join(make_docs(20, seed=3)), encoding="utf-8")
    out = prep(str(text), tmp_path / "one", tokenizer="bpe", vocab_size=300)
    meta = load_tokens(out).meta
    assert meta["single_document"] and meta["eot_id"] is not None  # an end-of-text id, but no boundary
    with pytest.raises(DataError, match="single_document"):
        train(tiny_cfg("data=tokens", f"data.path={out}", "data.pack_documents=true", "trainer.max_steps=1"),
              tmp_path / "run")
