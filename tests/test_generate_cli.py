"""xforget-generate: streams exactly what the model generates, and fails with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xforget import AutoregressiveWrapper
from xforget.commands.generate import main
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


@pytest.mark.parametrize("arg, needle", [("top_k=-3", "top_k=-3 must be >= 0"), ("top_p=2", "top_p=2.0 must be in [0, 1]"),
                                          ("top_p=-0.5", "top_p=-0.5 must be in [0, 1]"),
                                          ("min_p=2", "min_p=2.0 must be in [0, 1]"),
                                          ("min_p=-1", "min_p=-1.0 must be in [0, 1]")])
def test_sampling_filter_values_out_of_range_are_one_line(run_dir, capsys, arg, needle):
    with pytest.raises(SystemExit) as exc:
        main([f"checkpoint={run_dir}", "prompt=hi", arg])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith("error: ") and needle in err and len(err.splitlines()) == 1


def test_negative_temperature_rejected(run_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([f"checkpoint={run_dir}", "temperature=-1"])
    assert exit_info.value.code == 2 and "temperature" in capsys.readouterr().err


def _greedy(run_dir, prompt: bytes, n: int) -> str:
    model, _ = load_model(run_dir)
    out = AutoregressiveWrapper(model).generate(torch.tensor([list(prompt)]), n, temperature=0.0)[0]
    return bytes(out.tolist()).decode("utf-8", errors="replace")


@pytest.mark.parametrize("text", [
    "def main(",
    "x = [1, 2]  # (a) {b}",
    "print(\"it's\", '~' , a==b, c=d)",
    "~/notes.txt\\n\ttab ${x} %s ,;:",
    "ünïcode ✓ = (",
])
def test_prompt_is_free_text(run_dir, capsys, text):
    main([f"checkpoint={run_dir}", f"prompt={text}", "max_new_tokens=12", "temperature=0"])
    assert capsys.readouterr().out == text + _greedy(run_dir, text.encode(), 12) + "\n"


def test_prompt_from_a_file_or_stdin(run_dir, capsys, tmp_path, monkeypatch):
    import io

    text = 'def main(argv=["-x"]):\n    """doc"""\n'
    (tmp_path / "p.txt").write_text(text)
    expected = text + _greedy(run_dir, text.encode(), 10) + "\n"
    main([f"checkpoint={run_dir}", f"prompt_file={tmp_path / 'p.txt'}", "max_new_tokens=10", "temperature=0"])
    assert capsys.readouterr().out == expected
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    main([f"checkpoint={run_dir}", "prompt=-", "max_new_tokens=10", "temperature=0"])
    assert capsys.readouterr().out == expected


def test_readme_command_form_in_a_subprocess(run_dir):
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "xforget.commands.generate", f"checkpoint={run_dir}", "prompt=def main(",
                           "max_new_tokens=8", "temperature=0"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "def main(" + _greedy(run_dir, b"def main(", 8) + "\n"


@pytest.mark.parametrize("args,message", [
    (["checkpoint=x", "prompt=a", "prompt_file=b"], "give one prompt, not 2"),
    (["checkpoint=x", "prompt_file=/no/such/prompt.txt"], "cannot read prompt_file='/no/such/prompt.txt'"),
    (["checkpoint=x", "temperature=warm"], "invalid value for 'temperature'"),
])
def test_bad_prompt_arguments_are_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error: ") and message in err and "\n" not in err


def test_help(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert "prompt_file=FILE" in out and "max_new_tokens=256" in out
