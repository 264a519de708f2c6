"""Issue 24, the second round of a new user's careless inputs: which step a checkpoint directory is, and an
export that would write into the run's checkpoints (which training prunes). Every run is made here; no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xforget.commands.evaluate import main as eval_main
from xforget.commands.export import main as export_main


@pytest.fixture(scope="module")
def run_with_two_checkpoints(tmp_path_factory) -> Path:
    """A tiny byte-level run with complete checkpoints at steps 1 and 2 (nothing pruned)."""
    from xforget.train import compose_config, to_train_config, train

    root = tmp_path_factory.mktemp("run")
    text = root / "notes.txt"
    text.write_text("Pierre said: the cat sat on the mat, and the dog ran far away.\n" * 60)
    cfg = to_train_config(compose_config([
        "data=text", f"data.path={text}", "model.dim=32", "model.depth=1", "model.heads=2", "trainer.seq_len=32",
        "trainer.batch_size=2", "trainer.max_steps=2", "trainer.warmup_steps=1", "trainer.eval_batches=1",
        "trainer.checkpoint_every=1", "trainer.keep_last=0", "trainer.progress=false", "trainer.sample_bytes=0",
        "trainer.threads=1", "trainer.precision=fp32"]))
    train(cfg, root / "run")
    return root / "run"


def _listing(path: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*"))


def test_eval_of_a_checkpoint_directory_names_its_step(run_with_two_checkpoints, tmp_path, capsys):
    """Before: 'final weights' and "checkpoint_step": null for checkpoints/step_0000001, whose weights were read."""
    from xforget.train.loading import load_trained

    run = run_with_two_checkpoints
    step_dirs = sorted((run / "checkpoints").iterdir())
    assert [p.name[-1] for p in step_dirs] == ["1", "2"]
    for step, directory in ((1, step_dirs[0]), (2, step_dirs[1]), (2, run)):
        out = tmp_path / f"eval-{directory.name}.json"
        eval_main([f"checkpoint={directory}", f"out={out}", "eval.multiples=[1]", "eval.tokens=64"])
        printed = capsys.readouterr().out
        assert f"(step {step}, " in printed and "final weights" not in printed, printed
        assert json.loads(out.read_text())["checkpoint_step"] == step
        assert load_trained(directory).step == step  # the one loader says the same
    export_main([f"checkpoint={step_dirs[0]}", f"out={tmp_path / 'hub'}"])
    assert "from the weights of step 1;" in capsys.readouterr().out


@pytest.mark.parametrize("inside", ["checkpoints", "checkpoints/STEP", "checkpoints/STEP/sub"])
@pytest.mark.parametrize("source", ["run", "checkpoint"])
def test_export_never_writes_into_the_run_checkpoints(run_with_two_checkpoints, inside, source, capsys):
    """Before: out=RUN/checkpoints/step_X/sub was written, where keep_last or a resume may delete it."""
    run = run_with_two_checkpoints
    step = sorted((run / "checkpoints").iterdir())[0]
    out = run / inside.replace("STEP", step.name)
    before = _listing(run)
    with pytest.raises(SystemExit) as exc:
        export_main([f"checkpoint={run if source == 'run' else step}", f"out={out}", "overwrite=true"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2
    assert err.startswith("error: ") and "\n" not in err and "inside the run's checkpoints directory" in err, err
    assert _listing(run) == before


def test_a_compared_run_names_each_training_key_once(tmp_path):
    """Before: the printed command line read 'trainer.max_steps=1100 ... trainer.max_steps=6'. The run's config is
    the one the duplicated overrides gave (the later one won), so finished runs are still re-used."""
    from xforget.compare.runs import STEP_BUDGET, config_hash, plan_runs, scheme_overrides
    from xforget.train import compose_config, to_train_config

    given = ["trainer.max_steps=6", "model.dim=32"]
    (run,) = plan_runs(["fox"], [0], given, tmp_path)
    keys = [o.partition("=")[0] for o in run.overrides]
    assert keys.count("trainer.max_steps") == 1 and "trainer.max_steps=6" in run.overrides
    assert "trainer.max_time=null" in run.overrides  # a default not given stays
    old = to_train_config(compose_config([*STEP_BUDGET, *given, *scheme_overrides("fox"), "seed=0"]))
    assert run.cfg.trainer.max_steps == 6 and config_hash(run.cfg) == config_hash(old)
    (default,) = plan_runs(["fox"], [0], ["model.dim=32"], tmp_path)
    assert default.cfg.trainer.max_steps == 1100 and "trainer.max_steps=1100" in default.overrides


def test_only_explicit_dataset_names_reach_the_hub(tmp_path, monkeypatch):
    """Before: input=nothere (a mistyped path) went to load_dataset: 26 s of network retries. Now a bare word that
    is no local path is 'input not found'; hf:NAME and OWNER/NAME (OWNER not a local directory) are dataset names."""
    from xforget.data import DataError
    from xforget.data import prepare_inputs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "corp").mkdir()
    asked = []
    monkeypatch.setattr(prepare_inputs, "_load_hf", lambda name, config, split: asked.append(name) or [])
    for spec, name in (("hf:wikitext", "wikitext"), ("owner/name", "owner/name"), ("hf:owner/name", "owner/name")):
        assert prepare_inputs.dataset_name(spec) == name
        prepare_inputs.open_source(spec)
        assert asked.pop() == name
    for spec in ("nothere", "corp/novl", "a/b/c", "novel.txt", "./nothere", "hf:"):
        assert prepare_inputs.dataset_name(spec) is None, spec
        with pytest.raises(DataError, match="input not found") as info:
            prepare_inputs.open_source(spec)
        assert "hf:NAME" in str(info.value) and "\n" not in str(info.value)
    assert asked == []
