"""A non-editable install works: the wheel carries the Hydra configs (mapped from the top-level
configs/, the one source) and every subpackage, and its commands train from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_package_list_covers_every_subpackage_and_maps_configs():
    from setuptools import find_packages

    tool = _pyproject()["tool"]["setuptools"]
    on_disk = set(find_packages(str(REPO), include=["xforget*"]))
    listed = set(tool["packages"])
    assert listed - {"xforget.configs"} == on_disk, "update [tool.setuptools] packages in pyproject.toml"
    assert tool["package-dir"] == {"xforget.configs": "configs"}
    assert not (REPO / "xforget" / "configs").exists()  # no copy inside the package: configs/ is the one source


def _build_wheel(out: Path) -> Path:
    # from a copy of the source tree: setuptools writes build/ beside the sources it builds
    source = out / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "outputs", "runs",
                                                                "multirun", "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, cwd=out)
    [wheel] = out.glob("xforget-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_trains_from_another_directory(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"xforget/configs/{p.relative_to(REPO / 'configs')}" for p in (REPO / "configs").rglob("*.yaml")}
    assert shipped and shipped <= names, sorted(shipped - names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    commands = [c for c in _pyproject()["project"]["scripts"]]
    assert all(c in entry_points for c in commands)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # first: plain `torch` would pull the CUDA build
    subprocess.run([*pip, str(wheel)], check=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    text = elsewhere / "t.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 400)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    run = subprocess.run(
        [str(venv / "bin" / "xforget-train"), "data=text", f"data.path={text}", "model.dim=32", "model.depth=1",
         "model.heads=2", "trainer.max_steps=3", "trainer.eval_every=3", "trainer.batch_size=2", "trainer.seq_len=32",
         "trainer.progress=false", f"hydra.run.dir={elsewhere / 'run'}"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "val_bpb=" in run.stdout and (elsewhere / "run" / "model.safetensors").is_file()
    # the installed package, not this checkout, served the run (configs from site-packages)
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import xforget.train.config as c; print(c.config_dir())"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert "site-packages" in where and where.endswith("xforget/configs")
    run_dir = str(elsewhere / "run")
    jobs = {
        "xforget-eval": [f"checkpoint={run_dir}", "eval.multiples=[1]", f"out={elsewhere / 'eval.json'}"],
        "xforget-generate": [f"checkpoint={run_dir}", "prompt=To", "max_new_tokens=5"],
        "xforget-export": [f"checkpoint={run_dir}", f"out={elsewhere / 'hub'}"],
        "xforget-compare": ["--help"],
        "xforget-prepare": [f"input={text}", f"output={elsewhere / 'prepared'}"],
    }
    assert set(jobs) | {"xforget-train"} >= set(commands), "add the new command here"
    for command, argv in jobs.items():
        if command not in commands:
            continue
        done = subprocess.run([str(venv / "bin" / command), *argv], cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, (command, done.stderr[-1000:])
    assert (elsewhere / "eval.json").is_file() and (elsewhere / "hub" / "config.json").is_file()
    assert (elsewhere / "prepared" / "meta.json").is_file()
