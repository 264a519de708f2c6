"""Corpus inputs for ``xforget-prepare``: files, directories, globs, JSON lines, Parquet, ``datasets``.

:func:`open_source` ``(spec, text_field, ...) -> Source``. A source knows how
many documents it holds (cheaply: file counts, line counts, Parquet metadata,
``len(dataset)``) and iterates them lazily as ``bytes``, so a corpus larger
than memory streams through. One document per text file, per JSON line or per
row. A single plain text file is *one* document; :meth:`Source.single_file`
gives its path so the caller can split it by bytes (the byte path's rule).

Inputs:

* a text file, or a directory (every file below it, recursive, sorted; hidden
  files skipped) or a glob (``data/**/*.txt``). Files ending ``.jsonl`` /
  ``.json`` are JSON lines (one object per line, or one JSON array), files
  ending ``.parquet`` are Parquet tables; the rest are read as text (bytes).
* a Hugging Face ``datasets`` dataset saved with ``save_to_disk`` (a local
  directory), or a ``load_dataset`` name: ``input=hf:NAME`` (any name), or ``input=OWNER/NAME`` when
  no such local path exists and OWNER is not a local directory (``dataset_config=... split=train``;
  offline it needs the data in the local cache). A bare word that is no local path (``input=nothere``)
  is "input not found", never a network look-up (:func:`dataset_name`).

Text files are checked before anything is written (:func:`check_text_files`): invalid UTF-8 is an
error naming the file, the byte offset of the first invalid byte and how many there are, unless the
user opts in to another ``encoding`` (the text is transcoded to UTF-8) or to ``errors=replace``
(invalid bytes become U+FFFD); a file that looks binary (a NUL byte in its first 8000 bytes, git's
rule, or over 30% undecodable bytes) is refused either way. JSON, Parquet and ``datasets`` inputs
hold decoded text already. A UTF-8 byte-order mark at the start of a UTF-8 text file is not text and is
left out (:func:`bom_length`), as ``data=text`` leaves it out; line endings (CRLF) are kept as they are.

Errors are :class:`~xforget.data.corpus.DataError` with one line.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from xforget.data.corpus import DataError

JSON_EXT = (".jsonl", ".json")
PARQUET_EXT = (".parquet",)
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
READ_CHUNK = 1 << 20


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise DataError(f"reading this input needs the '{module}' package: pip install 'xforget[data]'") from None


@dataclass
class Source:
    """Documents of a corpus, iterated lazily (``bytes`` each)."""

    kind: str  # files | dataset
    files: list[Path] = field(default_factory=list)
    dataset: object = None
    text_field: str = "text"
    description: str = ""
    encoding: str = "utf-8"  # of the text files (JSON, Parquet and datasets hold decoded text)
    errors: str = "strict"  # strict | replace: what undecodable bytes of a text file become

    def single_file(self) -> Path | None:
        """The path when the input is one plain text file (one document, split by bytes), else None."""
        if self.kind == "files" and len(self.files) == 1 and _file_kind(self.files[0]) == "text":
            return self.files[0]
        return None

    def text_files(self) -> list[Path]:
        """The plain text files among the inputs (not JSON, not Parquet)."""
        return [f for f in self.files if _file_kind(f) == "text"] if self.kind == "files" else []

    def total_bytes(self) -> int | None:
        """Input size in bytes for the progress bar (None for a dataset)."""
        return sum(f.stat().st_size for f in self.files) if self.kind == "files" else None

    def check_fields(self) -> None:
        """Fail early if the text field is missing (first record of each JSON file, Parquet schemas, dataset columns).

        Raises:
            DataError: naming the file and the fields found.
        """
        if self.kind == "dataset":
            names = list(getattr(self.dataset, "column_names", []) or [])
            if self.text_field not in names:
                raise DataError(f"the dataset has no column {self.text_field!r} (columns: {names}); set text_field=NAME")
            return
        for f in self.files:
            k = _file_kind(f)
            if k == "parquet":
                names = _parquet_file(f).schema_arrow.names
                if self.text_field not in names:
                    raise DataError(f"{f} has no column {self.text_field!r} (columns: {names}); set text_field=NAME")
            elif k == "json":
                next(iter(_json_records(f, self.text_field, parse=True)), None)

    def count_documents(self) -> int:
        """Number of documents (rows, lines, files), found without holding the corpus in memory."""
        if self.kind == "dataset":
            return len(self.dataset)
        n = 0
        for f in self.files:
            k = _file_kind(f)
            if k == "text":
                n += 1
            elif k == "parquet":
                n += _parquet_file(f).metadata.num_rows
            else:
                n += sum(1 for _ in _json_records(f, self.text_field, parse=False))
        return n

    def pieces(self, chunk: int = 1 << 22) -> Iterator[tuple[bytes, bool]]:
        """Every document as UTF-8 bytes (text files: their raw bytes), in a fixed order, as
        ``(piece, last)``: text files longer than ``chunk`` come in pieces cut after a newline
        (see :func:`text_pieces`); ``last`` marks a document's final piece."""
        if self.kind == "dataset":
            for doc in _dataset_docs(self.dataset, self.text_field):
                yield doc, True
            return
        for f in self.files:
            k = _file_kind(f)
            if k == "text":
                for piece, last in text_pieces(f, bom_length(f, self.encoding), None, chunk):
                    yield as_utf8(piece, self.encoding, self.errors), last
            elif k == "parquet":
                for doc in _parquet_docs(f, self.text_field):
                    yield doc, True
            else:
                for doc in _json_records(f, self.text_field, parse=True):
                    yield doc, True

    def fingerprint(self) -> dict:
        """sha256 of the inputs (per file, and combined), or the dataset's fingerprint."""
        if self.kind == "dataset":
            return {"dataset": self.description, "fingerprint": getattr(self.dataset, "_fingerprint", None),
                    "rows": len(self.dataset)}
        combined = hashlib.sha256()
        per_file = []
        for f in self.files:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(READ_CHUNK), b""):
                    h.update(chunk)
            combined.update(f"{f.name}\0{h.hexdigest()}\n".encode())
            per_file.append({"path": str(f), "bytes": f.stat().st_size, "sha256": h.hexdigest()})
        out = {"files": len(self.files), "sha256": combined.hexdigest()}
        if len(per_file) <= 64:
            out["inputs"] = per_file
        return out


