"""The fast defaults: `precision=auto` (bf16 autocast on native-bf16 hardware), fused AdamW, MFU from the measured peak.

bf16 learns like fp32 (same losses within bf16 rounding), resumes exactly, and
every AdamW implementation gives the same update.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xforget.train import ConfigError, compose_config, to_train_config, train
from xforget.train.metrics import read_metrics
from xforget.train.peak_flops import load_peak, machine_key, save_peak
from xforget.train.budget import parse_duration
from xforget.train.compile import AUTO_MIN_SECONDS, AUTO_MIN_STEPS, resolve_compile
from xforget.train.precision import resolve_precision


def corpus(tmp_path: Path) -> Path:
    """A few hundred KB of generated Python-like text (no external data)."""
    path = tmp_path / "corpus.txt"
    if not path.exists():
        lines = [f"def f{i}(x, y={i % 7}):\n    return x * {i % 13} + y  # line {i}\n" for i in range(6000)]
        path.write_text("".join(lines))
    return path


def tiny(tmp_path: Path, *overrides: str):
    base = [
        "model.dim=32", "model.depth=1", "model.heads=2", "trainer.seq_len=32", "trainer.batch_size=8",
        "data=text", f"data.path={corpus(tmp_path)}", f"data.cache_dir={tmp_path / 'cache'}",
        "trainer.progress=false", "trainer.sample_bytes=0", "trainer.eval_batches=4", "trainer.threads=1",
        "trainer.warmup_steps=5", "optim.lr=3e-3", "trainer.log_every=1",
    ]
    return to_train_config(compose_config(base + list(overrides)))


def test_auto_precision_follows_native_bf16_support(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": False, "avx512_bf16": False})
    assert resolve_precision("auto", cpu) == "fp32"  # emulated bf16 would be slower than fp32
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    assert resolve_precision("auto", cpu) == "bf16"
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("fp16", cpu) == "fp16"
    with pytest.raises(ValueError, match=r"trainer.precision='tf32'.*\['auto', 'fp32', 'bf16', 'fp16'\]"):
        resolve_precision("tf32", cpu)
    with pytest.raises(ConfigError, match=r"optim.impl='apex'.*\['auto', 'for_loop', 'foreach', 'fused'\]"):
        to_train_config(compose_config(["optim.impl=apex"]))


def test_defaults_are_the_fast_ones():
    cfg = to_train_config(compose_config([]))
    assert cfg.trainer.precision == "auto" and cfg.optim.impl == "fused" and cfg.trainer.compile == "auto"
    assert cfg.trainer.max_steps is None and parse_duration(cfg.trainer.max_time) >= AUTO_MIN_SECONDS  # so the
    # default run (a 10-minute budget) compiles where it can
    m = cfg.model  # FoX Pro (README "Default run")
    assert m.position == "fox" and m.qk_norm is True and m.kv_shift and m.output_gate and m.output_norm
    assert (m.norm, m.ff_activation) == ("rmsnorm", "swiglu")


def test_auto_compile_needs_a_long_run_and_a_compiler_backend(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    assert resolve_compile("auto", AUTO_MIN_STEPS, cpu)[0] is True
    assert resolve_compile("auto", AUTO_MIN_STEPS - 1, cpu)[0] is False  # compiling would not pay for itself
    assert resolve_compile(False, 10**6, cpu)[0] is False and resolve_compile("True", 5, cpu)[0] is True
    monkeypatch.setattr("shutil.which", lambda name: None)
    compiled, why = resolve_compile("auto", 10**6, cpu)
    assert compiled is False and "no C++ compiler" in why  # inductor would fail at the first step
    monkeypatch.delenv("CC", raising=False)
    compiled, why = resolve_compile("auto", 10**6, cuda)
    assert compiled is False and "no C compiler for Triton" in why  # Triton builds its launcher with cc
    monkeypatch.setenv("CC", "/opt/cc")
    assert resolve_compile("auto", 10**6, cuda)[0] is True
    with pytest.raises(ValueError, match=r"trainer.compile='fast'.*\['auto', 'true', 'false'\]"):
        resolve_compile("fast", 10, cpu)
    with pytest.raises(ConfigError, match=r"trainer.compile='fast'.*\['auto', 'true', 'false'\]"):
        to_train_config(compose_config(["trainer.compile=fast"]))


def test_the_default_run_compiles_on_cuda(monkeypatch):
    """The decision is a pure function of the settings, the device and the compilers on PATH: no GPU needed.
    The default run (a 10-minute budget) compiles on CUDA (measured there: FoX Pro 131k -> 274k tokens/s),
    a short run does not, and without a C compiler for Triton nothing compiles."""
    cfg = to_train_config(compose_config([])).trainer
    cuda, budget = torch.device("cuda"), parse_duration(cfg.max_time)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/gcc" if name == "gcc" else None)
    compiled, why = resolve_compile(cfg.compile, cfg.max_steps, cuda, budget)
    assert compiled is True and "compiled" in why
    assert resolve_compile(cfg.compile, 100, cuda, budget)[0] is False  # 100 steps do not pay for compiling
    assert resolve_compile("false", cfg.max_steps, cuda, budget)[0] is False
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert resolve_compile(cfg.compile, cfg.max_steps, cuda, budget)[0] is False


def test_the_gate_cumsum_runs_in_fp32_under_bf16_autocast(monkeypatch):
    """DESIGN.md 4.5 / 4.11: under bf16 autocast (what the default run uses) the forget gate's log f and
    its cumsum c stay fp32, in training (the fold) and in cached decoding (the decode backend)."""
    import xforget.ops.backend as backend
    import xforget.ops.fold as fold
    from xforget import Decoder, TransformerWrapper

    seen = []
    real = backend.cumulative_gate

    def spy(log_gate, mask, s, dtype=None):
        seen.append((log_gate.dtype, real(log_gate, mask, s, dtype)))
        return seen[-1][1]

    monkeypatch.setattr(backend, "cumulative_gate", spy)
    monkeypatch.setattr(fold, "cumulative_gate", spy)  # the CPU fold's exact channels take c in float64
    net = TransformerWrapper(num_tokens=32, max_seq_len=64, attn_layers=Decoder(dim=16, depth=1, heads=2,
                                                                                 position="fox"))
    x = torch.randint(0, 32, (2, 24))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, cache = net(x[:, :20], return_cache=True)
        logits.float().sum().backward()
        with torch.no_grad():
            net(x[:, 20:21], cache=cache)
    wide = (torch.float32, torch.float64)
    assert len(seen) == 2 and all(g == torch.float32 and c.dtype in wide for g, c in seen), seen
    # and the fp32 cumsum is the float64 one to fp32 rounding (a bf16 cumsum would be off by ~1e-2 |c|)
    lf = torch.nn.functional.logsigmoid(torch.randn(1, 2, 4096)) - 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c = real(lf, None, backend.Shapes(1, 2, 2, 4096, 4096, 8, 8))
    assert c.dtype == torch.float32
    c64 = lf.double().cumsum(-1)
    assert (c.double() - c64).abs().max() < 1e-5 * c64.abs().max()  # bf16 keeps 8 bits: ~4e-3 |c|


@pytest.mark.slow
def test_compiled_training_equals_eager(tmp_path):
    """The default run compiles: torch.compile must not change what is learned (fp32, 4 steps)."""
    runs = {}
    for flag in ("false", "true"):
        runs[flag] = train(tiny(tmp_path, "trainer.max_steps=4", "trainer.precision=fp32", f"trainer.compile={flag}"),
                           tmp_path / flag)
    assert [runs["true"].losses[s] for s in range(1, 5)] == pytest.approx(
        [runs["false"].losses[s] for s in range(1, 5)], abs=1e-4)
    w = {flag: load_file(tmp_path / flag / "model.safetensors") for flag in runs}
    for k in w["false"]:
        torch.testing.assert_close(w["true"][k], w["false"][k], atol=1e-4, rtol=1e-3)
    # compilation happens in the first step; the log says so and tokens/s leaves it out
    assert "first step" in (tmp_path / "true" / "train.log").read_text()
    assert "first step" not in (tmp_path / "false" / "train.log").read_text()


def test_adamw_implementations_give_the_same_run(tmp_path):
    losses = {}
    for impl in ("for_loop", "foreach", "fused"):
        r = train(tiny(tmp_path, "trainer.max_steps=6", "trainer.precision=fp32", f"optim.impl={impl}"), tmp_path / impl)
        losses[impl] = [r.losses[s] for s in range(1, 7)]
    w = {impl: load_file(tmp_path / impl / "model.safetensors") for impl in losses}
    for impl in ("foreach", "fused"):
        assert losses[impl] == pytest.approx(losses["for_loop"], abs=1e-5)
        for k in w["for_loop"]:
            torch.testing.assert_close(w[impl][k], w["for_loop"][k], atol=1e-5, rtol=1e-4)


def test_bf16_learns_like_fp32(tmp_path):
    # Same data, same init: per-step training losses agree within bf16 rounding, and both learn.
    args = ("trainer.max_steps=30", "trainer.eval_every=30")
    fp32 = train(tiny(tmp_path, *args, "trainer.precision=fp32"), tmp_path / "fp32")
    bf16 = train(tiny(tmp_path, *args, "trainer.precision=bf16"), tmp_path / "bf16")
    a, b = [fp32.losses[s] for s in range(1, 31)], [bf16.losses[s] for s in range(1, 31)]
    assert b[-1] < b[0] - 1.0  # it learns (ln 256 = 5.5 at the start)
    assert max(abs(x - y) for x, y in zip(a, b)) < 0.05
    assert abs(bf16.val_bpb - fp32.val_bpb) < 0.03


def test_bf16_fused_resume_is_exact(tmp_path):
    args = ("trainer.max_steps=12", "trainer.checkpoint_every=6", "trainer.eval_every=6", "trainer.keep_last=0",
            "trainer.precision=bf16", "optim.impl=fused")
    full = train(tiny(tmp_path, *args), tmp_path / "full")
    part = train(tiny(tmp_path, *args), tmp_path / "part", stop_after_step=8)
    assert part.interrupted
    resumed = train(tiny(tmp_path, *args), tmp_path / "part")
    assert sorted(resumed.losses) == list(range(7, 13))
    assert {r["step"]: r["train_loss"] for r in read_metrics(tmp_path / "part")} == \
        {r["step"]: r["train_loss"] for r in read_metrics(tmp_path / "full")}
    assert resumed.val_bpb == full.val_bpb
    a, b = load_file(tmp_path / "full/model.safetensors"), load_file(tmp_path / "part/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mfu_uses_the_measured_peak_of_this_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("XFORGET_CACHE", str(tmp_path / "xcache"))
    assert load_peak("bf16") is None
    path = save_peak({"fp32": 2e11, "bf16": 8e11})
    assert json.loads(path.read_text())[machine_key()] == {"fp32": 2e11, "bf16": 8e11}
    assert load_peak("fp16") == 8e11  # fp16 without its own entry: the half-precision (bf16) peak
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2 * threads)  # measured at `threads`: scaled linearly
        assert load_peak("fp32") == pytest.approx(4e11)
    finally:
        torch.set_num_threads(threads)
    peaks = {"fp32": 2e11 / threads, "bf16": 8e11 / threads}  # what the 1-thread runs below must use
    for precision, peak in peaks.items():
        train(tiny(tmp_path, "trainer.max_steps=2", f"trainer.precision={precision}"), tmp_path / precision)
        records = read_metrics(tmp_path / precision)
        assert records and all(r["mfu"] == pytest.approx(r["tflops"] * 1e12 / peak) for r in records)
