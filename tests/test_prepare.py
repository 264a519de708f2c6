"""Prepared datasets: xforget-prepare -> data=tokens training -> eval -> generate, and its guarantees.

Every corpus here is generated in the test (no network, no files from outside the repository).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from xforget.data.corpus import DataError
from xforget.data.prepare import PrepareConfig, prepare
from xforget.commands.prepare import main as prepare_main
from xforget.data.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer
from xforget.data.tokens import load_tokens
from xforget.train import compose_config, to_train_config, train
from xforget.train.metrics import read_metrics

pytest.importorskip("tokenizers")

WORDS = ("alpha beta gamma delta forget gate attention rotary cache value key query token byte "
         "def return import class self lambda yield async await print").split()


def make_docs(n: int = 60, seed: int = 0) -> list[str]:
    """Documents with a unique id each, some non-ASCII text and varying length."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(40, 120)))
        docs.append(f"doc{i:04d}: {body} — naïve ü {i * 7}\n    indented line {rng.random():.4f}")
    return docs


def write_corpus(kind: str, root: Path, docs: list[str]) -> str:
    """The corpus in one input format; returns the input= value."""
    if kind == "textdir":
        d = root / "corpus"
        for i, doc in enumerate(docs):
            sub = d / f"part{i % 3}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"{i:04d}.txt").write_text(doc, encoding="utf-8")
        return str(d)
    if kind == "jsonl":
        p = root / "corpus.jsonl"
        p.write_text("".join(json.dumps({"id": i, "text": doc}) + "\n" for i, doc in enumerate(docs)), encoding="utf-8")
        return str(p)
    if kind == "parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        p = root / "corpus.parquet"
        pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), p, row_group_size=16)
        return str(p)
    if kind == "datasets":
        datasets = pytest.importorskip("datasets")
        p = root / "hfds"
        datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(p))
        return str(p)
    raise ValueError(kind)


def prep(input_: str, output: Path, **kw) -> Path:
    cfg = PrepareConfig(input=input_, output=str(output), progress=False, **kw)
    return prepare(cfg, log=lambda m: None)


TINY = ["model.dim=32", "model.depth=1", "model.heads=2", "trainer.seq_len=32", "trainer.batch_size=4",
        "trainer.progress=false", "trainer.eval_batches=2", "trainer.threads=1", "trainer.warmup_steps=2",
        "trainer.log_every=1", "trainer.sample_bytes=8", "trainer.precision=fp32"]


def tiny_cfg(*overrides: str):
    return to_train_config(compose_config(TINY + list(overrides)))


