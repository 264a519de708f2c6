"""Careless input to the six commands: one ``error:`` line, exit 2, nothing written, and (for what the
command line alone can tell) no torch imported before the error, so the line comes in a fraction of a
second instead of after the seconds torch takes to import.

The command-line cases run in one fresh interpreter (torch is imported by this test session, so only a
separate process can tell whether a command imported it); each case runs from the same working
directory, whose listing must be the same after every case. The cases that need a model (a directory
holding no trained model, a bad model value) run in-process below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Each: (command module, arguments, a piece of the error line). Paths are relative to the working directory,
# which holds notes.txt (text), empty.txt, a directory folder/ and nothing else.
LIGHT = [
    ("train", ["model.positon=fox"], "unknown config key 'model.positon'"),
    ("train", ["trainer.max_steps=-5"], "trainer.max_steps"),
    ("train", ["trainer.batch_size=abc"], "trainer.batch_size"),
    ("train", ["trainer.seq_len=0"], "trainer.seq_len"),
    ("train", ["optim.lr=-1"], "optim.lr"),
    ("train", ["trainer.precision=bf32"], "trainer.precision"),
    ("train", ["trainer.max_time=soon"], "soon"),
    ("train", ["logger=wandbb"], "logger"),
    ("train", ["data=nope"], "data"),
    ("train", ["data=text"], "data.path"),
    ("train", ["data=text", "data.path=missing.txt"], "missing.txt"),
    ("train", ["data=text", "data.path=folder"], "folder"),
    ("train", ["data=tokens", "data.path=notes.txt"], "notes.txt"),
    ("train", ["hydra.run.dir=notes.txt"], "hydra.run.dir"),
    ("train", ["model.num_memory_tokens=-1"], "model.num_memory_tokens"),
    ("train", ["data=text", "data.path=empty.txt", "hydra.run.dir=runs/x"], "empty"),
    ("train", ["trainer.init_from=missing_run"], "trainer.init_from=missing_run"),
    ("train", ["trainer.device=gpu"], "trainer.device"),
    ("train", ["hydra.run.dir="], "hydra.run.dir is empty"),
    ("eval", [], "checkpoint"),
    ("eval", ["checkpoint=missing_run"], "does not exist"),
    ("eval", ["checkpoint=./runs/x"], "does not exist"),
    ("eval", ["checkpoint=folder", "eval.multiples=[0]"], "eval.multiples"),
    ("eval", ["checkpoint=folder", "eval.multiples=two"], "eval.multiples"),
    ("eval", ["checkpoint=folder", "out=folder"], "out=folder"),
    ("eval", ["checkpoint=folder", "eval.tokenz=5"], "eval.tokenz"),
    ("eval", ["checkpoint=folder", "data=text", "data.path=missing.txt"], "missing.txt"),
    ("eval", ["checkpoint=folder", "data=tokens", "data.path=folder"], "folder"),
    ("eval", ["checkpoint=folder", "eval.device=gpu"], "eval.device"),
    ("generate", [], "checkpoint"),
    ("generate", ["checkpoint=missing_run", "prompt=hi"], "does not exist"),
    ("generate", ["checkpoint=folder", "temperature=-1"], "temperature"),
    ("generate", ["checkpoint=folder", "max_new_tokens=ten"], "max_new_tokens"),
    ("generate", ["checkpoint=folder", "prompt_file=missing.txt"], "missing.txt"),
    ("generate", ["checkpoint=folder", "prompt=Pierre", "said"], "quote"),
    ("generate", ["checkpoint=folder", "top_p=2"], "top_p"),
    ("export", [], "checkpoint"),
    ("export", ["checkpoint=missing_run", "out=exported"], "does not exist"),
    ("export", ["checkpoint=folder", "out=notes.txt"], "out=notes.txt"),
    ("export", ["checkpoint=folder", "out=exported", "overwrite=maybe"], "overwrite"),
    ("export", ["checkpoint=folder", "out=exported", "outt=x"], "outt"),
    ("compare", ["positions=fox"], "positions"),
    ("compare", ["seeds=[a]"], "seeds"),
    ("compare", ["eval.tokens=0"], "eval.tokens"),
    ("compare", ["model=gpt"], "model"),
    ("compare", ["jobz=2"], "jobz"),
    ("compare", ["positions=[]"], "positions is empty"),
    ("compare", ["seeds=[]"], "seeds is empty"),
    ("compare", ["positions=[fox,fox]"], "must not repeat"),
    ("compare", ["trainer.max_stepz=5"], "trainer.max_stepz"),
    ("compare", ["trainer.batch_size=abc"], "trainer.batch_size"),
    ("prepare", [], "input"),
    ("prepare", ["input=missing.txt", "output=prepared"], "missing.txt"),
    ("prepare", ["input=empty.txt", "output=prepared"], "empty.txt"),
    ("prepare", ["input=notes.txt", "output=notes.txt"], "notes.txt"),
    ("prepare", ["input=notes.txt", "output=prepared", "vocab_size=-1"], "vocab_size"),
    ("prepare", ["input=notes.txt", "output=prepared", "tokenizer=bpee"], "bpee"),
    ("prepare", ["input=notes.txt", "output=prepared", "val_fraction=1.5"], "val_fraction"),
    ("prepare", ["input=notes.txt", "outptu=prepared"], "outptu"),
    ("prepare", ["input=folder", "output=prepared"], "holds no files"),
    ("prepare", ["input=notes.txt", "output=prepared", "num_proc=0"], "num_proc"),
    # issue 24: an output below a file (was a FileExistsError traceback after the work), a bare missing name
    # (was sent to the Hugging Face hub: 26 s of retries), negative seeds (were accepted)
    ("prepare", ["input=notes.txt", "output=notes.txt/sub"], "notes.txt is a file, not a directory"),
    ("prepare", ["input=nothere", "output=prepared"], "input not found: nothere (no such file or directory"),
    ("compare", ["positions=[fox]", "hydra.run.dir=notes.txt"], "hydra.run.dir=notes.txt"),
    ("compare", ["positions=[fox]", "hydra.run.dir=notes.txt/sub"], "notes.txt is a file"),
    ("compare", ["seeds=[-1]"], "seeds must be integers >= 0"),
    ("train", ["seed=-1"], "invalid value seed=-1: must be an integer >= 0"),
]

MODULES = {"train": "train", "eval": "evaluate", "generate": "generate", "export": "export", "compare": "compare",
           "prepare": "prepare"}

# Runs every case in one interpreter: calls the command's main, records its exit code, stderr, whether it
# tried to import torch, and whether the working directory changed. Importing torch is blocked (and
# recorded): a case that got past the checks cannot start a real run.
RUNNER = r"""
import contextlib, importlib, io, json, pathlib, sys

