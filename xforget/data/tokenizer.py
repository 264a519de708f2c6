"""Tokenizers: the one interface every part of xforget encodes and decodes text through.

* :class:`Tokenizer` -- the protocol: ``encode(text) -> list[int]``,
  ``decode(ids) -> str``, ``vocab_size``, ``eot_id`` (end-of-text id or None),
  ``name``, ``save(directory)``.
* :class:`ByteTokenizer` -- UTF-8 bytes, vocabulary 256, no end-of-text token
  (documents are separated by a byte, default newline); decoding replaces
  invalid UTF-8 with U+FFFD. This is xforget's original behaviour.
* :class:`HFTokenizer` -- a Hugging Face ``tokenizers`` tokenizer
  (``tokenizer.json``), e.g. the byte-level BPE that ``xforget-prepare
  tokenizer=bpe`` trains. Needs the ``data`` extra (``pip install
  'xforget[data]'``).
* :func:`load_tokenizer` ``(directory)`` -- the tokenizer saved in a run
  directory or a prepared dataset directory: ``tokenizer.json`` there -> an
  :class:`HFTokenizer`, none -> :class:`ByteTokenizer`.
* :func:`resolve_tokenizer` ``(spec)`` -- ``bytes``, a ``tokenizer.json`` file
  or a local Hugging Face tokenizer directory (``bpe`` is trained by
  :mod:`xforget.data.prepare`, not resolved here).

Errors are :class:`~xforget.data.corpus.DataError` with one line for the user.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from xforget.data.corpus import DataError
from xforget.files import atomic_write_text

TOKENIZER_FILE = "tokenizer.json"
BYTE_VOCAB = 256
EOT_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "[SEP]", "<|end_of_text|>", "<eot>")


@runtime_checkable
class Tokenizer(Protocol):
    """What xforget needs from a tokenizer.

    Attributes:
        vocab_size: number of token ids (ids are in ``[0, vocab_size)``); the
            model's ``num_tokens`` must equal it.
        eot_id: id of the end-of-text token placed between documents, or None
            (bytes: documents are joined with a separator byte instead).
        name: ``"bytes"`` or a short description of the tokenizer.
    """

    vocab_size: int
    eot_id: int | None
    name: str

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; invalid byte sequences become U+FFFD, never an error."""
        ...

    def save(self, directory: str | Path) -> None:
        """Write what :func:`load_tokenizer` needs into ``directory`` (nothing for bytes)."""
        ...


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256, no end-of-text token)."""

    vocab_size = BYTE_VOCAB
    eot_id: int | None = None
    name = "bytes"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_bytes(self, data: bytes) -> list[int]:
        return list(data)

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> None:
        """Nothing to write: a directory without ``tokenizer.json`` means bytes."""
        Path(directory).mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"


def _import_tokenizers(what: str = "a tokenizer.json tokenizer"):
    """The ``tokenizers`` module; without it one line naming the ``data`` extra.

    Raises:
        DataError: ``{what} needs the Hugging Face 'tokenizers' package (the data extra): pip install 'xforget[data]'``.
    """
    try:
        import tokenizers
    except ImportError:
        raise DataError(f"{what} needs the Hugging Face 'tokenizers' package (the data extra): "
                        "pip install 'xforget[data]'") from None
    return tokenizers


def find_eot_id(tok) -> int | None:
    """The id of the first known end-of-text token present in ``tok``'s vocabulary, else None."""
    for text in EOT_CANDIDATES:
        i = tok.token_to_id(text)
        if i is not None:
            return int(i)
    return None


