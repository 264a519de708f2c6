"""scripts/gpu_check.py on the CPU: its refusals (no CUDA, bad flags) and its report, with fake measurements.

The measurements themselves need a GPU (docs/gpu.md); here the report's JSON keys, its tables and the rule
that one failing section becomes an error row while the others are kept are checked with fake sections.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_script(*args, tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}  # no GPU, even on a GPU machine
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path)


@pytest.mark.parametrize("args, names", [
    ([], "no CUDA device"),
    (["--sections", "precision,speed"], "--sections='precision,speed': unknown section(s) ['speed']; valid: tests"),
    (["--trained", "no/such/run"], "--trained='no/such/run': no such directory"),
])
def test_refusals_are_one_error_line_exit_2_and_nothing_written(tmp_path, args, names):
    out = tmp_path / "gpu" / "report.json"
    proc = run_script(*args, "--out", str(out), tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], proc.stderr
    assert not out.exists() and not (tmp_path / "gpu").exists()
    assert proc.stdout == ""


FAKE = {
    "precision": [dict(dtype="bfloat16", gates="strong", layout="mha", impl="flex", out=2.1e-3, dq=3.2e-3, dk=3.3e-3,
                       dv=3.0e-3, dlogf=2.8e-3),
                  dict(dtype="bfloat16", gates="strong", layout="mha", impl="sdpa", out=2.0e-3, dq=3.0e-3, dk=3.1e-3,
                       dv=2.9e-3)],
    "op": [dict(n=32768, d=128, impl="sdpa", gates="trained", ms=10.0, gb=1.5, x_plain=1.0),
           dict(n=32768, d=128, impl="flex", gates="trained", ms=6.7, gb=1.9, x_plain=0.67)],
    "train": [dict(impl="xforget", position="fox", n=16384, compiled=True, tokens_per_s=341000.0, gb=31.5)],
}


def test_report_json_and_tables_with_fake_sections(tmp_path, monkeypatch, capsys):
    gc = load_script()
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gc, "environment", lambda: {"device": "Fake H200", "torch": "2.11.0", "has_fla": False})

    def broken(args, env):
        raise RuntimeError("kernel exploded")

    runners = {name: (lambda rows: (lambda args, env: rows))(rows) for name, rows in FAKE.items()}
    monkeypatch.setattr(gc, "RUNNERS", {**runners, "decode": broken})
    out = tmp_path / "report.json"
    assert gc.main(["--sections", "precision,decode,op,train", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "Fake H200" and report["torch"] == "2.11.0"
    for name, rows in FAKE.items():
        assert report[name] == rows
    for key in ("dtype", "gates", "impl", "out", "dq", "dk", "dv", "dlogf"):
        assert key in gc.COLUMNS["precision"]
    assert set(gc.COLUMNS["op"]) >= {"n", "d", "impl", "gates", "ms", "gb", "x_plain"}
    assert set(gc.COLUMNS["train"]) >= {"impl", "position", "n", "compiled", "tokens_per_s", "gb"}
    assert report["decode"][0]["error"] == "RuntimeError: kernel exploded"  # an error row, the rest kept
    assert set(report["seconds"]) == {"precision", "decode", "op", "train"}

    printed = capsys.readouterr().out
    assert "device: Fake H200" in printed
    table = gc.format_table(report["precision"], gc.COLUMNS["precision"]).splitlines()
    assert table[0].split() == gc.COLUMNS["precision"]
    assert table[2].split() == ["bfloat16", "strong", "mha", "flex", "0.0021", "0.0032", "0.0033", "0.003", "0.0028"]
    assert table[3].split()[-1] == "-"  # plain SDPA has no gate gradient
    assert "ERROR decode: RuntimeError: kernel exploded" in printed
    assert "0.67" in printed and "3.41e+05" in printed and "yes" in printed
    for line in table:
        assert line in printed


def test_sections_run_end_to_end_on_the_cpu_with_tiny_sizes(monkeypatch):
    """The measuring code itself (not only its report), on the CPU with tiny sizes: every row of the precision,
    op, train and decode sections has its columns and sane values. FlexAttention has no CPU backward, so the
    kernels under test are stood in for by the fold (the CPU's own path); the GPU run measures the real ones."""
    import torch
    import torch.nn.functional as F
    from types import SimpleNamespace

    from xforget.ops import forgetting_attention

    gc = load_script()
    monkeypatch.setattr(gc, "DEVICE", "cpu")
    monkeypatch.syspath_prepend(str(ROOT / "tests"))

    def fold(q, k, v, lf, mask=None, document_ids=None):
        return forgetting_attention(q, k, v, lf, mask=mask, document_ids=document_ids, backend="fold")

    def sdpa(q, k, v, lf, mask=None, document_ids=None):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])

    monkeypatch.setattr(gc, "impl_ops", lambda has_fla: {"flex": fold, "cuda": fold, "sdpa": sdpa})
    args = SimpleNamespace(quick=False, size="tiny", compile="")
    env = {"has_fla": False, "x_transformers": None}

    rows = gc.section_precision(args, env)
    assert [r["layout"] for r in rows] == ["mha"] * 3 + ["gqa-left-pad"] * 3
    for r in rows:
        names = ("out", "dq", "dk", "dv") + (("dlogf",) if r["impl"] != "sdpa" else ())
        assert all(0 <= r[name] < 1e-4 for name in names), r  # fp32 fold and SDPA vs float64
    assert all("dlogf" not in r for r in rows if r["impl"] == "sdpa")

    rows = gc.section_op(args, env)
    assert {r["impl"] for r in rows} == {"sdpa", "flex", "cuda", "dense_bias"}
    assert {r["gates"] for r in rows} == {"random", "trained", "never"}
    for r in rows:
        assert r["ms"] > 0 and r["x_plain"] > 0 and set(gc.COLUMNS["op"]) <= set(r), r
    assert all(r["x_plain"] == 1.0 for r in rows if r["impl"] == "sdpa")

    rows = gc.section_train(args, env)
    assert [(r["position"], r["compiled"]) for r in rows] == [("none", False), ("fox", False)]
    assert all(r["tokens_per_s"] > 0 and set(gc.COLUMNS["train"]) <= set(r) for r in rows)

    rows = gc.section_decode(args, env)
    assert [r["dtype"] for r in rows] == ["float32", "bfloat16"]
    assert rows[0]["max_abs_diff"] < 1e-4  # cached decoding equals the full forward
    assert torch.isfinite(torch.tensor(rows[1]["max_abs_diff"]))


