"""What a new user hit (issue 24): silent wrong results and half-checked inputs, each pinned.

Every corpus is written by the test; no network, no GPU.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runs import tiny_bpe_run
from xforget.commands.evaluate import main as eval_main
from xforget.commands.prepare import main as prepare_main
from xforget.data import DataError
from xforget.data.prepare import PrepareConfig, prepare
from xforget.data.tokens import load_tokens

pytest.importorskip("tokenizers")

TINY = ["model.dim=32", "model.depth=1", "model.heads=2", "trainer.seq_len=32", "trainer.batch_size=4",
        "trainer.max_steps=2", "trainer.progress=false", "trainer.eval_batches=1", "trainer.threads=1",
        "trainer.warmup_steps=1", "trainer.sample_bytes=0", "trainer.precision=fp32"]
SENTENCE = "Café crème brûlée, naïve façade; Pierre said: déjà vu.\n"


def one_error_line(capsys, call, code: int = 2) -> str:
    """Run ``call`` (a command's main), expect SystemExit(code) and one ``error:`` line on stderr; return it."""
    with pytest.raises(SystemExit) as exc:
        call()
    assert exc.value.code == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def prep(input_: Path, output: Path, **kw) -> Path:
    return prepare(PrepareConfig(input=str(input_), output=str(output), progress=False, **kw), log=lambda m: None)


# ----------------------------------------------------------------------------- 1. data and model tokenizers


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory) -> Path:
    return tiny_bpe_run(tmp_path_factory.mktemp("bpe"))


def test_eval_of_a_bpe_run_on_byte_data_is_refused_for_every_form_of_the_model(bpe_run, tmp_path, capsys):
    """Before: exit 0 and bpb 14.2 from raw bytes read as BPE ids. Run, checkpoint and hub directories alike."""
    from xforget.train.loading import load_trained

    text = tmp_path / "novel.txt"
    text.write_text("the cat sat on a mat " * 200)
    hub = tmp_path / "hub"
    loaded = load_trained(bpe_run)
    loaded.model.save_pretrained(hub)
    loaded.tokenizer.save(hub)
    checkpoint = sorted((bpe_run / "checkpoints").iterdir())[-1]
    for model_dir in (bpe_run, checkpoint, hub):
        out = tmp_path / "eval.json"
        err = one_error_line(capsys, lambda: eval_main([f"checkpoint={model_dir}", "data=text", f"data.path={text}",
                                                        f"out={out}"]))
        assert "trained with another tokenizer" in err and "data=text is byte level" in err, err
        assert not out.exists()


def test_eval_on_data_from_another_tokenizer_of_the_same_size_is_refused(bpe_run, tmp_path, capsys):
    """Same vocabulary size, other merges: the ids mean other text. Its own data passes (the other direction)."""
    from xforget.evaluate.config import EvalConfig
    from xforget.evaluate.core import evaluate_run
    from xforget.train.config import DataConfig

    docs = tmp_path / "other.jsonl"
    docs.write_text("".join(json.dumps({"text": f"zebra quokka {i} xylophone jukebox vexing wizard"}) + "\n"
                            for i in range(80)))
    other = prep(docs, tmp_path / "other", tokenizer="bpe", vocab_size=300)
    assert json.loads((other / "meta.json").read_text())["vocab_size"] == 300
    err = one_error_line(capsys, lambda: eval_main([f"checkpoint={bpe_run}", "data=tokens", f"data.path={other}",
                                                    f"out={tmp_path / 'e.json'}"]))
    assert "has tokenizer" in err and str(other) in err, err
    sides = re.findall(r"tokenizer (\S+ #[0-9a-f]{8})", err)  # same kind and size: the digests tell them apart
    assert len(sides) == 2 and sides[0] != sides[1], err
    result = evaluate_run(bpe_run, EvalConfig(multiples=[1], threads=1, device="cpu", tokens=64))
    assert result["val_bpb"] is not None
    with pytest.raises(DataError, match="trained with another tokenizer"):
        evaluate_run(bpe_run, EvalConfig(multiples=[1], threads=1, device="cpu", tokens=64),
                     DataConfig(name="tokens", path=str(other)))


