"""Users' own configs: a preset and an experiment in a --config-dir, the shipped experiment group,
and Hydra multirun with one run directory per job."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from xforget.train import compose_config, to_train_config
from xforget.train.checkpoint import load_model
from xforget.commands.train import main as cli_main
from xforget.train.config import load_config_yaml


@pytest.fixture(autouse=True)
def _keep_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli_main(argv) rewrites sys.argv


def _tiny(tmp_path: Path) -> list[str]:
    text = tmp_path / "text.txt"
    text.write_text("".join(f"{i}: all work and no play makes jack a dull boy\n" for i in range(300)))
    return ["data=text", f"data.path={text}", "trainer.seq_len=32", "trainer.batch_size=4", "trainer.max_steps=2",
            "trainer.warmup_steps=1", "trainer.eval_batches=1", "trainer.progress=false", "trainer.sample_bytes=0",
            "trainer.threads=1"]


def _user_dir(tmp_path: Path) -> Path:
    user = tmp_path / "my-configs"
    (user / "model").mkdir(parents=True)
    (user / "experiment").mkdir()
    # a preset built on a shipped one (configs/model/fox.yaml), as users would write it
    (user / "model" / "tiny_fox.yaml").write_text("defaults:\n  - fox\n  - _self_\ndim: 48\ndepth: 1\nheads: 3\n"
                                                  "forget_gate_divisor: 8.0\n")
    (user / "experiment" / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - override /model: tiny_fox\n"
                                                   "model:\n  heads: 2\ntrainer:\n  grad_clip: 0.5\nseed: 7\n")
    return user


def test_preset_in_a_user_config_dir_trains(tmp_path, capsys):
    user = _user_dir(tmp_path)
    run = tmp_path / "run"
    cli_main(["--config-dir", str(user), "model=tiny_fox", *_tiny(tmp_path), f"hydra.run.dir={run}"])
    assert f"run directory: {run}" in capsys.readouterr().out
    cfg = load_config_yaml(run / "config.yaml")
    assert (cfg.model.dim, cfg.model.depth, cfg.model.heads, cfg.model.forget_gate_divisor) == (48, 1, 3, 8.0)
    assert cfg.model.position == "fox"  # inherited from the shipped preset
    model, _ = load_model(run)
    assert model.attn_layers.dim == 48


def test_user_experiment_and_config_errors_through_the_user_dir(tmp_path, capsys):
    user = _user_dir(tmp_path)
    run = tmp_path / "run"
    cli_main([f"--config-dir={user}", "experiment=mine", *_tiny(tmp_path), f"hydra.run.dir={run}"])
    cfg = load_config_yaml(run / "config.yaml")
    assert (cfg.model.dim, cfg.model.heads, cfg.trainer.grad_clip, cfg.seed) == (48, 2, 0.5, 7)
    # a typo inside a user preset is still one line with the valid keys
    (user / "model" / "typo.yaml").write_text("defaults:\n  - fox\n  - _self_\ndimm: 48\n")
    with pytest.raises(SystemExit) as exc:
        cli_main(["-cd", str(user), "model=typo", *_tiny(tmp_path), f"hydra.run.dir={tmp_path / 'r2'}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exc.value.code == 2 and err[-1].startswith("error: ") and "dimm" in err[-1] and "valid keys" in err[-1]
    with pytest.raises(SystemExit) as exc:
        cli_main(["--config-dir", str(tmp_path / "nope"), *_tiny(tmp_path)])
    assert exc.value.code == 2 and "not a directory" in capsys.readouterr().err


def test_multirun_gives_each_job_its_own_run_directory(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    cli_main(["-m", "model.position=fox,rotary", "model.dim=32", "model.depth=1", "model.heads=2", *_tiny(tmp_path),
              f"hydra.sweep.dir={sweep}"])
    out = capsys.readouterr().out
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    positions = [load_config_yaml(job / "config.yaml").model.position for job in jobs]
    assert positions == ["fox", "rotary"]
    for job in jobs:
        assert (job / "model.safetensors").is_file() and (job / "metrics.jsonl").is_file()
        assert f"run directory: {job}" in out
    # the two runs are different models, trained from the same seed and data
    fox, _ = load_model(jobs[0])
    rotary, _ = load_model(jobs[1])
    assert fox.attn_layers.plan.names != rotary.attn_layers.plan.names


def test_shipped_experiments_compose():
    cfg = to_train_config(compose_config(["experiment=shakespeare_small", "data.path=/tmp/x.txt"]))
    assert (cfg.data.name, cfg.model.dim, cfg.model.depth, cfg.trainer.seq_len, cfg.trainer.max_steps) == \
        ("shakespeare", 128, 2, 128, 600)
    # a model preset chosen on the command line keeps the experiment's size and budget
    rot = to_train_config(compose_config(["experiment=shakespeare_small", "model=rotary", "model.depth=3"]))
    assert (rot.model.position, rot.model.dim, rot.model.depth, rot.trainer.max_steps) == ("rotary", 128, 3, 600)


def test_compare_experiment_holds_the_readme_comparison(tmp_path):
    from xforget.compare.pipeline import load_compare_config
    from xforget.compare.runs import plan_runs

    cfg, out_dir = load_compare_config(["experiment=compare_shakespeare"])
    assert cfg.positions == ["none", "absolute", "rotary", "alibi", "fox", "fox_pro"] and cfg.seeds == [0, 1]
    assert out_dir == Path("outputs/compare-shakespeare")
    runs = plan_runs(cfg.positions, cfg.seeds, [*cfg.train, "data.path=/tmp/x.txt", "trainer.max_steps=10"], tmp_path)
    assert len(runs) == 12
    for run in runs:
        t, m = run.cfg.trainer, run.cfg.model
        assert (m.dim, m.depth, m.heads, t.seq_len, t.batch_size, t.max_steps, run.cfg.data.name) == \
            (128, 2, 4, 128, 16, 10, "shakespeare")