def test_pytest_summary_counts():
    gc = load_script()
    assert gc.pytest_counts("3 passed, 1 skipped, 2 warnings in 2.0s") == dict(passed=3, failed=0, skipped=1, errors=0)
    assert gc.pytest_counts("1 failed, 40 passed, 1 error in 9.1s") == dict(passed=40, failed=1, skipped=0, errors=1)
    assert gc.pytest_counts("no tests ran in 0.1s") == dict(passed=0, failed=0, skipped=0, errors=0)


def test_gates_of_a_trained_run(tmp_path, monkeypatch):
    """--trained RUN_DIR: the forget gates every layer receives on the run's validation text are captured (the
    backends restored afterwards), and the least-forgetting layer is returned at the requested heads and length."""
    import torch

    from xforget import Decoder, TransformerWrapper
    from xforget.ops import dispatch
    from xforget.train import compose_config, to_train_config, train

    gc = load_script()
    monkeypatch.setattr(gc, "DEVICE", "cpu")
    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=64, max_seq_len=64, attn_layers=Decoder(dim=32, depth=3, heads=4,
                                                                                  position="fox"))
    before = dict(dispatch._IMPLS)
    layers = gc.capture_gates(net.eval(), torch.randint(0, 64, (2, 50)))
    assert dispatch._IMPLS == before
    assert len(layers) == 3 and all(g.shape == (2, 4, 50) and (g <= 0).all() for g in layers)

    cfg = to_train_config(compose_config([
        "model.dim=32", "model.depth=2", "model.heads=2", "trainer.seq_len=32", "trainer.batch_size=2",
        "trainer.max_steps=1", "trainer.max_time=null", "trainer.warmup_steps=0", "trainer.eval_batches=1",
        "trainer.progress=false", "trainer.sample_bytes=0", "trainer.threads=1", "trainer.compile=false"]))
    train(cfg, tmp_path / "run")
    gates = gc.gates_of_run(str(tmp_path / "run"), 100, 4)
    assert gates.shape == (1, 4, 100) and (gates <= 0).all()
    assert torch.equal(gates[:, :2], gates[:, 2:])  # 2 model heads repeated to 4
