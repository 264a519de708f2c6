"""xforget-generate: streams exactly what the model generates, and fails with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xforget import AutoregressiveWrapper
from xforget.generate import main
from xforget.train import compose_config, load_model, to_train_config, train

from corpus import TEXT  # generated text (tests/corpus.py), no files outside the repository


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    cfg = to_train_config(compose_config([
        "model.dim=32", "model.depth=1", "model.heads=2", "trainer.seq_len=32", "trainer.batch_size=8",
        "data=text", f"data.path={TEXT}", f"data.cache_dir={tmp / 'cache'}", "trainer.progress=false",
        "trainer.sample_bytes=8", "trainer.eval_batches=2", "trainer.max_steps=20", "trainer.warmup_steps=5",
    ]))
    train(cfg, tmp / "run")
    return tmp / "run"


def test_greedy_cli_output_equals_the_model(run_dir, capsys):
    main([f"checkpoint={run_dir}", "prompt=ROMEO:", "max_new_tokens=40", "temperature=0"])
    printed = capsys.readouterr().out
    model, _ = load_model(run_dir)
    prompt = torch.tensor([list(b"ROMEO:")])
    expected = AutoregressiveWrapper(model).generate(prompt, 40, temperature=0.0)[0]
    text = bytes(expected.tolist()).decode("utf-8", errors="replace")
    assert printed == "ROMEO:" + text + "\n"


@pytest.mark.parametrize("args,message", [
    (["checkpoint=/nonexistent/run"], "cannot load checkpoint"),
    (["checkpoint=x", "max_new_token=5"], "unknown config key 'max_new_token'; valid keys"),
    ([], "checkpoint=RUN_DIR is required"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_negative_temperature_rejected(run_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([f"checkpoint={run_dir}", "temperature=-1"])
    assert exit_info.value.code == 2 and "temperature" in capsys.readouterr().err
