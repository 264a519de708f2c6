"""Prepare a corpus as token shards: ``train.bin``, ``val.bin``, ``tokenizer.json``, ``meta.json``.

:func:`prepare` ``(PrepareConfig) -> Path`` is what ``xforget-prepare``
(:mod:`xforget.commands.prepare`) runs. Layout (``/work/shared/DESIGN.md`` 6):

* ``train.bin`` / ``val.bin``: token ids, no header, ``uint16`` when the
  vocabulary has at most 65,536 ids, else ``uint32`` (what nanoGPT-style tools
  memory-map).
* ``tokenizer.json``: the Hugging Face tokenizer, when one is used (absent for bytes).
* ``meta.json``: tokenizer, vocabulary size, end-of-text id, dtype, tokens,
  bytes and documents per split, the input hashes and the command.

Rules:

* Documents (one per file, JSON line or row) are followed by the tokenizer's
  end-of-text token; with ``tokenizer=bytes`` (vocabulary 256) by the
  ``separator`` (default newline). ``bytes`` of a split counts the documents'
  UTF-8 bytes plus one per end-of-text token (or the separator's bytes), so
  ``tokens / bytes`` converts a per-token loss into bits per byte.
* Validation split: ``round(val_fraction * documents)`` documents chosen by a
  permutation from ``seed``. A single plain text file is one document and is
  split as the byte path splits it: its last ``int(val_fraction * size)`` bytes
  validate (no separator).
* Streaming: documents are encoded in batches of about ``batch_bytes`` and
  appended to the shards, so memory does not grow with the corpus; with
  ``num_proc > 1`` batches are encoded by that many worker processes (in
  order, at most ``2 * num_proc`` batches in flight). Text files longer than
  ``batch_bytes`` are encoded in pieces cut where no pre-token spans
  (:func:`~xforget.data.prepare_inputs.text_pieces`).
* Atomic: everything is written into ``.<output>.tmp-<pid>/`` next to the
  output, ``meta.json`` last, then renamed to ``output`` (:func:`xforget.files.atomic_dir`). A killed run leaves
  only that temporary directory (removed by the next run); a directory
  without ``meta.json`` is never a prepared dataset.

Errors are :class:`~xforget.data.corpus.DataError` (one line) and leave nothing behind.
Debug knob (tests): ``XFORGET_DEBUG_PREPARE_SLEEP=SECONDS`` sleeps after each written batch.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from xforget.data.corpus import DataError
from xforget.data.nanogpt import import_nanogpt, is_nanogpt_dir
from xforget.data.prepare_inputs import Source, as_utf8, bom_length, check_encoding, check_text_file, open_source, text_pieces
from xforget.data.tokenizer import ByteTokenizer, HFTokenizer, _import_tokenizers, resolve_tokenizer
from xforget.files import atomic_dir, partial_dirs

META_FILE = "meta.json"
FORMAT = "xforget-tokens"
VERSION = 1
EOT_TOKEN = "<|endoftext|>"
MAX_VOCAB = 1 << 32


@dataclass
class PrepareConfig:
    """``xforget-prepare`` keys (the first eight are pinned: scripts outside the project use them).

    ``tokenizer``: ``bytes`` | ``bpe`` (train a byte-level BPE of ``vocab_size``
    on the training split) | a ``tokenizer.json`` path | a local Hugging Face
    tokenizer directory. ``num_proc``: worker processes encoding batches
    (1 = in this process; the ``tokenizers`` library may still use several
    threads there). ``dataset_config`` / ``split``: for a ``datasets`` name.
    """

    input: str = "???"
    output: str = "???"
    tokenizer: str = "bytes"
    vocab_size: int = 4096
    text_field: str = "text"
    val_fraction: float = 0.05
    num_proc: int = 1
    seed: int = 0
    separator: str = "\n"  # bytes tokenizer (and tokenizers without an end-of-text token): between documents
    dataset_config: Optional[str] = None
    split: str = "train"
    batch_bytes: int = 1 << 22  # bytes of text per encoding batch (memory ~ a few batches)
    overwrite: bool = False  # replace an existing prepared dataset at output (never any other directory)
    progress: bool = True
    encoding: str = "utf-8"  # of text files; another ASCII-compatible codec is transcoded to UTF-8
    errors: str = "strict"  # strict: undecodable bytes are an error; replace: each becomes U+FFFD


def dtype_for(vocab_size: int) -> np.dtype:
    """``uint16`` for at most 65,536 ids, ``uint32`` up to 2^32.

    Raises:
        DataError: a vocabulary over 2^32 ids.
    """
    if vocab_size > MAX_VOCAB:
        raise DataError(f"vocabulary of {vocab_size} ids does not fit uint32 token ids (at most 2^32 = {MAX_VOCAB})")
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def command_line(cfg: PrepareConfig) -> str:
    """The canonical command that reproduces ``cfg`` (recorded in meta.json; no time or pid)."""
    return "xforget-prepare " + " ".join(f"{k}={v!r}" if isinstance(v, str) and (not v or any(c in v for c in " \n\t'\"="))
                                         else f"{k}={v}" for k, v in asdict(cfg).items() if k != "progress")


def validate_prepare(cfg: PrepareConfig, key_prefix: str = "") -> None:
    """Raises DataError (one line, naming the key) for impossible values.

    ``key_prefix`` is put before the key names in the message (``prepare.`` when the settings come from
    ``xforget-compare``'s ``prepare`` node, so the message names the key the user typed).
    """
    def need(ok: bool, key: str, rule: str, value) -> None:
        if not ok:
            raise DataError(f"invalid value {key_prefix}{key}={value!r}: must be {rule}")

    need(bool(cfg.input) and cfg.input != "???", "input", "a file, directory, glob or dataset name", cfg.input)
    need(bool(cfg.output) and cfg.output != "???", "output", "a directory to create", cfg.output)
    need(0 < cfg.val_fraction < 1, "val_fraction", "in (0, 1)", cfg.val_fraction)
    need(cfg.num_proc >= 1, "num_proc", ">= 1", cfg.num_proc)
    need(cfg.batch_bytes >= 1, "batch_bytes", ">= 1", cfg.batch_bytes)
    need(bool(cfg.text_field), "text_field", "a field/column name", cfg.text_field)
    need(cfg.vocab_size >= 1, "vocab_size", ">= 1 (read by tokenizer=bpe only)", cfg.vocab_size)
    if cfg.tokenizer == "bpe":
        need(cfg.vocab_size <= MAX_VOCAB, "vocab_size", f"<= 2^32 = {MAX_VOCAB} (uint32 token ids)", cfg.vocab_size)
        need(cfg.vocab_size >= 257 + 1, "vocab_size", ">= 258 for bpe (256 byte tokens + end-of-text + merges)",
             cfg.vocab_size)
    if cfg.tokenizer == "bytes":
        need(len(cfg.separator.encode("utf-8")) >= 1, "separator", "at least one byte", cfg.separator)
    check_encoding(cfg.encoding, cfg.errors)


# ----------------------------------------------------------------------------- encoding

ENCODE_PIECE = 1 << 16
# A newline between two non-space bytes: GPT-2-style pre-tokenizers make that newline a token of its
# own and never merge across it, so cutting right after it encodes exactly as the whole text does.
_SAFE_CUT = re.compile(rb"(?<=[^\s])\n(?=[^\s])")


def split_for_encoding(piece: bytes, size: int = ENCODE_PIECE) -> list[bytes]:
    """``piece`` cut into parts of at least ``size`` bytes, right after a newline that has a non-space
    byte on both sides (the rest stays whole). Many short texts let ``encode_batch`` use every core and
    keep its per-text memory small; for byte-level BPE the ids equal those of the whole piece."""
    if len(piece) <= size:
        return [piece]
    out, start = [], 0
    while len(piece) - start > size:
        m = _SAFE_CUT.search(piece, start + size)
        if m is None:
            break
        out.append(piece[start:m.end()])
        start = m.end()
    out.append(piece[start:])
    return out

_WORKER_TOKENIZER = None


def _init_worker(spec: str | None) -> None:
    """Worker process: load the tokenizer once (single-threaded: the processes are the parallelism)."""
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if spec is None:
        _WORKER_TOKENIZER = ByteTokenizer()
    else:
        import tokenizers

        _WORKER_TOKENIZER = HFTokenizer(tokenizers.Tokenizer.from_str(spec))


def _encode_in_workers(num_proc: int, tok, encoder, stream, write) -> None:
    """Encode ``stream``'s batches in ``num_proc`` processes and ``write`` the results in input order.

    The workers start from a fork server, not by forking this process: a fork copies the parent's
    threads' locks (torch's OpenMP pool, tokenizers' rayon pool, a test runner's) in whatever state
    they are in, and a worker that inherits a held lock waits forever (this hung a CI run). A worker
    that dies (killed, out of memory) raises here instead of leaving its batch pending for ever.

    Raises:
        DataError: a worker process died.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    spec = None if isinstance(tok, ByteTokenizer) else tok.to_str()
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    pool = ProcessPoolExecutor(num_proc, mp_context=ctx, initializer=_init_worker, initargs=(spec,))
    try:
        pending: deque = deque()
        for batch in stream:
            pending.append(pool.submit(encoder, batch))
            if len(pending) >= 2 * num_proc:  # bounded read-ahead: memory stays O(num_proc batches)
                write(pending.popleft().result())
        while pending:
            write(pending.popleft().result())
    except BrokenProcessPool as exc:
        raise DataError(f"a tokenizer worker process died ({exc}); nothing was written to the output: "
                        "run again, with num_proc=1 if it keeps happening") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class Encoder:
    """Encodes a batch of ``(piece, is_val, last)`` into one id array per split.

    ``sep_ids`` follow a document's last piece; ``sep_bytes`` is what they count as
    in the byte totals (1 for an end-of-text token).
    """

    sep_ids: list[int]
    sep_bytes: int
    dtype: str

    def __call__(self, batch: list[tuple[bytes, bool, bool]], tok=None) -> tuple:
        tok = tok if tok is not None else _WORKER_TOKENIZER
        dtype = np.dtype(self.dtype)
        sep = np.asarray(self.sep_ids, dtype=dtype)
        out = {False: [], True: []}
        nbytes = {False: 0, True: 0}
        docs = {False: 0, True: 0}
        if isinstance(tok, ByteTokenizer):
            ids_list = [np.frombuffer(p, dtype=np.uint8).astype(dtype) for p, _, _ in batch]
        else:  # long pieces are encoded as several texts cut where no pre-token spans the cut (in parallel)
            texts, owner = [], []
            for i, (piece, _, _) in enumerate(batch):
                for part in split_for_encoding(piece):
                    texts.append(part.decode("utf-8", errors="replace"))
                    owner.append(i)
            parts: list[list[np.ndarray]] = [[] for _ in batch]
            for i, ids in zip(owner, _encode_or_fail(tok, texts, "the input")):
                parts[i].append(np.asarray(ids, dtype=dtype))
            ids_list = [np.concatenate(p) if p else np.zeros(0, dtype=dtype) for p in parts]
        for (piece, is_val, last), ids in zip(batch, ids_list):
            out[is_val].append(ids)
            nbytes[is_val] += len(piece)
            if last:
                out[is_val].append(sep)
                nbytes[is_val] += self.sep_bytes
                docs[is_val] += 1
        arrays = [np.concatenate(out[v]) if out[v] else np.zeros(0, dtype=dtype) for v in (False, True)]
        return arrays[0], arrays[1], nbytes[False], nbytes[True], docs[False], docs[True], sum(len(p) for p, _, _ in batch)


