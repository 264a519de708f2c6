"""``xforget-export``: a training run directory as a Hugging Face-style model directory.

    xforget-export checkpoint=RUN_DIR out=DIR [overwrite=true]

Writes ``DIR/config.json`` (the model config), ``DIR/model.safetensors`` (the latest
complete checkpoint's weights, or the run's final weights), a model card and the
run's tokenizer files (none for bytes). Load it with
``TransformerWrapper.from_pretrained(DIR)``, evaluate it with ``xforget-eval
harness=true checkpoint=DIR``, upload it with ``model.push_to_hub(repo_id)``.
Everything is written into a temporary directory beside DIR and renamed into
place. An existing DIR that is not empty is refused unless ``overwrite=true``
(then replaced as a whole). The printed line lists every file written.
Errors: one ``error:`` line, exit 2.
"""

from __future__ import annotations

import sys

USAGE = __doc__
KEYS = ("checkpoint", "out", "overwrite")
REQUIRED = ("checkpoint", "out")
BOOLS = {"true": True, "false": False}


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
    missing = [k for k in REQUIRED if k not in values]
    if missing:
        _fail(f"missing {', '.join(f'{k}=...' for k in missing)}; usage: xforget-export checkpoint=RUN_DIR out=DIR")
    overwrite = BOOLS.get(values.get("overwrite", "false").lower())
    if overwrite is None:
        _fail(f"invalid value overwrite={values['overwrite']!r}: must be true or false")

    from .hub import export_run
    from .train.checkpoint import CheckpointError

    try:
        out, files = export_run(values["checkpoint"], values["out"], overwrite=overwrite)
    except (CheckpointError, ValueError, OSError) as exc:
        _fail(" ".join(str(exc).split()))
    print(f"wrote {out} ({', '.join(files)}); load with TransformerWrapper.from_pretrained({str(out)!r})")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
