"""``xforget-train``: the Hydra command line for :func:`xforget.train.loop.train`.

    xforget-train                                   # default: FoX on the stdlib corpus
    xforget-train model.position=rotary trainer.max_steps=500
    xforget-train data=text data.path=notes.txt hydra.run.dir=runs/notes
    xforget-train hydra.run.dir=runs/notes         # the same command again resumes
    torchrun --nproc_per_node=2 -m xforget.train trainer.batch_size=32   # 2 processes, 16 windows each

Errors (unknown or mistyped config keys, missing data, a run directory holding
another model, a diverged loss) print one ``error: ...`` line (under torchrun:
from rank 0 only), also appended to the run's ``train.log`` when it has one; a
failed run leaves no empty time-stamped directory behind, and a config or data
error leaves an explicit ``hydra.run.dir`` as it was before the command (removed
if the command created it). Under ``-m``
(multirun) every failed job gets its own ``error:`` line. Exit codes: 0 ok,
1 training failed (diverged, corrupt checkpoint), 2 bad config or data,
130 / 143 stopped by SIGINT / SIGTERM (after checkpointing the current step;
the command that resumes is printed).

Path values (``data.path``, ``hydra.run.dir``, ``trainer.init_from``, ...) are
literal: ``~`` is expanded and characters Hydra's grammar rejects are quoted
for it (:mod:`xforget.commands.args`).

Under torchrun every rank composes the same config; rank 0 picks the run
directory (Hydra's time-stamped default could differ by a second between
ranks) and the others use it, without writing Hydra's ``.hydra/`` files.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from xforget.commands.args import literal_paths, writable_path_problem
from xforget.data.corpus import DataError
from xforget.errors import ConfigError
from xforget.files import atomic_write_bytes
from xforget.train.config import (
    check_data_files,
    compose_config,
    config_dir,
    explain_config_error,
    to_train_config,
    user_config_overrides,
    validate_model,
)
from xforget.train.run_dir import CheckpointError, latest_checkpoint, missing_init_from

# This module imports no torch at its top: the command line is composed and checked (keys, types and
# every value but the model's) first, so a typo is one line in a fraction of a second; the training
# modules (torch) are imported once it passes (_heavy_checks, main).

EXIT_CONFIG, EXIT_RUNTIME = 2, 1

# Hydra flags after which composing the config ourselves would be wrong or pointless.
_HYDRA_ONLY_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc",
                     "--config-path", "-cp", "--config-name", "-cn",
                     "--experimental-rerun", "--resolve", "--package", "-p", "--cfg", "-c")
_MULTIRUN = ("--multirun", "-m")
# What makes a run directory worth keeping after a failure.
_RESULTS = ("checkpoints", "metrics.jsonl", "model.safetensors", "eval.json")


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _fail(message: str, code: int) -> None:
    if _is_rank0():  # every rank fails the same way: one line is enough
        print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _sweep(argv: list[str]) -> list[list[str]]:
    """The override lists of every job of ``argv`` (one list without ``-m``; the sweep's product with it)."""
    overrides = [a for a in argv if a not in _MULTIRUN]
    if not any(a in _MULTIRUN for a in argv):
        return [overrides]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except Exception as exc:
        raise ConfigError(explain_config_error(exc)) from None


def _precheck(argv: list[str]) -> DictConfig | None:
    """Compose the config of every job with the command-line overrides, to report config errors in one line.

    Hydra itself would print a multi-line message without the valid keys and exit 1.
    Returns the composed config of the (first) job, with its ``hydra`` node, or None for Hydra's own flags.
    Under ``-m`` every job of the sweep is checked and each bad one gets its own ``error:`` line.
    """
    if any(a.split("=")[0] in _HYDRA_ONLY_FLAGS for a in argv):
        return None
    try:
        rest, search = user_config_overrides(argv)
        jobs = [job + search for job in _sweep(rest)]
    except ConfigError as exc:
        _fail(str(exc), EXIT_CONFIG)
    composed, checked, errors = None, [], []
    for i, job in enumerate(jobs):  # the light pass: no torch imported yet
        try:
            cfg = compose_config(job, return_hydra_config=True)
            typed = to_train_config(cfg, model=False)
            # files named by the config, before Hydra creates the run directory
            explicit = Path(str(cfg.hydra.run.dir)) if len(jobs) == 1 and _user_run_dir(argv) else None
            if explicit is not None and not str(cfg.hydra.run.dir).strip():
                raise ConfigError("hydra.run.dir is empty (the run would write into the current directory): give "
                                  "a directory, e.g. hydra.run.dir=runs/NAME (a new one, or a run to resume)")
            problem = explicit is not None and writable_path_problem("hydra.run.dir", str(explicit), is_dir=True)
            problem = problem or missing_init_from(typed.trainer.init_from, explicit)
            if problem:
                raise ConfigError(problem)
            try:
                check_data_files(typed.data)  # a missing or empty data file
            except ConfigError as exc:
                if explicit is not None:  # an existing run's train.log records it, as a failure in the run would
                    _note_failure(explicit, str(exc), generated=False)
                raise
            checked.append((i, job, typed, explicit))
            composed = composed if composed is not None else cfg
        except ConfigError as exc:
            errors.append(_job_error(str(exc), i, job, len(jobs)))
        except Exception as exc:  # OmegaConf errors while resolving / converting
            errors.append(_job_error(explain_config_error(exc), i, job, len(jobs)))
    if not errors:
        errors = _heavy_checks(checked, len(jobs))
    if errors:
        if _is_rank0():
            for message in errors[:-1]:
                print(f"error: {message}", file=sys.stderr)
        _fail(errors[-1], EXIT_CONFIG)
    return composed


def _job_error(message: str, i: int, job: list[str], n_jobs: int) -> str:
    return f"job {i} ({' '.join(job)}): {message}" if n_jobs > 1 and not message.startswith("job ") else message


def _heavy_checks(checked: list, n_jobs: int) -> list[str]:
    """The checks that need the model code (torch): the model's values, ``trainer.init_from``'s weights
    (a run directory that already holds a checkpoint resumes from it and does not read them) and the
    trackers' packages (``logger=wandb`` without wandb). Returns the error lines, one per bad job."""
    from xforget.train.loading import check_init_from
    from xforget.train.device import check_backend_device
    from xforget.train.trackers import check_trackers

    errors = []
    for i, job, typed, explicit in checked:
        try:
            validate_model(typed.model)
            check_init_from(typed.trainer.init_from, explicit)
            check_trackers(typed.logger)
            check_backend_device(typed.model, typed.trainer.device)  # device-dependent: before Hydra's run dir
        except ConfigError as exc:
            errors.append(_job_error(str(exc), i, job, n_jobs))
    return errors


def _join_torchrun(composed: DictConfig, argv: list[str]):
    """Under torchrun: join the process group and make every rank use rank 0's run directory."""
    from xforget.train.distributed import broadcast_object, init_distributed

    try:
        info = init_distributed(str(composed.trainer.device))
    except RuntimeError as exc:
        _fail(str(exc), EXIT_CONFIG)
    if info.enabled:
        if not _user_run_dir(argv):
            sys.argv.append(f"hydra.run.dir={broadcast_object(str(composed.hydra.run.dir), info)}")
        if not info.is_main:
            sys.argv.append("hydra.output_subdir=null")
    return info


def _user_run_dir(argv: list[str]) -> bool:
    return any(a.lstrip("+").startswith("hydra.run.dir=") for a in argv)


def resume_command(argv: list[str], run_dir: Path) -> str:
    """The shell command that resumes the run in ``run_dir``: the same overrides plus ``hydra.run.dir``."""
    prog = Path(sys.argv[0]).name
    if os.environ.get("LOCAL_RANK") is not None:  # launched by torchrun
        prog = "torchrun <the same torchrun options> -m xforget.train"
    elif prog != "xforget-train":
        prog = "python -m xforget.train"
    args = [a for a in argv if not a.lstrip("+").startswith("hydra.run.dir=")]
    return " ".join([prog, *(shlex.quote(a) for a in args), shlex.quote(f"hydra.run.dir={run_dir}")])


def _note_failure(run_dir: Path, message: str, generated: bool) -> None:
    """A failed run: append the error to its train.log, or remove the directory if this command made it
    (a time-stamped default) and it holds no results."""
    if not _is_rank0() or not run_dir.is_dir():
        return
    if generated and not any((run_dir / name).exists() for name in _RESULTS):
        _remove_with_empty_parents(run_dir)
        return
    log = run_dir / "train.log"
    if log.is_file():
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} | ERROR   | {message}\n")


