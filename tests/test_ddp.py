"""torchrun: 2 gloo processes train exactly the run of 1 process with the same global batch, and resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xforget.train import compose_config, to_train_config, train
from xforget.train.checkpoint import complete_checkpoints
from xforget.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
from corpus import TEXT  # generated text (tests/corpus.py), no files outside the repository

ARGS = [
    "model.dim=32", "model.depth=1", "model.heads=2", "trainer.seq_len=32", "trainer.batch_size=16",
    "data=text", f"data.path={TEXT}", "trainer.progress=false", "trainer.sample_bytes=0",
    "trainer.eval_batches=2", "trainer.threads=1", "trainer.warmup_steps=5", "optim.lr=3e-3", "trainer.log_every=1",
    "trainer.max_steps=20", "trainer.checkpoint_every=10", "trainer.eval_every=10", "trainer.keep_last=0",
    "trainer.precision=fp32",  # equal within 1e-5 across process counts: fp32 (bf16 rounds per-rank batches)
]


def torchrun(cwd: Path, *args: str, nproc: int = 2, env: dict | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone`` (a free rendezvous port) of ``python -m xforget.train``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "xforget.train", *ARGS, *args]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume(tmp_path):
    one = train(to_train_config(compose_config(ARGS)), tmp_path / "one")

    # the 2-process run is stopped after step 13 (as if killed) and resumed from its step-10 checkpoint;
    # its run directory is Hydra's time-stamped default, chosen by rank 0 for both ranks
    first = torchrun(tmp_path, env={"XFORGET_DEBUG_STOP_AFTER_STEP": "13"})
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stopped after step 13" in first.stdout
    (run,) = (tmp_path / "outputs").glob("*/*")
    assert [s for s, _ in complete_checkpoints(run)] == [10]
    second = torchrun(tmp_path, f"hydra.run.dir={run}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr and "at step 10" in second.stderr
    assert second.stdout.count("run directory:") == 1  # rank 0 reports, rank 1 is silent
    assert "[rank 1]" not in second.stderr

    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, 21))
    for r in records:  # same global batches, gradients averaged over the 2 processes: equal up to float rounding
        assert abs(r["train_loss"] - one.losses[r["step"]]) < 1e-5, (r["step"], r["train_loss"], one.losses[r["step"]])
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(val) == 2 and abs(val[-1] - one.val_loss) < 1e-5
    assert [s for s, _ in complete_checkpoints(run)] == [10, 20]
    assert (run / "model.safetensors").is_file() and (run / "train.log").is_file()



@pytest.mark.slow
def test_fsdp_matches_one_process_and_its_checkpoint_resumes_in_one_process(tmp_path):
    args = ["trainer.max_steps=10", "trainer.checkpoint_every=5", "trainer.eval_every=0"]
    one = train(to_train_config(compose_config([*ARGS, *args])), tmp_path / "one")

    run = tmp_path / "fsdp"
    proc = torchrun(tmp_path, *args, "trainer.strategy=fsdp", f"hydra.run.dir={run}",
                    env={"XFORGET_DEBUG_STOP_AFTER_STEP": "7"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes (fsdp)" in proc.stderr
    assert [s for s, _ in complete_checkpoints(run)] == [5]
    # FSDP wrote full weights and a by-name optimizer state: one plain process continues the run
    resumed = train(to_train_config(compose_config([*ARGS, *args])), run)
    assert sorted(resumed.losses) == list(range(6, 11))
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, 11))
    for r in records:
        assert abs(r["train_loss"] - one.losses[r["step"]]) < 1e-5, (r["step"], r["train_loss"], one.losses[r["step"]])
    assert abs(resumed.val_loss - one.val_loss) < 1e-5
