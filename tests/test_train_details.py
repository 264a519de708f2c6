"""Training-loop details checked against independent formulas (not only "it trains").

* one optimizer step of ``train()`` equals a float64 AdamW step written here
  (gradient of the large batch, global-norm clipping, decay by parameter name),
  for plain, accumulated and clipped steps;
* the logged learning rate equals the warmup + cosine formula at every step;
* autocast is applied to the training and validation forward passes;
* ``tflops`` and ``mfu`` follow their formulas, with a peak that is not 1e12;
* AdamW's parameter groups, by name: no decay on norms (also the per-head
  q_norm / k_norm / out_norm gains), biases, embeddings and memory key/values.

The data is text generated here (no files outside the test's tmp_path).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xforget.models.autoregressive import AutoregressiveWrapper
from xforget.models.wrapper import build_model
from xforget.data import TrainBatches, load_corpus, split_corpus
from xforget.train import compose_config, to_train_config, train
from xforget.train.metrics import read_metrics
from xforget.train.optim import decay_names, param_groups

WORDS = "the of and to in is was for on that with as by at from his her an which or be are this had not".split()


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(3000)]
    path = tmp_path_factory.mktemp("data") / "words.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny(tmp_path: Path, text_file: Path, *overrides: str):
    base = [
        "model.dim=32", "model.depth=1", "model.heads=2", "trainer.seq_len=16", "trainer.batch_size=8",
        "data=text", f"data.path={text_file}", f"data.cache_dir={tmp_path / 'cache'}",
        "trainer.progress=false", "trainer.sample_bytes=0", "trainer.eval_batches=2", "trainer.threads=1",
        "trainer.log_every=1", "trainer.eval_every=0", "trainer.checkpoint_every=0",
        "trainer.precision=fp32",  # compared with float64 references; tests of autocast override it
    ]
    return to_train_config(compose_config(base + list(overrides)))


# --------------------------------------------------------------------------- one optimizer step vs float64 AdamW


def _reference_step(cfg, initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights after one AdamW step, in float64, written from the formulas (not from torch.optim)."""
    t, o = cfg.trainer, cfg.optim
    model = build_model(cfg.model).double()
    model.load_state_dict({k: v.double() for k, v in initial.items()})
    split = split_corpus(load_corpus(cfg.data).data, cfg.data.val_fraction, t.seq_len)
    windows = TrainBatches(split.train, t.seq_len, t.batch_size, t.grad_accum, cfg.seed)(0)
    large_batch = windows.reshape(-1, t.seq_len + 1)  # all micro-batches as one batch: the mean gradient
    AutoregressiveWrapper(model)(large_batch).backward()
    params = dict(model.named_parameters())
    grads = {n: p.grad for n, p in params.items()}
    norm = math.sqrt(sum(float(g.square().sum()) for g in grads.values()))
    clip = min(1.0, t.grad_clip / (norm + 1e-6)) if t.grad_clip > 0 else 1.0  # global-norm clipping
    lr = o.lr * 1 / t.warmup_steps  # warmup: step 0 runs at lr / warmup_steps
    matrices = [n for n in params if n.endswith("weight") and "norm" not in n and "emb" not in n]
    out = {}
    for name, p in params.items():
        g = grads[name] * clip
        decay = o.weight_decay if name in matrices else 0.0
        # first AdamW step: bias-corrected m = g, v = g^2
        out[name] = p.detach() * (1 - lr * decay) - lr * g / (g.abs() + o.eps)
    return out, norm