def split_docs(ids: np.ndarray, tok) -> list[str]:
    """Decode a shard and cut it at the end-of-text token (bytes: the newline separator)."""
    if isinstance(tok, ByteTokenizer):
        raise AssertionError("use bytes directly")
    out, cur = [], []
    for t in ids.tolist():
        if t == tok.eot_id:
            out.append(tok.decode(cur))
            cur = []
        else:
            cur.append(t)
    assert not cur, "a shard must end with the end-of-text token"
    return out


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", ["textdir", "jsonl", "parquet", "datasets"])
@pytest.mark.parametrize("tokenizer", ["bytes", "bpe", "file"])
def test_round_trip_prepare_train_eval_generate(kind, tokenizer, tmp_path, capsys):
    from xforget.evaluate.core import evaluate_run
    from xforget.evaluate.config import EvalConfig
    from xforget.commands.generate import main as generate_main

    docs = make_docs(40)
    input_ = write_corpus(kind, tmp_path, docs)
    spec = tokenizer
    if tokenizer == "file":  # a tokenizer.json made elsewhere (here: trained on other text)
        (tmp_path / "other").mkdir()
        ref = prep(write_corpus("jsonl", tmp_path / "other", make_docs(30, seed=9)), tmp_path / "ref",
                   tokenizer="bpe", vocab_size=320)
        spec = str(ref / "tokenizer.json")
    out = prep(input_, tmp_path / "prep", tokenizer=spec, vocab_size=320, val_fraction=0.1, seed=3)
    meta = json.loads((out / "meta.json").read_text())
    tok = load_tokenizer(out)
    data = load_tokens(out)

    # every document lands in exactly one split, whole and unchanged
    assert meta["documents"] == len(docs) and meta["val"]["documents"] == 4 and meta["train"]["documents"] == 36
    if tokenizer == "bytes":
        assert isinstance(tok, ByteTokenizer) and meta["vocab_size"] == 256 and meta["dtype"] == "uint16"
        # documents hold newlines themselves: find each one (+ separator) in exactly one split
        train_text = bytes(np.asarray(data.train, dtype=np.uint8)).decode("utf-8")
        val_text = bytes(np.asarray(data.val, dtype=np.uint8)).decode("utf-8")
        in_val = [d for d in docs if d + "\n" in val_text]
        in_train = [d for d in docs if d + "\n" in train_text]
        assert len(in_val) == 4 and len(in_train) == 36 and set(in_val).isdisjoint(in_train)
        assert len(val_text) == sum(len(d) + 1 for d in in_val)
        assert len(val_text.encode()) == meta["val"]["bytes"] == meta["val"]["tokens"]
    else:
        assert isinstance(tok, HFTokenizer) and tok.eot_id is not None and meta["vocab_size"] == tok.vocab_size
        got_train, got_val = split_docs(np.asarray(data.train), tok), split_docs(np.asarray(data.val), tok)
        assert sorted(got_train + got_val) == sorted(docs)
        assert len(got_val) == 4
        # bytes = UTF-8 bytes of the documents + one per end-of-text token
        assert meta["val"]["bytes"] == sum(len(d.encode()) + 1 for d in got_val)
        assert meta["val"]["tokens"] == sum(len(tok.encode(d)) + 1 for d in got_val)

    run = tmp_path / "run"
    cfg = tiny_cfg("data=tokens", f"data.path={out}", "trainer.max_steps=4", "trainer.eval_every=2")
    result = train(cfg, run)
    assert cfg.model.num_tokens == meta["vocab_size"]
    # the tokenizer travels with the run directory
    assert (run / "tokenizer.json").is_file() == (tokenizer != "bytes")
    # evaluation at the training context reproduces training's val_bpb; ppl = exp(loss)
    ev = evaluate_run(run, EvalConfig(multiples=[1, 2], threads=1, device="cpu"))
    assert ev["val_bpb"] == pytest.approx(result.val_bpb, abs=1e-5)
    assert ev["val_ppl"] == pytest.approx(math.exp(ev["val_loss"]), rel=1e-5)
    assert ev["lengths"][1]["length"] == 64  # lengths in tokens

    # generation: greedy output equals the model's own argmax continuation, decoded by the run's tokenizer
    capsys.readouterr()
    generate_main([f"checkpoint={run}", "prompt=doc0001:", "max_new_tokens=5", "temperature=0"])
    printed = capsys.readouterr().out
    from xforget.train.checkpoint import load_model

    model, _ = load_model(run)
    ids = tok.encode("doc0001:")
    for _ in range(5):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert printed == tok.decode(ids) + "\n"


# ----------------------------------------------------------------------------- yardstick


def test_bytes_through_tokens_equals_the_byte_path(tmp_path):
    """One text file, tokenizer=bytes: same split, same windows, same val_bpb as data=text (1e-6)."""
    text = "\n".join(make_docs(80, seed=1)) + "\n"
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    out = prep(str(path), tmp_path / "prep", val_fraction=0.1)
    meta = json.loads((out / "meta.json").read_text())
    n = len(text.encode())
    assert meta["val"]["tokens"] == int(n * 0.1) and meta["train"]["tokens"] == n - int(n * 0.1)
    args = ["trainer.max_steps=6", "trainer.eval_every=3", "data.val_fraction=0.1"]
    a = train(tiny_cfg("data=text", f"data.path={path}", *args), tmp_path / "bytes")
    b = train(tiny_cfg("data=tokens", f"data.path={out}", *args), tmp_path / "tokens")
    assert abs(a.val_bpb - b.val_bpb) < 1e-6
    assert a.losses == b.losses


def _shard_bytes(out: Path, split: str) -> bytes:
    meta = json.loads((out / "meta.json").read_text())
    return bytes(np.fromfile(out / f"{split}.bin", dtype=meta["dtype"]).astype(np.uint8).tolist())


