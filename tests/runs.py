"""Helpers for tests that watch a training run from outside its process."""

from __future__ import annotations

import json
from pathlib import Path


def steps_logged(run: Path) -> int:
    """The last step recorded in ``run/metrics.jsonl`` (0 before the first record); a line still being
    written (no closing brace yet) is skipped."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)
