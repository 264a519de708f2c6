"""Import a nanoGPT prepared directory (``train.bin``, ``val.bin``, and ``meta.pkl`` or GPT-2 ids) as a prepared
dataset: ``xforget-prepare input=NANOGPT_DIR output=DIR`` (``tokenizer=PATH`` when there is no ``meta.pkl``).

nanoGPT's ``data/*/prepare.py`` write the token ids as raw ``uint16`` (no header), the layout
``xforget-prepare`` writes too; what they lack is ``meta.json``. The import copies the shards as they are
and writes:

The shards are copied, not linked: nanoGPT's ``prepare.py`` rewrites its files in place.

* ``tokenizer.json``: for a character-level directory (``meta.pkl`` with ``stoi`` / ``itos``, e.g.
  ``shakespeare_char``), a Hugging Face ``WordLevel`` tokenizer with one token per character (split on every
  character, joined back with ``Fuse``), so the ids are nanoGPT's and every command encodes and decodes as
  nanoGPT's ``encode`` / ``decode`` do; without ``meta.pkl`` (``shakespeare``, ``openwebtext``: GPT-2 ids from
  tiktoken) the ``tokenizer.json`` the user names (``tokenizer=``, e.g. Hugging Face's ``gpt2``), copied.
* ``meta.json``: vocabulary (``meta.pkl``'s ``vocab_size``, else the tokenizer's), ``uint16``, tokens per split,
  the largest id per split (refused when it is beyond the vocabulary), and the **byte count** that bits per
  byte divides by: the UTF-8 bytes of each split's text, found without decoding it as the sum over its ids of
  each token's length in bytes (a character's UTF-8 length; for a byte-level BPE such as GPT-2's, the length
  of the token's byte string; an end-of-text or other added token counts 1, as in ``xforget-prepare``). A
  tokenizer of another kind is decoded whole, split by split.

``meta.pkl`` is read with an unpickler that refuses every class and function (nanoGPT's is a plain dict
of ints and strings), so a hostile pickle cannot run code.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
from pathlib import Path

import numpy as np

from xforget.data.corpus import DataError
from xforget.data.tokenizer import HFTokenizer, _import_tokenizers, resolve_tokenizer

SHARDS = ("train.bin", "val.bin")
META_PKL = "meta.pkl"
DTYPE = np.dtype(np.uint16)  # what nanoGPT's prepare scripts write
CHUNK = 1 << 24


def is_nanogpt_dir(path: str | Path) -> bool:
    """``train.bin`` and ``val.bin`` without ``meta.json``: a nanoGPT prepared directory."""
    p = Path(path).expanduser()
    return p.is_dir() and all((p / s).is_file() for s in SHARDS) and not (p / "meta.json").is_file()


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):  # dicts, lists, ints and strings need no class
        raise DataError(f"{META_PKL} holds a {module}.{name} object; a nanoGPT meta.pkl is a plain dict (vocab_size, "
                        "itos, stoi), refusing to load anything else")


def read_meta_pkl(path: Path) -> dict:
    """nanoGPT's ``meta.pkl`` (``vocab_size``, ``itos``, ``stoi``), unpickled without any class or function.

    Raises:
        DataError: unreadable, not a dict, or without ``itos`` / ``vocab_size``.
    """
    try:
        meta = _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read {path} ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or "itos" not in meta or "vocab_size" not in meta:
        raise DataError(f"{path} is not a nanoGPT meta.pkl (a dict with vocab_size, itos, stoi)")
    return meta


def char_tokenizer(itos: dict[int, str]) -> HFTokenizer:
    """A Hugging Face tokenizer with nanoGPT's character ids: one token per character, decoded by joining."""
    tokenizers = _import_tokenizers("a nanoGPT character-level directory")
    from tokenizers import Regex, decoders, models, pre_tokenizers

    tok = tokenizers.Tokenizer(models.WordLevel(vocab={str(c): int(i) for i, c in itos.items()}, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return HFTokenizer(tok, name=f"chars-{len(itos)}")


def token_byte_lengths(tok: HFTokenizer) -> np.ndarray | None:
    """UTF-8 bytes of each token id's text, (vocab,) int64, or None when the tokenizer is neither
    character-level (``WordLevel`` with ``Fuse``) nor a byte-level BPE (``ByteLevel`` decoder)."""
    spec = json.loads(tok.to_str())
    decoder = (spec.get("decoder") or {}).get("type")
    added = {int(t["id"]) for t in spec.get("added_tokens") or []}
    lengths = np.ones(tok.vocab_size, dtype=np.int64)  # added tokens (end-of-text) count 1, as xforget-prepare
    if decoder == "ByteLevel":  # every character of a byte-level token string stands for one byte
        for text, i in tok.tok.get_vocab(with_added_tokens=False).items():
            if i not in added:
                lengths[i] = len(text)
        return lengths
    if decoder == "Fuse" and spec["model"]["type"] == "WordLevel":
        for text, i in tok.tok.get_vocab(with_added_tokens=False).items():
            lengths[i] = len(text.encode("utf-8"))
        return lengths
    return None


def split_bytes(ids: np.ndarray, lengths: np.ndarray | None, tok: HFTokenizer) -> int:
    """UTF-8 bytes of the text of ``ids``: a table lookup in chunks, else decoding them whole."""
    if lengths is None:
        return len(tok.decode(np.asarray(ids).tolist()).encode("utf-8"))
    return int(sum(int(lengths[ids[i:i + CHUNK]].sum()) for i in range(0, len(ids), CHUNK)))


def import_nanogpt(source: Path, tmp: Path, tokenizer: str, log=print) -> dict:
    """Write ``source``'s shards, ``tokenizer.json`` and the fields of ``meta.json`` into ``tmp``; returns them.

    Raises:
        DataError: no ``meta.pkl`` and no ``tokenizer=`` named, a shard whose size is not whole ``uint16`` ids,
            ids beyond the vocabulary, or an unreadable ``meta.pkl`` / tokenizer.
    """
    pkl = source / META_PKL
    if pkl.is_file():
        meta_pkl = read_meta_pkl(pkl)
        tok = char_tokenizer(meta_pkl["itos"])
        vocab = int(meta_pkl["vocab_size"])
        kind = "nanogpt-meta.pkl"
    elif tokenizer in ("bytes", "bpe"):
        raise DataError(f"{source} is a nanoGPT prepared directory without {META_PKL}: its ids are GPT-2's (tiktoken "
                        "gpt2); name that tokenizer: tokenizer=PATH/tokenizer.json (Hugging Face gpt2's tokenizer.json "
                        "has the same ids)")
    else:
        tok = resolve_tokenizer(tokenizer)
        vocab = tok.vocab_size
        kind = "file"
    lengths = token_byte_lengths(tok)
    splits = {}
    for name in SHARDS:
        src = source / name
        size = src.stat().st_size
        if size % DTYPE.itemsize:
            raise DataError(f"{src} holds {size} bytes, not whole uint16 token ids (nanoGPT writes uint16)")
        shutil.copyfile(src, tmp / name)
        ids = np.memmap(tmp / name, dtype=DTYPE, mode="r") if size else np.zeros(0, DTYPE)
        top = max((int(ids[i:i + CHUNK].max()) for i in range(0, len(ids), CHUNK)), default=-1)
        if top >= vocab:
            raise DataError(f"{src} holds token id {top}, beyond the vocabulary of {vocab} ({'meta.pkl' if kind != 'file' else tokenizer}); "
                            "not the tokenizer these ids were made with")
        splits[name.split(".")[0]] = {"tokens": len(ids), "bytes": split_bytes(ids, lengths, tok), "documents": None,
                                      "max_id": top}
        del ids
    tok.save(tmp)
    log(f"imported the nanoGPT directory {source} ({kind}, vocabulary {vocab}); bytes counted "
        f"{'per token' if lengths is not None else 'by decoding'}")
    return {"tokenizer": tok.name, "tokenizer_kind": kind, "vocab_size": vocab, "eot_id": tok.eot_id,
            "separator_ids": None, "dtype": DTYPE.name, **splits, "documents": None, "single_document": False,
            "input": {"spec": str(source), "format": "nanogpt"}}