# ----------------------------------------------------------------------------- text files: encoding

ENCODING_ERRORS = ("strict", "replace")
BINARY_SNIFF = 8000  # git's rule: a NUL byte in the first 8000 bytes means binary
BINARY_SHARE = 0.3  # more undecodable bytes than this share: binary, whatever errors= says
_COUNT_HANDLER = "xforget-count-undecodable"
_undecodable: list[tuple[int, int]] = []  # (start, end) in the decoder's input, filled by the handler


def _count_undecodable(exc: UnicodeDecodeError) -> tuple[str, int]:
    _undecodable.append((exc.start, exc.end))
    return "\ufffd", exc.end


codecs.register_error(_COUNT_HANDLER, _count_undecodable)


def check_encoding(encoding: str, errors: str) -> None:
    """Raises DataError (one line) for an unknown codec, one that is not ASCII-compatible (pieces are cut at
    newlines, and ``\\n`` must be one byte), or an ``errors`` other than strict / replace."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise DataError(f"invalid value encoding={encoding!r}: not a Python codec; e.g. utf-8, latin-1, cp1252") from None
    if "\n a".encode(name) != b"\n a":
        raise DataError(f"invalid value encoding={encoding!r}: must be ASCII-compatible (utf-8, latin-1, cp1252, ...); "
                        f"convert the files to UTF-8 first, e.g. iconv -f {encoding} -t UTF-8")
    if errors not in ENCODING_ERRORS:
        raise DataError(f"invalid value errors={errors!r}: must be one of {list(ENCODING_ERRORS)}")


def undecodable_bytes(path: Path, encoding: str = "utf-8") -> tuple[int, int | None, int]:
    """``(undecodable bytes, offset of the first, file size)`` of ``path`` read as ``encoding``, streamed.

    Raises:
        DataError: the file cannot be read.
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors=_COUNT_HANDLER)
    count, first, fed = 0, None, 0
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise DataError(f"cannot read input file {path}: {exc.strerror or exc}") from None
    with fh:
        while True:
            data = fh.read(READ_CHUNK)
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous read
            _undecodable.clear()
            decoder.decode(data, final=not data)
            base = fed - pending  # the offset of the decoder's input in the file
            for start, end in _undecodable:
                count += end - start
                first = base + start if first is None else first
            fed += len(data)
            if not data:
                return count, first, fed