def _encode_or_fail(tok, texts: list[str], what: str) -> list[list[int]]:
    """``tok.encode_batch(texts)``; a tokenizer that cannot encode them (a character-level vocabulary without
    one of their characters) is one DataError line, not the tokenizers library's traceback."""
    try:
        return tok.encode_batch(texts)
    except Exception as exc:
        raise DataError(f"the tokenizer {tok.name} cannot encode {what} ({' '.join(str(exc).split())[:200]}); use a "
                        "tokenizer that covers the text, e.g. tokenizer=bpe") from None


# ----------------------------------------------------------------------------- plan


@dataclass
class Plan:
    """Which document goes where: a byte split of one file, or a seeded choice of validation documents."""

    single_file: Path | None
    split_at: int = 0  # single file: first validation byte
    size: int = 0  # single file: bytes of text (a leading byte-order mark left out)
    start: int = 0  # single file: first byte of text (3 after a UTF-8 byte-order mark)
    is_val: np.ndarray | None = None  # documents: bool per document
    documents: int = 0


def make_plan(source: Source, val_fraction: float, seed: int) -> Plan:
    """Raises DataError: empty corpus, or a ``val_fraction`` that leaves a split empty."""
    single = source.single_file()
    if single is not None:
        start = bom_length(single, source.encoding)  # split the text as data=text does: without the mark
        size = single.stat().st_size - start
        if size == 0:
            raise DataError(f"empty corpus: {single} has 0 bytes{' after its byte-order mark' if start else ''}")
        n_val = int(size * val_fraction)
        if n_val == 0 or n_val == size:
            raise DataError(f"val_fraction={val_fraction} leaves an empty split of the {size}-byte file {single} "
                            f"({n_val} validation bytes)")
        return Plan(single, split_at=start + size - n_val, size=size, start=start, documents=1)
    if source.kind == "files" and source.total_bytes() == 0:
        raise DataError(f"empty corpus: the {len(source.files)} input file(s) hold 0 bytes")
    source.check_fields()
    n = source.count_documents()
    if n == 0:
        raise DataError(f"empty corpus: no documents in {source.description}")
    k = int(round(n * val_fraction))
    if k == 0 or k == n:
        hint = ("a split by documents needs at least 2" if n < 2 else
                f"use val_fraction={math.ceil(100 / n) / 100:g} or more" if k == 0 else
                f"use val_fraction={math.floor(100 * (n - 1) / n) / 100:g} or less")
        raise DataError(f"val_fraction={val_fraction} leaves an empty split: {n} document(s) give {k} validation "
                        f"and {n - k} training documents; {hint}")
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n)[:k]] = True
    return Plan(None, is_val=is_val, documents=n)


