#!/usr/bin/env python
"""Plot training loss and validation bpb vs step of several run directories into one PNG.

    python scripts/plot_runs.py docs/bf16_vs_fp32.png fp32=runs/perstep_fp32 bf16=runs/perstep_bf16

Each argument after the output is ``label=RUN_DIR`` (or a bare run directory,
labelled by its name); curves come from the runs' ``metrics.jsonl``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xforget.compare.plots import plot_loss_vs_step  # noqa: E402
from xforget.train.metrics import read_metrics  # noqa: E402


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: plot_runs.py OUT.png [LABEL=]RUN_DIR ...")
    out, schemes = Path(argv[0]), []
    for arg in argv[1:]:
        label, _, path = arg.rpartition("=") if "=" in arg else (Path(arg).name, "", arg)
        if not (Path(path) / "metrics.jsonl").is_file():
            raise SystemExit(f"error: {path}/metrics.jsonl not found; give run directories of xforget-train")
        records = read_metrics(path)
        curve = {"step": [r["step"] for r in records], "train_loss": [r["train_loss"] for r in records],
                 "val_bpb": [r.get("val_bpb") for r in records]}
        schemes.append({"name": label, "curve": curve})
        last = [r for r in records if "val_bpb" in r]
        print(f"{label}: " + ", ".join(f"step {r['step']} val_bpb {r['val_bpb']:.4f}" for r in last))
    out.parent.mkdir(parents=True, exist_ok=True)
    print(plot_loss_vs_step(schemes, out))


if __name__ == "__main__":
    main(sys.argv[1:])