# ----------------------------------------------------------------------------- 2. decoding the input


def test_invalid_utf8_is_an_error_naming_file_offset_and_count(tmp_path, capsys):
    latin = tmp_path / "latin.txt"
    latin.write_bytes(("plain ascii first\n" + SENTENCE * 50).encode("latin-1"))
    out = tmp_path / "out"
    err = one_error_line(capsys, lambda: prepare_main([f"input={latin}", f"output={out}", "progress=false"]))
    expected_count = sum(c > 127 for c in SENTENCE.encode("latin-1")) * 50
    first = ("plain ascii first\n" + SENTENCE).encode("latin-1").index(b"\xe9")
    assert str(latin) in err and f"{expected_count:,} undecodable" in err and f"byte offset {first:,}" in err, err
    assert "encoding=" in err and "errors=replace" in err
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe"])
def test_encoding_opt_in_transcodes_and_counts_utf8_bytes(tokenizer, tmp_path):
    text = "plain ascii first\n" + SENTENCE * 200
    latin = tmp_path / "latin.txt"
    latin.write_bytes(text.encode("latin-1"))
    out = prep(latin, tmp_path / "out", tokenizer=tokenizer, vocab_size=300, encoding="latin-1")
    data = load_tokens(out)
    from xforget.data.tokenizer import load_tokenizer

    tok = load_tokenizer(out)
    decoded = tok.decode(np.concatenate([data.train, data.val]).tolist())
    assert decoded == text and "\ufffd" not in decoded
    meta = data.meta
    # bits per byte counts the UTF-8 bytes of the text that was tokenized, split by split
    assert meta["train"]["bytes"] == len(tok.decode(data.train.tolist()).encode("utf-8"))
    assert meta["val"]["bytes"] == len(tok.decode(data.val.tolist()).encode("utf-8"))
    assert meta["train"]["bytes"] + meta["val"]["bytes"] == len(text.encode("utf-8"))
    assert meta["input"]["encoding"] == "latin-1"


def test_errors_replace_opt_in_counts_the_replacement_bytes(tmp_path):
    raw = ("ok " * 100 + "\n").encode() + b"caf\xe9\n" * 20 + ("tail " * 100).encode()
    f = tmp_path / "mixed.txt"
    f.write_bytes(raw)
    out = prep(f, tmp_path / "out", errors="replace")
    meta = json.loads((out / "meta.json").read_text())
    replaced = raw.decode("utf-8", "replace").encode("utf-8")
    assert meta["input"]["replaced_bytes"] == 20
    assert meta["train"]["bytes"] + meta["val"]["bytes"] == len(replaced) == meta["train"]["tokens"] + meta["val"]["tokens"]


def test_binary_files_are_refused_even_with_errors_replace(tmp_path, capsys):
    rng = np.random.default_rng(0)
    noise = tmp_path / "noise.bin"
    noise.write_bytes(rng.integers(128, 256, 5000, dtype=np.uint8).tobytes())  # no NUL, mostly invalid UTF-8
    nul = tmp_path / "image.dat"
    nul.write_bytes(b"GIF89a\0\0" + b"text" * 100)
    for f, why in ((noise, "are not valid utf-8"), (nul, "a NUL byte at offset 6")):
        out = tmp_path / "out"
        err = one_error_line(capsys, lambda: prepare_main([f"input={f}", f"output={out}", "errors=replace",
                                                           "progress=false"]))
        assert "looks binary" in err and why in err and str(f) in err, err
        assert not out.exists()


@pytest.mark.parametrize("args, match", [(["encoding=utf-16"], "must be ASCII-compatible"),
                                         (["encoding=nope"], "not a Python codec"),
                                         (["errors=ignore"], "must be one of ['strict', 'replace']")])
