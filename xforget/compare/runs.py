"""Plan, train (or re-use) and evaluate the runs of one comparison.

Each (scheme, seed) becomes one training run with the same overrides except
the model preset / position and the seed. Its directory name ends in a hash of
the fully resolved training config, ``runs/<scheme>-seed<S>-<hash8>/``, so

* the same command again finds the same directories and **re-uses** finished
  runs (final checkpoint at ``trainer.max_steps``, ``model.safetensors``,
  ``config.yaml`` equal to the planned config) without training;
* an interrupted run is continued (training resumes from its latest checkpoint);
* a changed setting (budget, data, size) gets new directories instead of
  clobbering old ones.

Training runs in a subprocess (``python -m xforget.train ... hydra.run.dir=DIR``),
which isolates memory and gives each run's peak RSS (``os.wait4``); that and
the wall time are kept in ``DIR/compare-run.json``. ``train_wall_s`` is the
training loop's own clock (``elapsed_s`` of the run's last ``metrics.jsonl``
record: every step from 0 to the end once, evaluations and checkpoints
included, start-up excluded), so a run that was interrupted and resumed counts
its whole training; ``resumed_from_step`` marks such a run.

Interruption: the training process runs in its own process group, so a Ctrl-C
reaches only ``xforget-compare``, which forwards one SIGINT to the training
process (it checkpoints its current step and exits) and stops; a second Ctrl-C
makes the training process exit at once. Re-running the command continues.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xforget.compare.config import check_plan
from xforget.files import atomic_write_text
from xforget.models.positions import position_schemes
from xforget.train.checkpoint import CheckpointError, complete_checkpoints
from xforget.train.config import (
    ConfigError,
    TrainConfig,
    compose_config,
    config_dir,
    config_to_yaml,
    load_config_yaml,
    to_train_config,
)
from xforget.train.loop import TrainingError, train

RUN_INFO = "compare-run.json"
TRAIN_OUT = "compare-train.out"  # a training process's output when runs train in parallel (jobs > 1)


class CompareError(RuntimeError):
    """A comparison cannot go on (a training run failed); one line for the user."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def model_presets() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))


def scheme_overrides(name: str) -> list[str]:
    """Training overrides selecting scheme ``name``.

    A model preset (``configs/model/<name>.yaml``, e.g. ``fox_pro``) -> ``model=<name>``;
    otherwise a position scheme -> ``model.position=<name>``; ``a+b`` combines
    schemes (``model.position=[a,b]``).

    Raises:
        ConfigError: neither a preset nor a scheme, listing both.
    """
    presets = model_presets()
    if name in presets:
        return [f"model={name}"]
    parts = [p for p in name.split("+") if p]
    valid = position_schemes()
    if parts and all(p in valid for p in parts):
        return [f"model.position={parts[0]}" if len(parts) == 1 else f"model.position=[{','.join(parts)}]"]
    raise ConfigError(f"unknown scheme {name!r} in positions; valid: model presets {presets} "
                      f"or position schemes {sorted(valid)} (combine schemes with '+')")


@dataclass
class PlannedRun:
    scheme: str
    seed: int
    overrides: list[str]  # training overrides, hydra.run.dir excluded
    cfg: TrainConfig
    run_dir: Path
    reused: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # compare-run.json

    @property
    def key(self) -> str:
        return f"{self.scheme}/seed{self.seed}"


def config_hash(cfg: TrainConfig) -> str:
    return hashlib.sha256(config_to_yaml(cfg).encode()).hexdigest()[:8]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


# Compared runs train every scheme for the same number of steps (equal tokens, reproducible on any machine),
# not for a time budget as the default training run does: a run's own overrides may still set either.
STEP_BUDGET = ("trainer.max_steps=1100", "trainer.max_time=null")


def _unless_given(defaults: tuple[str, ...], overrides: list[str]) -> list[str]:
    """The ``defaults`` whose key ``overrides`` does not set: a later override wins anyway, so the printed
    command line of a run shows each key once (not ``trainer.max_steps=1100 ... trainer.max_steps=6``)."""
    given = {o.partition("=")[0].lstrip("+~") for o in overrides}
    return [d for d in defaults if d.partition("=")[0] not in given]


def plan_runs(positions: list[str], seeds: list[int], train_overrides: list[str], out_dir: Path) -> list[PlannedRun]:
    """Compose and validate every run's training config (fails fast, before any training).

    Raises:
        ConfigError: a bad scheme name or training key (one line, valid keys listed).
    """
    check_plan(positions, seeds)
    runs = []
    for scheme in positions:
        for seed in seeds:
            overrides = [*_unless_given(STEP_BUDGET, train_overrides), *train_overrides, *scheme_overrides(scheme),
                         f"seed={seed}"]
            cfg = to_train_config(compose_config(overrides))
            run_dir = out_dir / "runs" / f"{_safe(scheme)}-seed{seed}-{config_hash(cfg)}"
            runs.append(PlannedRun(scheme, seed, overrides, cfg, run_dir.resolve()))
    return runs


