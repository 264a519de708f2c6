"""``xforget-train``: the Hydra command line for :func:`xforget.train.loop.train`.

    xforget-train                                   # default: FoX on the stdlib corpus
    xforget-train model.position=rotary trainer.max_steps=500
    xforget-train data=text data.path=notes.txt hydra.run.dir=runs/notes
    xforget-train hydra.run.dir=runs/notes         # the same command again resumes
    torchrun --nproc_per_node=2 -m xforget.train trainer.batch_size=32   # 2 processes, 16 windows each

Errors (unknown or mistyped config keys, missing data, a run directory holding
another model, a diverged loss) print one ``error: ...`` line (under torchrun:
from rank 0 only). Exit codes: 0 ok, 1 training failed (diverged, corrupt
checkpoint), 2 bad config or data.

Under torchrun every rank composes the same config; rank 0 picks the run
directory (Hydra's time-stamped default could differ by a second between
ranks) and the others use it, without writing Hydra's ``.hydra/`` files.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig

EXIT_CONFIG, EXIT_RUNTIME = 2, 1

# Hydra flags after which composing the config ourselves would be wrong or pointless.
_HYDRA_ONLY_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc",
                     "--multirun", "-m", "--config-path", "-cp", "--config-name", "-cn",
                     "--experimental-rerun", "--resolve", "--package", "-p", "--cfg", "-c")


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _fail(message: str, code: int) -> None:
    if _is_rank0():  # every rank fails the same way: one line is enough
        print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _precheck(argv: list[str]) -> DictConfig | None:
    """Compose the config once with the command-line overrides, to report config errors in one line.

    Hydra itself would print a multi-line message without the valid keys and exit 1.
    Returns the composed config (with its ``hydra`` node), or None for Hydra's own flags (``--cfg`` ...).
    """
    from .config import ConfigError, compose_config, to_train_config, user_config_overrides

    if any(a.split("=")[0] in _HYDRA_ONLY_FLAGS for a in argv):
        return None
    try:
        rest, search = user_config_overrides(argv)
        composed = compose_config(rest + search, return_hydra_config=True)
        to_train_config(composed)
    except ConfigError as exc:
        _fail(str(exc), EXIT_CONFIG)
    except Exception as exc:  # OmegaConf errors while resolving / converting
        from .config import explain_config_error

        _fail(explain_config_error(exc), EXIT_CONFIG)
    return composed


def _join_torchrun(composed: DictConfig, argv: list[str]):
    """Under torchrun: join the process group and make every rank use rank 0's run directory."""
    from .distributed import broadcast_object, init_distributed

    try:
        info = init_distributed(str(composed.trainer.device))
    except RuntimeError as exc:
        _fail(str(exc), EXIT_CONFIG)
    if info.enabled:
        if not any(a.startswith(("hydra.run.dir=", "++hydra.run.dir=")) for a in argv):
            sys.argv.append(f"hydra.run.dir={broadcast_object(str(composed.hydra.run.dir), info)}")
        if not info.is_main:
            sys.argv.append("hydra.output_subdir=null")
    return info


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``xforget-train``); ``argv`` defaults to ``sys.argv[1:]``."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from ..data import DataError
    from .checkpoint import CheckpointError
    from .config import ConfigError, config_dir, to_train_config
    from .loop import TrainingError, train

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        configs = config_dir()
    except ConfigError as exc:
        _fail(str(exc), EXIT_CONFIG)
    composed = _precheck(sys.argv[1:])
    info = None
    if composed is not None:
        from .distributed import launched_by_torchrun

        if launched_by_torchrun():
            info = _join_torchrun(composed, sys.argv[1:])

    outcome: dict = {}

    def task(cfg: DictConfig) -> None:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            result = train(to_train_config(cfg), run_dir)
        except (ConfigError, DataError) as exc:
            outcome["error"] = (str(exc), EXIT_CONFIG)
            return
        except (CheckpointError, TrainingError) as exc:
            outcome["error"] = (str(exc), EXIT_RUNTIME)
            return
        except KeyboardInterrupt:
            outcome["error"] = (f"interrupted; run the same command to resume from the latest checkpoint in {run_dir}",
                                130)
            return
        if not _is_rank0():
            return
        print(f"run directory: {result.run_dir}")
        if result.interrupted:  # XFORGET_DEBUG_STOP_AFTER_STEP
            print(f"stopped after step {result.step} (XFORGET_DEBUG_STOP_AFTER_STEP)")
            sys.stdout.flush()
            return
        print(f"val_bpb={result.val_bpb:.4f}")
        if result.sample is not None:
            print("sample:")
            print(result.sample)
        sys.stdout.flush()

    try:
        hydra.main(config_path=str(configs), config_name="train", version_base="1.3")(task)()
    finally:
        if info is not None:
            from .distributed import shutdown

            shutdown(info)
    if "error" in outcome:
        _fail(*outcome["error"])


if __name__ == "__main__":
    main()