def test_bad_encoding_settings_are_one_line(args, match, tmp_path, capsys):
    f = tmp_path / "a.txt"
    f.write_text("hello\n" * 50)
    err = one_error_line(capsys, lambda: prepare_main([f"input={f}", f"output={tmp_path / 'out'}", *args]))
    assert match in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- 3. ids beyond the vocabulary


def _train(data: Path, run: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xforget.train", "data=tokens", f"data.path={data}", *TINY,
                           f"hydra.run.dir={run}"], capture_output=True, text=True, timeout=180)


def test_meta_records_the_largest_id_of_each_split(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("abc xyz\n" * 100 + "~" * 3)
    data = load_tokens(prep(f, tmp_path / "out"))
    for split in ("train", "val"):
        assert data.meta[split]["max_id"] == int(np.asarray(getattr(data, split)).max())


@pytest.mark.parametrize("damage", ["meta", "shard"])
def test_ids_beyond_the_vocabulary_fail_in_one_line_before_a_run_directory_exists(damage, tmp_path):
    """Before: an index error mid-training after Hydra's banner, a run directory left behind."""
    f = tmp_path / "a.txt"
    f.write_text("the quick brown fox jumps over the lazy dog\n" * 60)
    out = prep(f, tmp_path / "prep")
    if damage == "meta":  # a hand-edited vocabulary smaller than the ids
        meta = json.loads((out / "meta.json").read_text())
        meta["vocab_size"] = 100
        (out / "meta.json").write_text(json.dumps(meta))
    else:  # a damaged train.bin of the same size
        ids = np.fromfile(out / "train.bin", dtype=np.uint16)
        ids[17] = 4000
        ids.tofile(out / "train.bin")
    proc = _train(out, tmp_path / "run")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "beyond the vocabulary" in lines[0], proc.stderr
    assert ("id 4000" if damage == "shard" else "vocabulary of 100") in lines[0]
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataError, match="beyond the vocabulary"):
        load_tokens(out)


# ----------------------------------------------------------------------------- smaller defects


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_4_export_follows_the_umask(bpe_run, tmp_path, umask):
    import os

    from xforget.commands.export import export_run

    old = os.umask(umask)
    try:
        out, files = export_run(bpe_run, tmp_path / "hub")
    finally:
        os.umask(old)
    for name in files:
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, (name, oct((out / name).stat().st_mode))


def test_6_compare_checks_its_data_before_any_run(tmp_path, capsys):
    from xforget.commands.compare import main as compare_main

    out = tmp_path / "cmp"
    err = one_error_line(capsys, lambda: compare_main(["data=text", f"data.path={tmp_path / 'missing.txt'}",
                                                       f"hydra.run.dir={out}", "trainer.max_steps=2"]))
    assert "missing.txt" in err and "train.log" not in err and "resume" not in err, err
    assert not out.exists()


def test_7_generate_reads_every_form_of_a_trained_model(bpe_run, tmp_path, capsys):
    from xforget.commands.export import export_run
    from xforget.commands.generate import main as generate_main

    hub, _ = export_run(bpe_run, tmp_path / "hub")
    checkpoint = sorted((bpe_run / "checkpoints").iterdir())[-1]
    texts = []
    for model_dir in (bpe_run, checkpoint, hub):
        generate_main([f"checkpoint={model_dir}", "prompt=the cat", "max_new_tokens=4", "temperature=0"])
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] == texts[2] and texts[0].startswith("the cat")


@pytest.mark.parametrize("path", ["/missing", "/tmp/no/such/run", "~/no-such-run-xf"])
def test_8_a_missing_directory_says_it_does_not_exist(path, tmp_path, capsys):
    from xforget.commands.export import main as export_main

    err = one_error_line(capsys, lambda: export_main([f"checkpoint={path}", f"out={tmp_path / 'hub'}"]))
    assert err == f"error: no trained model in {Path(path).expanduser().resolve()}: it does not exist", err
    assert "Repo id" not in err and not (tmp_path / "hub").exists()


