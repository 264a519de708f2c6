"""xforget-eval and xforget-compare under real use: --help / --cfg job, no result never overwrites a result,
an interrupted comparison (real SIGINT) continues and counts the whole training time, one unit in the plots."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from corpus import TEXT  # generated text (tests/corpus.py)
from runs import steps_logged

from xforget.train import compose_config, to_train_config, train
from xforget.train.checkpoint import complete_checkpoints

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.dim=32", "model.depth=1", "model.heads=2", "trainer.seq_len=32", "trainer.batch_size=4",
        "data=text", f"data.path={TEXT}", "trainer.progress=false", "trainer.sample_bytes=0", "trainer.eval_batches=2",
        "trainer.threads=1", "trainer.warmup_steps=2", "trainer.log_every=1"]
LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    train(to_train_config(compose_config([*TINY, "trainer.max_steps=3"])), run)
    return run


def _exit(main, argv, capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("module", ["xforget.commands.train", "xforget.commands.evaluate", "xforget.commands.compare",
                                    "xforget.commands.generate"])
def test_help_works_on_every_cli(module, capsys, monkeypatch):
    import importlib

    monkeypatch.setattr(sys, "argv", ["prog"])
    code, out, err = _exit(importlib.import_module(module).main, ["--help"], capsys)
    assert code == 0 and "Traceback" not in err and len(out.splitlines()) > 5


def test_eval_cfg_job_prints_the_config_without_evaluating(run_dir, capsys):
    from omegaconf import OmegaConf

    from xforget.commands.evaluate import main

    code, out, err = _exit(main, ["--cfg", "job", f"checkpoint={run_dir}", "eval.multiples=[1,2]"], capsys)
    assert code == 0, err
    cfg = OmegaConf.create(out)
    assert cfg.checkpoint == str(run_dir) and list(cfg.eval.multiples) == [1, 2]
    assert not (run_dir / "eval.json").exists()
    code, _, err = _exit(main, ["--cfg", "job", "eval.multiplez=[1]"], capsys)
    assert code == 2 and err.startswith("error: ") and "valid keys of eval" in err


def test_compare_cfg_job_prints_the_configs_without_training(tmp_path, capsys):
    from omegaconf import OmegaConf

    from xforget.commands.compare import main

    code, out, err = _exit(main, ["--cfg", "job", "positions=[rotary,fox]", "seeds=[3]", "model.dim=48",
                                  f"hydra.run.dir={tmp_path}"], capsys)
    assert code == 0, err
    cfg = OmegaConf.create(out)
    assert list(cfg.positions) == ["rotary", "fox"] and cfg.first_run.model.dim == 48 and cfg.first_run.seed == 3
    assert cfg.first_run.model.position == "rotary" and not (tmp_path / "runs").exists()


def test_eval_with_no_result_fails_and_keeps_the_earlier_result(run_dir, capsys):
    from xforget.commands.evaluate import main

    code, _, err = _exit(main, [f"checkpoint={run_dir}", "eval.multiples=[1]"], capsys)
    assert code == 0, err
    before = (run_dir / "eval.json").read_bytes()
    huge = len(TEXT.read_bytes())  # longer than the whole validation split
    code, out, err = _exit(main, [f"checkpoint={run_dir}", f"eval.seq_len={huge}", "eval.multiples=[1,2]"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: nothing evaluated, every length was skipped")
    assert "validation split too short" in lines[0] and "(the earlier one is kept)" in lines[0]
    assert (run_dir / "eval.json").read_bytes() == before


# --------------------------------------------------------------------------- compare interrupted


@pytest.mark.slow
def test_interrupted_compare_exits_cleanly_resumes_and_counts_the_whole_training(tmp_path):
    out = tmp_path / "cmp"
    args = ["positions=[none]", "seeds=[0]", *TINY, "trainer.max_steps=30", "trainer.eval_every=0",
            "trainer.checkpoint_every=0", "eval.multiples=[1]", "plots=false", f"hydra.run.dir={out}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "xforget.compare", *args], env={**env,
                            "XFORGET_DEBUG_STEP_SLEEP": "0.1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # (SIGINT as at a terminal: a background job of a non-interactive shell inherits it ignored)
    deadline = time.monotonic() + 120
    while not (runs := list(out.glob("runs/*"))) or steps_logged(runs[0]) < 6:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGINT)  # the comparison only: it forwards one SIGINT to the training process
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: interrupted while training none/seed0")
    (run,) = runs
    (step, ckpt), = complete_checkpoints(run)  # the training process checkpointed its current step
    assert 6 <= step < 30
    import torch

    elapsed_before = torch.load(ckpt / "state.pt", weights_only=True)["elapsed_s"]
    assert elapsed_before >= 0.1 * (step - 1)  # the debug sleep is part of the training loop's time

    again = subprocess.run([sys.executable, "-m", "xforget.compare", *args], env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    (record,) = json.loads((out / "compare.json").read_text())["runs"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 31))
    assert record["resumed"] and record["wall_s"] == metrics[-1]["elapsed_s"] > elapsed_before
    assert "(interrupted and resumed)" in (out / "compare.md").read_text()


# --------------------------------------------------------------------------- one unit


def test_plots_and_tables_use_bits_per_byte(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from xforget.compare import plots
    from xforget.compare.report import write_markdown

    axes = []
    real = plt.subplots

    def capture(*args, **kwargs):
        fig, ax = real(*args, **kwargs)
        axes.append(ax)
        return fig, ax

    monkeypatch.setattr(plots.plt, "subplots", capture)
    nats = 1.3  # a flat per-position loss and train loss, in nats
    scheme = {"name": "fox", "params": 1000, "per_position": {"64": [nats] * 64},
              "curve": {"step": [1, 2], "train_loss": [nats, nats], "val_bpb": [None, nats / LN2]},
              "lengths": [{"length": 64, "status": "ok", "bpb": {"mean": nats / LN2, "std": 0.0, "values": [1]}}],
              "val_bpb": {"mean": nats / LN2, "std": 0.0, "values": [1]},
              "tokens_per_s": None, "peak_rss_mb": None, "train_wall_s": None}
    plots.plot_loss_vs_step([scheme], tmp_path / "a.png")
    plots.plot_loss_vs_position([scheme], tmp_path / "b.png", 32)
    for ax in axes:
        assert ax.get_ylabel() == "loss (bits per byte)"
        for y in ax.lines[0].get_ydata():
            assert y == pytest.approx(nats / LN2)
    report = {"meta": {"train_seq_len": 32, "data": "x", "model": "m", "budget": "b", "seeds": [0]},
              "schemes": [scheme], "runs": []}
    text = write_markdown(report, tmp_path / "c.md", [])
    assert "Mean loss (bits/byte) by token position" in text
    row = next(line for line in text.splitlines() if line.startswith("| `fox` |") and "—" not in line and "M" not in line)
    assert all(cell.strip() == f"{nats / LN2:.3f}" for cell in row.split("|")[2:-1])


def test_an_output_path_under_a_file_is_refused_before_any_work(run_dir, tmp_path, capsys, monkeypatch):
    """``out=`` / ``hydra.run.dir=`` whose parent is a file (or of the wrong kind): one error line naming the
    key, exit 2, before evaluating, exporting or training; nothing written."""
    from xforget.commands.evaluate import main as eval_main
    from xforget.commands.export import main as export_main
    from xforget.commands.train import main as train_main

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the train command rewrites sys.argv
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    for main, args, key in [
        (eval_main, [f"checkpoint={run_dir}", f"out={afile}/eval.json"], "out="),
        (export_main, [f"checkpoint={run_dir}", f"out={afile}/exp"], "out="),
        (export_main, [f"checkpoint={run_dir}", f"out={afile}"], "out="),
        (train_main, ["model.dim=32", "model.depth=1", "model.heads=2", f"hydra.run.dir={afile}"], "hydra.run.dir="),
    ]:
        code, out, err = _exit(main, args, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {key}"), (args, err)
        assert "notes.txt" in lines[0] and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before and afile.read_text() == "x"