def units(source: Source, plan: Plan, chunk: int) -> Iterator[tuple[bytes, bool, bool]]:
    """``(piece, is_val, last)`` in corpus order. A single file's pieces never end a document
    (no separator: the file is split as the byte path splits it)."""
    if plan.single_file is not None:
        for start, stop, is_val in ((plan.start, plan.split_at, False), (plan.split_at, None, True)):
            for piece, _ in text_pieces(plan.single_file, start, stop, chunk):
                yield as_utf8(piece, source.encoding, source.errors), is_val, False
        return
    doc = 0
    for piece, last in source.pieces(chunk):
        if doc >= plan.documents:
            raise DataError(f"{source.description} changed while it was read (more than {plan.documents} documents)")
        yield piece, bool(plan.is_val[doc]), last
        doc += last


def batches(stream: Iterator[tuple[bytes, bool, bool]], batch_bytes: int) -> Iterator[list]:
    batch, size = [], 0
    for unit in stream:
        batch.append(unit)
        size += len(unit[0])
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# ----------------------------------------------------------------------------- tokenizer


def train_bpe(texts: Iterator[str], vocab_size: int, length: int | None = None) -> HFTokenizer:
    """A byte-level BPE (GPT-2 style pre-tokenizer, all 256 bytes in the base alphabet) trained with the
    Hugging Face ``tokenizers`` library on ``texts``; ``<|endoftext|>`` is id 0."""
    tokenizers = _import_tokenizers("tokenizer=bpe")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return HFTokenizer(tok, name=f"bpe-{tok.get_vocab_size()}")