def test_9_prepare_never_reads_its_own_output(tmp_path):
    corp = tmp_path / "corp"
    corp.mkdir()
    for i in range(6):
        (corp / f"doc{i}.txt").write_text(f"document {i} " * 40)
    first = json.loads((prep(corp, corp / "prepared", val_fraction=0.34) / "meta.json").read_text())
    again = json.loads((prep(corp, corp / "prepared", val_fraction=0.34, overwrite=True) / "meta.json").read_text())
    assert first["documents"] == again["documents"] == 6
    assert first["train"] == again["train"] and first["input"]["sha256"] == again["input"]["sha256"]


def test_10_one_overwrite_rule(tmp_path, capsys):
    f = tmp_path / "a.txt"
    f.write_text("hello world\n" * 50)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    rule = "overwrite=true replaces a prepared dataset (a directory with meta.json), never anything else"
    for extra in ([], ["overwrite=true"]):  # the same answer with and without overwrite=true
        err = one_error_line(capsys, lambda: prepare_main([f"input={f}", f"output={other}", *extra]))
        assert "is not a prepared dataset" in err and rule in err, err
    assert (other / "keep.txt").read_text() == "mine" and len(list(other.iterdir())) == 1
    done = prep(f, tmp_path / "prepared")
    err = one_error_line(capsys, lambda: prepare_main([f"input={f}", f"output={done}"]))
    assert "is already a prepared dataset; add overwrite=true to replace it" in err
    prepare_main([f"input={f}", f"output={done}", "overwrite=true", "progress=false"])


def test_11_pruning_line_names_the_512_key_minimum():
    import torch

    from xforget import Decoder, TransformerWrapper
    from xforget.evaluate.pruning import format_pruning, pruning_fractions

    def net(**kw):
        return TransformerWrapper(num_tokens=256, max_seq_len=1024,
                                  attn_layers=Decoder(dim=32, depth=1, heads=2, **kw)).eval()

    window = torch.randint(0, 256, (256,))
    assert "pruning starts at 512 keys" in format_pruning(pruning_fractions(net(position="fox"), window))[0]
    assert "attn_prune=false" in format_pruning(pruning_fractions(net(position="fox", attn_prune=False), window))[0]
    assert "no decay bias" in format_pruning(pruning_fractions(net(position="rotary"), window))[0]
    assert pruning_fractions(net(position="fox"), torch.randint(0, 256, (640,)))["layers"]  # 512+ keys: pruned


# ----------------------------------------------------------------------------- nanoGPT prepared directories


