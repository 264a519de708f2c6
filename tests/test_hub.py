"""Hugging Face-style directories: save_pretrained -> from_pretrained gives the same logits for every
model preset; xforget-export writes that layout from a run; a config that does not fit the weights fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xforget import TransformerWrapper
from xforget.models.config import ModelConfig
from xforget.models.wrapper import build_model
from xforget.train import compose_config, to_train_config, train
from xforget.train.config import config_dir

from runs import tiny_bpe_run

PRESETS = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))


def _move_off_init(model):
    with torch.no_grad():  # zero gates / unit gains at init would hide a mapping that is skipped
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("preset", PRESETS)
def test_save_and_load_every_preset_gives_equal_logits(preset, tmp_path):
    cfg = to_train_config(compose_config([f"model={preset}", "model.dim=32", "model.depth=2", "model.heads=4",
                                          "trainer.seq_len=24"]))
    model = _move_off_init(build_model(cfg.model))
    model.save_pretrained(tmp_path / "hub")
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in (tmp_path / "hub").iterdir()}
    saved = json.loads((tmp_path / "hub/config.json").read_text())
    assert ModelConfig(**saved) == cfg.model
    loaded = TransformerWrapper.from_pretrained(tmp_path / "hub")
    assert not loaded.training
    x = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_tied_embedding_stays_tied(tmp_path):
    model = _move_off_init(build_model(ModelConfig(dim=32, depth=1, heads=2, tie_embedding=True)))
    model.save_pretrained(tmp_path)
    loaded = TransformerWrapper.from_pretrained(tmp_path)
    assert loaded.to_logits.weight is loaded.token_emb.emb.weight
    assert torch.equal(loaded.to_logits.weight, model.to_logits.weight)


@pytest.mark.parametrize("change,needle", [
    ({"dim": 64}, "shape mismatch"),
    ({"depth": 2}, "tensors missing from the weights"),
    ({"position": "absolute"}, "tensors the config has no place for"),
])
def test_config_that_does_not_fit_the_weights_is_one_clear_error(tmp_path, change, needle):
    build_model(ModelConfig(dim=32, depth=1, heads=2)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=needle) as exc:
        TransformerWrapper.from_pretrained(tmp_path)
    assert "config.json does not match" in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_config_key_and_hand_built_model_fail_clearly(tmp_path):
    build_model(ModelConfig(dim=32, depth=1, heads=2)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "positon": "fox"}))
    with pytest.raises(ValueError, match=r"unknown model config key\(s\) \['positon'\]"):
        TransformerWrapper.from_pretrained(tmp_path)
    from xforget import Decoder

    by_hand = TransformerWrapper(num_tokens=256, max_seq_len=16, attn_layers=Decoder(32, 1, 2))
    with pytest.raises(ValueError, match="built from a ModelConfig"):
        by_hand.save_pretrained(tmp_path / "x")


def _tiny_run(tmp_path: Path) -> Path:
    text = tmp_path / "text.txt"
    text.write_text("".join(f"{i} little pigs went to market\n" for i in range(300)))
    cfg = to_train_config(compose_config([
        "model.dim=32", "model.depth=1", "model.heads=2", "trainer.seq_len=32", "trainer.batch_size=4",
        "data=text", f"data.path={text}", "trainer.progress=false", "trainer.sample_bytes=0", "trainer.eval_batches=1",
        "trainer.threads=1", "trainer.max_steps=2", "trainer.warmup_steps=1"]))
    train(cfg, tmp_path / "run")
    return tmp_path / "run"


def test_export_cli_writes_a_directory_that_loads_to_the_run_model(tmp_path, capsys):
    from xforget.commands.export import main
    from xforget.train.checkpoint import load_model

    run = _tiny_run(tmp_path)
    main([f"checkpoint={run}", f"out={tmp_path / 'hub'}"])
    assert "wrote" in capsys.readouterr().out
    ours, _ = load_model(run)
    loaded = TransformerWrapper.from_pretrained(tmp_path / "hub")
    x = torch.randint(0, 256, (1, 40))
    with torch.no_grad():
        assert torch.equal(loaded(x), ours(x))
    assert not (tmp_path / "hub/tokenizer.json").exists()  # bytes: no tokenizer file


def _bpe_run(tmp_path: Path) -> Path:
    pytest.importorskip("tokenizers")
    return tiny_bpe_run(tmp_path)


def test_export_refuses_a_non_empty_out_unless_overwrite_replaces_it_atomically(tmp_path, capsys, monkeypatch):
    import xforget.models.wrapper
    from xforget.commands.export import main
    from xforget.train.checkpoint import load_model

    def export(*args: str) -> tuple[int, list[str], str]:
        with pytest.raises(SystemExit) as exc:
            main([f"checkpoint={run}", f"out={out}", *args])
        captured = capsys.readouterr()
        return exc.value.code, captured.err.strip().splitlines(), captured.out

    run, out = _bpe_run(tmp_path), tmp_path / "hub"
    capsys.readouterr()  # the training log
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, err, _ = export()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: out={out} already exists and is not empty")
    assert "overwrite=true" in err[0] and sorted(p.name for p in out.iterdir()) == ["mine.txt"]

    def broken(model, directory):
        raise OSError("disk full")

    monkeypatch.setattr(xforget.models.wrapper, "save_weights", broken)  # a failed export leaves the old directory as it was
    code, err, _ = export("overwrite=true")
    assert code == 2 and len(err) == 1 and "disk full" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    monkeypatch.undo()

    main([f"checkpoint={run}", f"out={out}", "overwrite=true"])
    printed = capsys.readouterr().out
    files = sorted(p.name for p in out.iterdir())
    assert "mine.txt" not in files and {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(files)
    listed = printed.split("(", 1)[1].split(")", 1)[0].split(", ")
    assert sorted(listed) == files  # every file written, tokenizer.json included
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl", "hub", "prep", "run"]  # no temporary left
    ours, _ = load_model(run)
    x = torch.randint(0, 300, (1, 20))
    with torch.no_grad():
        assert torch.equal(TransformerWrapper.from_pretrained(out)(x), ours(x))
    for bad in (run, tmp_path):  # the run directory itself, or a directory holding it: never replaced
        out = bad
        code, err, _ = export("overwrite=true")
        assert code == 2 and len(err) == 1 and "is the run directory or holds it" in err[0]
    assert (run / "model.safetensors").is_file()


def test_eval_of_an_exported_directory_equals_eval_of_its_run(tmp_path, capsys):
    """xforget-eval checkpoint=<hub dir>: the same numbers as on the run directory, given the same data."""
    from xforget.commands.evaluate import main as eval_main
    from xforget.evaluate.config import EvalConfig
    from xforget.evaluate.core import evaluate_run
    from xforget.commands.export import main as export_main
    from xforget.train.config import DataConfig

    run = _tiny_run(tmp_path)
    export_main([f"checkpoint={run}", f"out={tmp_path / 'hub'}"])
    capsys.readouterr()
    data = DataConfig(name="text", path=str(tmp_path / "text.txt"))
    ecfg = EvalConfig(multiples=[1, 2], tokens=256, threads=1, device="cpu")
    ours, theirs = evaluate_run(tmp_path / "hub", ecfg, data), evaluate_run(run, ecfg, data)
    assert ours["lengths"] == theirs["lengths"] and ours["val_bpb"] == theirs["val_bpb"] is not None
    assert ours["base_seq_len"] == 32  # the model's max_seq_len = the training context

    with pytest.raises(SystemExit) as exc:  # a hub directory records no data: one line saying what to add
        eval_main([f"checkpoint={tmp_path / 'hub'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "hub-style directory" in err[0] and "data=text data.path=FILE" in err[0]
    eval_main([f"checkpoint={tmp_path / 'hub'}", "data=text", f"data.path={tmp_path / 'text.txt'}", "eval.multiples=[1]",
               "eval.tokens=256", f"out={tmp_path / 'eval.json'}"])
    assert json.loads((tmp_path / "eval.json").read_text())["val_bpb"] == theirs["val_bpb"]


@pytest.mark.parametrize("argv,needle", [
    ([], "missing checkpoint=..., out=..."),
    (["checkpoint=a", "out=b", "overwrite=yes"], "invalid value overwrite='yes': must be true or false"),
    (["checkpoint=/no/such/run", "out=x"], "no trained model in /no/such/run"),
    (["checkpoint=a", "out=b", "outt=c"], "bad argument 'outt=c'"),
])
def test_export_cli_errors_are_one_line_exit_2(argv, needle, capsys):
    from xforget.commands.export import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
