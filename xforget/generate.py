"""``xforget-generate``: sample text from a trained run, streamed to stdout.

    xforget-generate checkpoint=outputs/RUN prompt="def main(" max_new_tokens=300 temperature=0.8 top_k=50

Arguments are Hydra overrides of :class:`GenerateConfig` (an unknown key fails
with the valid keys listed). Byte-level runs: bytes are decoded as UTF-8
incrementally, so multi-byte characters are printed whole. A run trained on a
prepared dataset (``data=tokens``) encodes the prompt and decodes the output
with the run's tokenizer (``tokenizer.json`` in the run directory).
"""

from __future__ import annotations

import codecs
import sys
from dataclasses import dataclass, fields

import torch
from hydra import compose, initialize
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from .autoregressive import AutoregressiveWrapper


@dataclass
class GenerateConfig:
    checkpoint: str = "???"  # run directory of xforget-train
    prompt: str = ""
    max_new_tokens: int = 256
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    seed: int = 0
    cache_kv: bool = True


ConfigStore.instance().store(name="xforget_generate", node=GenerateConfig)


def parse_config(overrides: list[str]) -> GenerateConfig:
    """Compose the config from Hydra overrides.

    Raises:
        SystemExit(2): unknown key (listing the valid keys), a missing checkpoint,
            a negative temperature or token count (one ``error:`` line on stderr).
    """
    valid = [f.name for f in fields(GenerateConfig)]
    try:
        with initialize(version_base=None, config_path=None):
            cfg = compose(config_name="xforget_generate", overrides=overrides)
    except (ConfigAttributeError, ConfigKeyError, Exception) as err:  # hydra wraps key errors
        key = next((o.split("=")[0] for o in overrides if o.split("=")[0].lstrip("+~") not in valid), None)
        reason = f"unknown config key {key!r}" if key else str(err).splitlines()[0]
        _fail(f"{reason}; valid keys: {valid}")
    if OmegaConf.is_missing(cfg, "checkpoint"):
        _fail("checkpoint=RUN_DIR is required (the run directory written by xforget-train)")
    gen = GenerateConfig(**OmegaConf.to_object(cfg).__dict__)
    if gen.temperature < 0:
        _fail(f"temperature={gen.temperature} must be >= 0 (0 = greedy)")
    if gen.max_new_tokens < 0:
        _fail(f"max_new_tokens={gen.max_new_tokens} must be >= 0")
    return gen


def _fail(message: str) -> None:
    """Print one error line and exit with code 2 (bad command line or input)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(list(sys.argv[1:] if argv is None else argv))
    from .data.corpus import DataError
    from .data.tokenizer import ByteTokenizer
    from .train.checkpoint import CheckpointError, load_model, load_run_tokenizer  # the training package owns the run format

    try:
        model, train_cfg = load_model(cfg.checkpoint)
        tokenizer = load_run_tokenizer(cfg.checkpoint, train_cfg)
    except (CheckpointError, DataError, FileNotFoundError, ValueError) as err:
        _fail(f"cannot load checkpoint={cfg.checkpoint!r}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    if tokenizer.vocab_size != model.num_tokens:
        _fail(f"the run's tokenizer ({tokenizer.name}) has {tokenizer.vocab_size} tokens but the model has "
              f"num_tokens={model.num_tokens}; the run directory is inconsistent")
    wrapper = AutoregressiveWrapper(model).eval()
    torch.set_flush_denormal(True)  # decayed attention weights underflow: subnormals are slow on CPUs
    torch.manual_seed(cfg.seed)
    ids = tokenizer.encode(cfg.prompt)
    if not ids:  # an empty prompt starts a document: newline (bytes) or the end-of-text token
        ids = [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode("\n")
    prompt = torch.tensor(ids, dtype=torch.long)[None]
    out = sys.stdout
    out.write(cfg.prompt)
    stream = wrapper.stream(prompt, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                            top_p=cfg.top_p, min_p=cfg.min_p, cache_kv=cfg.cache_kv)
    if isinstance(tokenizer, ByteTokenizer):
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for step in stream:
            out.write(decoder.decode(bytes([int(step[0])])))
            out.flush()
        out.write(decoder.decode(b"", final=True) + "\n")
        return
    new_ids: list[int] = []
    shown = ""
    for step in stream:  # decode everything generated so far; print what is new once it is whole text
        new_ids.append(int(step[0]))
        text = tokenizer.decode(new_ids)
        if not text.endswith("\ufffd"):
            out.write(text[len(shown):])
            out.flush()
            shown = text
    out.write(tokenizer.decode(new_ids)[len(shown):] + "\n")


if __name__ == "__main__":
    main()