def write_nanogpt_char_dir(root: Path, text: str) -> Path:
    """What nanoGPT's data/shakespeare_char/prepare.py writes: characters sorted, 90/10 split by characters,
    uint16 ids, meta.pkl with vocab_size, itos, stoi."""
    import pickle

    chars = sorted(set(text))
    stoi, itos = {ch: i for i, ch in enumerate(chars)}, dict(enumerate(chars))
    n = len(text)
    root.mkdir(parents=True)
    np.array([stoi[c] for c in text[:int(n * 0.9)]], dtype=np.uint16).tofile(root / "train.bin")
    np.array([stoi[c] for c in text[int(n * 0.9):]], dtype=np.uint16).tofile(root / "val.bin")
    (root / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": len(chars), "itos": itos, "stoi": stoi}))
    return root


def test_nanogpt_char_dir_trains_and_evaluates_as_the_same_text_prepared_here(tmp_path, capsys):
    """900 training characters (18 two-byte 'é') and 100 validation characters (one three-byte '€'): nanoGPT's
    split by characters and xforget-prepare's by bytes fall at the same place, so the ids must be equal, and
    the byte counts are the UTF-8 bytes of each split (not the characters)."""
    from xforget.evaluate.config import EvalConfig
    from xforget.evaluate.core import evaluate_run
    from xforget.train import compose_config, to_train_config, train

    words = "the forget gate decays attention over distance "
    train_text = (("é" * 18) + (words * 30))[:900]
    val_text = (words * 3)[:99] + "€"
    text = train_text + val_text
    nano = write_nanogpt_char_dir(tmp_path / "shakespeare_char", text)
    with pytest.raises(DataError, match=f"looks like a nanoGPT prepared directory.*xforget-prepare input={nano}"):
        load_tokens(nano)  # what data=tokens data.path=NANO says: the one command that converts it
    converted = tmp_path / "converted"
    prepare_main([f"input={nano}", f"output={converted}"])
    ours = tmp_path / "text.txt"
    ours.write_text(text, encoding="utf-8")
    prepared = prep(ours, tmp_path / "prepared", tokenizer=str(converted / "tokenizer.json"), val_fraction=0.1)
    a, b = load_tokens(converted), load_tokens(prepared)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    assert a.meta["val"]["bytes"] == b.meta["val"]["bytes"] == len(val_text.encode("utf-8")) == 102
    assert a.meta["train"]["bytes"] == b.meta["train"]["bytes"] == len(train_text.encode("utf-8")) == 918
    bpb = []
    for data in (converted, prepared):
        cfg = to_train_config(compose_config(["data=tokens", f"data.path={data}", *[t for t in TINY if "max_steps" not in t],
                                              "trainer.max_steps=3"]))
        run = tmp_path / f"run-{data.name}"
        result = train(cfg, run)
        ev = evaluate_run(run, EvalConfig(multiples=[1], threads=1, device="cpu", tokens=128))  # = training's windows
        assert ev["val_bpb"] == pytest.approx(result.val_bpb, abs=1e-5)
        bpb.append(ev["val_bpb"])
    assert bpb[0] == bpb[1]
    from xforget.data.tokenizer import load_tokenizer

    assert load_tokenizer(converted).decode(np.asarray(a.val).tolist()) == val_text  # nanoGPT's decode


def test_nanogpt_gpt2_style_dir_needs_its_tokenizer_named_and_counts_bytes(tmp_path, capsys):
    """No meta.pkl (nanoGPT's shakespeare / openwebtext: GPT-2 ids): the user names the tokenizer; a byte-level
    BPE trained here stands in for GPT-2's. Bytes per split: the UTF-8 bytes of the encoded text."""
    from xforget.data.tokenizer import HFTokenizer

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"naïve café {i} crème brûlée"}) + "\n" for i in range(60)))
    tok_dir = prep(docs, tmp_path / "bpe", tokenizer="bpe", vocab_size=300)
    tok = HFTokenizer.from_file(tok_dir / "tokenizer.json")
    nano = tmp_path / "shakespeare"
    nano.mkdir()
    train_text, val_text = "Pierre said: déjà vu. " * 40, "Caf\u00e9 crème, naïve. " * 8
    np.array(tok.encode(train_text), dtype=np.uint16).tofile(nano / "train.bin")  # nanoGPT: encode_ordinary
    np.array(tok.encode(val_text), dtype=np.uint16).tofile(nano / "val.bin")
    out = tmp_path / "out"
    err = one_error_line(capsys, lambda: prepare_main([f"input={nano}", f"output={out}"]))
    assert "tokenizer=PATH/tokenizer.json" in err and not out.exists()
    prepare_main([f"input={nano}", f"output={out}", f"tokenizer={tok_dir / 'tokenizer.json'}"])
    meta = load_tokens(out).meta
    assert meta["train"]["bytes"] == len(train_text.encode("utf-8"))
    assert meta["val"]["bytes"] == len(val_text.encode("utf-8"))
    assert meta["vocab_size"] == 300 and (out / "tokenizer.json").is_file()


def test_nanogpt_meta_pkl_runs_no_code(tmp_path, capsys):
    import pickle

    nano = write_nanogpt_char_dir(tmp_path / "evil", "abc " * 300)
    (nano / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 4, "itos": {0: "a"}, "hook": print}))
    err = one_error_line(capsys, lambda: prepare_main([f"input={nano}", f"output={tmp_path / 'out'}"]))
    assert "builtins.print" in err and not (tmp_path / "out").exists()


