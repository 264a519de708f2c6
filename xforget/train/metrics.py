"""``metrics.jsonl``: one JSON record per log line, appended and flushed as training goes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from xforget.files import atomic_write_text
from xforget.nn.attention import Attention
from xforget.train.peak_flops import load_peak


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no nan/inf
    return value


class MetricsLog:
    """Appends records to ``path``; never drops records silently.

    * ``resume_step`` given (a resumed run): records past the restored step
      (steps the interrupted process trained after its last checkpoint, which the
      resumed run trains again) are dropped; :attr:`dropped` counts them.
    * ``resume_step`` None (a fresh run) and the file holds records (e.g. a run
      directory whose checkpoints were deleted, or a run killed before its first
      checkpoint): the old file is kept, renamed to ``metrics.jsonl.<n>`` (the
      first free n = 1, 2, ...), and :attr:`rotated_to` names it.
    """

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.dropped, self.rotated_to = 0, None
        if resume_step is not None and self.path.is_file():
            lines = self.path.read_text().splitlines()
            kept = [line for line in lines if _step_of(line) <= resume_step]
            self.dropped = len(lines) - len(kept)
            if self.dropped:
                atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        elif resume_step is None and self.path.is_file() and self.path.stat().st_size > 0:
            n = 1
            while self.path.with_name(f"{self.path.name}.{n}").exists():
                n += 1
            self.rotated_to = self.path.with_name(f"{self.path.name}.{n}")
            os.replace(self.path, self.rotated_to)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` (a run directory or the file)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- throughput


def model_flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM appendix B convention.

    ``6 * N + 12 * sum_layers(heads * dim_head) * seq_len``: ``N`` counts the
    matrix weights that multiply activations (every ``ndim >= 2`` parameter
    except embedding tables; the output projection counts, once if tied); the
    second term is the attention scores and weighted sum (QK^T and AV, not
    halved for the causal mask). Norms, biases, gates and the softmax are left out.
    """
    from torch import nn

    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    logits = getattr(model, "to_logits", None)
    tied = logits is not None and id(logits.weight) in tables
    n = sum(p.numel() for p in model.parameters() if p.ndim >= 2 and id(p) not in tables)
    if tied:
        n += logits.weight.numel()
    attn = sum(m.heads * m.dim_head for m in model.modules() if isinstance(m, Attention) and not m.cross)
    return 6.0 * n + 12.0 * attn * seq_len


# Dense peak FLOP/s per device (no sparsity), by autocast dtype: fp32 means TF32 off, i.e. plain fp32.
_PEAK = {  # name fragment: (fp32, bf16/fp16)
    "H200": (67e12, 989e12),
    "H100": (67e12, 989e12),
    "A100": (19.5e12, 312e12),
    "L40S": (91.6e12, 362e12),
    "A10G": (31.2e12, 125e12),
    "L4": (30.3e12, 121e12),
    "V100": (15.7e12, 125e12),
    "T4": (8.1e12, 65e12),
}


def peak_flops(device, precision: str, configured: float | None = None) -> float | None:
    """Peak FLOP/s of one device for MFU, for a resolved ``precision`` (fp32/bf16/fp16).

    ``configured`` if given; else a known CUDA GPU's dense peak; else this
    machine's measured matmul peak stored by ``scripts/bench_peak.py``
    (:func:`xforget.train.peak_flops.load_peak`; CPUs); else None (TFLOP/s only).
    """
    if configured:
        return float(configured)
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return load_peak(precision) if getattr(device, "type", str(device)) == "cpu" else None
    name = torch.cuda.get_device_name(device)
    for fragment, (fp32, half) in _PEAK.items():
        if fragment in name:
            return fp32 if precision == "fp32" else half
    return None


# --------------------------------------------------------------------------- TensorBoard


class TensorBoardLog:
    """``logger=tensorboard``: the numeric fields of every metrics record as scalars in ``run_dir/tensorboard``.

    Events after the restored step (all of them for a fresh run) are purged, like ``metrics.jsonl``.
    """

    def __init__(self, log_dir: str | Path, resume_step: int | None = None, hparams: dict[str, Any] | None = None) -> None:
        SummaryWriter = tensorboard_writer_class()
        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=0 if resume_step is None else resume_step + 1)
        if hparams and resume_step is None:  # the resolved config, once, as a text table
            rows = "\n".join(f"| {k} | {v} |" for k, v in hparams.items())
            self._writer.add_text("config", "| key | value |\n|---|---|\n" + rows, 0)

    def write(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def tensorboard_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``.

    Raises:
        ConfigError: the ``tensorboard`` package is not installed (it is optional).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        from xforget.errors import ConfigError

        raise ConfigError(f"logger=tensorboard needs the tensorboard package ({exc}); install it with "
                          "`pip install 'xforget[tensorboard]'`, or use logger=none (metrics.jsonl is always written)") from None
    return SummaryWriter