class BlockTorch:
    tried = False

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            BlockTorch.tried = True
            raise ImportError("torch is blocked in this test")
        return None

sys.meta_path.insert(0, BlockTorch())

def listing():
    return sorted((str(p), p.stat().st_size) for p in pathlib.Path(".").rglob("*"))

out = []
for module, args in json.load(sys.stdin):
    before, err, code = listing(), io.StringIO(), 0
    BlockTorch.tried = False
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            importlib.import_module("xforget.commands." + module).main(args)
        except SystemExit as exc:
            code = exc.code
        except BaseException as exc:
            code = repr(exc)
    out.append({"code": code, "err": err.getvalue(), "torch": BlockTorch.tried or "torch" in sys.modules,
                "changed": listing() != before})
print(json.dumps(out))
"""


def _workdir(path: Path) -> Path:
    path.mkdir()
    (path / "notes.txt").write_text("Pierre said: the cat sat on the mat.\n" * 50)
    (path / "empty.txt").write_text("")
    (path / "folder").mkdir()
    return path


@pytest.fixture(scope="module")
def light_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("careless")
    work = _workdir(root / "work")
    env = {**os.environ, "PYTHONPATH": str(REPO), "XFORGET_CACHE": str(root / "cache"), "HOME": str(root / "home")}
    cases = [(MODULES[cmd], args) for cmd, args, _ in LIGHT]
    proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(cases), capture_output=True, text=True,
                          cwd=work, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("i", range(len(LIGHT)), ids=[f"{c}:{' '.join(a) or '(none)'}" for c, a, _ in LIGHT])
def test_careless_input_is_one_line_exit_2_nothing_written_before_torch(light_results, i):
    command, args, piece = LIGHT[i]
    r = light_results[i]
    err = r["err"].strip()
    assert not r["torch"], f"xforget-{command} {' '.join(args)} imported torch before its error: {r}"
    assert r["code"] == 2, (r, command, args)
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert piece in err, err
    assert not r["changed"], f"xforget-{command} {' '.join(args)} wrote into the working directory"


def test_the_light_modules_import_no_torch():
    """The modules the commands check their command line with: importing them loads no torch."""
    code = ("import sys\nimport xforget, xforget.train.config, xforget.evaluate.config, xforget.compare.config, "
            "xforget.data.prepare\n" + "".join(f"import xforget.commands.{m}\n" for m in MODULES.values())
            + "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]


def test_the_public_names_still_load_on_first_use():
    import xforget
    import xforget.data
    import xforget.evaluate
    import xforget.train

    for package in (xforget, xforget.train, xforget.data, xforget.evaluate):
        for name in package.__all__:
            assert getattr(package, name) is not None
            assert name in dir(package)
    from xforget.train import loop

    assert xforget.train.train is loop.train
    with pytest.raises(AttributeError):
        xforget.no_such_name  # noqa: B018


def test_the_light_copies_of_choices_are_the_ones_the_code_uses():
    """The choice lists the command lines are checked against (no torch) are those the code acts on."""
    from xforget.data.synthetic import TASKS
    from xforget.evaluate.config import TASKS as EVAL_TASKS
    from xforget.train.choices import PRECISIONS
    from xforget.train.precision import AMP_DTYPES

    assert tuple(EVAL_TASKS) == tuple(TASKS)
    assert set(PRECISIONS) == {"auto", *AMP_DTYPES}


# ----------------------------------------------------------------------------- cases that need the model code


def _listing(path: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*"))


def _one_line_nothing_written(main, args, work: Path, capsys, monkeypatch) -> str:
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the train command rewrites sys.argv
    before = _listing(work)
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert _listing(work) == before
    return err


@pytest.mark.parametrize("command, args, piece", [
    ("train", ["model.position=foxx"], "foxx"),
    ("train", ["model.ff_activation=tanh", "hydra.run.dir=runs/x"], "tanh"),
    ("eval", ["checkpoint=folder"], "no trained model in folder"),
    ("eval", ["checkpoint=notes.txt"], "notes.txt"),
    ("generate", ["checkpoint=folder", "prompt=hi"], "no trained model"),
    ("export", ["checkpoint=folder", "out=exported"], "no trained model"),
    ("compare", ["positions=[foxx]"], "foxx"),
    # issue 24: failed at the first step, after the run directory was written, under Hydra's banner
    ("train", ["model.attn_backend=flex", "trainer.device=cpu"],
     "model.attn_backend=flex cannot train on the CPU (CPU FlexAttention is forward-only"),
    ("train", ["model.attn_backend=flex", "trainer.device=cpu", "hydra.run.dir=runs/x"], "model.attn_backend=auto"),
    ("train", ["model.attn_backend=cuda", "trainer.device=cpu"], "model.attn_backend=auto or model.attn_backend=fold"),
])
def test_careless_input_that_needs_the_model_code(command, args, piece, tmp_path, capsys, monkeypatch):
    import importlib

    monkeypatch.setenv("XFORGET_CACHE", str(tmp_path / "cache"))
    work = _workdir(tmp_path / "work")
    main = importlib.import_module(f"xforget.commands.{MODULES[command]}").main
    assert piece in _one_line_nothing_written(main, args, work, capsys, monkeypatch)
