"""``xforget-eval``: every evaluation of one trained run, as a table and a JSON file.

    xforget-eval checkpoint=RUN_DIR
    xforget-eval checkpoint=RUN_DIR data=shakespeare data.path=FILE eval.seq_len=512
    xforget-eval checkpoint=RUN_DIR eval.multiples=[1,2] eval.tokens=16384 out=eval.json
    xforget-eval checkpoint=HUB_DIR data=text data.path=FILE   # an exported directory: give the data

Config: ``configs/eval.yaml`` over :class:`~xforget.evaluate.config.EvalCommandConfig`.
``data.*`` keys without ``data=NAME`` modify the run's own data config. A
hub-style directory (``xforget-export``, ``save_pretrained``: ``config.json`` +
``model.safetensors`` + tokenizer) records no data, so it needs ``data=NAME``;
its base length is the model's ``max_seq_len``.
    xforget-eval --cfg job checkpoint=RUN_DIR     # print the composed config, evaluate nothing

Errors print one ``error: ...`` line; exit code 2 for bad config, data or
checkpoint, 1 for other failures. A command that produced no result (every
length skipped, e.g. a validation split shorter than the shortest length)
fails with one line and leaves an earlier ``eval.json`` untouched; results are
written atomically. Path values (``checkpoint``, ``data.path``, ``out``) are
literal (``~`` expanded, see :mod:`xforget.commands.args`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from omegaconf import OmegaConf

from xforget.commands.args import emit, literal_paths, writable_path_problem
from xforget.data.corpus import DataError
from xforget.errors import ConfigError
from xforget.evaluate.config import EXIT_CONFIG, EvalCommandConfig, explain_error, split_override, validate_eval
from xforget.files import atomic_write_text
from xforget.train.config import check_data_files, compose_named, load_config_yaml
from xforget.train.run_dir import CheckpointError, latest_checkpoint, missing_model_path

# No torch at the top: the command line (keys, values, paths) is checked first, so a typo is one
# line in a fraction of a second; xforget.evaluate.core (torch) is imported once it passes.

USAGE = __doc__


def fail(message: str, code: int = EXIT_CONFIG) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _run_config_path(checkpoint: str) -> Path | None:
    root = Path(checkpoint)
    latest = latest_checkpoint(root)
    for p in ((latest / "config.yaml") if latest else None, root / "config.yaml"):
        if p is not None and p.is_file():
            return p
    return None


def load_eval_config(argv: list[str]) -> EvalCommandConfig:
    """Compose and type-check the command line.

    Raises:
        ConfigError: one line naming the bad key and the valid keys.
    """
    parsed = [split_override(a) for a in argv]
    has_group = any(k == "data" for k, _ in parsed)
    data_keys = [k.split(".", 1)[1] for k, v in parsed if k.startswith("data.")]
    overrides = list(argv)
    run_data = None
    if data_keys and not has_group:
        # data.* alone: change the run's own data config; compose with its group to type-check the keys
        ckpt = next((v for k, v in parsed if k == "checkpoint"), None)
        path = _run_config_path(ckpt) if ckpt else None
        if path is None:
            raise ConfigError("data.* overrides without data=NAME need checkpoint=RUN_DIR with a config.yaml")
        run_data = load_config_yaml(path).data
        overrides.insert(0, f"data={run_data.name}")
    try:
        cfg = compose_named("eval", overrides)
        missing = [k for k in ("checkpoint",) if OmegaConf.is_missing(cfg, k)]
        if missing:
            raise ConfigError("missing required key: checkpoint=RUN_DIR")
        typed: EvalCommandConfig = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(explain_error(exc, EvalCommandConfig)) from exc
    if run_data is not None:
        typed.data = replace(run_data, **{k: getattr(typed.data, k) for k in data_keys})
    return typed


def cfg_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """Hydra's ``--cfg job`` / ``-c job`` (also ``--cfg=job``): (the part asked for, the other arguments)."""
    rest, part, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a in ("--cfg", "-c") and i + 1 < len(argv):
            part, i = argv[i + 1], i + 2
            continue
        if a.startswith("--cfg="):
            part = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    if part is not None and part not in ("job", "hydra", "all"):
        raise ValueError(f"--cfg {part}: must be one of ['job', 'hydra', 'all']")
    return part, rest


