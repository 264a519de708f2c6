"""Value residual (ResFormer): formula, gradient to the mix, first layer unchanged."""

import torch

from xforget import Decoder, TransformerWrapper
from xforget.nn.value_residual import ValueResidualMix


def test_fixed_mix_is_half_and_half():
    mix = ValueResidualMix(dim=8, kv_heads=2, mix="fixed")
    v, v1 = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    torch.testing.assert_close(mix(v, v1, torch.randn(1, 5, 8)), 0.5 * v + 0.5 * v1)


def test_learned_mix_formula_and_gradient():
    mix = ValueResidualMix(dim=8, kv_heads=2, mix="learned")
    x = torch.randn(1, 5, 8)
    v, v1 = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    lam = torch.sigmoid(x.double() @ mix.to_lambda.weight.double().T + mix.to_lambda.bias.double())  # (1, 5, 2)
    lam = lam.transpose(1, 2)[..., None]
    expected = v1.double() + lam * (v.double() - v1.double())
    out = mix(v, v1, x)
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=1e-6)
    out.square().sum().backward()
    assert mix.to_lambda.weight.grad is not None and mix.to_lambda.weight.grad.abs().sum() > 0


def _net(**kw):
    return TransformerWrapper(num_tokens=64, max_seq_len=32, attn_layers=Decoder(dim=32, depth=3, heads=4, position="fox", **kw))


def test_value_residual_mix_trains_in_the_model():
    torch.manual_seed(0)
    net = _net(value_residual=True, value_residual_mix="learned")
    x = torch.randint(0, 64, (2, 16))
    net(x).logsumexp(-1).sum().backward()
    blocks = net.attn_layers.blocks
    assert blocks[0].attn.value_residual is None  # first layer has no mix
    for block in blocks[1:]:
        g = block.attn.value_residual.to_lambda.weight.grad
        assert g is not None and g.abs().sum() > 0


def test_first_layer_unchanged_and_later_layers_use_first_values():
    torch.manual_seed(0)
    plain = _net(value_residual=False)
    torch.manual_seed(0)
    mixed = _net(value_residual=True, value_residual_mix="fixed")
    assert set(plain.state_dict()) == set(mixed.state_dict())
    mixed.load_state_dict(plain.state_dict())
    x = torch.randint(0, 64, (2, 16))
    # the first block's output is identical (value residual only affects later layers)
    h = plain.token_emb(x)
    pos = torch.arange(16)
    out_plain = plain.attn_layers.blocks[0](h, positions=pos)[0]
    out_mixed = mixed.attn_layers.blocks[0](h, positions=pos)[0]
    torch.testing.assert_close(out_plain, out_mixed)
    # ... but the model output differs, because later layers mix in the first values
    assert not torch.allclose(plain(x), mixed(x), atol=1e-4)
