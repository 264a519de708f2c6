"""The tokenizer interface: bytes round trip, HF tokenizer save/load, resolution errors."""

from __future__ import annotations

import pytest

from xforget.data.corpus import DataError
from xforget.data.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer, resolve_tokenizer

TEXT = "def f(x):\n    return x * 2  # naïve — ünïcödé ✓\n"


def test_byte_tokenizer_is_utf8_bytes():
    tok = ByteTokenizer()
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == 256 and tok.eot_id is None and tok.name == "bytes"
    ids = tok.encode(TEXT)
    assert ids == list(TEXT.encode("utf-8"))
    assert tok.decode(ids) == TEXT
    # a cut multi-byte character decodes with a replacement character, never an error
    cut = list("é".encode("utf-8"))[:1]
    assert tok.decode(cut) == "\ufffd"


def test_load_tokenizer_without_file_is_bytes(tmp_path):
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)
    assert isinstance(resolve_tokenizer("bytes"), ByteTokenizer)


def _train_bpe(vocab_size=300):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT * 20, "hello world " * 50], trainer=trainer)
    return tok


def test_hf_tokenizer_save_load_round_trip(tmp_path):
    from xforget.data.tokenizer import HFTokenizer

    tok = HFTokenizer(_train_bpe())
    assert tok.eot_id == 0  # the special token, found by name
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, HFTokenizer) and again.vocab_size == tok.vocab_size and again.eot_id == tok.eot_id
    ids = again.encode(TEXT)
    assert ids == tok.encode(TEXT) and len(ids) < len(TEXT.encode())  # merges apply
    assert again.decode(ids) == TEXT  # byte-level BPE is lossless
    assert isinstance(resolve_tokenizer(tmp_path / "tokenizer.json"), HFTokenizer)
    assert isinstance(resolve_tokenizer(tmp_path), HFTokenizer)


def test_tokenizer_file_that_is_not_one(tmp_path):
    pytest.importorskip("tokenizers")
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(DataError, match="is not a Hugging Face tokenizer.json") as err:
        resolve_tokenizer(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="is not a Hugging Face tokenizer.json"):
        load_tokenizer(tmp_path)


def test_unknown_tokenizer_spec(tmp_path):
    with pytest.raises(DataError, match="valid tokenizer= values: bytes, bpe"):
        resolve_tokenizer(tmp_path / "nope")
    with pytest.raises(DataError, match="holds no tokenizer.json"):
        resolve_tokenizer(tmp_path)