class _RunDirSnapshot:
    """What an explicit ``hydra.run.dir`` held before this command, so that a run failing with a config or
    data error leaves nothing new behind: a directory this command created is removed (with the parents it
    created), an existing one gets back its entries and ``.hydra/`` files as they were (Hydra writes
    ``.hydra/`` before the job runs). Nothing is removed once the run wrote results."""

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser().absolute()
        self.created: Path | None = None  # the top-most directory this command will create
        p = self.path
        while not p.exists() and p != p.parent:
            self.created, p = p, p.parent
        existed = self.created is None and self.path.is_dir()
        self.names = {c.name for c in self.path.iterdir()} if existed else set()
        hydra = self.path / ".hydra"
        self.hydra = ({f.name: f.read_bytes() for f in hydra.iterdir() if f.is_file()}
                      if existed and hydra.is_dir() else None)

    def restore(self) -> None:
        if not self.path.is_dir() or any((self.path / n).exists() and n not in self.names for n in _RESULTS):
            return
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            return
        for child in self.path.iterdir():
            if child.name not in self.names:
                _remove(child)
        hydra = self.path / ".hydra"
        if self.hydra is not None and hydra.is_dir():
            for child in hydra.iterdir():
                if child.name not in self.hydra:
                    _remove(child)
            for name, data in self.hydra.items():
                if not (hydra / name).is_file() or (hydra / name).read_bytes() != data:
                    atomic_write_bytes(hydra / name, data)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_with_empty_parents(path: Path, levels: int = 2) -> None:
    """Delete ``path`` and then up to ``levels`` parents that became empty (``outputs/<date>/``)."""
    shutil.rmtree(path, ignore_errors=True)
    for parent in list(path.parents)[:levels]:
        try:
            parent.rmdir()
        except OSError:
            break


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``xforget-train``); ``argv`` defaults to ``sys.argv[1:]``."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    user_argv = list(sys.argv[1:] if argv is None else argv)
    try:
        sys.argv = [sys.argv[0], *literal_paths(user_argv)]
        configs = config_dir()
    except (ConfigError, ValueError) as exc:
        _fail(str(exc), EXIT_CONFIG)
    composed = _precheck(sys.argv[1:])
    info = None
    if composed is not None:
        if "WORLD_SIZE" in os.environ:  # launched by torchrun (xforget.train.distributed.launched_by_torchrun)
            info = _join_torchrun(composed, sys.argv[1:])
    generated = not _user_run_dir(user_argv)
    multirun = any(a in _MULTIRUN for a in user_argv)
    before = None  # an explicit run directory as it was: a config/data error leaves it so
    if composed is not None and not generated and not multirun and _is_rank0():
        before = _RunDirSnapshot(Path(str(composed.hydra.run.dir)))
    errors: list[tuple[str, int]] = []
    sweep_dirs: set[Path] = set()

    def task(cfg: DictConfig) -> None:
        from xforget.train.loop import TrainingError, train  # torch: only once the command line passed

        hc = HydraConfig.get()
        run_dir = Path(hc.runtime.output_dir)
        where = f"job {hc.job.num} ({' '.join(hc.overrides.task)}): " if multirun else ""
        if multirun:
            sweep_dirs.add(Path(hc.sweep.dir))
        try:
            result = train(to_train_config(cfg), run_dir)
        except (ConfigError, DataError, CheckpointError, TrainingError, KeyboardInterrupt) as exc:
            if isinstance(exc, KeyboardInterrupt):
                saved = latest_checkpoint(run_dir) if run_dir.is_dir() else None
                message, code = "interrupted before the first checkpoint; nothing to resume", 130
                if saved is not None:
                    message = f"interrupted; resume from {saved} with: {resume_command(user_argv, run_dir)}"
            else:
                message = str(exc)
                code = EXIT_CONFIG if isinstance(exc, (ConfigError, DataError)) else EXIT_RUNTIME
            if before is not None and code == EXIT_CONFIG:
                before.restore()
            _note_failure(run_dir, message, generated)
            errors.append((where + message, code))
            return
        if not _is_rank0():
            return
        print(f"run directory: {result.run_dir}")
        if result.stop_signal is not None:
            print(f"stopped by {result.stop_signal} after step {result.step}; checkpoint saved: {result.checkpoint}",
                  file=sys.stderr)
            print(f"to resume: {resume_command(user_argv, result.run_dir)}", file=sys.stderr)
            sys.stderr.flush()
            errors.append(("", 130 if result.stop_signal == "SIGINT" else 143))
            return
        if result.interrupted:  # XFORGET_DEBUG_STOP_AFTER_STEP
            print(f"stopped after step {result.step} (XFORGET_DEBUG_STOP_AFTER_STEP)")
            sys.stdout.flush()
            return
        print(f"val_bpb={result.val_bpb:.4f}")
        if result.sample is not None:
            print(f"sample prompt ({len(result.sample_prompt.encode())} bytes from the validation split):")
            print(result.sample_prompt)
            print(f"sample (generated after the prompt, temperature {cfg.trainer.sample_temperature}):")
            print(result.sample)
        sys.stdout.flush()

    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; we print one line instead of its report
    try:
        hydra.main(config_path=str(configs), config_name="train", version_base="1.3")(task)()
    except SystemExit:
        raise
    except BrokenPipeError:  # e.g. `xforget-train --cfg job | head`
        sys.stderr.close()
        sys.exit(0)
    except Exception as exc:  # e.g. composition errors with --config-dir, which the precheck does not see
        _fail(explain_config_error(exc), EXIT_CONFIG)
    finally:
        if info is not None:
            from xforget.train.distributed import shutdown

            shutdown(info)
    generated_sweep = not any(a.lstrip("+").startswith("hydra.sweep.dir=") for a in user_argv)
    for sweep in sweep_dirs:  # a sweep whose every job failed and was removed: only multirun.yaml is left
        if generated_sweep and _is_rank0() and sweep.is_dir() and {p.name for p in sweep.iterdir()} <= {"multirun.yaml"}:
            _remove_with_empty_parents(sweep)
    if errors:
        messages = [m for m, _ in errors if m]
        if _is_rank0():
            for message in messages[:-1]:
                print(f"error: {message}", file=sys.stderr)
        code = max(c for _, c in errors)
        if messages:
            _fail(messages[-1], code)
        sys.exit(code)


if __name__ == "__main__":
    main()
