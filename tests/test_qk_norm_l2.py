"""qk_norm="l2": l2-normalised queries and keys with a learned per-channel scale (x-transformers'
attn_qk_norm; logit parity in test_interop.py). Here: a float64 reference of one attention layer,
cached == full decoding, and the config errors."""

from __future__ import annotations

import math

import pytest
import torch

from xforget.nn.attention import Attention
from xforget.models.config import ModelConfig
from xforget.models.wrapper import build_model
from xforget.train import ConfigError, compose_config, to_train_config


def test_attention_with_l2_qk_norm_equals_a_float64_reference():
    torch.manual_seed(0)
    attn = Attention(24, 3, causal=True, qk_norm="l2").eval()
    with torch.no_grad():
        attn.q_norm.scale.add_(torch.randn_like(attn.q_norm.scale))
        attn.k_norm.scale.add_(torch.randn_like(attn.k_norm.scale))
    x = torch.randn(2, 7, 24)
    out, _, _ = attn(x)

    d, h = 8, 3
    xd = x.double()
    q = (xd @ attn.to_q.weight.double().T).view(2, 7, h, d).transpose(1, 2)
    k = (xd @ attn.to_k.weight.double().T).view(2, 7, h, d).transpose(1, 2)
    v = (xd @ attn.to_v.weight.double().T).view(2, 7, h, d).transpose(1, 2)
    q = q / q.norm(dim=-1, keepdim=True) * attn.q_norm.scale.double()[None, :, None, :]
    k = k / k.norm(dim=-1, keepdim=True) * attn.k_norm.scale.double()[None, :, None, :]
    logits = q @ k.transpose(-1, -2) / math.sqrt(d)
    logits = logits.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    ref = (logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, 24) @ attn.to_out.weight.double().T
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_l2_qk_norm_starts_as_cosine_similarity():
    attn = Attention(32, 2, qk_norm="l2")
    assert torch.allclose(attn.q_norm.scale, torch.full((2, 16), 16 ** 0.25))


@pytest.mark.parametrize("position", ["fox", "rotary", "alibi"])
def test_cached_decoding_equals_the_full_forward(position):
    torch.manual_seed(0)
    model = build_model(ModelConfig(dim=32, depth=2, heads=4, position=position, qk_norm="l2")).eval()
    x = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        full = model(x)
        logits, cache = model(x[:, :8], return_cache=True)
        steps = [logits]
        for t in range(8, 12):
            step, cache = model(x[:, t:t + 1], cache=cache, return_cache=True)
            steps.append(step)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_config_values():
    cfg = to_train_config(compose_config(["model.qk_norm=l2"]))
    assert cfg.model.qk_norm == "l2"
    assert to_train_config(compose_config(["model.qk_norm=true"])).model.qk_norm is True
    with pytest.raises(ConfigError, match=r"model.qk_norm='l3' is not a qk-norm; valid: false, true"):
        to_train_config(compose_config(["model.qk_norm=l3"]))
    with pytest.raises(ConfigError, match=r"qk_norm='l2' with model.num_mem_kv=2 is not supported"):
        to_train_config(compose_config(["model.qk_norm=l2", "model.num_mem_kv=2"]))
