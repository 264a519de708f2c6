"""``xforget-export``: a training run directory as a Hugging Face-style model directory.

    xforget-export checkpoint=RUN_DIR out=DIR

Writes ``DIR/config.json`` (the model config), ``DIR/model.safetensors`` (the latest
complete checkpoint's weights, or the run's final weights), a model card and the
run's tokenizer files (none for bytes). Load it with
``TransformerWrapper.from_pretrained(DIR)``, evaluate it with ``xforget-eval
harness=true checkpoint=DIR``, upload it with ``model.push_to_hub(repo_id)``.
Errors: one ``error:`` line, exit 2.
"""

from __future__ import annotations

import sys

USAGE = __doc__
KEYS = ("checkpoint", "out")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``xforget-export``); ``argv`` defaults to ``sys.argv[1:]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return
    values: dict[str, str] = {}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or key not in KEYS or not value:
            _fail(f"bad argument {arg!r}; usage: xforget-export checkpoint=RUN_DIR out=DIR (valid keys: {list(KEYS)})")
        values[key] = value
    missing = [k for k in KEYS if k not in values]
    if missing:
        _fail(f"missing {', '.join(f'{k}=...' for k in missing)}; usage: xforget-export checkpoint=RUN_DIR out=DIR")

    from .hub import export_run
    from .train.checkpoint import CheckpointError

    try:
        out = export_run(values["checkpoint"], values["out"])
    except (CheckpointError, ValueError, OSError) as exc:
        _fail(" ".join(str(exc).split()))
    print(f"wrote {out} (config.json, model.safetensors); load with TransformerWrapper.from_pretrained({str(out)!r})")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