class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer`` behind the :class:`Tokenizer` protocol.

    Args:
        tok: a ``tokenizers.Tokenizer``.
        name: a description (default: the model type, e.g. ``"BPE"``).
        eot_id: the end-of-text id (default: the first of ``<|endoftext|>``,
            ``</s>``, ``<eos>`` ... found in the vocabulary, else None).
    """

    def __init__(self, tok, name: str | None = None, eot_id: int | None = None) -> None:
        self.tok = tok
        self.vocab_size = int(tok.get_vocab_size(with_added_tokens=True))
        self.eot_id = eot_id if eot_id is not None else find_eot_id(tok)
        try:
            kind = json.loads(tok.to_str())["model"]["type"]
        except (KeyError, ValueError, TypeError):
            kind = "tokenizer"
        self.name = name or f"{kind}-{self.vocab_size}"

    @classmethod
    def from_file(cls, path: str | Path) -> HFTokenizer:
        """Load a ``tokenizer.json``.

        Raises:
            DataError: missing, or not a tokenizer file (one line naming the path).
        """
        tokenizers = _import_tokenizers(f"the tokenizer {Path(path).expanduser()}")
        p = Path(path).expanduser()
        if not p.is_file():
            raise DataError(f"tokenizer file not found: {p.resolve()}")
        try:
            tok = tokenizers.Tokenizer.from_file(str(p))
        except Exception as exc:  # the Rust side raises plain Exception subclasses
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{p.resolve()} is not a Hugging Face tokenizer.json ({reason[:200]})") from None
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_str(self) -> str:
        return self.tok.to_str()

    def save(self, directory: str | Path) -> None:
        """``directory/tokenizer.json``, written atomically."""
        atomic_write_text(Path(directory) / TOKENIZER_FILE, self.tok.to_str())

    def __repr__(self) -> str:
        return f"HFTokenizer(name={self.name!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer of a run directory or prepared dataset directory.

    ``directory/tokenizer.json`` -> :class:`HFTokenizer`; absent ->
    :class:`ByteTokenizer`. If ``directory/meta.json`` records an ``eot_id``,
    it is used.

    Raises:
        DataError: ``tokenizer.json`` is unreadable or not a tokenizer.
    """
    d = Path(directory).expanduser()
    path = d / TOKENIZER_FILE
    if not path.is_file():
        return ByteTokenizer()
    tok = HFTokenizer.from_file(path)
    meta = d / "meta.json"
    if meta.is_file():
        try:
            recorded = json.loads(meta.read_text()).get("eot_id")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if isinstance(recorded, int):
            tok.eot_id = recorded
    return tok


def same_tokenizer(a: Tokenizer, b: Tokenizer) -> bool:
    """Whether ``a`` and ``b`` map text to the same ids: both bytes, or two ``tokenizer.json`` tokenizers whose
    serialised form (vocabulary, merges, pre-tokenizer, ...) is identical."""
    if isinstance(a, ByteTokenizer) or isinstance(b, ByteTokenizer):
        return isinstance(a, ByteTokenizer) and isinstance(b, ByteTokenizer)
    if isinstance(a, HFTokenizer) and isinstance(b, HFTokenizer):
        return a.to_str() == b.to_str()
    return a is b


def _config_eos(path: Path) -> str | None:
    """``eos_token`` of a Hugging Face ``tokenizer_config.json`` (a string or ``{"content": ...}``), if any."""
    try:
        eos = json.loads(path.read_text()).get("eos_token")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(eos, dict):
        eos = eos.get("content")
    return eos if isinstance(eos, str) else None


def resolve_tokenizer(spec: str | Path) -> Tokenizer:
    """``bytes`` -> :class:`ByteTokenizer`; a ``tokenizer.json`` path or a directory holding one -> :class:`HFTokenizer`.

    Raises:
        DataError: the path does not exist, holds no ``tokenizer.json``, or is not a tokenizer.
    """
    if str(spec) == "bytes":
        return ByteTokenizer()
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / TOKENIZER_FILE).is_file():
            raise DataError(f"tokenizer directory {p.resolve()} holds no {TOKENIZER_FILE}; valid tokenizer= values: "
                            "bytes, bpe, a tokenizer.json file or a local Hugging Face tokenizer directory")
        tok = HFTokenizer.from_file(p / TOKENIZER_FILE)
        eos = _config_eos(p / "tokenizer_config.json")
        if eos is not None and tok.tok.token_to_id(eos) is not None:
            tok.eot_id = int(tok.tok.token_to_id(eos))
        return tok
    if p.is_file():
        return HFTokenizer.from_file(p)
    raise DataError(f"unknown tokenizer {str(spec)!r}: not a file or directory; valid tokenizer= values: bytes, bpe, "
                    "a tokenizer.json file or a local Hugging Face tokenizer directory")