@pytest.mark.parametrize("case", [
    ("plain", ()),
    ("accumulated", ("trainer.batch_size=2", "trainer.grad_accum=4")),
    ("clipped", ("trainer.grad_clip=0.05",)),
])
def test_one_step_equals_a_float64_adamw_step(tmp_path, text_file, case):
    name, extra = case
    # eps = 1 makes Adam's first step ~ lr * g (not lr * sign(g)), so the gradient's scale shows:
    # a sum instead of a mean over micro-batches, or a missing clip, changes the update.
    args = ("trainer.max_steps=1", "trainer.warmup_steps=4", "optim.lr=0.2", "optim.eps=1.0",
            "optim.weight_decay=0.5", "model.norm=rmsnorm", "model.position=[fox,absolute]",
            "model.qk_norm=true", "model.num_mem_kv=2", "trainer.grad_clip=0", *extra)
    cfg = tiny(tmp_path, text_file, *args)
    train(tiny(tmp_path, text_file, *args, "trainer.max_steps=0"), tmp_path / "init")
    initial = load_file(tmp_path / "init/model.safetensors")
    train(cfg, tmp_path / "run")
    stepped = load_file(tmp_path / "run/model.safetensors")
    expected, norm = _reference_step(cfg, initial)
    if name == "clipped":
        assert norm > 4 * cfg.trainer.grad_clip  # the clip is active
    assert set(expected) <= set(stepped)
    for key, ref in expected.items():
        moved = (ref - initial[key].double()).abs().max().item()
        err = (stepped[key].double() - ref).abs().max().item()
        rounding = 2 * 2**-24 * stepped[key].abs().max().item()  # the fp32 weights' own resolution
        # measured: err < 2e-6 * moved + rounding (fp32 gradients vs float64); bound 1e-4 * moved + rounding
        assert err <= 1e-4 * moved + rounding, (name, key, err, moved)


# --------------------------------------------------------------------------- schedule