def check_text_file(path: Path, encoding: str = "utf-8", errors: str = "strict") -> int:
    """Check that ``path`` is text in ``encoding``; returns its number of undecodable bytes (0 unless
    ``errors="replace"``).

    Raises:
        DataError: the file looks binary (a NUL byte in its first 8000 bytes, or over 30% undecodable
            bytes), or, with ``errors="strict"``, it holds undecodable bytes: one line naming the file, the
            offset of the first and their count, and the opt-ins.
    """
    with open(path, "rb") as fh:
        nul = fh.read(BINARY_SNIFF).find(b"\0")
    if nul >= 0:
        raise DataError(f"input file {path} looks binary (a NUL byte at offset {nul}), not text: leave it out of "
                        "input= (a directory, or a glob such as 'corpus/**/*.txt')")
    count, first, size = undecodable_bytes(path, encoding)
    if count and count > BINARY_SHARE * size:
        raise DataError(f"input file {path} looks binary ({count:,} of its {size:,} bytes are not valid "
                        f"{encoding}), not text: leave it out of input=, or give its encoding=")
    if count and errors == "strict":
        raise DataError(f"input file {path} is not valid {encoding}: {count:,} undecodable byte(s), the first at "
                        f"byte offset {first:,}; give its encoding (e.g. encoding=latin-1 or encoding=cp1252: "
                        "transcoded to UTF-8) or errors=replace (each becomes U+FFFD)")
    return count


def bom_length(path: Path, encoding: str = "utf-8") -> int:
    """3 when ``path`` is read as UTF-8 and starts with a UTF-8 byte-order mark (EF BB BF), else 0: the bytes
    to skip so that the document does not start with U+FEFF (Windows editors write one; it is no text)."""
    if codecs.lookup(encoding).name != "utf-8":
        return 0
    with open(path, "rb") as fh:
        return len(codecs.BOM_UTF8) if fh.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8 else 0


def as_utf8(piece: bytes, encoding: str, errors: str) -> bytes:
    """``piece`` of a text file as UTF-8 (unchanged for strict UTF-8, which :func:`check_text_file` has checked)."""
    if errors == "strict" and codecs.lookup(encoding).name == "utf-8":
        return piece
    return piece.decode(encoding, errors).encode("utf-8")


def _file_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(PARQUET_EXT):
        return "parquet"
    if name.endswith(JSON_EXT):
        return "json"
    return "text"


_SPACE = frozenset(b" \t\n\r\x0b\x0c")


def _last_safe_cut(buf: bytes) -> int:
    """The last index to cut ``buf`` at without changing a pre-token of GPT-2-style tokenizers (0 if none):
    right after a newline, or right before a single space, with a non-space byte on both sides. (Indented
    code has few newlines of the first kind; cutting after any other newline splits the whitespace run
    of the next line's indent, which such tokenizers encode as one pre-token, and changed the ids with
    the piece size.)"""
    best = 0
    pos = buf.rfind(b"\n")
    while pos > 0:
        if pos + 1 < len(buf) and buf[pos - 1] not in _SPACE and buf[pos + 1] not in _SPACE:
            best = pos + 1
            break
        pos = buf.rfind(b"\n", 0, pos)
    pos = buf.rfind(b" ")
    while pos > best:
        if pos + 1 < len(buf) and buf[pos - 1] not in _SPACE and buf[pos + 1] not in _SPACE:
            return pos
        pos = buf.rfind(b" ", 0, pos)
    return best


