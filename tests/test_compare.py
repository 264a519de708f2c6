"""xforget-compare: a tiny comparison end to end, checked against an independent evaluation; re-use; errors."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from xforget.compare import run_compare
from xforget.errors import ConfigError
from xforget.train import load_model


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def text_file():
    from corpus import TEXT  # generated text (tests/corpus.py), no files outside the repository

    return TEXT


def tiny_args(text_file, out_dir, positions="[none,fox]", seeds="[0,1]"):
    return [f"positions={positions}", f"seeds={seeds}", "data=text", f"data.path={text_file}",
            "model.dim=32", "model.depth=1", "model.heads=2", "trainer.seq_len=32", "trainer.batch_size=4",
            "trainer.max_steps=6", "trainer.eval_every=3", "trainer.eval_batches=2", "trainer.log_every=2",
            "trainer.checkpoint_every=0", "trainer.progress=false", "trainer.sample_bytes=0",
            "trainer.precision=fp32",  # xforget-eval scores in fp32: training's val_bpb must be fp32 to match to 1e-5
            "eval.multiples=[1,2,4]", f"hydra.run.dir={out_dir}"]


@pytest.fixture(scope="module")
def compared(text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    args = tiny_args(text_file, out) + ["subprocess=false", "eval.task=mqar", "eval.task_examples=2"]
    report = run_compare(args, log=lambda *_: None)
    return out, args, report


def independent_bpb(model, cfg, text_file, length, count):
    """A plain loop over evenly spaced windows of the last 5% of the file."""
    data = torch.tensor(list(Path(text_file).read_bytes()), dtype=torch.long)
    val = data[len(data) - int(len(data) * cfg.data.val_fraction):]
    starts = torch.linspace(0, len(val) - length - 1, count).round().long()
    total, n = 0.0, 0
    with torch.no_grad():
        for s in starts.tolist():
            w = val[s:s + length + 1][None]
            total += F.cross_entropy(model(w[:, :-1])[0], w[0, 1:], reduction="sum").item()
            n += length
    return total / n / math.log(2)


def test_compare_writes_table_json_plots_matching_an_independent_evaluation(compared, text_file):
    out, _, report = compared
    for name in ("compare.md", "compare.json", "loss_vs_step.png", "loss_vs_position.png", "bpb_vs_length.png",
                 "task_accuracy.png"):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    data = json.loads((out / "compare.json").read_text())
    assert data == json.loads(json.dumps(report))
    md = (out / "compare.md").read_text()
    assert "| `none` |" in md and "| `fox` |" in md and "bpb @128" in md and "synthetic `mqar` task" in md

    assert [s["name"] for s in data["schemes"]] == ["none", "fox"]
    assert len(data["runs"]) == 4
    tokens = 2 * 4 * 32  # default eval.tokens: the training validation set size
    for run in data["runs"]:
        assert run["checkpoint_step"] == 6 and not run["reused"]
        assert run["tokens_per_s"] > 0 and run["peak_rss_mb"] > 0
        model, cfg = load_model(run["run_dir"])
        for row in run["lengths"]:
            ref = independent_bpb(model, cfg, text_file, row["length"], tokens // row["length"])
            assert row["bpb"] == pytest.approx(ref, abs=2e-4), (run["scheme"], row["length"])
        # at 1x these are the windows training evaluated on: the final val_bpb in metrics.jsonl
        last = [json.loads(x) for x in (Path(run["run_dir"]) / "metrics.jsonl").read_text().splitlines()][-1]
        assert run["val_bpb"] == pytest.approx(last["val_bpb"], abs=1e-5)
    for scheme in data["schemes"]:
        values = [r["val_bpb"] for r in data["runs"] if r["scheme"] == scheme["name"]]
        assert scheme["val_bpb"]["mean"] == pytest.approx(sum(values) / 2, abs=1e-4)
        assert scheme["val_bpb"]["std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2), abs=1e-4)
        assert [r["length"] for r in scheme["lengths"]] == [32, 64, 128]
        # the per-position curve (mean over seeds) averages to the scheme's loss at that length
        for row in scheme["lengths"]:
            curve = scheme["per_position"][str(row["length"])]
            assert len(curve) == row["length"]
            assert sum(curve) / len(curve) / math.log(2) == pytest.approx(row["bpb"]["mean"], abs=2e-4)
        assert scheme["curve"]["step"] == [2, 3, 4, 6]
        task = scheme["task"]
        assert task["name"] == "mqar" and [r["length"] for r in task["lengths"]] == [32, 64, 128]
        accs = [r["task"]["lengths"][0]["accuracy"] for r in data["runs"] if r["scheme"] == scheme["name"]]
        assert task["lengths"][0]["accuracy"]["mean"] == pytest.approx(sum(accs) / 2, abs=1e-4)


def test_rerunning_the_same_command_reuses_finished_runs(compared):
    out, args, report = compared
    weights = sorted(out.glob("runs/*/checkpoints/*/model.safetensors")) + sorted(out.glob("runs/*/model.safetensors"))
    assert len(weights) == 8
    before = {p: p.stat().st_mtime_ns for p in weights}
    again = run_compare(args, log=lambda *_: None)
    assert all(r["reused"] for r in again["runs"])
    assert {p: p.stat().st_mtime_ns for p in weights} == before
    assert [r["val_bpb"] for r in again["runs"]] == [r["val_bpb"] for r in report["runs"]]
    assert "(re-used)" in (out / "compare.md").read_text()
    # a different budget is a different run, not a clobbered one
    planned = run_compare([a if not a.startswith("positions") else "positions=[none]" for a in args]
                          + ["seeds=[0]", "trainer.max_steps=3"], log=lambda *_: None)
    assert not planned["runs"][0]["reused"] and len(list(out.glob("runs/none-seed0-*"))) == 2


@pytest.mark.parametrize("args, needle", [
    (["positons=[none]"], "valid keys of the top level: ['positions', 'seeds', 'eval'"),
    (["trainer.max_stepz=3"], "valid keys of trainer: ['max_steps'"),
    (["eval.multiplez=[1]"], "valid keys of eval: ['seq_len', 'multiples'"),
    (["positions=[fox,no_such_scheme]"], "unknown scheme 'no_such_scheme'"),
    (["model=fox"], "positions=[...]"),
])
def test_bad_keys_fail_in_one_line_with_exit_code_2(args, needle, capsys, tmp_path, text_file):
    from xforget.commands.compare import main

    cheap = ["subprocess=false", "data=text", f"data.path={text_file}", "model.dim=32", "model.depth=1",
             "model.heads=2", "trainer.max_steps=1", "trainer.seq_len=32"]  # should a case ever pass by mistake
    with pytest.raises(SystemExit) as exc:
        main([*cheap, *args, f"hydra.run.dir={tmp_path}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_prepare_keys_work_without_a_preset_and_name_their_valid_keys():
    # prepare: is null unless a preset sets it; prepare.KEY=... starts it from its defaults
    from xforget.compare.config import load_compare_config

    cfg, _ = load_compare_config(["prepare.input=/some/corpus", "prepare.vocab_size=512"])
    assert (cfg.prepare.input, cfg.prepare.vocab_size, cfg.prepare.tokenizer) == ("/some/corpus", 512, "bpe")
    assert load_compare_config(["experiment=fox_vs_rope", "prepare=null"])[0].prepare is None
    assert load_compare_config(["experiment=fox_vs_rope", "prepare.vocab_size=300"])[0].prepare.input == "stdlib"
    for bad in (["prepare.inptu=x"], ["prepare={inptu:3}"]):
        with pytest.raises(ConfigError, match=r"unknown config key 'prepare.inptu'; valid keys of prepare: \['input'"):
            load_compare_config(bad)
    with pytest.raises(ConfigError, match="prepare.vocab_size"):
        load_compare_config(["prepare.vocab_size=abc"])


@pytest.fixture
def docs_dir(tmp_path):
    """A directory of three short text files: a corpus of several documents."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"{i}.txt").write_text(f"document {i}\n" * 20)
    return docs


