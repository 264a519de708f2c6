"""The fault list of scripts/plant_faults.py still applies to the code (each text to replace occurs once)."""

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "plant_faults.py"


def test_every_planted_fault_applies_to_the_current_code():
    spec = importlib.util.spec_from_file_location("plant_faults", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("plant_faults", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    assert len(module.FAULTS) >= 15
    assert module.check_faults() == []
    kinds = {f.kind.split(":")[0] for f in module.FAULTS}
    assert kinds == {"training", "sampling", "routing", "pruning", "kernels", "compile", "zoo", "documents", "data"}
    # every term of the pruning bound has its fault (tests/test_prune_bound.py)
    assert {f.name for f in module.FAULTS if f.kind.startswith("pruning")} >= {
        "prune-threshold-no-nk", "prune-decay-block-end", "prune-decay-prefix-start", "prune-query-norm-first",
        "prune-key-norm-last", "prune-no-reference-key", "prune-reference-in-block", "decode-group-latest-start"}