def _train_texts(source: Source, plan: Plan, chunk: int) -> Iterator[str]:
    for piece, is_val, _ in units(source, plan, chunk):
        if not is_val:
            yield piece.decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------- main


def remove_stale(output: Path) -> list[Path]:
    """Delete temporary directories that interrupted runs left next to ``output``."""
    removed = partial_dirs(output)
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


OVERWRITE_RULE = "overwrite=true replaces a prepared dataset (a directory with meta.json), never anything else"


def check_output(output: Path, overwrite: bool) -> None:
    """The one overwrite rule: a new path is written; an existing prepared dataset is replaced only with
    ``overwrite=true``; anything else that exists is never replaced; an output below a file is refused.

    Raises:
        DataError: one line stating the rule.
    """
    for parent in output.parents:  # a file on the way: mkdir would fail with a traceback after the work
        if parent.exists():
            if not parent.is_dir():
                raise DataError(f"output={output}: {parent} is a file, not a directory; choose another output=")
            break
    if not output.exists():
        return
    if not output.is_dir():
        raise DataError(f"output={output} exists and is a file, not a directory; {OVERWRITE_RULE}: "
                        "choose another output=")
    if not (output / META_FILE).is_file():
        raise DataError(f"output={output} exists and is not a prepared dataset (no {META_FILE}); {OVERWRITE_RULE}: "
                        "choose another output=")
    if not overwrite:
        raise DataError(f"output={output} is already a prepared dataset; add overwrite=true to replace it "
                        "or choose another output=")


