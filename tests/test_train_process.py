"""The command line run as users run it: SIGKILL and restart, and the one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xforget.train import compose_config, to_train_config, train
from xforget.train.checkpoint import complete_checkpoints
from xforget.commands.train import main as cli_main
from xforget.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
from corpus import TEXT  # generated text (tests/corpus.py), no files outside the repository

TINY = [
    "model.dim=32", "model.depth=1", "model.heads=2", "trainer.seq_len=32", "trainer.batch_size=8",
    "data=text", f"data.path={TEXT}", "trainer.progress=false", "trainer.sample_bytes=0",
    "trainer.eval_batches=2", "trainer.threads=1", "trainer.warmup_steps=5", "optim.lr=3e-3", "trainer.log_every=1",
    "trainer.precision=fp32",
]


def _steps_logged(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
    return max(steps, default=0)


@pytest.mark.slow
def test_sigkill_and_restart_continues_the_exact_run(tmp_path):
    args = [*TINY, "trainer.max_steps=40", "trainer.checkpoint_every=10", "trainer.eval_every=20",
            "model.dropout=0.1"]  # dropout: equal only if the RNG state is restored too
    full = train(to_train_config(compose_config(args)), tmp_path / "full")

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "xforget.train", *args, f"hydra.run.dir={run}"]
    # XFORGET_DEBUG_STEP_SLEEP slows the tiny run down enough to kill it mid-way
    env = {**os.environ, "PYTHONPATH": str(REPO), "XFORGET_DEBUG_STEP_SLEEP": "0.05"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _steps_logged(run) < 25:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the run did not reach step 25"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _steps_logged(run)
    saved = [s for s, _ in complete_checkpoints(run)]
    assert 25 <= killed_at < 40 and saved[-1] in (20, 30) and saved[-1] <= killed_at  # 30: a slow machine

    env.pop("XFORGET_DEBUG_STEP_SLEEP")
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr and f"at step {saved[-1]}" in again.stderr

    records = {r["step"]: r["train_loss"] for r in read_metrics(run)}
    assert sorted(records) == list(range(1, 41))
    for step in range(1, 41):  # exactly equal, 31..40 included
        assert records[step] == full.losses[step], step
    assert f"val_bpb={full.val_bpb:.4f}" in again.stdout


def _cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Run ``xforget-train`` in this process; (exit code, its ``error:`` lines).

    Log lines may come before the error, but no traceback, and the error is the last line.
    """
    with pytest.raises(SystemExit) as exc:
        cli_main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert not any("Traceback" in line for line in lines), lines
    assert lines and lines[-1].startswith("error: "), lines
    return exc.value.code, [line for line in lines if line.startswith("error")]


@pytest.fixture
def _keep_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli_main(argv) rewrites sys.argv


@pytest.mark.parametrize("override,code,needle", [
    ("optim.lr=-1", 2, "error: invalid value optim.lr=-1.0: must be > 0"),
    ("model.heads=0", 2, "error: invalid value model.heads=0: must be >= 1"),
    ("data.path=/no/such/file.txt", 2, "error: data file not found: /no/such/file.txt"),
    ("data.path=/", 2, "error: data file is a directory, not a file: /"),
    ("trainer.strategy=zero3", 2, "error: invalid value trainer.strategy='zero3'"),
    ("logger=mlflow", 2, "error: invalid value logger='mlflow'"),
])
def test_cli_bad_values_and_data_give_one_error_line(override, code, needle, tmp_path, capsys, _keep_argv):
    args = [a for a in TINY if not a.startswith(override.split("=")[0] + "=")]
    status, err = _cli([*args, override, f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert status == code and len(err) == 1 and err[0].startswith(needle), err


def test_cli_corrupt_checkpoint_and_other_model_give_one_error_line(tmp_path, capsys, _keep_argv):
    run = tmp_path / "run"
    args = [*TINY, "trainer.max_steps=2", f"hydra.run.dir={run}"]
    train(to_train_config(compose_config(args[:-1])), run)
    status, err = _cli([*args[:-1], "model.dim=48", f"hydra.run.dir={run}"], capsys)
    assert status == 1 and len(err) == 1, err
    assert err[0].startswith(f"error: run directory {run} holds a checkpoint of a different model (model.dim: 32 -> 48)")

    (_, ckpt), = complete_checkpoints(run)
    (ckpt / "state.pt").write_bytes(b"not a torch file")
    status, err = _cli([*args[:-1], "trainer.max_steps=4", f"hydra.run.dir={run}"], capsys)
    assert status == 1 and len(err) == 1 and err[0].startswith(f"error: corrupt checkpoint {ckpt}: state.pt"), err
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    status, err = _cli([*args[:-1], "trainer.max_steps=4", f"hydra.run.dir={run}"], capsys)
    assert status == 1 and len(err) == 1 and err[0].startswith(f"error: corrupt checkpoint {ckpt}: model.safetensors"), err
