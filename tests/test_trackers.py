"""Experiment trackers: W&B (offline) and TensorBoard get the config once and every metrics record
at its step, the same numbers as metrics.jsonl."""

from __future__ import annotations

import glob
import json
import struct
from pathlib import Path

import pytest

from xforget.train import ConfigError, compose_config, to_train_config, train
from xforget.train.metrics import read_metrics


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}\n" for i in range(400)))
    return path


def _cfg(tmp_path: Path, *overrides: str):
    base = ["model.dim=32", "model.depth=1", "model.heads=2", "trainer.seq_len=32", "trainer.batch_size=4",
            "data=text", f"data.path={_text(tmp_path)}", "trainer.progress=false", "trainer.sample_bytes=0",
            "trainer.eval_batches=2", "trainer.threads=1", "trainer.warmup_steps=1", "trainer.max_steps=4",
            "trainer.log_every=2", "trainer.eval_every=4"]
    return to_train_config(compose_config(base + list(overrides)))


def _wandb_records(path: str) -> list:
    """Records of a W&B ``.wandb`` file: a LevelDB-style log (32 KiB blocks, 7-byte chunk headers)
    of protobuf ``Record`` messages after a 7-byte file header."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL/FIRST start a record, MIDDLE/LAST extend it
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def test_wandb_offline_and_tensorboard_log_config_once_and_every_record(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(_cfg(tmp_path, "logger=[tensorboard,wandb]"), run)
    records = read_metrics(run)
    assert [r["step"] for r in records] == [2, 4]

    files = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1 and (run / "wandb-run-id").is_file()
    assert (run / "wandb-run-id").read_text().strip() in files[0]
    recs = _wandb_records(files[0])
    history = []
    for r in recs:
        if r.WhichOneof("record_type") == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            history.append({"step": items["_step"]} | {k: v for k, v in items.items() if not k.startswith("_")})
    assert history == [{k: v for k, v in rec.items()} for rec in records]  # every record, at its step, same numbers
    configs = [r.run.config for r in recs if r.WhichOneof("record_type") == "run"]
    assert len(configs) == 1
    config = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in configs[0].update}
    assert config["model.dim"] == 32 and config["trainer.max_steps"] == 4 and config["data.name"] == "text"

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for key in ("train_loss", "lr", "val_bpb"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        expected = [(r["step"], r[key]) for r in records if key in r]
        assert [s for s, _ in logged] == [s for s, _ in expected]
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert len(events.Tensors("config/text_summary")) == 1  # hyperparameters once


def test_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(_cfg(tmp_path, "logger=wandb", "trainer.checkpoint_every=2"), run, stop_after_step=2)
    first = (run / "wandb-run-id").read_text()
    train(_cfg(tmp_path, "logger=wandb", "trainer.checkpoint_every=2"), run)
    assert (run / "wandb-run-id").read_text() == first
    assert len(glob.glob(str(run / "wandb" / "offline-run-*"))) == 2  # one directory per process, same run id
    assert all(first.strip() in p for p in glob.glob(str(run / "wandb" / "offline-run-*")))


@pytest.mark.parametrize("logger", ["mlflow", "[tensorboard,tensorboard]", "[wandb,comet]"])
def test_unknown_logger_is_one_line_with_the_choices(tmp_path, logger):
    with pytest.raises(ConfigError, match=r"logger=.*must be none, one of \['tensorboard', 'wandb'\]"):
        _cfg(tmp_path, f"logger={logger}")


def test_missing_wandb_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'xforget\[wandb\]'"):
        train(_cfg(tmp_path, "logger=wandb"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
