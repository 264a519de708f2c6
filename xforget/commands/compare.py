"""``xforget-compare``: train every positional scheme with the same data, budget, seeds and size; compare.

    xforget-compare positions=[none,absolute,rotary,alibi,fox,fox_pro] data=shakespeare \\
        data.path=../shared/data/tinyshakespeare.txt trainer.max_steps=600 seeds=[0,1] \\
        hydra.run.dir=outputs/compare-shakespeare

    xforget-compare experiment=compare_shakespeare data.path=../shared/data/tinyshakespeare.txt

    xforget-compare experiment=fox_vs_rope        # the FoX paper's comparison: BPE tokens, context 512, eval to 4096

Keys: the comparison's own (``configs/compare.yaml``: ``positions``, ``seeds``,
``eval.*``, ``retrain``, ``plots``, ``hydra.run.dir`` = the output directory,
``jobs`` = training runs and evaluations at once, ``prepare`` = token shards
to make first (``{input: stdlib, tokenizer: bpe, vocab_size: 4096}``; the runs
then train with ``data=tokens``), ``findings`` = the FoX-paper verdicts,
``train`` = training overrides for every run, ``experiment=NAME`` = a preset of
these keys from ``configs/experiment/`` or ``--config-dir DIR``),
and every training key (``model.*``, ``data=``/``data.*``, ``optim.*``,
``trainer.*``), which is passed unchanged to each run. A scheme is a model
preset (``configs/model/<name>.yaml``: ``model=<name>``) or a position scheme
(``model.position=<name>``; ``fox+rotary`` combines). ``model=`` and ``seed=``
are set per run and cannot be given.

Outputs in the output directory: ``runs/<scheme>-seed<S>-<hash>/`` (one
training run each; re-used when finished), ``compare.md``, ``compare.json``,
``loss_vs_step.png``, ``loss_vs_position.png``, ``bpb_vs_length.png``
(and ``task_accuracy.png`` on a synthetic task; with ``eval.position_buckets``,
``eval.needle_examples`` and a FoX run: ``fox_vs_rope.png``, ``needle.png``,
``pruned_fraction.png``); ``data/`` holds the prepared shards. Exit codes: 0 ok, 2 bad
config or data, 1 a training run failed, 130 interrupted (Ctrl-C or SIGTERM:
the run in training checkpoints its current step; the same command continues).
``xforget-compare --cfg job ...`` prints the composed comparison config and the
first run's training config without training anything.
"""

from __future__ import annotations

import sys

from xforget.commands.args import emit, literal_paths, writable_path_problem
from xforget.commands.evaluate import cfg_flag
from xforget.compare.config import load_compare_config, partition_overrides
from xforget.data.corpus import DataError
from xforget.errors import ConfigError
from xforget.evaluate.config import EXIT_CONFIG
from xforget.train.config import compose_config, user_config_overrides

# No torch at the top: the comparison's own keys are checked first (one line in a fraction of a second);
# xforget.compare.pipeline (training, evaluation: torch) is imported once they pass.
_PIPELINE_NAMES = ("composed_config_yaml", "run_compare", "eval_cache_path", "evaluate_all", "evaluate_cached",
                   "plan_comparison")  # names xforget.compare.cli had (xforget/_compat.py), answered lazily


def __getattr__(name: str):
    if name in _PIPELINE_NAMES:
        from xforget.compare import pipeline

        return getattr(pipeline, name)
    if name == "CompareError":
        from xforget.compare.runs import CompareError

        return CompareError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


USAGE = __doc__

def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``xforget-compare``); ``argv`` defaults to ``sys.argv[1:]``."""
    import signal

    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        emit(USAGE)
        return

    def on_sigterm(signum, frame):  # like Ctrl-C: forwarded to the training process, which checkpoints
        raise KeyboardInterrupt

    # process-wide: restored on the way out, so that a caller (a test runner, a notebook) keeps its own
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        _main(argv)
    finally:
        if previous is not None:  # None: a handler installed outside Python, which cannot be put back
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str]) -> None:
    try:
        part, argv = cfg_flag(argv)
        argv = literal_paths(argv)
        # before torch is imported: the comparison's own keys and values, and the names and types of the
        # training keys every run gets (their values are checked per run, with the model code)
        rest, search = user_config_overrides(argv)
        mine, train_args = partition_overrides(rest)
        cfg, out_dir = load_compare_config(mine + search)
        problem = writable_path_problem("hydra.run.dir", str(out_dir), is_dir=True)  # before any run is trained
        if problem:
            raise ConfigError(problem)
        compose_config([*search, *cfg.train, *train_args])
        from xforget.compare.pipeline import composed_config_yaml, run_compare
        from xforget.compare.runs import CompareError
    except (ConfigError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    try:
        if part is not None:
            emit(composed_config_yaml(argv))
            return
        run_compare(argv)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except ValueError as exc:  # a command-line value that cannot be read
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.code)
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again to continue (finished runs and evaluations are "
              "re-used)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
