"""Hydra configs: every file composes and builds; typos fail with the valid keys listed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xforget.models.wrapper import build_model
from xforget.train.config import ConfigError, compose_config, config_dir, to_train_config

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = ["model.dim=32", "model.depth=1", "model.heads=2"]


TRAIN_GROUPS = ("model", "data", "optim", "trainer")  # the groups configs/train.yaml composes


def _group_options() -> list[tuple[str, str]]:
    root = config_dir()
    return sorted((g, p.stem) for g in TRAIN_GROUPS for p in (root / g).glob("*.yaml"))


def test_config_dir_is_the_repository_configs():
    assert config_dir() == REPO / "configs"
    assert {g for g, _ in _group_options()} == set(TRAIN_GROUPS)


def test_default_config_composes_with_the_documented_keys():
    cfg = to_train_config(compose_config())
    assert cfg.model.position == "fox" and cfg.data.name == "stdlib" and cfg.optim.name == "adamw"
    assert cfg.model.max_seq_len == cfg.trainer.seq_len  # interpolated
    for key in ("max_steps", "batch_size", "seq_len", "eval_every", "log_every", "checkpoint_every", "grad_accum",
                "grad_clip", "warmup_steps", "eval_batches", "keep_last", "threads", "precision"):
        assert hasattr(cfg.trainer, key), key
    for key in ("lr", "weight_decay", "betas", "min_lr_ratio"):
        assert hasattr(cfg.optim, key), key
    hydra_cfg = compose_config(["hydra.run.dir=somewhere"], return_hydra_config=True)
    assert hydra_cfg.hydra.run.dir == "somewhere"


@pytest.mark.parametrize("group,option", _group_options())
def test_every_config_file_composes_and_its_model_builds(group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if (group, option) == ("data", "text"):
        overrides.append(f"data.path={tmp_path / 'x.txt'}")
    if (group, option) == ("data", "tokens"):
        from xforget.data.prepare import PrepareConfig, prepare

        (tmp_path / "x.txt").write_text("hello world\n" * 100)
        prepare(PrepareConfig(input=str(tmp_path / "x.txt"), output=str(tmp_path / "prep"), progress=False),
                log=lambda m: None)
        overrides.append(f"data.path={tmp_path / 'prep'}")
    cfg = to_train_config(compose_config(overrides))
    if group == "model":
        model = build_model(cfg.model)
        assert model.num_tokens == 256


@pytest.mark.parametrize("position", ["none", "absolute", "rotary", "alibi", "fox"])
def test_model_position_override(position):
    cfg = to_train_config(compose_config([f"model.position={position}", *TINY_MODEL]))
    assert cfg.model.position == position
    logits = build_model(cfg.model)(torch.randint(0, 256, (2, 9)))
    assert logits.shape == (2, 9, 256)


@pytest.mark.parametrize(
    "override,key,node,valid",
    [
        ("model.positon=fox", "model.positon", "model", "position"),
        ("trainer.max_step=5", "trainer.max_step", "trainer", "max_steps"),
        ("seeed=1", "seeed", "the top level", "seed"),
        ("+model.foo=1", "model.foo", "model", "heads"),
        ("+optim.momentum=0.9", "optim.momentum", "optim", "weight_decay"),
    ],
)
def test_unknown_key_names_it_and_lists_the_valid_keys(override, key, node, valid):
    with pytest.raises(ConfigError) as info:
        to_train_config(compose_config([override]))
    message = str(info.value)
    assert f"unknown config key '{key}'" in message
    assert f"valid keys of {node}:" in message and f"'{valid}'" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "override,needle",
    [
        ("trainer.max_steps=abc", "trainer.max_steps"),
        ("optim.lr=-1", "optim.lr"),
        ("model.heads=0", "model.heads"),
        ("trainer.precision=fp8", "trainer.precision"),
        ("data=text", "data.path=FILE"),
        ("model=nonexistent", "Available options in 'model'"),
    ],
)
def test_bad_values_fail_with_one_line(override, needle):
    with pytest.raises(ConfigError) as info:
        to_train_config(compose_config([override]))
    assert needle in str(info.value) and "\n" not in str(info.value)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "xforget.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("override,key,node", [("model.positon=fox", "model.positon", "model"),
                                               ("+batch=3", "batch", "the top level")])
def test_cli_typo_exits_2_with_valid_keys(override, key, node, tmp_path):
    proc = _cli(override, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: unknown config key '{key}'; valid keys of {node}:")
    assert ("'position'" if node == "model" else "'trainer'") in lines[0]
    assert not (tmp_path / "run").exists()  # nothing started