def test_12_first_record_after_a_resume_says_how_many_steps_it_averages(tmp_path):
    """Before: the record of step 8 after a resume from step 6 averaged steps 7-8 but looked like the
    uninterrupted run's (steps 5-8). Now it carries train_loss_steps=2; aligned records carry nothing."""
    from xforget.train import compose_config, to_train_config, train
    from xforget.train.metrics import read_metrics

    f = tmp_path / "a.txt"
    f.write_text("the quick brown fox jumps over the lazy dog\n" * 80)

    def cfg():
        return to_train_config(compose_config(["data=text", f"data.path={f}", *[t for t in TINY if "max_steps" not in t],
                                               "trainer.max_steps=12", "trainer.log_every=4", "trainer.checkpoint_every=6",
                                               "trainer.eval_every=0", "trainer.keep_last=0"]))

    full = train(cfg(), tmp_path / "full")
    train(cfg(), tmp_path / "part", stop_after_step=7)
    resumed = train(cfg(), tmp_path / "part")
    by_step = {r["step"]: r for r in read_metrics(tmp_path / "part")}
    assert by_step[8]["train_loss_steps"] == 2
    assert by_step[8]["train_loss"] == pytest.approx((resumed.losses[7] + resumed.losses[8]) / 2, abs=1e-12)
    assert "train_loss_steps" not in by_step[4] and "train_loss_steps" not in by_step[12]
    full_records = {r["step"]: r for r in read_metrics(tmp_path / "full")}
    assert all("train_loss_steps" not in r for r in full_records.values())
    assert by_step[12]["train_loss"] == full_records[12]["train_loss"] and resumed.val_bpb == full.val_bpb


def test_13_sample_bytes_counts_bytes_on_a_bpe_run(bpe_run, tmp_path):
    """Before: trainer.sample_bytes=200 generated 200 tokens (about 700 bytes) on a BPE run."""
    from xforget.train import compose_config, to_train_config, train

    cfg = to_train_config(compose_config(["data=tokens", f"data.path={bpe_run.parent / 'prep'}",
                                          *[t for t in TINY if "sample_bytes" not in t], "trainer.sample_bytes=40"]))
    result = train(cfg, tmp_path / "run")
    n = len(result.sample.encode("utf-8"))
    assert 40 <= n < 40 + 30, (n, result.sample)  # a token holds a few bytes: at most one token over


def test_13_eval_of_a_hub_dir_names_it_and_writes_nothing_into_it(bpe_run, tmp_path, capsys):
    from xforget.commands.export import export_run

    hub, _ = export_run(bpe_run, tmp_path / "hub")
    before = sorted(p.name for p in hub.iterdir())
    eval_main([f"checkpoint={hub}", "data=tokens", f"data.path={bpe_run.parent / 'prep'}", "eval.multiples=[1]",
               "eval.tokens=64"])
    out = capsys.readouterr().out
    assert "step None" not in out and "a hub-style directory" in out and "give out=FILE" in out
    assert sorted(p.name for p in hub.iterdir()) == before
    eval_main([f"checkpoint={hub}", "data=tokens", f"data.path={bpe_run.parent / 'prep'}", "eval.multiples=[1]",
               "eval.tokens=64", f"out={tmp_path / 'e.json'}"])
    assert (tmp_path / "e.json").is_file()


def test_13_an_unquoted_prompt_gets_a_quoting_hint(capsys):
    from xforget.commands.generate import main as generate_main

    err = one_error_line(capsys, lambda: generate_main(["checkpoint=/nowhere", "prompt=Pierre", "said"]))
    assert "'said'" in err and "quote it" in err, err


def test_13_progress_is_drawn_only_on_a_terminal(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello world\n" * 400)
    proc = subprocess.run([sys.executable, "-m", "xforget.commands.prepare", f"input={f}", f"output={tmp_path / 'out'}",
                           "progress=true", "batch_bytes=100"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "\r" not in proc.stderr and "prepare:" not in proc.stderr, proc.stderr
