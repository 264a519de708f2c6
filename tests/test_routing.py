"""Routing: decay biases (FoX, causal ALiBi) take the O(n) fold by default, and stay O(n) in memory."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import xforget.ops.dispatch as dispatch
from xforget import Decoder, TransformerWrapper
from xforget.ops import resolve_backend


def test_resolve_backend_defaults():
    q = torch.zeros(1, 2, 64, 8)
    assert resolve_backend(None, q=q, causal=True, n_k=64) == "fold"
    assert resolve_backend("auto", q=q, causal=True) == "fold"
    assert resolve_backend(None, q=q[:, :, :1], causal=True, n_k=64) == "decode"
    assert resolve_backend(None, q=q[:, :, :16], causal=True, n_k=64) == "decode"
    assert resolve_backend(None, q=q[:, :, :17], causal=True, n_k=64) == "fold"
    assert resolve_backend(None, q=q, causal=False, n_k=64) == "chunked"
    assert resolve_backend("reference", q=q, causal=True) == "reference"
    with pytest.raises(ValueError, match="valid backends"):
        resolve_backend("flash", q=q, causal=True)


@pytest.fixture
def routed(monkeypatch):
    """Names of the backends that ran, in order."""
    calls = []
    for name, fn in list(dispatch._IMPLS.items()):
        def spy(*args, _fn=fn, _name=name, **kwargs):
            calls.append(_name)
            return _fn(*args, **kwargs)
        monkeypatch.setitem(dispatch._IMPLS, name, spy)
    return calls


def _decoder(position, **kw):
    return TransformerWrapper(num_tokens=32, max_seq_len=4096, attn_layers=Decoder(
        dim=32, depth=2, heads=2, position=position, **kw))


@pytest.mark.parametrize("position", ["fox", "alibi", ["fox", "rotary"]])
def test_decay_biases_take_the_fold_when_training_and_decode_when_cached(routed, position):
    net = _decoder(position)
    x = torch.randint(0, 32, (2, 40))
    net(x).sum().backward()
    assert routed == ["fold", "fold"]
    routed.clear()
    with torch.no_grad():
        _, cache = net.eval()(x[:, :30], return_cache=True)
        net(x[:, 30:31], cache=cache, return_cache=True)
    assert routed == ["fold", "fold", "decode", "decode"]


def test_encoder_forget_gate_takes_the_chunked_path(routed):
    from xforget import Encoder

    net = TransformerWrapper(num_tokens=32, max_seq_len=64, attn_layers=Encoder(dim=32, depth=1, heads=2,
                                                                                  position="fox"))
    net(torch.randint(0, 32, (1, 40)))
    assert routed == ["chunked"]


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an aten op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("position", ["fox", "alibi"])
def test_default_route_never_builds_an_n_by_n_tensor(position):
    n, dim, heads = 2048, 32, 2
    net = _decoder(position)
    x = torch.randint(0, 32, (1, n))
    with LargestTensor() as mode:
        net(x).sum().backward()
    # O(n) memory: the largest tensor is the logits / feed-forward activations (n x 4 dim), far below the
    # heads x n x n = 8.4M of a materialised bias or attention matrix
    assert mode.largest <= 4 * dim * n, mode.largest
    with LargestTensor() as dense:
        dispatch.forgetting_attention(torch.zeros(1, heads, n, 16), torch.zeros(1, heads, n, 16),
                                      torch.zeros(1, heads, n, 16), torch.zeros(1, heads, n), backend="reference")
    assert dense.largest >= heads * n * n  # the bound above does tell the routes apart