def is_finished(run_dir: Path, cfg: TrainConfig) -> bool:
    """Finished: final checkpoint at max_steps and final weights present, and the same resolved config."""
    if not (run_dir / "model.safetensors").is_file() or not (run_dir / "config.yaml").is_file():
        return False
    found = complete_checkpoints(run_dir)
    if cfg.trainer.max_steps > 0 and (not found or found[-1][0] != cfg.trainer.max_steps):
        return False
    try:
        saved = load_config_yaml(run_dir / "config.yaml")
    except Exception:
        return False
    return asdict(saved) == asdict(cfg)


def _config_diff(run_dir: Path, cfg: TrainConfig) -> str:
    try:
        saved = asdict(load_config_yaml(run_dir / "config.yaml"))
    except Exception:
        return ""
    planned = asdict(cfg)
    diff = [f"{k}.{f}: {v!r} != {planned[k].get(f)!r}" for k, node in saved.items() if isinstance(node, dict)
            for f, v in node.items() if planned[k].get(f) != v]
    diff += [f"{k}: {v!r} != {planned[k]!r}" for k, v in saved.items() if not isinstance(v, dict) and planned[k] != v]
    return f" (saved vs planned: {'; '.join(diff)})" if diff else ""


class Interrupted(CompareError):
    """Ctrl-C / SIGTERM during a comparison; the message says how to continue."""

    def __init__(self, key: str, run_dir: Path) -> None:
        super().__init__(f"interrupted while training {key} ({run_dir}); run the same command again to continue: "
                         "finished runs are re-used and this one resumes from its latest checkpoint", code=130)


def _latest_step(run_dir: Path) -> int | None:
    found = complete_checkpoints(run_dir) if run_dir.is_dir() else []
    return found[-1][0] if found else None


