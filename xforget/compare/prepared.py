"""The data step of a comparison: prepare token shards once (``xforget-prepare``), re-use them after.

A comparison with a ``prepare:`` node (e.g. ``experiment=fox_vs_rope``) runs
:func:`xforget.data.prepare.prepare` before planning its runs and trains every
run on the result (``data=tokens data.path=<dir>``). ``prepare.input: stdlib``
is this Python's standard-library corpus (the default training data, offline) as one
document; ``prepare.input: stdlib_files`` is the same bytes as one document per source file,
which ``data.pack_documents=true`` needs; anything else is an ``xforget-prepare`` input.

The directory is ``<comparison dir>/data/<name>-<hash8>`` (or under
``prepare.output`` when that is set) where the hash covers the prepare
settings and the input's sha256: the same command finds and re-uses it, and
changed settings or a changed input get a new directory (so the runs, whose
directory names hash ``data.path``, are never re-used with other data).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

from xforget.data.corpora.cache import cache_dir
from xforget.data.corpora.stdlib import load_stdlib_corpus, stdlib_documents_dir, stdlib_root
from xforget.data.corpus import DataError
from xforget.data.prepare import META_FILE, PrepareConfig, prepare, validate_prepare
from xforget.data.prepare_inputs import open_source

STDLIB = "stdlib"
STDLIB_FILES = "stdlib_files"  # the same corpus, one document per file (for data.pack_documents=true)
# settings that change the prepared tokens (output, overwrite, progress, num_proc and batch_bytes do not)
_KEYS = ("tokenizer", "vocab_size", "text_field", "val_fraction", "seed", "separator", "dataset_config", "split")


def resolve_input(spec: str) -> tuple[str, str]:
    """(path or name for ``xforget-prepare``, sha256 of the input) for ``prepare.input``."""
    if spec == STDLIB:
        corpus = load_stdlib_corpus(cache_dir())
        version, tag = corpus.meta["python_version"], hashlib.sha256(str(stdlib_root().resolve()).encode()).hexdigest()[:8]
        blob = cache_dir() / f"stdlib-py{version}-{tag}.bin"
        if not blob.is_file():
            raise DataError(f"the stdlib corpus cache {blob} is missing after building it")
        return str(blob), corpus.meta["sha256"]
    if spec == STDLIB_FILES:
        path, sha = stdlib_documents_dir(cache_dir())
        return str(path), hashlib.sha256(f"{sha}:one document per file".encode()).hexdigest()

    fp = open_source(spec).fingerprint()
    return spec, str(fp.get("sha256") or fp.get("fingerprint") or json.dumps(fp, sort_keys=True))


def prepared_dir(cfg: PrepareConfig, out_dir: Path, input_sha: str) -> Path:
    key = json.dumps({"input_sha256": input_sha, **{k: getattr(cfg, k) for k in _KEYS}}, sort_keys=True)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", cfg.input if cfg.input in (STDLIB, STDLIB_FILES) else Path(cfg.input).stem)
    tok = f"{cfg.tokenizer}{cfg.vocab_size}" if cfg.tokenizer == "bpe" else re.sub(r"[^A-Za-z0-9]", "", Path(cfg.tokenizer).stem)
    base = Path(cfg.output).expanduser() if cfg.output not in ("", "???", None) else out_dir / "data"
    if not base.is_absolute():
        base = out_dir / base
    return (base / f"{name}-{tok}-{hashlib.sha256(key.encode()).hexdigest()[:8]}").resolve()


def check_packing_input(cfg: PrepareConfig) -> None:
    """Refuse, before anything is read or written, a ``prepare:`` node that cannot give the several
    documents and the end-of-text token ``data.pack_documents=true`` needs.

    Raises:
        DataError: ``input: stdlib`` or one plain text file (one document), or the bytes tokenizer
            (no end-of-text token).
    """
    single = cfg.input == STDLIB
    if not single and cfg.input != STDLIB_FILES:
        try:
            single = open_source(cfg.input).single_file() is not None
        except DataError:
            return  # a missing or bad input: ensure_prepared names it
    if single:
        raise DataError(f"data.pack_documents=true needs a corpus of several documents, but prepare.input="
                        f"{cfg.input} is one document (one text file, no end-of-text token to cut at); use "
                        f"prepare.input={STDLIB_FILES} (the standard library, one document per file) or a "
                        "directory of files, JSON lines or Parquet, or set data.pack_documents=false")
    if cfg.tokenizer == "bytes":
        raise DataError("data.pack_documents=true needs an end-of-text token, which prepare.tokenizer=bytes does "
                        "not have (its documents are cut by a separator); use prepare.tokenizer=bpe, or set "
                        "data.pack_documents=false")


def ensure_prepared(cfg: PrepareConfig, out_dir: Path, *, log=print, create: bool = True) -> tuple[Path, bool]:
    """The prepared dataset for ``cfg``: (directory, re-used?). Prepares it when missing.

    ``create=False`` (``--cfg job``) only names the directory: (directory, whether it is already there).

    Raises:
        DataError: a bad input or setting (one line), or a damaged directory in the way.
    """
    # the settings first, named as the user typed them (prepare.vocab_size=...), before the corpus is read;
    # the output directory is chosen below, so any placeholder passes its check here
    validate_prepare(replace(cfg, output=cfg.output or "(chosen below)"), key_prefix="prepare.")
    path, sha = resolve_input(cfg.input)
    target = prepared_dir(cfg, out_dir, sha)
    meta_path = target / META_FILE
    if not create:
        return target, meta_path.is_file()
    if meta_path.is_file():  # the name hashes the settings and the input's sha256
        try:
            from xforget.data.tokens import load_tokens

            load_tokens(target)  # shards match meta.json
            log(f"[compare] re-using prepared data {target}")
            return target, True
        except DataError as exc:
            log(f"[compare] preparing again: {exc}")
    run_cfg = replace(cfg, input=path, output=str(target), overwrite=meta_path.is_file(), progress=False)
    log(f"[compare] preparing data: {cfg.input} -> {target} ({cfg.tokenizer}"
        f"{f' {cfg.vocab_size}' if cfg.tokenizer == 'bpe' else ''})")
    prepare(run_cfg, log=lambda m: log(f"[prepare] {m}"))
    return target, False


def prepare_summary(target: Path) -> dict:
    """What the report says about the data: tokenizer, sizes, bytes per token, the command."""
    meta = json.loads((target / META_FILE).read_text())
    return {"path": str(target), "tokenizer": meta["tokenizer"], "vocab_size": meta["vocab_size"],
            "train_tokens": meta["train"]["tokens"], "val_tokens": meta["val"]["tokens"],
            "val_bytes": meta["val"]["bytes"],
            "bytes_per_token": round(meta["val"]["bytes"] / max(1, meta["val"]["tokens"]), 4),
            "input_sha256": meta.get("input", {}).get("sha256"), "command": meta.get("command")}