def check_text(source: Source) -> int:
    """Check every text file of ``source`` (:func:`~xforget.data.prepare_inputs.check_text_file`) before anything
    is written; returns their undecodable bytes (replaced by U+FFFD; 0 unless ``errors=replace``).

    Raises:
        DataError: a binary file, or invalid text under ``errors=strict`` (one line naming the file).
    """
    return sum(check_text_file(f, source.encoding, source.errors) for f in source.text_files())


def prepare(cfg: PrepareConfig, log=print) -> Path:
    """Write the prepared dataset directory ``cfg.output``; returns its path.

    Raises:
        DataError: bad input or config (one line); nothing is left at ``output``.
    """
    validate_prepare(cfg)
    if cfg.tokenizer == "bpe":  # before anything is read, logged or written

        _import_tokenizers("tokenizer=bpe")
    output = Path(cfg.output).expanduser().resolve()
    check_output(output, cfg.overwrite)
    if is_nanogpt_dir(cfg.input):  # train.bin + val.bin without meta.json: import, no encoding
        return _import_nanogpt(cfg, output, log)
    source = open_source(cfg.input, cfg.text_field, cfg.dataset_config, cfg.split, cfg.encoding, cfg.errors,
                         exclude=output)
    undecodable = check_text(source)
    if cfg.tokenizer not in ("bytes", "bpe"):
        tok = resolve_tokenizer(cfg.tokenizer)
    else:
        tok = ByteTokenizer() if cfg.tokenizer == "bytes" else None
    plan = make_plan(source, cfg.val_fraction, cfg.seed)

    output.parent.mkdir(parents=True, exist_ok=True)
    for p in remove_stale(output):
        log(f"removed an interrupted prepare: {p}")
    with atomic_dir(output) as tmp:  # output is either untouched or the complete dataset
        if tok is None:
            log(f"training a byte-level BPE of {cfg.vocab_size} tokens on the training split ...")
            n_train = None if plan.single_file is not None else int((~plan.is_val).sum())
            tok = train_bpe(_train_texts(source, plan, cfg.batch_bytes), cfg.vocab_size, n_train)
        dtype = dtype_for(tok.vocab_size)
        if isinstance(tok, ByteTokenizer) or tok.eot_id is None:
            sep = cfg.separator.encode("utf-8") if isinstance(tok, ByteTokenizer) else cfg.separator
            if isinstance(tok, ByteTokenizer):
                sep_ids = list(sep)
            else:  # a single file has no separator (one document, split by bytes)
                sep_ids = [] if plan.single_file is not None else _encode_or_fail(tok, [sep], "the separator")[0]
            sep_bytes = len(cfg.separator.encode("utf-8"))
        else:
            sep_ids, sep_bytes = [tok.eot_id], 1
        if not isinstance(tok, ByteTokenizer):
            tok.save(tmp)
        totals = _encode_all(cfg, source, plan, tok, Encoder(sep_ids, sep_bytes, dtype.name), tmp)
        tr, va = totals["train"], totals["val"]
        if tr["tokens"] == 0 or va["tokens"] == 0:
            raise DataError(f"val_fraction={cfg.val_fraction} leaves an empty split: {tr['tokens']} training and "
                            f"{va['tokens']} validation tokens")
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "tokenizer": tok.name,
            "tokenizer_kind": cfg.tokenizer if cfg.tokenizer in ("bytes", "bpe") else "file",
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,
            "separator_ids": None if tok.eot_id is not None else sep_ids,
            "dtype": dtype.name,
            "train": tr,
            "val": va,
            "documents": plan.documents,
            "single_document": plan.single_file is not None,
            "val_fraction": cfg.val_fraction,
            "seed": cfg.seed,
            "input": {"spec": cfg.input, **source.fingerprint(), "encoding": cfg.encoding, "errors": cfg.errors,
                      "replaced_bytes": undecodable},
            "command": command_line(cfg),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    log(f"wrote {output}: {tr['tokens']:,} train / {va['tokens']:,} val tokens ({dtype.name}), "
        f"{tr['bytes'] / max(tr['tokens'], 1):.3f} bytes per token, {plan.documents:,} document{'' if plan.documents == 1 else 's'}, "
        f"tokenizer {tok.name} (vocabulary {tok.vocab_size})")
    return output


