"""Measured peak matmul FLOP/s of this machine, the denominator of MFU on CPUs.

Vendors publish dense peaks for GPUs (see :data:`xforget.train.metrics._PEAK`);
a CPU's usable peak depends on its vector units (AVX-512, AMX), core count and
the BLAS/oneDNN build, so we measure it: the best of several timed square
matmuls ``C = A @ B`` (``2 n^3`` FLOPs each) per dtype, with torch's current
thread count. ``scripts/bench_peak.py`` runs the measurement and stores it in
``$XFORGET_CACHE/peak_flops.json`` (default ``~/.cache/xforget/``), keyed by CPU
model and thread count; training reads it back for ``mfu`` when
``trainer.peak_flops`` is null.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from xforget.files import atomic_write_text
from xforget.train.precision import cpu_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_flops(dtype: torch.dtype, n: int = 2048, *, repeats: int = 10, device: str = "cpu") -> float:
    """Best achieved FLOP/s of an ``(n, n) @ (n, n)`` matmul in ``dtype`` over ``repeats`` timed calls.

    The best (not the mean) estimates the peak: on a shared machine the slow
    calls are the ones another process interrupted. One untimed warm-up call first.
    """
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize(device)
        tic = time.perf_counter()
        torch.matmul(a, b, out=out)
        if device != "cpu":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - tic)
    return 2.0 * n**3 / best


def machine_key() -> str:
    """CPU model name and torch thread count, e.g. ``Intel(R) Xeon(R) Processor|threads=2``."""
    name = cpu_model() or platform.processor() or platform.machine()
    return f"{name}|threads={torch.get_num_threads()}"


def cache_path() -> Path:
    root = os.environ.get("XFORGET_CACHE") or Path.home() / ".cache" / "xforget"
    return Path(root) / "peak_flops.json"


def save_peak(peaks: dict[str, float], path: str | Path | None = None) -> Path:
    """Store ``{"fp32": FLOP/s, "bf16": FLOP/s, ...}`` for :func:`machine_key` (atomic write)."""
    path = Path(path) if path else cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    table[machine_key()] = {k: float(v) for k, v in peaks.items()}
    atomic_write_text(path, json.dumps(table, indent=1, sort_keys=True) + "\n")
    return path


def load_peak(precision: str, path: str | Path | None = None) -> float | None:
    """The stored peak FLOP/s of this machine for ``precision`` (fp16 falls back to bf16), else None.

    Measured at another thread count on the same CPU model: scaled linearly by threads.
    """
    path = Path(path) if path else cache_path()
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(table, dict):
        return None
    key = machine_key()
    cpu, threads = key.rsplit("|threads=", 1)
    candidates = [(key, 1.0)] + [(k, int(threads) / int(k.rsplit("|threads=", 1)[1])) for k in sorted(table)
                                 if k != key and k.rsplit("|threads=", 1)[0] == cpu]
    for k, factor in candidates:
        entry = table.get(k) or {}
        value = entry.get(precision) or (entry.get("bf16") if precision == "fp16" else None)
        if value:
            return float(value) * factor
    return None
