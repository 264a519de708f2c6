"""Helpers for tests about training runs: watching one from outside its process, making a tiny BPE run."""

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


def tiny_bpe_run(tmp_path: Path, max_steps: int = 2) -> Path:
    """A tiny run on a BPE-300 prepared dataset (its run directory holds tokenizer.json); needs ``tokenizers``."""
    from xforget.data.prepare import PrepareConfig, prepare
    from xforget.train import compose_config, to_train_config, train

    docs = tmp_path / "docs.jsonl"
    words = "the cat sat on a mat while dogs ran far away from home today".split()
    docs.write_text("".join(json.dumps({"text": " ".join(words[(i + j) % len(words)] for j in range(30))}) + "\n"
                            for i in range(80)))
    prepared = prepare(PrepareConfig(input=str(docs), output=str(tmp_path / "prep"), tokenizer="bpe", vocab_size=300,
                                     progress=False), log=lambda m: None)
    cfg = to_train_config(compose_config([
        "data=tokens", f"data.path={prepared}", "model.dim=32", "model.depth=1", "model.heads=2", "trainer.seq_len=32",
        "trainer.batch_size=4", f"trainer.max_steps={max_steps}", "trainer.warmup_steps=1", "trainer.eval_batches=1",
        "trainer.progress=false", "trainer.sample_bytes=0", "trainer.threads=1"]))
    train(cfg, tmp_path / "run")
    return tmp_path / "run"
