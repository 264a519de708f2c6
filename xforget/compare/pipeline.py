"""Run a comparison of positional schemes: plan the runs, train, evaluate, report (library side of
``xforget-compare``, see :mod:`xforget.commands.compare`)."""


from __future__ import annotations

import hashlib
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from xforget.compare.checks import preflight
from xforget.compare.config import CompareConfig, load_compare_config, partition_overrides  # noqa: F401  (names this module has had)
from xforget.compare.plots import write_plots
from xforget.compare.prepared import check_packing_input, ensure_prepared, prepare_summary
from xforget.compare.report import build_report, train_summary, write_json, write_markdown
from xforget.compare.runs import ensure_trained, plan_runs, scheme_overrides
from xforget.evaluate.config import EvalConfig, split_override
from xforget.errors import ConfigError
from xforget.evaluate.core import checkpoint_step, evaluate_run
from xforget.files import atomic_write_text
from xforget.train.config import compose_config, user_config_overrides


def eval_cache_path(run_dir: Path, ecfg: EvalConfig, step: int | None) -> Path:
    key = hashlib.sha256(json.dumps({"eval": asdict(ecfg), "step": step}, sort_keys=True).encode()).hexdigest()[:10]
    return run_dir / f"compare-eval-{key}.json"


def evaluate_cached(run_dir: Path, ecfg: EvalConfig) -> tuple[dict[str, Any], bool]:
    """``evaluate_run`` for a finished run, cached in the run directory; returns (result, was_cached).

    The result records its own ``eval_wall_s`` (seconds the evaluation took when it ran).
    """
    import time

    path = eval_cache_path(run_dir, ecfg, checkpoint_step(run_dir))
    if path.is_file():
        try:
            return json.loads(path.read_text()), True
        except ValueError:
            pass
    tic = time.time()
    result = evaluate_run(run_dir, ecfg)
    result["eval_wall_s"] = round(time.time() - tic, 2)
    atomic_write_text(path, json.dumps(result) + "\n")
    return result, False


def _evaluate_worker(run_dir: str, ecfg: EvalConfig, threads: int) -> tuple[dict[str, Any], bool]:
    import torch

    torch.set_num_threads(threads)
    return evaluate_cached(Path(run_dir), ecfg)


def evaluate_all(run_dirs: list[Path], ecfg: EvalConfig, jobs: int) -> list[tuple[dict[str, Any], bool]]:
    """``evaluate_cached`` for every run; ``jobs > 1``: that many worker processes (spawned), each with
    ``eval.threads`` threads (default: this machine's cores / jobs)."""
    if jobs <= 1 or len(run_dirs) <= 1:
        return [evaluate_cached(d, ecfg) for d in run_dirs]
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = ecfg.threads or max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_evaluate_worker, str(d), ecfg, threads) for d in run_dirs]
        return [f.result() for f in futures]