def _import_nanogpt(cfg: PrepareConfig, output: Path, log) -> Path:
    """``input=`` is a nanoGPT prepared directory: :func:`xforget.data.nanogpt.import_nanogpt` into ``output``."""
    source = Path(cfg.input).expanduser().resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    for p in remove_stale(output):
        log(f"removed an interrupted prepare: {p}")
    with atomic_dir(output) as tmp:
        fields = import_nanogpt(source, tmp, cfg.tokenizer, log)
        meta = {"format": FORMAT, "version": VERSION, **fields, "val_fraction": None, "seed": None,
                "command": command_line(cfg)}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    log(f"wrote {output}: {meta['train']['tokens']:,} train / {meta['val']['tokens']:,} val tokens (uint16), "
        f"{meta['val']['bytes'] / max(meta['val']['tokens'], 1):.3f} validation bytes per token, tokenizer "
        f"{meta['tokenizer']} (vocabulary {meta['vocab_size']})")
    return output


def _encode_all(cfg: PrepareConfig, source: Source, plan: Plan, tok, encoder: Encoder, tmp: Path) -> dict:
    from tqdm.auto import tqdm

    # max_id: the largest id written, recorded in meta.json so that opening the dataset checks it against the
    # vocabulary without a scan (tokens.py)
    totals = {s: {"tokens": 0, "bytes": 0, "documents": 0, "max_id": -1} for s in ("train", "val")}
    total = plan.size if plan.single_file is not None else source.total_bytes()
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="prepare", dynamic_ncols=True,
               disable=None if cfg.progress else True, file=sys.stderr, mininterval=0.5)  # None: a terminal only
    stream = batches(units(source, plan, cfg.batch_bytes), cfg.batch_bytes)
    step_sleep = float(os.environ.get("XFORGET_DEBUG_PREPARE_SLEEP") or 0.0)  # tests: time to SIGKILL mid-write

    with open(tmp / "train.bin", "wb") as ftrain, open(tmp / "val.bin", "wb") as fval:
        def write(result) -> None:
            a_tr, a_va, b_tr, b_va, d_tr, d_va, read = result
            ftrain.write(a_tr.tobytes())
            fval.write(a_va.tobytes())
            for name, arr, b, d in (("train", a_tr, b_tr, d_tr), ("val", a_va, b_va, d_va)):
                totals[name]["tokens"] += int(arr.size)
                totals[name]["bytes"] += b
                totals[name]["documents"] += d
                if arr.size:
                    totals[name]["max_id"] = max(totals[name]["max_id"], int(arr.max()))
            bar.update(read)
            if step_sleep:
                ftrain.flush()
                fval.flush()
                time.sleep(step_sleep)

        try:
            if cfg.num_proc == 1:
                for batch in stream:
                    write(encoder(batch, tok))
            else:
                _encode_in_workers(cfg.num_proc, tok, encoder, stream, write)
        finally:
            bar.close()
    if plan.single_file is not None:  # one document, split in two; no separator
        totals["train"]["documents"] = totals["val"]["documents"] = 1
    return totals


def read_meta(directory: str | Path) -> dict:
    """``meta.json`` of a prepared dataset directory.

    Raises:
        DataError: not a directory, no meta.json (e.g. an interrupted prepare), unreadable.
    """
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise DataError(f"prepared dataset not found: {d.resolve()} is not a directory (run xforget-prepare "
                        "input=... output=DIR first)")
    path = d / META_FILE
    if not path.is_file() and (d / "train.bin").is_file() and (d / "val.bin").is_file():
        pkl = "" if (d / "meta.pkl").is_file() else " tokenizer=PATH/tokenizer.json (its ids are GPT-2's: name that tokenizer)"
        raise DataError(f"{d.resolve()} looks like a nanoGPT prepared directory (train.bin, val.bin, no meta.json): "
                        f"convert it once with xforget-prepare input={d} output={d}-xforget{pkl}")
    if not path.is_file():
        raise DataError(f"{d.resolve()} is not a prepared dataset: no meta.json (an interrupted xforget-prepare? "
                        "run it again)")
    try:
        meta = json.loads(path.read_text())
        for key in ("vocab_size", "dtype", "train", "val"):
            meta[key]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"unreadable {path.resolve()}: {type(exc).__name__}: {exc}") from None
    return meta


def bits_per_byte_factor(meta: dict, split: str = "val") -> float:
    """``tokens / bytes`` of a split: multiply a per-token loss (nats) by it and divide by ln 2 for bits per byte."""
    s = meta[split]
    return s["tokens"] / s["bytes"] if s["bytes"] else math.nan