def no_result_reason(result: dict) -> str | None:
    """Why ``result`` holds no measurement at all (every length skipped), or None if it holds one."""
    from xforget.evaluate.core import OK

    rows = result["lengths"] + (result.get("task") or {}).get("lengths", [])
    if any(r["status"] == OK for r in rows):
        return None
    skipped = "; ".join(f"{r['length']}: {r['status']}" + (f" ({r['reason']})" if r.get("reason") else "")
                        for r in result["lengths"])
    return f"nothing evaluated, every length was skipped ({skipped})"


def _job_config(argv: list[str]):
    """The composed job config of ``argv`` (type-checked like a real run, the checkpoint may be missing)."""
    try:
        return OmegaConf.structured(load_eval_config(argv))
    except ConfigError as exc:
        if "missing required key: checkpoint" not in str(exc):
            raise
        return compose_named("eval", argv)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``xforget-eval``); ``argv`` defaults to ``sys.argv[1:]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        emit(USAGE)
        return
    try:
        part, argv = cfg_flag(argv)
        argv = literal_paths(argv)
        if part is not None:
            emit(OmegaConf.to_yaml(compose_named("eval", argv, return_hydra_config=True)
                                   if part != "job" else _job_config(argv)))
            return
        cfg = load_eval_config(argv)
        problem = ((cfg.out and writable_path_problem("out", cfg.out, is_dir=False))
                   or missing_model_path(cfg.checkpoint))
        if problem:
            raise ConfigError(problem)
        validate_eval(cfg.eval)
        if cfg.data is not None:
            check_data_files(cfg.data)  # a missing data.path, before the model is loaded
        if cfg.harness:
            return _harness(cfg)
        from xforget.evaluate.core import evaluate_run  # torch: once the command line passed

        result = evaluate_run(cfg.checkpoint, cfg.eval, cfg.data)
    except (ConfigError, DataError, CheckpointError) as exc:
        fail(str(exc))
    except ValueError as exc:
        fail(str(exc), 1)
    except KeyboardInterrupt:
        fail("interrupted; nothing written", 130)
    # the default eval.json goes into a run or checkpoint directory, never into an exported (hub) one
    out = Path(cfg.out) if cfg.out else (Path(cfg.checkpoint) / "eval.json" if _run_config_path(cfg.checkpoint) else None)
    reason = no_result_reason(result)
    if reason is not None:
        fail(f"{reason}" + ("" if out is None else f"; {out} not written" + (" (the earlier one is kept)"
                                                                              if out.exists() else "")))
    from xforget.evaluate.core import format_table

    print(format_table(result))
    if out is None:
        print(f"not written: {cfg.checkpoint} is not a run directory (give out=FILE to keep the result)")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


def _harness(cfg) -> None:
    """``harness=true``: lm-evaluation-harness tasks on the checkpoint; prints the table, writes JSON."""
    if not cfg.tasks:
        fail("harness=true needs tasks=[name,...] (lm-eval task names, or tasks defined under include_path=DIR)")
    if cfg.include_path is not None and not Path(cfg.include_path).is_dir():
        fail(f"include_path={cfg.include_path}: not a directory")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import make_table

        from xforget.evaluate.core import pick_device
        from xforget.integrations.harness import XForgetLM
    except ImportError as exc:
        fail(f"harness=true needs lm-evaluation-harness ({exc}); install the extra: pip install 'xforget[harness]'")
    try:
        lm = XForgetLM(pretrained=cfg.checkpoint, batch_size=cfg.batch_size, device=str(pick_device(cfg.eval.device)))
    except (ValueError, OSError) as exc:
        fail(" ".join(str(exc).split()))
    manager = TaskManager(include_path=cfg.include_path)
    unknown = [t for t in cfg.tasks if t not in manager.all_tasks]
    if unknown:
        fail(f"unknown harness task(s) {unknown}; define them in a YAML under include_path=DIR, or see `lm-eval ls tasks`")
    results = lm_eval.simple_evaluate(model=lm, tasks=list(cfg.tasks), task_manager=manager,
                                      num_fewshot=cfg.num_fewshot, limit=cfg.limit, log_samples=False)
    print(make_table(results))
    out = Path(cfg.out) if cfg.out else Path(cfg.checkpoint) / "harness.json"
    keep = {k: results[k] for k in ("results", "versions", "n-shot", "configs", "higher_is_better", "n-samples")
            if k in results}
    atomic_write_text(out, json.dumps(keep, indent=1, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