def text_pieces(path: Path, start: int = 0, stop: int | None = None,
                chunk: int = 1 << 22) -> Iterator[tuple[bytes, bool]]:
    """Bytes ``[start, stop)`` of ``path`` as ``(piece, last)``, pieces of about ``chunk`` bytes.

    A piece ends after its last newline, or before its last single space, that has a non-space byte
    on both sides (reading up to 8 chunks to find one; else after its last newline, else at
    a UTF-8 character boundary), so no
    character and, for GPT-2-style byte-level BPE, no pre-token is cut; the final piece has ``last=True`` (an empty file gives
    one empty piece).
    """
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise DataError(f"cannot read input file {path}: {exc.strerror or exc}") from None
    with fh:
        fh.seek(start)
        left = None if stop is None else stop - start
        carry = b""
        while True:
            want = chunk if left is None else min(chunk, left)
            data = fh.read(want) if want > 0 else b""
            if left is not None:
                left -= len(data)
            if not data:
                yield carry, True
                return
            buf = carry + data
            cut = _last_safe_cut(buf)
            if cut == 0 and len(buf) < 8 * chunk:  # read on (up to 8 chunks) for a place that is safe to cut at
                carry = buf
                continue
            if cut == 0:
                cut = buf.rfind(b"\n") + 1
            if cut == 0:  # no newline: cut before a trailing partial UTF-8 character
                cut = len(buf)
                back = 0
                while back < 4 and cut - back - 1 >= 0 and (buf[cut - back - 1] & 0xC0) == 0x80:
                    back += 1
                if back < 4 and cut - back - 1 >= 0 and buf[cut - back - 1] >= 0xC0:
                    cut -= back + 1
            if cut <= 0:
                carry = buf
                continue
            piece, carry = buf[:cut], buf[cut:]
            yield piece, False


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read input file {path}: {exc.strerror or exc}") from None


def _json_records(path: Path, text_field: str, parse: bool) -> Iterator[bytes]:
    """Lines of a JSON-lines file (or the items of one JSON array); ``parse=False`` only counts."""
    with open(path, "rb") as fh:
        head = fh.read(4096).removeprefix(codecs.BOM_UTF8).lstrip()
    if head.startswith(b"["):  # (json.loads skips a BOM itself)  # one JSON array: read whole (not streamed)
        try:
            items = json.loads(_read(path))
        except ValueError as exc:
            raise DataError(f"{path} is not valid JSON ({exc})") from None
        for i, item in enumerate(items):
            yield _field(item, text_field, path, f"item {i}") if parse else b""
        return
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if not parse:
                yield b""
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{path} line {lineno} is not valid JSON ({exc})") from None
            yield _field(item, text_field, path, f"line {lineno}")


def _field(item, text_field: str, path, where: str) -> bytes:
    if not isinstance(item, dict) or text_field not in item:
        keys = sorted(item) if isinstance(item, dict) else type(item).__name__
        raise DataError(f"{path} {where} has no field {text_field!r} (found {keys}); set text_field=NAME")
    value = item[text_field]
    if value is None:
        return b""
    if not isinstance(value, str):
        raise DataError(f"{path} {where}: field {text_field!r} is {type(value).__name__}, not text")
    return value.encode("utf-8")


def _parquet_file(path: Path):
    _need("pyarrow")
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as exc:
        raise DataError(f"{path} is not a readable Parquet file ({str(exc).splitlines()[0] if str(exc) else exc})") from None


def _parquet_docs(path: Path, text_field: str) -> Iterator[bytes]:
    pf = _parquet_file(path)
    names = pf.schema_arrow.names
    if text_field not in names:
        raise DataError(f"{path} has no column {text_field!r} (columns: {names}); set text_field=NAME")
    for batch in pf.iter_batches(batch_size=1024, columns=[text_field]):
        for value in batch.column(0).to_pylist():
            yield b"" if value is None else str(value).encode("utf-8")


def _dataset_docs(ds, text_field: str) -> Iterator[bytes]:
    names = list(getattr(ds, "column_names", []) or [])
    if text_field not in names:
        raise DataError(f"the dataset has no column {text_field!r} (columns: {names}); set text_field=NAME")
    for start in range(0, len(ds), 1024):
        for value in ds[start:start + 1024][text_field]:
            yield b"" if value is None else str(value).encode("utf-8")


HF_PREFIX = "hf:"  # input=hf:NAME: a Hugging Face dataset name, never a local path


def _is_glob(spec: str) -> bool:
    return any(c in spec for c in "*?[")


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                         p.relative_to(root).parts))


