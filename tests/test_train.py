"""The training loop: it learns, resumes exactly, survives interrupted checkpoint writes, fails clearly."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xforget.train import CheckpointError, TrainingError, compose_config, load_model, to_train_config, train
from xforget.train.checkpoint import MARKER, complete_checkpoints
from xforget.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
from corpus import TEXT  # generated text (tests/corpus.py), no files outside the repository


def tiny(tmp_path: Path, *overrides: str):
    base = [
        "model.dim=32", "model.depth=1", "model.heads=2", "trainer.seq_len=32", "trainer.batch_size=8",
        "data=text", f"data.path={TEXT}", f"data.cache_dir={tmp_path / 'cache'}",
        "trainer.progress=false", "trainer.sample_bytes=16", "trainer.eval_batches=4", "trainer.threads=1",
        "trainer.warmup_steps=5", "optim.lr=3e-3", "trainer.log_every=1", "trainer.precision=fp32",
    ]
    return to_train_config(compose_config(base + list(overrides)))


def test_training_lowers_the_validation_loss(tmp_path):
    untrained = train(tiny(tmp_path, "trainer.max_steps=0"), tmp_path / "r0")
    cfg = tiny(tmp_path, "trainer.max_steps=40", "trainer.eval_every=20", "trainer.checkpoint_every=20")
    result = train(cfg, tmp_path / "r1")
    assert untrained.val_bpb > 7.0  # ~log2(256) before training
    assert result.val_bpb < untrained.val_bpb - 2.0, (untrained.val_bpb, result.val_bpb)

    records = read_metrics(tmp_path / "r1")
    assert [r["step"] for r in records] == list(range(1, 41))
    assert {"step", "train_loss", "lr", "tokens_per_s"} <= set(records[0])
    evals = [r for r in records if "val_bpb" in r]
    assert [r["step"] for r in evals] == [20, 40]
    for r in evals:
        assert r["val_bpb"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-12)
    assert evals[-1]["val_bpb"] == pytest.approx(result.val_bpb)
    assert evals[1]["val_bpb"] < evals[0]["val_bpb"]
    assert isinstance(result.sample, str) and len(result.sample) > 0

    run = tmp_path / "r1"
    for name in ("config.yaml", "train.log", "model.safetensors"):
        assert (run / name).is_file(), name
    assert [s for s, _ in complete_checkpoints(run)] == [20, 40]
    model, loaded_cfg = load_model(run)
    assert loaded_cfg.model == cfg.model and not model.training
    assert torch.equal(model.to_logits.weight, load_file(run / "model.safetensors")["to_logits.weight"])


def test_resume_continues_the_exact_run(tmp_path):
    # dropout on: the resumed run matches only if the torch RNG state is restored too
    args = ("trainer.max_steps=20", "trainer.checkpoint_every=10", "trainer.eval_every=10", "model.dropout=0.1",
            "trainer.keep_last=0")
    full = train(tiny(tmp_path, *args), tmp_path / "full")
    part = train(tiny(tmp_path, *args), tmp_path / "part", stop_after_step=15)  # "killed" after step 15
    assert part.interrupted and [s for s, _ in complete_checkpoints(tmp_path / "part")] == [10]
    resumed = train(tiny(tmp_path, *args), tmp_path / "part")
    assert sorted(resumed.losses) == list(range(11, 21))

    full_losses = {r["step"]: r["train_loss"] for r in read_metrics(tmp_path / "full")}
    part_records = read_metrics(tmp_path / "part")
    assert [r["step"] for r in part_records] == list(range(1, 21))  # steps 11..15 of the killed run were dropped
    assert {r["step"]: r["train_loss"] for r in part_records} == full_losses  # exact equality
    assert resumed.val_bpb == full.val_bpb
    a, b = load_file(tmp_path / "full/model.safetensors"), load_file(tmp_path / "part/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    again = train(tiny(tmp_path, *args), tmp_path / "part")  # a finished run: nothing to train, same report
    assert again.losses == {} and again.step == 20 and again.val_bpb == full.val_bpb


def test_interrupted_checkpoint_write_is_ignored(tmp_path):
    args = ("trainer.max_steps=12", "trainer.checkpoint_every=4", "trainer.keep_last=2")
    run = tmp_path / "run"
    train(tiny(tmp_path, *args), run, stop_after_step=9)
    assert [s for s, _ in complete_checkpoints(run)] == [4, 8]  # keep_last=2 pruned nothing yet
    # a write killed midway: the temp dir, and a step dir that never got its COMPLETE marker
    ckpts = run / "checkpoints"
    tmp = ckpts / ".tmp-step_0000012-99999"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"garbage")
    bad = ckpts / "step_0000010"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"garbage")
    assert not (bad / MARKER).exists()

    resumed = train(tiny(tmp_path, *args), run)
    assert min(resumed.losses) == 9  # continued from step 8
    assert not tmp.exists()
    assert [s for s, _ in complete_checkpoints(run)] == [8, 12]  # keep_last=2


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    one = train(tiny(tmp_path, "trainer.max_steps=3", "trainer.batch_size=16"), tmp_path / "a")
    acc = train(tiny(tmp_path, "trainer.max_steps=3", "trainer.batch_size=4", "trainer.grad_accum=4",
                     "trainer.eval_batches=16"), tmp_path / "b")
    for step in (1, 2, 3):
        assert acc.losses[step] == pytest.approx(one.losses[step], abs=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_checkpoints_the_scaler(tmp_path, precision):
    result = train(tiny(tmp_path, "trainer.max_steps=3", f"trainer.precision={precision}"), tmp_path / "run")
    assert all(math.isfinite(v) for v in result.losses.values()) and math.isfinite(result.val_bpb)
    (_, path), = complete_checkpoints(tmp_path / "run")
    state = torch.load(path / "state.pt", weights_only=True)
    assert state["step"] == 3 and ("scale" in state["scaler"]) == (precision == "fp16")


def test_run_dir_with_another_model_fails_clearly(tmp_path):
    train(tiny(tmp_path, "trainer.max_steps=2"), tmp_path / "run")
    with pytest.raises(CheckpointError) as info:
        train(tiny(tmp_path, "trainer.max_steps=4", "model.dim=48"), tmp_path / "run")
    assert "different model" in str(info.value) and "model.dim: 32 -> 48" in str(info.value)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
    cfg = tiny(tmp_path, "trainer.max_steps=30", "trainer.checkpoint_every=1", "optim.lr=1e30",
               "trainer.grad_clip=0", "trainer.warmup_steps=0", "optim.betas=[0.0,0.0]")
    with pytest.raises(TrainingError) as info:
        train(cfg, tmp_path / "run")
    message = str(info.value)
    step = int(message.split("at step ")[1].split(";")[0])
    assert "loss became" in message and "last good checkpoint" in message
    assert [s for s, _ in complete_checkpoints(tmp_path / "run")][-1] == step - 1


def test_cli_trains_and_reports(tmp_path):
    run = tmp_path / "cli run"
    args = ["model.dim=32", "model.depth=1", "model.heads=2", "trainer.seq_len=32", "trainer.batch_size=4",
            "data=shakespeare", f"data.path={TEXT}", "trainer.max_steps=3", "trainer.eval_batches=2",
            "trainer.progress=false", "trainer.sample_bytes=8", f"hydra.run.dir={run}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "xforget.train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"run directory: {run}" in proc.stdout
    assert "val_bpb=" in proc.stdout and "sample prompt (" in proc.stdout and "sample (generated after the prompt" in proc.stdout
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()


def test_metrics_log_throughput_and_model_flops_utilisation(tmp_path):
    from xforget.models.wrapper import build_model
    from xforget.train.metrics import model_flops_per_token

    cfg = tiny(tmp_path, "trainer.max_steps=2", "trainer.peak_flops=1e12")
    train(cfg, tmp_path / "run")
    for r in read_metrics(tmp_path / "run"):
        assert r["tokens_per_s"] > 0 and r["tflops"] > 0
        assert r["mfu"] == pytest.approx(r["tflops"] * 1e12 / 1e12)
    model = build_model(cfg.model)
    per_token = model_flops_per_token(model, 32)
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.ndim >= 2 and "token_emb" not in n)
    assert per_token == 6 * matrices + 12 * 2 * 16 * 32  # 6N + 12 * layers * heads * dim_head * seq_len
    tied = build_model(cfg.model.__class__(**{**cfg.model.__dict__, "tie_embedding": True}))
    assert model_flops_per_token(tied, 32) == per_token  # the shared matrix still multiplies once


def test_tensorboard_logger(tmp_path, monkeypatch):
    import sys
    import types

    from xforget.train import ConfigError

    cfg = tiny(tmp_path, "trainer.max_steps=3", "logger=tensorboard", "trainer.eval_every=3")
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"xforget\[tensorboard\]"):
            train(cfg, tmp_path / "missing")
        assert not (tmp_path / "missing").exists()  # failed before writing anything

    scalars, opened = [], []

    class FakeWriter:  # stands in for torch.utils.tensorboard.SummaryWriter
        def __init__(self, log_dir, purge_step=None):
            opened.append((log_dir, purge_step))

        def add_scalar(self, tag, value, step):
            scalars.append((tag, step))

        def add_text(self, tag, text, step):
            scalars.append((tag, step))

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    train(cfg, tmp_path / "run")
    assert opened == [(str(tmp_path / "run" / "tensorboard"), 0)]
    assert ("train_loss", 1) in scalars and ("val_bpb", 3) in scalars and ("tokens_per_s", 2) in scalars
    assert scalars.count(("config", 0)) == 1  # hyperparameters once


def test_synthetic_task_data_trains(tmp_path):
    result = train(tiny(tmp_path, "data=mqar", "data.num_bytes=20000", "data.example_len=32", "trainer.max_steps=2"),
                   tmp_path / "run")
    assert result.step == 2 and math.isfinite(result.val_bpb)
    assert "data mqar: 20,000 bytes" in (tmp_path / "run/train.log").read_text()


def test_batch_must_split_evenly_over_processes(tmp_path, monkeypatch):
    import xforget.train.loop as loop
    from xforget.train import ConfigError
    from xforget.train.distributed import DistInfo

    monkeypatch.setattr(loop, "init_distributed", lambda device: DistInfo(rank=0, world_size=3))
    with pytest.raises(ConfigError, match=r"trainer.batch_size=8: must be divisible by the number of processes \(3\)"):
        train(tiny(tmp_path, "trainer.max_steps=1"), tmp_path / "run")


def test_compile_wraps_the_training_forward(tmp_path, monkeypatch):
    from xforget.models.autoregressive import AutoregressiveWrapper

    compiled = []

    def fake_compile(module, *args, **kwargs):  # the real one takes ~a minute on 2 CPU cores
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    train(tiny(tmp_path, "trainer.max_steps=1"), tmp_path / "off")
    assert compiled == []
    train(tiny(tmp_path, "trainer.max_steps=1", "trainer.compile=true"), tmp_path / "on")
    assert len(compiled) == 1 and isinstance(compiled[0], AutoregressiveWrapper)