def _lr_formula(step: int, lr: float, warmup: int, max_steps: int, min_ratio: float) -> float:
    """lr of 0-based step ``step``: linear warmup to lr, then cosine to min_ratio * lr at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / (max_steps - 1 - warmup)
    return lr * (min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * frac)) / 2)


def test_logged_lr_follows_warmup_then_cosine(tmp_path, text_file):
    cfg = tiny(tmp_path, text_file, "trainer.max_steps=14", "trainer.warmup_steps=4", "optim.lr=1e-3",
               "optim.min_lr_ratio=0.2", "model.depth=1", "model.dim=16")
    train(cfg, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == list(range(1, 15))
    for r in records:  # record "step" s is logged after 0-based step s - 1, with the lr that step used
        expected = _lr_formula(r["step"] - 1, 1e-3, 4, 14, 0.2)
        assert r["lr"] == pytest.approx(expected, rel=1e-12), r
    assert records[3]["lr"] == pytest.approx(1e-3) and records[-1]["lr"] == pytest.approx(2e-4)


@pytest.mark.parametrize("warmup,max_steps", [(10, 4), (4, 4)])
def test_warmup_not_shorter_than_the_run_is_logged_as_it_is_and_a_resume_past_it_keeps_the_last_lr(
        tmp_path, text_file, warmup, max_steps):
    lr, run = 1e-3, tmp_path / "run"
    base = ("trainer.warmup_steps=%d" % warmup, "optim.lr=1e-3", "optim.min_lr_ratio=0.2", "trainer.checkpoint_every=1")
    train(tiny(tmp_path, text_file, *base, f"trainer.max_steps={max_steps}"), run)
    ramp = [lr * (s + 1) / warmup for s in range(max_steps)]  # linear warmup only: the run ends in it
    assert [r["lr"] for r in read_metrics(run)] == pytest.approx(ramp, rel=1e-12)
    warning = next(line for line in (run / "train.log").read_text().splitlines() if "trainer.warmup_steps=" in line)
    assert f"trainer.warmup_steps={warmup} >= trainer.max_steps={max_steps}: the run ends in its warmup" in warning
    assert f"rises linearly from {ramp[0]:.3g}" in warning and "with no cosine decay to 0.0002" in warning
    reached = "reaches optim.lr=0.001 only at the last step" if warmup == max_steps else \
        f"reaches only {ramp[-1]:.3g} ({max_steps}/{warmup} of optim.lr=0.001) at the last step"
    assert reached in warning
    # a resume with a larger max_steps keeps the horizon: past it, the last learning rate, no jump, no more warmup
    train(tiny(tmp_path, text_file, *base, f"trainer.max_steps={max_steps + 3}"), run)
    assert [r["lr"] for r in read_metrics(run)] == pytest.approx(ramp + [ramp[-1]] * 3, rel=1e-12)


# --------------------------------------------------------------------------- autocast


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_autocast_is_applied_to_training_and_validation_runs_in_fp32(
        tmp_path, text_file, monkeypatch, precision, dtype):
    import xforget.train.loop as loop

    seen = {True: set(), False: set()}  # module.training -> dtypes of the first linear layer's outputs

    def build_with_hook(model_cfg):
        model = build_model(model_cfg)
        linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        linear.register_forward_hook(lambda mod, inp, out: seen[mod.training].add(out.dtype))
        return model

    monkeypatch.setattr(loop, "build_model", build_with_hook)
    train(tiny(tmp_path, text_file, "trainer.max_steps=2", f"trainer.precision={precision}"), tmp_path / "run")
    # training steps run under the chosen autocast; validation always scores in fp32 (comparable across
    # precisions and equal to xforget-eval's score)
    assert seen[True] == {dtype} and seen[False] == {torch.float32}, seen


# --------------------------------------------------------------------------- throughput formulas


def test_tflops_and_mfu_follow_their_formulas(tmp_path, text_file):
    peak = 3.5e12  # not 1e12: MFU (a fraction of the peak) and TFLOP/s (units of 1e12) must differ
    cfg = tiny(tmp_path, text_file, "trainer.max_steps=3", f"trainer.peak_flops={peak}")
    train(cfg, tmp_path / "run")
    model = build_model(cfg.model)
    dim, depth, heads, n = 32, 1, 2, 16
    matrices = sum(p.numel() for name, p in model.named_parameters() if p.ndim >= 2 and "token_emb" not in name)
    per_token = 6 * matrices + 12 * depth * heads * (dim // heads) * n  # PaLM: 6N + 12 L H d_head T
    for r in read_metrics(tmp_path / "run"):
        assert r["tflops"] == pytest.approx(per_token * r["tokens_per_s"] / 1e12, rel=1e-9)
        assert r["mfu"] == pytest.approx(per_token * r["tokens_per_s"] / peak, rel=1e-9)
        assert r["mfu"] < 1.0


# --------------------------------------------------------------------------- weight decay groups by name


def _kitchen_sink():
    from xforget import Decoder, TransformerWrapper

    return TransformerWrapper(num_tokens=64, max_seq_len=32, attn_layers=Decoder(
        dim=32, depth=2, heads=4, position=["fox", "absolute"], qk_norm=True, output_norm=True, output_gate=True,
        kv_shift=True, num_mem_kv=2, value_residual=True, value_residual_mix="learned", norm="rmsnorm",
        ff_activation="swiglu"))


def test_weight_decay_groups_by_parameter_name():
    model = _kitchen_sink()
    decay, rest = decay_names(model)
    names = dict(model.named_parameters())
    assert sorted(decay + rest) == sorted(names)
    def no_decay_by_name(name: str) -> bool:
        *path, leaf = name.split(".")
        return leaf in ("bias", "gamma") or any(c.endswith("norm") or c in ("memory", "token_emb", "pos_emb")
                                                for c in path)

    for name in decay:
        assert names[name].ndim == 2 and not no_decay_by_name(name), name
    for name in rest:
        assert no_decay_by_name(name), name
    # the fault this fixes: per-head norm gains and memory key/values were decayed (they are >= 2-d)
    for needle in ("q_norm", "k_norm", "out_norm", "memory.k", "memory.v", "token_emb", "pos_emb"):
        assert any(needle in n for n in rest) and not any(needle in n for n in decay), needle
    for needle in ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.weight", "proj_in.weight",
                   "proj_out.weight", "to_logits.weight", "to_gate.weight", "to_mix.weight"):
        assert any(n.endswith(needle) for n in decay), needle

    groups = param_groups(model, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert [len(g["params"]) for g in groups] == [len(decay), len(rest)]


def test_tied_output_projection_is_an_embedding_and_not_decayed():
    from xforget import Decoder, TransformerWrapper

    model = TransformerWrapper(num_tokens=64, max_seq_len=32, tie_embedding=True,
                               attn_layers=Decoder(dim=32, depth=1, heads=4))
    decay, rest = decay_names(model)
    table = model.token_emb.emb.weight if hasattr(model.token_emb, "emb") else model.token_emb.weight
    params = dict(model.named_parameters())
    assert not any(params[n] is table for n in decay) and any(params[n] is table for n in rest)
