"""lm-evaluation-harness's own command line, with the model ``xforget`` registered.

    python -m xforget.commands.harness --model xforget --model_args pretrained=DIR --tasks lambada_openai
    python -m xforget.commands.harness run --model xforget --model_args pretrained=DIR,batch_size=8 \\
        --tasks my_task --include_path my_tasks/ --device cpu --output_path results/

Every ``lm_eval`` option works as with ``lm_eval`` itself (this hands ``sys.argv`` to its
``cli_evaluate``). ``lm_eval --model xforget`` alone does not know the name: lm-eval 0.4.x
looks models up in its own registry only (its ``lm_eval.models`` mapping and the classes
imported so far) and loads no plugins through package entry points, so the module that
registers ``xforget`` (:mod:`xforget.integrations.harness`) must be imported first, which is
what this module does. ``xforget-eval harness=true checkpoint=DIR tasks=[...]`` is the
shorter way for the common options. Needs the ``harness`` extra.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from xforget.integrations import harness  # noqa: F401  (registers the model name "xforget"; names the extra when missing)
        from lm_eval.__main__ import cli_evaluate
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.argv[0] = "lm_eval"
    cli_evaluate()


if __name__ == "__main__":
    main()
