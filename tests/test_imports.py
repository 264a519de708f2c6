"""The package's import rules hold, and a rule that is broken fails here.

The rules are import-linter contracts in pyproject.toml (``[tool.importlinter]``): the folders are
layers (``ops <- nn <- models | data <- train <- evaluate <- compare <- integrations <- commands``),
integrations and commands are never imported by the core, and nothing forms an import circle.
Every old module path keeps working (``xforget/_compat.py``).
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    if not LINT.exists():
        pytest.fail(f"{LINT} missing: the dev extra installs import-linter (pip install -e '.[dev]')")
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root).mkdir()
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(REPO / "xforget", root / "xforget", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_the_import_contracts_hold():
    proc = _lint(REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout and proc.stdout.count("KEPT") >= 3


@pytest.mark.parametrize("importer, imported, contract", [
    ("xforget/ops/common.py", "xforget.nn.norms", "layers"),            # a kernel reaching up into the blocks
    ("xforget/nn/norms.py", "xforget.nn.attention", "circles"),         # attention -> norms -> attention
    ("xforget/train/schedule.py", "xforget.integrations.interop", "integrations"),  # core -> integration
])
def test_a_new_upward_import_or_circle_fails(tmp_path, importer, imported, contract):
    root = _copy(tmp_path)
    path = root / importer
    text = path.read_text()
    # a function-local import: hidden from a reader, not from the contracts
    path.write_text(text + f"\n\ndef _planted():\n    import {imported}  # noqa: F401\n")
    proc = _lint(root)
    assert proc.returncode != 0 and "BROKEN" in proc.stdout, proc.stdout[-2000:]
    assert imported in proc.stdout or imported.rsplit(".", 1)[0] in proc.stdout


@pytest.mark.parametrize("old", ["xforget.config", "xforget.bias", "xforget.bias.alibi", "xforget.attention",
                                 "xforget.interop", "xforget.hub", "xforget.evaluate.harness",
                                 "xforget.train.cli", "xforget.data.cache", "xforget.cache"])
def test_old_module_paths_are_the_moved_modules(old):
    from xforget._compat import new_name

    assert importlib.import_module(old) is importlib.import_module(new_name(old))


def test_documented_imports_keep_working():
    from xforget import (AttentionLayers, AutoregressiveWrapper, Cache, ContinuousTransformerWrapper,  # noqa: F401
                         CrossAttender, Decoder, Encoder, ModelConfig, TransformerWrapper, XTransformer,
                         build_model, from_x_transformers)
    from xforget.bias import alibi_slopes, get_bias_builder, register_bias, registered_biases  # noqa: F401
    from xforget.interop import from_x_transformers as fx  # noqa: F401
    from xforget.ops import BACKENDS, attend, forgetting_attention, resolve_backend  # noqa: F401
    from xforget.ops.prune import collect_pruning  # noqa: F401
    from xforget.train.checkpoint import load_model  # noqa: F401

    assert "fox" in registered_biases()


def test_python_dash_m_of_an_old_path_runs_the_moved_command():
    proc = subprocess.run([sys.executable, "-m", "xforget.generate", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "xforget-generate" in proc.stdout


# every public name an old module path defined before the package was arranged into layers, and that now
# lives elsewhere (the module-level names that stayed are covered by the module aliases above)
MOVED_PUBLIC_NAMES = [
    ("xforget.config", "build_model"), ("xforget.data.corpus", "load_corpus"),
    ("xforget.data.corpus", "SYNTHETIC_BYTES"), ("xforget.evaluate.config", "CompareConfig"),
    ("xforget.evaluate.config", "ComparePrepare"), ("xforget.evaluate.config", "TRAIN_ROOTS"),
    ("xforget.hub", "load_pretrained"), ("xforget.hub", "export_run"), ("xforget.hub", "load_tokenizer"),
    ("xforget.train.checkpoint", "load_model"), ("xforget.train.checkpoint", "check_init_from"),
    ("xforget.train.checkpoint", "load_run_tokenizer"), ("xforget.train.checkpoint", "load_init_weights"),
    ("xforget.train.checkpoint", "init_weights_file"), ("xforget.train.checkpoint", "INIT_FROM_ACCEPTS"),
    ("xforget.train.loop", "evaluate"), ("xforget.train.loop", "LN2"), ("xforget.evict", "evict_forgotten"),
    ("xforget.memory_kv", "expand_heads"), ("xforget.validate", "QK_NORMS"),
    ("xforget.compare.cli", "plan_comparison"), ("xforget.compare.cli", "evaluate_all"),
    ("xforget.compare.cli", "load_compare_config"), ("xforget.compare.cli", "partition_overrides"),
    ("xforget.compare.cli", "evaluate_cached"), ("xforget.compare.cli", "eval_cache_path"),
]


@pytest.mark.parametrize("old, name", MOVED_PUBLIC_NAMES)
def test_names_that_moved_are_still_importable_from_their_old_module(old, name):
    assert getattr(importlib.import_module(old), name) is not None


def test_the_moved_names_table_resolves_and_refuses_other_names():
    from xforget._compat import MOVED_NAMES

    for module, names in MOVED_NAMES.items():
        for name in names:
            assert getattr(importlib.import_module(module), name) is not None
    with pytest.raises(ImportError, match="cannot import name 'no_such_name'"):
        exec("from xforget.models.config import no_such_name")


def test_the_old_functions_behave_as_their_new_homes(tmp_path):
    import torch

    from xforget import TransformerWrapper
    from xforget.config import build_model
    from xforget.train.loop import evaluate
    from xforget.train.scoring import loss_sums

    model = build_model({"dim": 16, "depth": 1, "heads": 2, "position": "fox"})
    assert isinstance(model, TransformerWrapper)
    windows = torch.randint(0, 256, (3, 9))
    with torch.no_grad():  # independent reference: float64 next-token cross-entropy of the model's logits
        logits = model.eval()(windows[:, :-1]).double()
        reference = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), windows[:, 1:].reshape(-1)).item()
    total, count = loss_sums(model, windows, batch_size=2)
    assert count == 3 * 8 and total / count == pytest.approx(reference, rel=1e-5)
    assert evaluate(model, windows, 2, torch.device("cpu")) == pytest.approx(reference, rel=1e-5)