def train_wall_s(run_dir: Path) -> float | None:
    """The training loop's seconds over the whole run (all resumed parts): the last ``elapsed_s`` in metrics."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return float(json.loads(line)["elapsed_s"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def _wait_forwarding_interrupts(proc: subprocess.Popen):
    """``os.wait4`` on ``proc``; a KeyboardInterrupt here is forwarded to it as SIGINT (it checkpoints and
    exits), a second one as another SIGINT (it exits at once); then the KeyboardInterrupt propagates."""
    interrupts = 0
    while True:
        try:
            result = os.wait4(proc.pid, 0)
        except KeyboardInterrupt:
            interrupts += 1
            try:
                proc.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass
            continue
        if interrupts:
            raise KeyboardInterrupt
        return result


def read_info(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / RUN_INFO).read_text())
    except (OSError, ValueError):
        return {}


def train_run(run: PlannedRun, *, log=print, in_subprocess: bool = True) -> None:
    """Train ``run`` (in a subprocess by default); record wall time and peak RSS in ``compare-run.json``.

    ``in_subprocess=False`` calls :func:`xforget.train.train` in this process
    (faster start; the peak RSS is then this process's high-water mark so far).

    Raises:
        CompareError: the training process failed (its exit code is kept; 2 = config/data).
    """
    run.run_dir.mkdir(parents=True, exist_ok=True)
    if not in_subprocess:
        _train_here(run, log=log)
        return
    started = _start(run, log=log, quiet=False)
    try:
        _, status, usage = _wait_forwarding_interrupts(started.proc)
    except KeyboardInterrupt:
        raise Interrupted(run.key, run.run_dir) from None
    _finish(started, status, usage)


@dataclass
class _Started:
    run: PlannedRun
    proc: subprocess.Popen
    cmd: list[str]
    tic: float
    resumed_from: int | None


def _start(run: PlannedRun, *, log=print, quiet: bool = False) -> _Started:
    """Start the training process of ``run``; ``quiet``: its output goes to ``RUN_DIR/compare-train.out``."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "xforget.train", *run.overrides, f"hydra.run.dir={run.run_dir}"]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log(f"[compare] training {run.key}: {' '.join(cmd[1:])}" + (f" (output: {run.run_dir / TRAIN_OUT})" if quiet else ""))
    sys.stdout.flush()
    sys.stderr.flush()
    resumed_from = _latest_step(run.run_dir)
    out = open(run.run_dir / TRAIN_OUT, "ab") if quiet else None
    try:
        # own process group: Ctrl-C reaches us only; we forward it once
        proc = subprocess.Popen(cmd, env=env, process_group=0, stdout=out, stderr=subprocess.STDOUT if quiet else None)
    finally:
        if out is not None:
            out.close()
    return _Started(run, proc, cmd, time.time(), resumed_from)


def _finish(started: _Started, status: int, usage) -> None:
    """Check the exit of a training process and record ``compare-run.json``.

    Raises:
        Interrupted, CompareError.
    """
    run, proc = started.run, started.proc
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    wall = time.time() - started.tic
    if code in (130, 143, -signal.SIGINT, -signal.SIGTERM):  # stopped by a signal that was not ours
        raise Interrupted(run.key, run.run_dir)
    if code != 0:
        raise CompareError(f"training {run.key} failed with exit code {code} (see {run.run_dir / 'train.log'}); "
                           "run the same command again to resume", code=2 if code == 2 else 1)
    if not is_finished(run.run_dir, run.cfg):
        raise CompareError(f"training {run.key} exited but {run.run_dir} holds no finished run with the planned "
                           f"config{_config_diff(run.run_dir, run.cfg)}")
    run.info = {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # ru_maxrss: KiB on Linux
                "train_wall_s": train_wall_s(run.run_dir), "resumed_from_step": started.resumed_from,
                "command": started.cmd, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(run.run_dir / RUN_INFO, json.dumps(run.info, indent=1) + "\n")


def train_parallel(runs: list[PlannedRun], jobs: int, *, log=print) -> None:
    """Train ``runs`` in subprocesses, ``jobs`` at a time (in order); each one's output goes to its directory.

    A Ctrl-C (or SIGTERM) is forwarded once as SIGINT to every running process
    (each checkpoints its current step); the others are not started. After a
    failure the running processes finish and nothing new starts.

    Raises:
        Interrupted, CompareError (the first failure).
    """
    pending, active = list(runs), {}
    interrupted: _Started | None = None
    failure: CompareError | None = None
    while pending or active:
        while pending and len(active) < jobs and interrupted is None and failure is None:
            started = _start(pending.pop(0), log=log, quiet=True)
            active[started.proc.pid] = started
        if not active:
            break
        try:
            pid, status, usage = os.wait4(-1, 0)
        except KeyboardInterrupt:
            interrupted = interrupted or next(iter(active.values()))
            for started in active.values():
                try:
                    started.proc.send_signal(signal.SIGINT)
                except ProcessLookupError:
                    pass
            continue
        except ChildProcessError:
            break
        started = active.pop(pid, None)
        if started is None:
            continue
        try:
            _finish(started, status, usage)
            log(f"[compare] finished {started.run.key} in {started.run.info['wall_s']:.0f} s")
        except Interrupted as exc:
            interrupted = interrupted or started
            failure = failure or exc
        except CompareError as exc:
            failure = failure or exc
    if interrupted is not None:
        raise Interrupted(interrupted.run.key, interrupted.run.run_dir)
    if failure is not None:
        raise failure


def _train_here(run: PlannedRun, *, log=print) -> None:
    import resource

    log(f"[compare] training {run.key} in-process: {' '.join(run.overrides)} -> {run.run_dir}")
    resumed_from = _latest_step(run.run_dir)
    tic = time.time()
    try:
        result = train(run.cfg, run.run_dir)
    except (CheckpointError, TrainingError) as exc:
        raise CompareError(f"training {run.key} failed: {exc}") from exc
    except KeyboardInterrupt:
        raise Interrupted(run.key, run.run_dir) from None
    if result.stop_signal is not None:
        raise Interrupted(run.key, run.run_dir)
    if not is_finished(run.run_dir, run.cfg):
        raise CompareError(f"training {run.key} returned but {run.run_dir} holds no finished run with the planned "
                           f"config{_config_diff(run.run_dir, run.cfg)}")
    run.info = {"wall_s": round(time.time() - tic, 2), "train_wall_s": train_wall_s(run.run_dir),
                "resumed_from_step": resumed_from,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "peak_rss_scope": "compare process (in-process training)",
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(run.run_dir / RUN_INFO, json.dumps(run.info, indent=1) + "\n")


def ensure_trained(runs: list[PlannedRun], *, retrain: bool = False, in_subprocess: bool = True,
                   log=print, jobs: int = 1) -> None:
    """Train every run that is not finished (all of them with ``retrain``); mark the others re-used.

    ``jobs > 1`` (subprocesses only): that many training processes at once (:func:`train_parallel`).
    """
    import shutil

    todo = []
    for run in runs:
        if retrain and run.run_dir.exists():
            shutil.rmtree(run.run_dir)
        if is_finished(run.run_dir, run.cfg):
            run.reused, run.info = True, read_info(run.run_dir)
            log(f"[compare] re-using finished run {run.key}: {run.run_dir}")
            continue
        todo.append(run)
    if jobs > 1 and in_subprocess:
        train_parallel(todo, jobs, log=log)
        return
    for run in todo:
        train_run(run, log=log, in_subprocess=in_subprocess)
