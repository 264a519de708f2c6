"""``xforget-generate``: sample text from a trained model, streamed to stdout.

    xforget-generate checkpoint=outputs/RUN prompt="def main(" max_new_tokens=300 temperature=0.8 top_k=50
    xforget-generate checkpoint=outputs/RUN prompt_file=prompt.txt
    cat prompt.txt | xforget-generate checkpoint=outputs/RUN prompt=-

The prompt is free text: ``prompt=<any text>`` (one shell argument; ``(``,
``[``, ``=``, quotes, ``~`` and newlines all fine) is taken out of the
arguments before Hydra parses the others, and used verbatim. ``prompt_file=FILE``
reads the prompt's bytes from a file, ``prompt=-`` from stdin. The other
arguments are Hydra overrides of :class:`GenerateConfig` (an unknown key fails
with the valid keys listed). Text is byte-level: bytes are decoded as UTF-8
incrementally, so multi-byte characters are printed whole. Exit code 2 with one
``error:`` line for a bad argument or checkpoint.
``checkpoint`` is anything :func:`xforget.train.loading.load_trained` opens: a run
directory, one checkpoint directory, a hub-style directory or a hub repo id.
A model trained on a prepared dataset (``data=tokens``) encodes the prompt and
decodes the output with its tokenizer (``tokenizer.json`` in the run directory).
A run trained with ``data.pack_documents=true`` samples with the same document rule: the text
after an end-of-text token in the prompt (``<|endoftext|>``) is a new document that sees nothing
before it (a hub-style directory records no training config: its prompt is one document).
"""

from __future__ import annotations

import codecs
import os
import sys
from dataclasses import dataclass, fields

from typing import TYPE_CHECKING

from hydra import compose, initialize
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from xforget.commands.args import emit, literal_paths
from xforget.data.corpus import DataError
from xforget.data.tokenizer import ByteTokenizer
from xforget.errors import explain_error, schema_keys
from xforget.train.run_dir import CheckpointError, missing_model_path

# No torch at the top: the arguments are checked first (a typo is one line in a fraction of a
# second); the model code is imported once they pass (main, GenerateConfig.sampling).
if TYPE_CHECKING:
    from xforget.models.sampling import SamplingOptions


@dataclass
class GenerateConfig:
    """The command line's keys (a Hydra schema): the model, the prompt and the :class:`SamplingOptions`
    a command line can set (see :meth:`sampling`)."""

    checkpoint: str = "???"  # run directory of xforget-train (or a checkpoint, hub-style directory, hub repo id)
    prompt: str = ""  # on the command line taken verbatim, before Hydra (see take_prompt)
    max_new_tokens: int = 256
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    seed: int = 0
    cache_kv: bool = True

    def sampling(self) -> SamplingOptions:
        """The :class:`SamplingOptions` fields this config sets (the others keep their defaults)."""
        from xforget.models.sampling import SamplingOptions

        return SamplingOptions(**{f.name: getattr(self, f.name) for f in fields(SamplingOptions) if hasattr(self, f.name)})


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
        if key and "=" not in next(o for o in overrides if o.split("=")[0] == key):
            # a word without '=': most often the rest of an unquoted prompt (prompt=Pierre said)
            _fail(f"unknown argument {key!r} (not key=value); a prompt with spaces is one shell argument: quote it, "
                  f"e.g. prompt=\"... {key}\"; valid keys: {valid + ['prompt_file']}")
        if key:
            _fail(f"unknown config key {key!r}; valid keys: {valid + ['prompt_file']}")
        _fail(explain_error(err, lambda path: schema_keys(GenerateConfig, path)))
    if OmegaConf.is_missing(cfg, "checkpoint"):
        _fail("checkpoint=RUN_DIR is required (the run directory written by xforget-train)")
    gen = GenerateConfig(**OmegaConf.to_object(cfg).__dict__)
    if gen.temperature < 0:
        _fail(f"temperature={gen.temperature} must be >= 0 (0 = greedy)")
    if gen.max_new_tokens < 0:
        _fail(f"max_new_tokens={gen.max_new_tokens} must be >= 0")
    if gen.top_k is not None and gen.top_k < 0:
        _fail(f"top_k={gen.top_k} must be >= 0 (0 or null = off)")
    for name in ("top_p", "min_p"):
        value = getattr(gen, name)
        if value is not None and not 0.0 <= value <= 1.0:
            _fail(f"{name}={value} must be in [0, 1] (null = off)")
    return gen