def _load_hf(spec: str, config: str | None, split: str):
    _need("datasets")
    import datasets

    p = Path(spec).expanduser()
    try:
        if p.is_dir():
            ds = datasets.load_from_disk(str(p))
        else:
            ds = datasets.load_dataset(spec, config, split=split)
    except Exception as exc:
        msg = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise DataError(f"cannot load the datasets dataset {spec!r} ({msg})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"dataset {spec!r} has no split {split!r}; splits: {list(ds)} (set split=NAME)")
        ds = ds[split]
    return ds


def open_source(spec: str, text_field: str = "text", dataset_config: str | None = None,
                split: str = "train", encoding: str = "utf-8", errors: str = "strict",
                exclude: Path | None = None) -> Source:
    """The :class:`Source` named by ``input=`` (see the module docstring).

    ``encoding`` / ``errors``: how text files are decoded (see :func:`check_text_file`); ``exclude``: a
    directory whose files are never input (``xforget-prepare``'s own output, and its temporary directories).

    Raises:
        DataError: nothing matches, an empty directory, an unreadable dataset.
    """
    source = _open_source(spec, text_field, dataset_config, split, exclude)
    source.encoding, source.errors = encoding, errors
    return source


def _excluded(path: Path, exclude: Path | None) -> bool:
    """Whether ``path`` is ``exclude``, below it, or in one of its ``.<name>.tmp-<pid>`` siblings."""
    if exclude is None:
        return False
    path, exclude = path.resolve(), exclude.resolve()
    tmp_prefix = f".{exclude.name}.tmp-"
    return any(p == exclude or (p.parent == exclude.parent and p.name.startswith(tmp_prefix))
               for p in (path, *path.parents))


def _open_source(spec: str, text_field: str, dataset_config: str | None, split: str, exclude: Path | None) -> Source:
    if not spec:
        raise DataError("input= is required: a text file, a directory, a glob, .jsonl/.parquet files or a dataset")
    p = Path(spec).expanduser()
    if p.is_dir():
        if any((p / m).is_file() for m in HF_MARKERS):
            return Source("dataset", dataset=_load_hf(str(p), dataset_config, split), text_field=text_field,
                          description=str(p.resolve()))
        files = [f for f in _files_under(p) if not _excluded(f, exclude)]
        if not files:
            raise DataError(f"input directory {p.resolve()} holds no files")
        return Source("files", files=files, text_field=text_field, description=str(p.resolve()))
    if p.is_file():
        return Source("files", files=[p.resolve()], text_field=text_field, description=str(p.resolve()))
    if _is_glob(spec):
        files = sorted(Path(f).resolve() for f in glob.glob(str(p), recursive=True)
                       if Path(f).is_file() and not _excluded(Path(f), exclude))
        if not files:
            raise DataError(f"input glob {spec!r} matches no files")
        return Source("files", files=files, text_field=text_field, description=spec)
    name = dataset_name(spec)
    if name is None:
        raise DataError(f"input not found: {spec} (no such file or directory; a Hugging Face dataset is named "
                        f"{HF_PREFIX}NAME or OWNER/NAME, e.g. input={HF_PREFIX}wikitext dataset_config=wikitext-2-raw-v1)")
    return Source("dataset", dataset=_load_hf(name, dataset_config, split), text_field=text_field,
                  description=f"{name}{f'/{dataset_config}' if dataset_config else ''}:{split}")


def dataset_name(spec: str) -> str | None:
    """The Hugging Face dataset name that ``input=spec`` means, or None when it is a local path that does not exist.

    The rule (so that a mistyped path is never sent to the network): ``hf:NAME`` is always the dataset NAME;
    otherwise only ``OWNER/NAME`` is one (exactly one ``/``, no file suffix, not starting with ``.``, ``/`` or
    ``~``, and OWNER is not an existing local directory). A bare word (``nothere``) is a missing path.
    """
    if spec.startswith(HF_PREFIX):
        return spec[len(HF_PREFIX):] or None
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1 or Path(spec).suffix != "":
        return None
    owner, _, name = spec.partition("/")
    if not owner or not name or Path(owner).expanduser().exists():
        return None
    return spec
