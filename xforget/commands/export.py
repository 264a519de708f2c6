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
from pathlib import Path

from xforget.commands.args import writable_path_problem
from xforget.files import atomic_dir
from xforget.train.run_dir import CHECKPOINTS, CheckpointError, missing_model_path, weights_step

# No torch at the top: the arguments and paths are checked first (one line in a fraction of a second);
# the loader (torch) is imported in export_run, once they pass.

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

    try:
        problem = (missing_model_path(Path(values["checkpoint"]).expanduser().resolve())
                   or writable_path_problem("out", values["out"], is_dir=True))
        if problem:
            raise ValueError(problem)
        out, files = export_run(values["checkpoint"], values["out"], overwrite=overwrite)
    except (CheckpointError, ValueError, OSError) as exc:
        _fail(" ".join(str(exc).split()))
    step = weights_step(Path(values["checkpoint"]))  # the loader's step: a checkpoint directory is its own step
    weights = f" from the weights of step {step}" if step is not None else ""
    print(f"wrote {out} ({', '.join(files)}){weights}; load with TransformerWrapper.from_pretrained({str(out)!r})")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def export_run(run_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> tuple[Path, list[str]]:
    """A trained model's latest weights as a hub-style directory (``xforget-export``).

    ``run_dir`` is anything :func:`~xforget.train.loading.load_trained` opens (a run directory, one
    checkpoint directory, a hub-style directory). Everything is written into ``.<out>.tmp-<pid>/`` beside
    ``out`` and renamed into place (:func:`~xforget.files.atomic_dir`), so ``out`` is either absent/untouched
    or complete. An existing ``out`` that is not empty is refused unless ``overwrite``; ``out`` may not be
    the run directory or hold it, nor lie inside the run's ``checkpoints/``.

    Returns:
        ``(out, files)``: the directory and every file written into it (relative paths, sorted).
    Raises:
        CheckpointError: nothing loadable in ``run_dir``.
        ValueError: ``out`` exists and is not empty (without ``overwrite``), is a file, or is/holds ``run_dir``, or is
            inside the run's ``checkpoints/`` (which training prunes).
    """
    source, target = Path(run_dir).expanduser().resolve(), Path(out).expanduser().resolve()
    run_root = source.parent.parent if source.parent.name == CHECKPOINTS else source
    checkpoints = run_root / CHECKPOINTS
    if target == checkpoints or checkpoints in target.parents:  # keep_last and resume delete checkpoint dirs
        raise ValueError(f"out={out} is inside the run's checkpoints directory ({checkpoints}), which training "
                         "prunes (trainer.keep_last) and rewrites; choose a directory outside it")
    if target == source or target in source.parents:
        raise ValueError(f"out={out} is the run directory or holds it ({source}); choose another directory")
    if target.exists() and not target.is_dir():
        raise ValueError(f"out={out} exists and is not a directory; choose another path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ValueError(f"out={out} already exists and is not empty; choose another directory or add "
                         "overwrite=true (replaces it)")
    missing = missing_model_path(source)
    if missing is not None:
        raise CheckpointError(missing)
    from xforget.train.loading import load_trained  # torch: once the paths passed

    loaded = load_trained(source)  # before anything is written
    with atomic_dir(target) as tmp:
        loaded.model.save_pretrained(tmp, tokenizer=loaded.tokenizer)
        files = sorted(str(f.relative_to(tmp)) for f in tmp.rglob("*") if f.is_file())
    return target, files


if __name__ == "__main__":
    main()
