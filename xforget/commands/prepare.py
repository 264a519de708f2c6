"""``xforget-prepare``: a corpus -> a prepared dataset directory of token shards.

    xforget-prepare input=notes/ output=data/notes                       # bytes (vocabulary 256)
    xforget-prepare input='dump/*.jsonl' output=data/dump tokenizer=bpe vocab_size=4096 num_proc=2
    xforget-prepare input=rows.parquet text_field=content output=data/rows tokenizer=path/to/tokenizer.json
    xforget-prepare input=my_saved_dataset/ output=data/ds tokenizer=bpe   # a datasets save_to_disk directory

Keys are Hydra overrides of :class:`~xforget.data.prepare.PrepareConfig`
(an unknown key fails with the valid keys listed). Errors print one
``error: ...`` line and exit with code 2; nothing is written.
"""

from __future__ import annotations

import sys
from dataclasses import fields

from hydra.core.config_store import ConfigStore

from xforget.data.corpus import DataError
from xforget.data.prepare import PrepareConfig, prepare
from xforget.errors import explain_error

ConfigStore.instance().store(name="xforget_prepare", node=PrepareConfig)
EXIT_CONFIG = 2


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


def parse_config(argv: list[str]) -> PrepareConfig:
    """Compose :class:`PrepareConfig` from ``key=value`` overrides (exit 2 with one line on error)."""
    from hydra import compose, initialize
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    valid = [f.name for f in fields(PrepareConfig)]
    GlobalHydra.instance().clear()
    try:
        with initialize(version_base=None, config_path=None):
            cfg = compose(config_name="xforget_prepare", overrides=list(argv))
        for key in ("input", "output"):
            if OmegaConf.is_missing(cfg, key):
                _fail(f"missing required key {key}=...; e.g. xforget-prepare input=corpus/ output=data/corpus")
        return OmegaConf.to_object(cfg)
    except SystemExit:
        raise
    except Exception as exc:
        _fail(explain_error(exc, lambda node: valid if node == "" else None))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``xforget-prepare``); ``argv`` defaults to ``sys.argv[1:]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("keys:", ", ".join(f"{f.name}={f.default!r}" for f in fields(PrepareConfig)))
        return
    cfg = parse_config(argv)
    try:
        prepare(cfg, log=lambda m: print(m, file=sys.stderr))
    except DataError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written (run the same command again)", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