def _fail(message: str) -> None:
    """Print one error line and exit with code 2 (bad command line or input)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def take_prompt(argv: list[str]) -> tuple[bytes | None, list[str]]:
    """Take the prompt out of ``argv`` before Hydra sees it: (prompt bytes or None, the other arguments).

    ``prompt=TEXT`` (verbatim, UTF-8 encoded), ``prompt=-`` (stdin's bytes) or ``prompt_file=FILE`` (its bytes;
    ``~`` expanded). Exits 2 with one line for two prompts or an unreadable file.
    """
    rest, given = [], []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") in ("prompt", "prompt_file"):
            given.append((key.lstrip("+"), value))
        else:
            rest.append(arg)
    if len(given) > 1:
        _fail(f"give one prompt, not {len(given)} ({', '.join(k for k, _ in given)}): prompt=TEXT, prompt=- (stdin) "
              "or prompt_file=FILE")
    prompt = None
    for key, value in given:
        if key == "prompt":
            prompt = sys.stdin.buffer.read() if value == "-" else value.encode("utf-8", errors="surrogateescape")
            continue
        try:
            with open(os.path.expanduser(value), "rb") as f:
                prompt = f.read()
        except OSError as err:
            _fail(f"cannot read prompt_file={value!r}: {err.strerror or err}")
    return prompt, rest


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``xforget-generate``); ``argv`` defaults to ``sys.argv[1:]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        emit(__doc__ + "\nKeys (defaults): " + ", ".join(f"{f.name}={f.default}" for f in fields(GenerateConfig))
             + "\n")
        return
    prompt_bytes, argv = take_prompt(argv)
    try:
        argv = literal_paths(argv)
    except ValueError as err:
        _fail(str(err))
    cfg = parse_config(argv)
    missing = missing_model_path(cfg.checkpoint)
    if missing is not None:
        _fail(f"cannot load checkpoint={cfg.checkpoint!r}: {missing}")
    import torch  # the model code, once the arguments passed

    from xforget.models.autoregressive import AutoregressiveWrapper
    from xforget.models.packing import packed
    from xforget.train.loading import load_trained

    try:
        loaded = load_trained(cfg.checkpoint)
    except (CheckpointError, DataError, FileNotFoundError, ValueError) as err:
        _fail(f"cannot load checkpoint={cfg.checkpoint!r}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    model, tokenizer = loaded.model, loaded.tokenizer
    if tokenizer.vocab_size != model.num_tokens:
        _fail(f"the run's tokenizer ({tokenizer.name}) has {tokenizer.vocab_size} tokens but the model has "
              f"num_tokens={model.num_tokens}; the run directory is inconsistent")
    # a run trained with data.pack_documents=true reads documents as it was trained: a prompt's text after
    # an end-of-text token is a new document that sees nothing before it (a hub-style export records no
    # training config, so there the whole prompt is one document)
    train_cfg = loaded.train_config
    packing_eot = tokenizer.eot_id if train_cfg is not None and getattr(train_cfg.data, "pack_documents", False) else None
    wrapper = AutoregressiveWrapper(packed(model, packing_eot)).eval()
    torch.set_flush_denormal(True)  # decayed attention weights underflow: subnormals are slow on CPUs
    torch.manual_seed(cfg.seed)
    if prompt_bytes is None:
        prompt_bytes = cfg.prompt.encode("utf-8")
    prompt_text = codecs.decode(prompt_bytes, "utf-8", errors="replace")
    # bytes verbatim for byte-level runs (a prompt file may hold any bytes); text through the run's tokenizer otherwise
    ids = list(prompt_bytes) if isinstance(tokenizer, ByteTokenizer) else tokenizer.encode(prompt_text)
    if not ids:  # an empty prompt starts a document: newline (bytes) or the end-of-text token
        ids = [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode("\n")
    prompt = torch.tensor(ids, dtype=torch.long)[None]
    out = sys.stdout
    out.write(prompt_text)
    stream = wrapper.stream(prompt, cfg.max_new_tokens, sampling=cfg.sampling())
    try:
        _write_stream(stream, tokenizer, out)
    except KeyboardInterrupt:  # Ctrl-C while streaming: end the line, no traceback
        out.write("\n")
        out.flush()
        raise SystemExit(130) from None


def _write_stream(stream, tokenizer, out) -> None:
    """Print generated token ids as text as they come (bytes decoded incrementally as UTF-8)."""
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
