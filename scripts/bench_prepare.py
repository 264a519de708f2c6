"""Throughput of ``xforget-prepare`` with a BPE tokenizer vs the ``tokenizers`` library's own ``encode_batch``.

    python scripts/bench_prepare.py                 # ~200 MB of JSON lines made from the stdlib corpus
    python scripts/bench_prepare.py --mb 50 --num-proc 1

Both sides tokenize the same documents with the same ``tokenizer.json`` (a
byte-level BPE of ``--vocab`` trained first on ``--train-mb`` of the corpus),
in the same run, interleaved ``--repeat`` times:

* ours: the whole ``xforget-prepare`` command in a child process (reading the
  JSON lines, counting documents, the seeded split, encoding in batches,
  writing ``train.bin``/``val.bin``, hashing the input, renaming), timed end to
  end, with the child's peak RSS;
* peer: ``tokenizers.Tokenizer.encode_batch`` on the documents already in
  memory, in batches of the same size (``--batch-mb``), timed for the encode
  calls only (its best case; no reading, no writing).

Prints MB/s of each and the ratio ours / peer (target >= 0.8), and ours' peak RSS (target < 1 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_corpus(path: Path, mb: int) -> int:
    """JSON lines, one stdlib source file per line, repeated to ``mb`` MiB; returns the text bytes."""
    from xforget.data.corpora.stdlib import stdlib_files, stdlib_root

    root = stdlib_root()
    files = [(root / rel).read_text(encoding="utf-8", errors="replace") for rel in stdlib_files(root)]
    target, written, text_bytes, i = mb << 20, 0, 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            doc = files[i % len(files)]
            line = json.dumps({"text": doc}) + "\n"
            f.write(line)
            written += len(line.encode())
            text_bytes += len(doc.encode())
            i += 1
    return text_bytes


def read_docs(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def batches(docs: list[str], batch_bytes: int) -> list[list[str]]:
    out, cur, size = [], [], 0
    for d in docs:
        cur.append(d)
        size += len(d)
        if size >= batch_bytes:
            out.append(cur)
            cur, size = [], 0
    if cur:
        out.append(cur)
    return out


def run_ours(corpus: Path, tokenizer: Path, out: Path, batch_bytes: int, num_proc: int) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of one ``xforget-prepare`` child process."""
    shutil.rmtree(out, ignore_errors=True)
    code = ("import resource, sys; from xforget.commands.prepare import main; main(sys.argv[1:]); "
            "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    tic = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, f"input={corpus}", f"output={out}", f"tokenizer={tokenizer}",
                           f"batch_bytes={batch_bytes}", f"num_proc={num_proc}", "progress=false"],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - tic
    if proc.returncode != 0:
        sys.exit(f"xforget-prepare failed: {proc.stderr.strip()}")
    peak_kb = float(proc.stdout.split("PEAK_KB")[-1])
    return seconds, peak_kb / 1024


def run_peer(tok, groups: list[list[str]]) -> tuple[float, int]:
    tic = time.perf_counter()
    n = 0
    for g in groups:
        for enc in tok.encode_batch(g, add_special_tokens=False):
            n += len(enc.ids)
    return time.perf_counter() - tic, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=200, help="corpus size (MiB of JSON lines)")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--train-mb", type=int, default=8, help="MiB of the corpus the BPE is trained on first")
    p.add_argument("--batch-mb", type=float, default=4.0)
    p.add_argument("--num-proc", type=int, default=1)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()

    import tokenizers

    from xforget.data.prepare import train_bpe

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_prepare-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    text_bytes = make_corpus(corpus, args.mb)
    docs = read_docs(corpus)
    sample, size = [], 0
    for d in docs:
        if size >= args.train_mb << 20:
            break
        sample.append(d)
        size += len(d)
    tic = time.perf_counter()
    bpe = train_bpe(iter(sample), args.vocab, len(sample))
    train_s = time.perf_counter() - tic
    bpe.save(work)
    tok_path = work / "tokenizer.json"
    tok = tokenizers.Tokenizer.from_file(str(tok_path))
    groups = batches(docs, int(args.batch_mb * (1 << 20)))
    mb = text_bytes / 1e6
    print(f"corpus: {corpus.stat().st_size / 1e6:.1f} MB of JSON lines, {len(docs):,} documents, {mb:.1f} MB of text; "
          f"BPE {args.vocab} trained on {size / 1e6:.1f} MB in {train_s:.1f} s; {os.cpu_count()} CPUs, "
          f"batches of {args.batch_mb} MiB, num_proc={args.num_proc}")
    ours_t, peer_t, peak = [], [], 0.0
    for r in range(args.repeat):  # interleaved
        s, rss = run_ours(corpus, tok_path, work / "prepared", int(args.batch_mb * (1 << 20)), args.num_proc)
        ours_t.append(s)
        peak = max(peak, rss)
        s2, n = run_peer(tok, groups)
        peer_t.append(s2)
        print(f"  round {r + 1}: ours {s:.1f} s ({mb / s:.2f} MB/s, peak RSS {rss:.0f} MiB), "
              f"peer encode_batch {s2:.1f} s ({mb / s2:.2f} MB/s, {n:,} tokens)")
    meta = json.loads((work / "prepared" / "meta.json").read_text())
    ours_s, peer_s = min(ours_t), min(peer_t)
    print(f"ours (xforget-prepare end to end): {mb / ours_s:.2f} MB/s; peer (tokenizers encode_batch only): "
          f"{mb / peer_s:.2f} MB/s; ratio ours/peer = {peer_s / ours_s:.2f}x (target >= 0.8); "
          f"ours' peak RSS {peak:.0f} MiB (target < 1024); {meta['train']['tokens'] + meta['val']['tokens']:,} tokens "
          f"written; bench process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
