"""``model.num_memory_tokens``: x-transformers' memory tokens as a ModelConfig field, so that training,
evaluation, generation and export build, save and reload them (issue 24, the anchors' keywords).

Invariances: the config builds the model the keywords build (same seed, same logits); a saved model
reloads with the same memory tokens and the same logits (hub directory and run directory alike); a
trained run's cached generation equals the full forward. No network, no GPU.
"""

from __future__ import annotations

import pytest
import torch

from xforget import Decoder, ModelConfig, TransformerWrapper, build_model
from xforget.errors import ConfigError
from xforget.train import compose_config, to_train_config, train
from xforget.train.loading import load_trained

M = 3
SMALL = dict(num_tokens=256, max_seq_len=32, dim=32, depth=1, heads=2)


def test_the_config_builds_what_the_keywords_build():
    torch.manual_seed(0)
    from_config = build_model(ModelConfig(**SMALL, position="fox", num_memory_tokens=M))
    torch.manual_seed(0)
    from_keywords = TransformerWrapper(num_tokens=256, max_seq_len=32, num_memory_tokens=M,
                                       attn_layers=Decoder(dim=32, depth=1, heads=2, position="fox"))
    assert from_config.num_memory_tokens == M and from_config.memory_tokens.shape == (M, 32)
    x = torch.randint(0, 256, (2, 12))
    torch.testing.assert_close(from_config(x), from_keywords(x), rtol=0, atol=0)
    assert build_model(ModelConfig(**SMALL)).num_memory_tokens == 0  # the default: none


def test_a_saved_model_reloads_its_memory_tokens(tmp_path):
    model = build_model(ModelConfig(**SMALL, position="rotary", num_memory_tokens=M)).eval()
    with torch.no_grad():
        model.memory_tokens.normal_()  # not the initial values: the weights themselves must come back
    model.save_pretrained(tmp_path / "hub")
    again = TransformerWrapper.from_pretrained(tmp_path / "hub").eval()
    assert again.num_memory_tokens == M
    torch.testing.assert_close(again.memory_tokens, model.memory_tokens, rtol=0, atol=0)
    x = torch.randint(0, 256, (1, 10))
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("bad", [-1, "two"])
def test_a_bad_count_is_one_line(bad):
    with pytest.raises(ConfigError, match="num_memory_tokens"):
        to_train_config(compose_config([f"model.num_memory_tokens={bad}"]))


def test_packed_documents_with_memory_tokens_validate(tmp_path, monkeypatch):
    """Decoders show the memory to every packed document (tests/test_memory_tokens_documents.py)."""
    import xforget.train.config as config

    monkeypatch.setattr(config, "read_meta", lambda path: {"vocab_size": 300})  # no prepared dataset needed here
    cfg = to_train_config(compose_config(["model.num_memory_tokens=2", "data.pack_documents=true", "data=tokens",
                                          f"data.path={tmp_path}"]), model=False)
    assert cfg.data.pack_documents and cfg.model.num_memory_tokens == 2


def test_a_run_trains_saves_and_reloads_with_memory_tokens(tmp_path, capsys):
    from corpus import TEXT  # generated text (tests/corpus.py)

    from xforget.commands.export import main as export_main

    cfg = to_train_config(compose_config([
        "data=text", f"data.path={TEXT}", "model.dim=32", "model.depth=1", "model.heads=2",
        f"model.num_memory_tokens={M}", "trainer.seq_len=32", "trainer.batch_size=4", "trainer.max_steps=2",
        "trainer.warmup_steps=1", "trainer.eval_batches=1", "trainer.progress=false", "trainer.sample_bytes=0",
        "trainer.threads=1", "trainer.precision=fp32"]))
    result = train(cfg, tmp_path / "run")
    loaded = load_trained(tmp_path / "run")
    assert loaded.model_config.num_memory_tokens == M and loaded.model.num_memory_tokens == M
    assert result.val_bpb > 0
    export_main([f"checkpoint={tmp_path / 'run'}", f"out={tmp_path / 'hub'}"])
    hub = load_trained(tmp_path / "hub")
    assert hub.model.num_memory_tokens == M
    torch.testing.assert_close(hub.model.memory_tokens, loaded.model.memory_tokens, rtol=0, atol=0)
    x = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        full = loaded.model(x)
        out, cache = loaded.model(x[:, :8], return_cache=True)  # generation's path: cached steps = full forward
        steps = [out]
        for i in range(8, 20):
            out, cache = loaded.model(x[:, i:i + 1], cache=cache, return_cache=True)
            steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hub.model(x), full, rtol=0, atol=0)