@pytest.mark.parametrize("prepare, needle", [
    (["experiment=fox_vs_rope"], "prepare.input=stdlib is one document"),
    (["prepare.input=TEXTFILE"], "is one document"),
    (["prepare.input=DOCS", "prepare.tokenizer=bytes"], "prepare.tokenizer=bytes"),
])
def test_packing_a_one_document_corpus_is_refused_before_any_work(prepare, needle, tmp_path, text_file, docs_dir,
                                                                   capsys):
    from xforget.commands.compare import main

    prepare = [a.replace("TEXTFILE", str(text_file)).replace("DOCS", str(docs_dir)) for a in prepare]
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as exc:
        main(["positions=[fox]", "seeds=[0]", *prepare, "data.pack_documents=true", f"hydra.run.dir={out}"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith("error: ") and needle in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("data", ["data.path=/some/where", "data=text", "data=mqar"])
def test_other_data_beside_a_prepare_node_is_refused_before_preparing(data, tmp_path, docs_dir, capsys):
    from xforget.commands.compare import main

    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as exc:
        main(["positions=[fox]", "seeds=[0]", f"prepare.input={docs_dir}", data, f"hydra.run.dir={out}"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and f"'{data}': with a prepare node" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_cfg_job_prepares_nothing(tmp_path, docs_dir, capsys):
    from xforget.commands.compare import main

    out = tmp_path / "cmp"
    main(["positions=[fox]", "seeds=[0]", f"prepare.input={docs_dir}", "data.pack_documents=true",
          f"hydra.run.dir={out}", "--cfg", "job"])
    printed = capsys.readouterr().out
    assert f"input: {docs_dir}" in printed and "data.pack_documents=true" in printed
    assert not out.exists()


def test_main_puts_back_the_callers_sigterm_handler(tmp_path, text_file):
    # compare turns SIGTERM into an interrupt for its own run only: a test runner or notebook that called
    # it keeps its handler (the leaked one once reached the forked workers of a later test)
    import signal

    from xforget.commands.compare import main

    def mine(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        with pytest.raises(SystemExit):
            main(["subprocess=false", "data=text", f"data.path={text_file}", "positons=[none]",
                  f"hydra.run.dir={tmp_path}"])
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


def test_cli_trains_in_a_subprocess_and_records_peak_memory(text_file, tmp_path):
    args = tiny_args(text_file, tmp_path, positions="[alibi]", seeds="[0]") + ["eval.multiples=[1,2]", "plots=false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/compare.py"), *args], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "compare.json").read_text())
    run = data["runs"][0]
    info = json.loads((Path(run["run_dir"]) / "compare-run.json").read_text())
    assert info["peak_rss_mb"] == run["peak_rss_mb"] > 50 and info["command"][1:3] == ["-m", "xforget.train"]
    assert [r["length"] for r in run["lengths"]] == [32, 64] and (tmp_path / "compare.md").is_file()


def test_compare_prepare_takes_every_key_of_xforget_prepare():
    """ComparePrepare is PrepareConfig with other defaults (one list of keys: they cannot drift apart)."""
    from dataclasses import fields

    from xforget.compare.config import ComparePrepare
    from xforget.data.prepare import PrepareConfig

    assert issubclass(ComparePrepare, PrepareConfig)
    assert [f.name for f in fields(ComparePrepare)] == [f.name for f in fields(PrepareConfig)]
    p = ComparePrepare(vocab_size=300, encoding="latin-1", errors="replace", separator="\n\n")
    plain = p.prepare_config()
    assert type(plain) is PrepareConfig and plain.output == "" and plain.input == "stdlib"
    assert {f.name: getattr(plain, f.name) for f in fields(PrepareConfig) if f.name != "output"} == \
        {f.name: getattr(p, f.name) for f in fields(PrepareConfig) if f.name != "output"}
