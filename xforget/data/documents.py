"""``data.pack_documents=true``: which token ends a document in a prepared dataset (DESIGN.md section 7).

The ids themselves come from the window's tokens (:func:`xforget.models.packing.eot_documents`:
the separator belongs to the document it ends); this module checks that the dataset has an
end-of-text token to cut at.
"""

from __future__ import annotations

from xforget.data.corpus import DataError


def packing_eot_id(meta: dict, path) -> int:
    """The end-of-text id of a prepared dataset's ``meta.json``, for ``data.pack_documents=true``.

    Raises:
        DataError: the dataset has no end-of-text token (prepared with the bytes tokenizer or a
            tokenizer without one, whose documents are split by a separator instead), or it is one
            document (``single_document`` in ``meta.json``: a single text file, split by bytes, whose
            shards hold no end-of-text token, so packing would silently change nothing).
    """
    eot = meta.get("eot_id")
    if eot is None:
        raise DataError(f"data.pack_documents=true needs a prepared dataset with an end-of-text token; {path} has "
                        f"eot_id null (tokenizer {meta.get('tokenizer')!r}, documents separated by "
                        f"{meta.get('separator_ids')!r}); prepare it with a tokenizer that has one (e.g. bpe), "
                        "or set data.pack_documents=false")
    if meta.get("single_document"):  # e.g. the stdlib blob of experiment=fox_vs_rope: no boundary to cut at
        raise DataError(f"data.pack_documents=true needs a dataset of several documents; {path} was prepared from "
                        f"one text file (single_document true in meta.json), so its shards hold no end-of-text "
                        "token and packing would change nothing; prepare it from a directory of files, JSON "
                        "lines or Parquet (one document per file, line or row), or set data.pack_documents=false")
    return int(eot)