def plan_comparison(argv: list[str], *, log=print, data_info: dict | None = None, prepare_data: bool = True):
    """(comparison config, output directory, training overrides, planned runs) of ``argv``; nothing is trained.

    With a ``prepare:`` node the token shards are made first (or re-used), as
    every run's vocabulary comes from them; ``data_info`` (a dict) receives
    what was prepared and how long it took. ``prepare_data=False`` (``--cfg job``) writes nothing:
    when the shards are not there yet, the planned runs are ``[]``.

    Raises:
        ConfigError: a bad key, scheme or training setting. DataError: the data step failed.
    """
    import time

    argv, search = user_config_overrides(argv)  # --config-dir DIR: the user's presets, for both
    mine, train_args = partition_overrides(argv)
    cfg, out_dir = load_compare_config(mine + search)
    out_dir = out_dir.resolve()
    blocked = next((p for p in (out_dir, *out_dir.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:  # before any run: mkdir would fail with a traceback
        raise ConfigError(f"hydra.run.dir={out_dir}: {blocked} is a file, not a directory; choose another path")

    for scheme in cfg.positions:  # a misspelt scheme fails before any data is prepared
        scheme_overrides(scheme)
    data_args = []
    if cfg.prepare is not None:
        p = cfg.prepare  # ComparePrepare: xforget-prepare's keys
        for arg in [*cfg.train, *train_args]:  # before preparing: the runs' data is what it makes
            key, value = split_override(arg)
            if key == "data.path" or (key == "data" and value != "tokens"):
                raise ConfigError(f"'{arg}': with a prepare node every run trains on the shards it makes (data=tokens "
                                  "data.path=<those shards>); drop it, or set prepare=null to train on other data")
        if _packs_documents([*search, *cfg.train, *train_args]):
            check_packing_input(p)  # one line now, not after preparing the whole corpus
        tic = time.time()
        target, reused = ensure_prepared(p.prepare_config(), out_dir, log=log, create=prepare_data)
        if not prepare_data and not reused:
            return cfg, out_dir, [*search, *cfg.train, "data=tokens", f"data.path={target}", *train_args], []
        if data_info is not None:
            data_info.update(prepare_summary(target), reused=reused, wall_s=round(time.time() - tic, 2))
        data_args = ["data=tokens", f"data.path={target}"]
    train_args = [*search, *cfg.train, *data_args, *train_args]
    runs = plan_runs(list(cfg.positions), list(cfg.seeds), train_args, out_dir)

    preflight(cfg, runs)
    return cfg, out_dir, train_args, runs


def _packs_documents(train_args: list[str]) -> bool:
    """Whether the runs' composed training config sets ``data.pack_documents`` (False if it does not compose:
    planning the runs names that error)."""
    try:
        return bool(OmegaConf.select(compose_config(train_args), "data.pack_documents", default=False))
    except Exception:  # noqa: BLE001 - any composition error is reported by plan_runs, in its own words
        return False


def data_label(d) -> str:
    """The report's name for a run's data config ``d``: ``tokens (DIR)``, and whether documents are packed
    (``data.pack_documents=true`` changes every score, so the report says so in its first line)."""
    label = d.name + (f" ({Path(d.path).name})" if d.path else "")
    return label + (", packed documents" if getattr(d, "pack_documents", False) else "")


def run_compare(argv: list[str], *, log=print) -> dict[str, Any]:
    """The whole comparison for command-line overrides ``argv``; returns the compare.json object.

    Raises:
        ConfigError, DataError (exit 2), CompareError (a training run failed).
    """
    import time

    tic = time.time()
    data_info: dict[str, Any] = {}
    cfg, out_dir, train_args, runs = plan_comparison(argv, log=log, data_info=data_info)
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"[compare] {len(runs)} runs ({len(cfg.positions)} schemes x {len(cfg.seeds)} seeds) in {out_dir}"
        + (f", {cfg.jobs} at a time" if cfg.jobs > 1 else ""))
    t_train = time.time()
    ensure_trained(runs, retrain=cfg.retrain, in_subprocess=cfg.subprocess, log=log, jobs=cfg.jobs)
    t_eval = time.time()
    evaluated = evaluate_all([run.run_dir for run in runs], cfg.eval, cfg.jobs)
    t_report = time.time()

    records = []
    for run, (result, cached) in zip(runs, evaluated):
        log(f"[compare] {'cached' if cached else 'evaluated'} {run.key}: val_bpb={result['val_bpb']:.4f}")
        records.append({"scheme": run.scheme, "seed": run.seed, "run_dir": str(run.run_dir), "reused": run.reused,
                        "eval": result, "train": train_summary(run.run_dir, run.cfg),
                        "peak_rss_mb": run.info.get("peak_rss_mb"),
                        "wall_s": run.info.get("train_wall_s") or run.info.get("wall_s"),
                        "process_wall_s": run.info.get("wall_s"), "eval_wall_s": result.get("eval_wall_s"),
                        "resumed": run.info.get("resumed_from_step") is not None})
    c0 = runs[0].cfg
    t, m, d = c0.trainer, c0.model, c0.data
    meta = {
        "command": "xforget-compare " + " ".join(shlex.quote(a) for a in argv),
        "out_dir": str(out_dir),
        "positions": list(cfg.positions),
        "seeds": list(cfg.seeds),
        "train_overrides": train_args,
        "train_seq_len": t.seq_len,
        "data": data_label(d),
        "pack_documents": bool(getattr(d, "pack_documents", False)),
        "model": f"dim {m.dim}, depth {m.depth}, heads {m.heads}",
        "budget": f"{t.max_steps} steps x {t.batch_size * t.grad_accum} windows x {t.seq_len} {'tokens' if d.name == 'tokens' else 'bytes'}",
        "eval": asdict(cfg.eval),
        "jobs": cfg.jobs,
        "threads_per_run": t.threads,
        "prepared_data": data_info or None,
        "wall_s": {"prepare": data_info.get("wall_s"), "plan": round(t_train - tic, 2),
                   "train": round(t_eval - t_train, 2), "evaluate": round(t_report - t_eval, 2)},
    }
    report = build_report(records, meta=meta, findings=cfg.findings)
    plots = write_plots(report, out_dir) if cfg.plots else []
    report["meta"]["plots"] = [Path(p).name for p in plots]
    report["meta"]["wall_s"]["report"] = round(time.time() - t_report, 2)
    report["meta"]["wall_s"]["total"] = round(time.time() - tic, 2)
    write_json(report, out_dir / "compare.json")
    text = write_markdown(report, out_dir / "compare.md", plots)
    log(text)
    log(f"[compare] wrote {out_dir / 'compare.md'}, {out_dir / 'compare.json'} and {len(plots)} plots")
    return report


def composed_config_yaml(argv: list[str]) -> str:
    """``--cfg job``: the comparison's own config and the training config of its first run, as YAML.

    Raises:
        ConfigError: as for a real run.
    """
    cfg, _, train_args, runs = plan_comparison(argv, log=lambda m: print(m, file=sys.stderr), prepare_data=False)
    text = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    if not runs:  # nothing is prepared by --cfg: the runs' config needs the shards' vocabulary
        return text + ("# the runs train on prepared token shards that are not there yet; run the comparison (it "
                       "prepares them first) or xforget-prepare, then --cfg job shows the first run's training "
                       "config. Its training overrides: " + " ".join(shlex.quote(a) for a in train_args) + "\n")
    first = runs[0]
    text += f"# training config of the first run ({first.key}; {len(runs)} runs in all), {first.run_dir}\n"
    return text + OmegaConf.to_yaml({"first_run": OmegaConf.structured(first.cfg)})
