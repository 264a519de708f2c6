"""Zoo details that a shape test would miss: preset contents, the continuous wrapper's projections,
task accuracy binned by recall distance."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from xforget import ContinuousTransformerWrapper, Decoder, ModelConfig
from xforget.models.wrapper import build_model
from xforget.data import synthetic
from xforget.evaluate import task_accuracy
from xforget.nn.norms import RMSNorm

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SIZE = dict(kind="decoder", num_tokens=256, dim=256, depth=4, heads=8, max_seq_len=64)  # max_seq_len = trainer.seq_len

# every preset's fields that differ from ModelConfig's defaults (README "Presets" and configs/model/*.yaml)
PRESETS = {
    "fox": dict(position="fox", forget_gate_divisor=1.0, forget_gate_bias_init=0.0, value_residual=False),
    "fox_pro": dict(position="fox", forget_gate_divisor=1.0, forget_gate_bias_init=0.0, qk_norm=True,
                    output_gate=True, kv_shift=True, output_norm=True, norm="rmsnorm", ff_activation="swiglu"),
    "fox_rotary": dict(position=["fox", "rotary"]),
    "fox_value_residual": dict(position="fox", forget_gate_divisor=1.0, forget_gate_bias_init=0.0,
                               value_residual=True, value_residual_mix="learned"),
    "gpt": dict(position="rotary", tie_embedding=True),
    "rotary": dict(position="rotary"),
    "alibi": dict(position="alibi"),
    "absolute": dict(position="absolute"),
    "sinusoidal": dict(position="sinusoidal"),
    "none": dict(position="none"),
    "nope": dict(position="none"),
    "t5": dict(position="t5", num_buckets=32, max_distance=128),
    "dynamic": dict(position="dynamic", dynamic_bias_depth=2),
}


def _preset(name: str) -> ModelConfig:
    from xforget.train.config import compose_config, to_train_config

    return to_train_config(compose_config([f"model={name}", "trainer.seq_len=64"])).model


def test_every_preset_is_listed():
    assert sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml")) == sorted(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_contents(name):
    cfg = _preset(name)
    defaults = dataclasses.asdict(ModelConfig())
    want = {**SIZE, **PRESETS[name]}
    got = {k: v for k, v in dataclasses.asdict(cfg).items() if k in want or v != defaults[k]}
    got["position"] = list(got["position"]) if not isinstance(got["position"], str) else got["position"]
    assert got == want


def test_presets_build_what_they_say():
    gpt = build_model(_preset("gpt"))
    assert gpt.to_logits.weight is gpt.token_emb.emb.weight
    fox = build_model(_preset("fox"))
    assert fox.to_logits.weight is not fox.token_emb.emb.weight
    pro = build_model(_preset("fox_pro"))
    for block in pro.attn_layers.blocks:
        attn = block.attn
        assert attn.bias.kind == "decay" and attn.q_norm is not None and attn.k_norm is not None
        assert attn.kv_shift is not None and attn.to_gate is not None and attn.out_norm is not None
        assert block.ff.glu and isinstance(block.layers[0].norm, RMSNorm)
    assert build_model(_preset("absolute")).pos_emb is not None
    assert build_model(_preset("t5")).attn_layers.blocks[0].attn.bias.kind == "matrix"


# --------------------------------------------------------------------------- continuous wrapper


@pytest.mark.parametrize("position", ["fox", ["absolute", "fox"]])
def test_continuous_wrapper_projects_in_and_out_float64(position):
    torch.manual_seed(0)
    net = ContinuousTransformerWrapper(attn_layers=Decoder(dim=16, depth=1, heads=2, position=position),
                                       max_seq_len=32, dim_in=5, dim_out=3).double()
    seen = {}
    net.attn_layers.register_forward_hook(lambda m, args, out: seen.update(h_in=args[0], h_out=out[0]))
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    out = net(x)
    w_in, b_in = net.project_in.weight, net.project_in.bias
    h_in = x @ w_in.T + b_in
    if net.pos_emb is not None:
        h_in = h_in + net.pos_emb.emb.weight[:7] * 16**-0.5
    torch.testing.assert_close(seen["h_in"], h_in, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(out, seen["h_out"] @ net.project_out.weight.T + net.project_out.bias,
                               atol=1e-12, rtol=1e-12)
    plain = ContinuousTransformerWrapper(attn_layers=Decoder(dim=16, depth=1, heads=2), max_seq_len=32)
    assert isinstance(plain.project_in, nn.Identity) and isinstance(plain.project_out, nn.Identity)
    with pytest.raises(ValueError, match="set dim_in"):
        plain(torch.randn(1, 4, 5))


# --------------------------------------------------------------------------- task accuracy by recall distance


class NearOracle(nn.Module):
    """Answers a synthetic task right only when the source byte lies within the last ``reach`` bytes."""

    def __init__(self, task: str, reach: int):
        super().__init__()
        self.task, self.reach, self.dummy = task, reach, nn.Parameter(torch.zeros(()))

    def answer(self, prefix: bytes) -> int | None:
        try:
            ans = synthetic.oracle_answer(self.task, prefix[-self.reach:])
        except (KeyError, IndexError, ValueError):
            return None
        return ans[0] if len(ans) == 1 else None

    def forward(self, x):
        out = torch.zeros(*x.shape, 256)
        for b in range(x.shape[0]):
            row = bytes(x[b].tolist())
            for i in range(x.shape[1]):
                a = self.answer(row[: i + 1])
                if a is not None:
                    out[b, i, a] = 10.0
        return out


def test_task_accuracy_by_recall_distance_matches_a_direct_count():
    length, examples, seed, reach = 96, 8, 3, 40
    net = NearOracle("mqar", reach)
    (row,) = task_accuracy(net, "mqar", [length], examples=examples, seed=seed)
    # reference: each answer of each (unpadded) example scored directly, binned by answer - source
    exs = synthetic.generate_examples("mqar", examples, length + 1, seed)
    dist, ok, pos = [], [], []
    for ex in exs:
        pad = length + 1 - len(ex.text)
        for a, s in zip(ex.answers, ex.sources):
            dist.append(a - s)
            ok.append(net.answer(ex.text[:a]) == ex.text[a])
            pos.append(pad + a - 1)
    edges = [round(length * i / 8) for i in range(9)]

    def bins(index):
        out = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = [o for i, o in zip(index, ok) if lo <= i < hi]
            if sel:
                out.append((lo, hi, len(sel), sum(sel) / len(sel)))
        return out

    got = [(b["lo"], b["hi"], b["n"], b["accuracy"]) for b in row["by_distance"]]
    want = bins(dist)
    assert [g[:3] for g in got] == [w[:3] for w in want]
    assert all(math.isclose(g[3], w[3], abs_tol=1e-3) for g, w in zip(got, want)), (got, want)
    assert row["accuracy"] == pytest.approx(sum(ok) / len(ok), abs=1e-3)
    # the binning is informative: near answers right, far ones wrong, and by distance != by position
    assert want[0][3] == 1.0 and want[-1][3] == 0.0
    assert want != bins(pos)