def test_a_utf8_byte_order_mark_is_left_out_and_crlf_kept(tmp_path):
    """A file starting with EF BB BF (a Windows editor's BOM) with CRLF lines: the shards hold the text
    without the mark (no document starts with U+FEFF), CRLF verbatim; the split and the byte counts are
    those of the text, and data=text gives the same bytes and the same split."""
    from xforget.data.corpora.text import load_text

    text = "\r\n".join(make_docs(40, seed=3)) + "\r\n"
    path = tmp_path / "novel.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    out = prep(str(path), tmp_path / "prep", val_fraction=0.1)
    meta = json.loads((out / "meta.json").read_text())
    n = len(text.encode())
    assert _shard_bytes(out, "train") + _shard_bytes(out, "val") == text.encode()  # CRLF kept, mark gone
    assert meta["train"]["bytes"] + meta["val"]["bytes"] == n
    assert meta["val"]["tokens"] == int(n * 0.1)  # the split is of the text, as data=text splits it
    corpus = load_text(path)
    assert corpus.data == text.encode() and corpus.meta["bytes"] == n
    assert corpus.meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()  # identifies the file

    # several files (each a document) and a JSON array written with a mark: no document starts with U+FEFF
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.txt").write_bytes(b"\xef\xbb\xbfalpha\r\nbeta")
    (d / "b.txt").write_bytes("gamma — ü".encode())
    (d / "c.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([{"text": "delta"}, {"text": "eps"}]).encode())
    out = prep(str(d), tmp_path / "prep2", val_fraction=0.2, seed=0)
    shards = _shard_bytes(out, "train") + _shard_bytes(out, "val")
    assert b"\xef\xbb\xbf" not in shards
    assert "alpha\r\nbeta" in shards.decode()  # the separator is a newline, so split on it below
    assert sorted(shards.decode().split("\n")[:-1]) == sorted(["alpha\r", "beta", "gamma — ü", "delta", "eps"])

    # a latin-1 file is not read as UTF-8: its first bytes are text (here "ï»¿"), kept and transcoded
    lat = tmp_path / "latin.txt"
    lat.write_bytes(b"\xef\xbb\xbf" + b"caf\xe9 au lait\n" * 20)
    out = prep(str(lat), tmp_path / "prep3", val_fraction=0.1, encoding="latin-1")
    assert (_shard_bytes(out, "train") + _shard_bytes(out, "val")).decode().startswith("ï»¿café")


def test_a_file_holding_only_a_byte_order_mark_is_empty(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(DataError, match="0 bytes after its byte-order mark"):
        prep(str(path), tmp_path / "prep")
    from xforget.data.corpora.text import load_text

    with pytest.raises(DataError, match="empty .only a byte-order mark"):
        load_text(path)
    assert not (tmp_path / "prep").exists()


def test_bpe_bpb_matches_an_independent_computation(tmp_path):
    """val_bpb = sum of token losses (float64, from the logits) / ln 2 / UTF-8 bytes of the raw validation text."""
    import tokenizers

    from xforget.data.batches import val_windows  # the windows' positions; the sums below are our own
    from xforget.train.checkpoint import load_model

    docs = make_docs(50, seed=2)
    out = prep(write_corpus("jsonl", tmp_path, docs), tmp_path / "prep", tokenizer="bpe", vocab_size=300,
               val_fraction=0.2)
    run = tmp_path / "run"
    result = train(tiny_cfg("data=tokens", f"data.path={out}", "trainer.max_steps=3"), run)

    raw = tokenizers.Tokenizer.from_file(str(run / "tokenizer.json"))
    eot = raw.token_to_id("<|endoftext|>")
    val_ids = np.fromfile(out / "val.bin", dtype=np.uint16)
    # which raw documents are in the validation split: found by their unique ids in the decoded shard
    decoded = raw.decode(val_ids.tolist(), skip_special_tokens=True)
    val_docs = [d for d in docs if d in decoded]
    assert len(val_docs) == 10
    # the validation text re-encoded independently, in shard order
    order = sorted(val_docs, key=decoded.index)
    expect = []
    for d in order:
        expect += raw.encode(d, add_special_tokens=False).ids + [eot]
    assert val_ids.tolist() == expect
    n_bytes = sum(len(d.encode("utf-8")) + 1 for d in val_docs)  # + 1 per document end

    model, cfg = load_model(run)
    windows = val_windows(torch.from_numpy(val_ids.astype(np.int64)), cfg.trainer.seq_len,
                          cfg.trainer.eval_batches * cfg.trainer.batch_size)
    with torch.no_grad():
        logits = model(windows[:, :-1]).double()
    nll = -torch.log_softmax(logits, -1).gather(-1, windows[:, 1:, None]).squeeze(-1)
    loss_per_token = nll.mean().item()
    bpb = loss_per_token * len(expect) / n_bytes / math.log(2)
    assert result.val_bpb == pytest.approx(bpb, rel=1e-5)
    assert result.val_ppl == pytest.approx(math.exp(loss_per_token), rel=1e-5)
    assert read_metrics(run)[-1]["val_bpb"] == pytest.approx(bpb, rel=1e-5)


# ----------------------------------------------------------------------------- streaming, atomicity, resume


def _peak_rss_mb(args: list[str], env=None) -> float:
    code = ("import resource, sys; from xforget.commands.prepare import main; main(sys.argv[1:]); "
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.split("PEAK")[-1])


@pytest.mark.slow
def test_streaming_keeps_peak_memory_flat(tmp_path):
    """A corpus 4x larger (32 MiB vs 8 MiB) with 64 KiB batches: peak RSS grows by far less than the corpus."""
    docs = make_docs(200, seed=4)
    for size_mb, name in ((8, "small"), (32, "large")):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            written, i = 0, 0
            while written < size_mb << 20:
                line = json.dumps({"text": docs[i % len(docs)]}) + "\n"
                f.write(line)
                written += len(line)
                i += 1
    small = _peak_rss_mb([f"input={tmp_path / 'small.jsonl'}", f"output={tmp_path / 'o1'}", "batch_bytes=65536",
                          "progress=false"])
    large = _peak_rss_mb([f"input={tmp_path / 'large.jsonl'}", f"output={tmp_path / 'o2'}", "batch_bytes=65536",
                          "progress=false"])
    assert (tmp_path / "o2" / "train.bin").stat().st_size > 2 * (24 << 20)  # it did process the large corpus
    assert large - small < 8, (small, large)  # MiB; the 24 MiB more corpus must not show up in memory


def _digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe"])
def test_sigkill_during_prepare_then_rerun_is_identical(tokenizer, tmp_path):
    input_ = write_corpus("jsonl", tmp_path, make_docs(120, seed=5))
    out = tmp_path / "prep"
    args = [f"input={input_}", f"output={out}", f"tokenizer={tokenizer}", "vocab_size=300", "batch_bytes=2048",
            "progress=false"]
    prepare_main(args)
    reference = _digests(out)
    assert set(reference) == {"train.bin", "val.bin", "meta.json"} | ({"tokenizer.json"} if tokenizer == "bpe" else set())
    import shutil

    shutil.rmtree(out)
    env = {**os.environ, "XFORGET_DEBUG_PREPARE_SLEEP": "0.2"}
    proc = subprocess.Popen([sys.executable, "-m", "xforget.commands.prepare", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    tmp_dirs: list[Path] = []
    while time.time() < deadline:  # wait until shards are being written
        tmp_dirs = [p for p in tmp_path.iterdir() if p.name.startswith(".prep.tmp-")]
        if tmp_dirs and (tmp_dirs[0] / "train.bin").is_file() and (tmp_dirs[0] / "train.bin").stat().st_size > 0:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert tmp_dirs, "the prepare never started writing"
    assert not out.exists()  # nothing at output that training could mistake for complete
    with pytest.raises(DataError, match="is not a directory"):
        load_tokens(out)
    prepare_main(args)
    assert _digests(out) == reference
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prep.tmp-")]  # the leftover was removed


def test_num_proc_gives_the_same_shards(tmp_path):
    input_ = write_corpus("textdir", tmp_path, make_docs(40, seed=6))
    one = prep(input_, tmp_path / "one", tokenizer="bpe", vocab_size=300, batch_bytes=1024)
    two = prep(input_, tmp_path / "two", tokenizer="bpe", vocab_size=300, batch_bytes=1024, num_proc=2)
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_indented_code_gives_the_same_ids_for_any_batch_bytes(tmp_path):
    # indented code has no newline with non-space on both sides: pieces were cut after a newline, inside
    # the next line's indent, which a byte-level BPE encodes as one pre-token, so the ids changed with
    # batch_bytes; now they are cut before a single space between non-spaces
    rng = random.Random(3)
    lines = [f"{' ' * 4 * rng.randrange(1, 4)}value_{i} = compute(item, {rng.randrange(100)})" for i in range(900)]
    docs = ["def block():\n" + "\n".join(lines[k:k + 100]) + "\n" for k in range(0, 900, 100)]
    input_ = write_corpus("textdir", tmp_path, docs)
    ref = prep(input_, tmp_path / "ref", tokenizer="bpe", vocab_size=300, val_fraction=0.2)
    tok = str(ref / "tokenizer.json")
    for batch_bytes in (64, 1000):
        out = prep(input_, tmp_path / f"b{batch_bytes}", tokenizer=tok, batch_bytes=batch_bytes, val_fraction=0.2)
        for name in ("train.bin", "val.bin"):
            assert (out / name).read_bytes() == (ref / name).read_bytes(), (batch_bytes, name)


def test_num_proc_after_threads_and_a_dead_worker(tmp_path):
    # the workers come from a fork server, not a fork of this (threaded) process: a fork copies held
    # locks and hung a CI run; a worker that dies raises instead of leaving its batch pending for ever
    import threading

    from xforget.data.prepare import _encode_in_workers

    stop = threading.Event()
    lock = threading.Lock()

    def hold():  # a thread that holds a lock most of the time, as a busy OpenMP/tokenizers pool would
        while not stop.is_set():
            with lock:
                time.sleep(0.001)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    try:
        input_ = write_corpus("textdir", tmp_path, make_docs(20, seed=8))
        one = prep(input_, tmp_path / "one", batch_bytes=512)
        two = prep(input_, tmp_path / "two", batch_bytes=512, num_proc=2)
        assert (one / "train.bin").read_bytes() == (two / "train.bin").read_bytes()
    finally:
        stop.set()
        t.join()
    written = []
    with pytest.raises(DataError, match="worker process died"):
        _encode_in_workers(2, ByteTokenizer(), os._exit, iter([3, 3, 3]), written.append)  # exits with 3
    assert written == []


def test_kill_and_resume_on_tokens_equals_uninterrupted(tmp_path):
    from safetensors.torch import load_file

    out = prep(write_corpus("jsonl", tmp_path, make_docs(60, seed=7)), tmp_path / "prep", tokenizer="bpe",
               vocab_size=300)
    args = ["data=tokens", f"data.path={out}", "trainer.max_steps=8", "trainer.checkpoint_every=4",
            "trainer.eval_every=4"]
    full = train(tiny_cfg(*args), tmp_path / "full")
    part = train(tiny_cfg(*args), tmp_path / "resumed", stop_after_step=4)
    assert part.interrupted
    rest = train(tiny_cfg(*args), tmp_path / "resumed")
    assert {**part.losses, **rest.losses} == full.losses
    assert rest.val_bpb == full.val_bpb
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- bad input


def _fails(capsys, argv, match, out: Path | None = None):
    with pytest.raises(SystemExit) as exc:
        prepare_main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert match in err, err
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]
    return err


def test_bad_inputs_fail_with_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    _fails(capsys, [f"input={tmp_path / 'missing.txt'}", f"output={out}"], "input not found", out)
    (tmp_path / "empty.txt").write_bytes(b"")
    _fails(capsys, [f"input={tmp_path / 'empty.txt'}", f"output={out}"], "empty corpus", out)
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "emptydir" / "a.txt").write_bytes(b"")
    _fails(capsys, [f"input={tmp_path / 'emptydir'}", f"output={out}"], "empty corpus", out)
    (tmp_path / "nofield.jsonl").write_text('{"content": "hello"}\n{"content": "world"}\n')
    _fails(capsys, [f"input={tmp_path / 'nofield.jsonl'}", f"output={out}"], "has no field 'text'", out)
    (tmp_path / "ok.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in make_docs(10)))
    (tmp_path / "bad_tok.json").write_text('{"not": "a tokenizer"}')
    _fails(capsys, [f"input={tmp_path / 'ok.jsonl'}", f"output={out}", f"tokenizer={tmp_path / 'bad_tok.json'}"],
           "is not a Hugging Face tokenizer.json", out)
    _fails(capsys, [f"input={tmp_path / 'ok.jsonl'}", f"output={out}", "tokenizer=bpe", "vocab_size=5000000000"],
           "2^32", out)
    _fails(capsys, [f"input={tmp_path / 'ok.jsonl'}", f"output={out}", "val_fraction=0.01"],
           "leaves an empty split", out)
    _fails(capsys, [f"input={tmp_path / 'ok.jsonl'}", f"output={out}", "val_fraction=0.99"],
           "leaves an empty split", out)
    _fails(capsys, [f"input={tmp_path / 'ok.jsonl'}", f"output={out}", "vocab_sise=10"],
           "valid keys", out)


def test_vocab_over_uint32_is_rejected():
    from xforget.data.prepare import dtype_for

    assert dtype_for(256) == np.uint16 and dtype_for(65536) == np.uint16 and dtype_for(65537) == np.uint32
    with pytest.raises(DataError, match="does not fit uint32"):
        dtype_for((1 << 32) + 1)


def test_training_on_bad_prepared_dirs_fails_clearly(tmp_path):

    out = prep(write_corpus("jsonl", tmp_path, make_docs(20)), tmp_path / "prep", tokenizer="bpe", vocab_size=300)
    nometa = tmp_path / "nometa"
    nometa.mkdir()
    (nometa / "train.bin").write_bytes(b"\0" * 100)
    cases = [
        ([f"data.path={nometa}"], "no meta.json"),
        ([f"data.path={out}", "model.num_tokens=512"], "model.num_tokens=512"),
        ([f"data.path={out}", "model.num_tokens=256"], "model.num_tokens=256: the prepared dataset"),  # explicit 256 too
        ([], "data.path=DIR"),
    ]
    for extra, match in cases:
        proc = subprocess.run([sys.executable, "-m", "xforget.train", "data=tokens", *TINY, *extra,
                               f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_num_tokens_null_is_from_the_data_and_an_explicit_other_value_is_refused(tmp_path):
    """model.num_tokens: null (every preset) = from the data; an explicit 256 on BPE data is an error, not replaced."""
    from xforget import ModelConfig, build_model
    from xforget.train import ConfigError

    out = prep(write_corpus("jsonl", tmp_path, make_docs(20)), tmp_path / "prep", tokenizer="bpe", vocab_size=300)
    vocab = json.loads((out / "meta.json").read_text())["vocab_size"]
    assert vocab != 256
    assert compose_config([]).model.num_tokens is None
    for preset in ("fox", "gpt", "fox_pro"):
        assert tiny_cfg(f"model={preset}", "data=tokens", f"data.path={out}").model.num_tokens == vocab
        assert tiny_cfg(f"model={preset}").model.num_tokens == 256
    assert tiny_cfg("data=tokens", f"data.path={out}", f"model.num_tokens={vocab}").model.num_tokens == vocab
    assert tiny_cfg("model.num_tokens=256").model.num_tokens == 256
    for explicit in (256, 512):
        with pytest.raises(ConfigError) as info:
            tiny_cfg("data=tokens", f"data.path={out}", f"model.num_tokens={explicit}")
        message = str(info.value)
        assert message.startswith(f"invalid value model.num_tokens={explicit}: ") and f"vocabulary of {vocab}" in message
    with pytest.raises(ConfigError, match=r"model.num_tokens=300.*256"):
        tiny_cfg("model.num_tokens=300")  # byte-level data
    # the Python API: no data, so bytes; config.json gets the number, not null
    model = build_model(ModelConfig(dim=16, depth=1, heads=2))
    assert model.num_tokens == 256 and model._hub_mixin_config["num_tokens"] == 256


def test_bpe_without_the_data_extra_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    corpus = write_corpus("jsonl", tmp_path, make_docs(20))
    prepared = prep(corpus, tmp_path / "prep", tokenizer="bpe", vocab_size=300)  # while tokenizers is there
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # now `import tokenizers` fails, as without the extra
    with pytest.raises(SystemExit) as exc:
        prepare_main([f"input={corpus}", f"output={tmp_path / 'out'}", "tokenizer=bpe", "vocab_size=300"])
    captured = capsys.readouterr()
    assert exc.value.code == 2 and captured.out == ""
    assert captured.err.splitlines() == ["error: tokenizer=bpe needs the Hugging Face 'tokenizers' package (the data "
                                         "extra): pip install 'xforget[data]'"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    with pytest.raises(DataError) as info:  # a BPE run directory or prepared dataset: the same one line
        load_tokenizer(prepared)
    assert "\n" not in str(info.value) and str(info.value).endswith("(the data extra): pip install 'xforget[data]'")


def test_long_documents_encode_exactly_as_a_whole(tmp_path):
    """Pieces cut for parallel encoding (and 4 MiB file pieces) give the ids of the whole text."""
    from xforget.data.prepare import split_for_encoding

    out = prep(write_corpus("jsonl", tmp_path, make_docs(30, seed=8)), tmp_path / "prep", tokenizer="bpe",
               vocab_size=400)
    tok = load_tokenizer(out)
    rng = random.Random(0)
    lines = []
    for i in range(3000):  # code-like text: indentation, blank lines, trailing spaces, tabs, non-ASCII
        lines.append(rng.choice(["", "    ", "\t", "  "]) + " ".join(rng.choice(WORDS) for _ in range(rng.randrange(0, 8)))
                     + rng.choice(["", " ", ":", "  ", "é"]))
    text = "\n".join(lines)
    parts = split_for_encoding(text.encode(), 512)
    assert len(parts) > 20 and b"".join(parts) == text.encode()
    assert sum((tok.encode(p.decode()) for p in parts), []) == tok.encode(text)
    # the same through prepare: one long text file, tiny batches
    (tmp_path / "long.txt").write_text(text)
    whole = tok.encode(text)
    got = prep(str(tmp_path / "long.txt"), tmp_path / "long", tokenizer=str(out / "tokenizer.json"), batch_bytes=700)
    ids = np.concatenate([np.fromfile(got / "train.bin", dtype=np.uint16), np.fromfile(got / "val.bin", dtype=np.uint16)])
    n_val = int(len(text.encode()) * 0.05)
    head, tail = text.encode()[:-n_val], text.encode()[-n_val:]
    assert ids.tolist() == tok.encode(head.decode()) + tok.encode(tail.decode())
    assert abs(len(ids) - len(whole)) < 10  # only the train/validation byte split cuts a pre-token


def test_glob_and_json_array_inputs(tmp_path):
    docs = make_docs(20, seed=11)
    d = tmp_path / "mixed"
    (d / "sub").mkdir(parents=True)
    for i, doc in enumerate(docs):
        (d / "sub" / f"{i:02d}.txt").write_text(doc)
    (d / "notes.md").write_text("not matched by the glob")
    out = prep(str(d / "**" / "*.txt"), tmp_path / "g", val_fraction=0.25)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["documents"] == 20 and meta["input"]["files"] == 20
    total = sum(len(x.encode()) + 1 for x in docs)
    assert meta["train"]["bytes"] + meta["val"]["bytes"] == total == meta["train"]["tokens"] + meta["val"]["tokens"]
    (tmp_path / "arr.json").write_text(json.dumps([{"body": x} for x in docs]))
    out2 = prep(str(tmp_path / "arr.json"), tmp_path / "a", text_field="body", val_fraction=0.25)
    joined = np.concatenate([np.fromfile(out2 / "train.bin", np.uint16), np.fromfile(out2 / "val.bin", np.uint16)])
    assert sorted(bytes(joined.astype(np.uint8)).decode().split("\n")) == sorted(
        (("\n".join(docs) + "\n").split("\n")))
