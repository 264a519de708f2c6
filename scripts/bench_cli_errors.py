"""How long a command takes to print the ``error:`` line of a mistyped key: ours vs torch imported first.

Each of the six commands is started as a fresh process with a bad key, twice per round: as it is
(the command line is checked before torch is imported) and with ``import torch`` before the command
(what every error cost when the commands imported torch at the top). Wall seconds per call, median
over the rounds, and the ratio, measured in the same run (alternating, so a loaded machine slows
both alike).

    python scripts/bench_cli_errors.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = [("train", "model.positon=fox"), ("evaluate", "checkpoint=missing_run"), ("generate", "temperatur=1"),
         ("export", "outt=x"), ("compare", "jobz=2"), ("prepare", "inptu=x")]
CALL = "import sys{pre}\nfrom xforget.commands.{module} import main\nmain(sys.argv[1:])\n"


def seconds(module: str, arg: str, torch_first: bool, cwd: Path) -> float:
    code = CALL.format(pre="\nimport torch" if torch_first else "", module=module)
    tic = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    took = time.perf_counter() - tic
    if proc.returncode != 2 or not proc.stderr.startswith("error: "):
        raise SystemExit(f"{module} {arg}: expected one error line and exit 2, got {proc.returncode}: {proc.stderr}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'command':<10} {'ours s':>8} {'torch first s':>14} {'ratio':>6}")
        for module, arg in CASES:
            ours, before = [], []
            for _ in range(args.rounds):
                ours.append(seconds(module, arg, False, Path(tmp)))
                before.append(seconds(module, arg, True, Path(tmp)))
            o, b = statistics.median(ours), statistics.median(before)
            print(f"{module:<10} {o:8.2f} {b:14.2f} {o / b:6.2f}")


if __name__ == "__main__":
    main()
