"""``trainer.precision``: which autocast dtype a run uses, with ``auto`` resolved per device.

``auto`` (the default) picks bf16 autocast where the hardware multiplies bf16
natively and fp32 elsewhere:

* CUDA: bf16 if ``torch.cuda.is_bf16_supported()`` (Ampere and later), else fp32;
* CPU: bf16 if the CPU has AMX-BF16 or AVX512-BF16 (Intel Sapphire Rapids and
  later, AMD Zen 4 and later), else fp32: without native bf16 instructions
  oneDNN emulates bf16 and training gets slower, not faster.

Measured on the 2-core dev machine (Xeon with AMX; ``scripts/bench_peak.py``,
``scripts/bench_train.py``): bf16 matmul peak several times the fp32 peak, the
default model trains ~1.4x faster per second, and learns the same per step
(``docs/bf16_vs_fp32.png``). Precision-critical parts (forget-gate cumsum,
the fold's key channel, softmax, the loss) stay in fp32 under autocast.
"""

from __future__ import annotations

from pathlib import Path

import torch

from xforget.train.choices import PRECISIONS

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 in hardware (see the module docstring)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32``, ``bf16`` or ``fp16``; ``auto`` becomes bf16 on native-bf16 hardware, else fp32.

    Raises:
        ValueError: ``precision`` is not one of :data:`PRECISIONS` (the message lists them).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"invalid value trainer.precision={precision!r}: must be one of {list(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def _cpu_bf16_unit() -> str | None:
    """"AMX" or "AVX512-BF16" when the CPU multiplies bf16 natively, else None."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    if caps.get("amx_bf16"):
        return "AMX"
    return "AVX512-BF16" if caps.get("avx512_bf16") else None


def device_name(device: torch.device) -> str:
    """``"cuda:0 (NVIDIA H200)"`` / ``"cpu (AMD EPYC)"``: the device and its model, for the first log line."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    model = cpu_model()
    return f"{device} ({model})" if model else str(device)


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``"AMD EPYC"``); ``""`` where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def precision_reason(requested: str, resolved: str, device: torch.device) -> str:
    """Why the run trains in ``resolved``: ``"fp32: this CPU has no native bf16 (AVX2)"``, ``"bf16 autocast:
    this CPU has native bf16 (AMX)"``, ``"fp16 autocast: trainer.precision=fp16"``."""
    name = resolved if resolved == "fp32" else f"{resolved} autocast"
    if requested != "auto":
        return f"{name}: trainer.precision={requested}"
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        return f"{name}: {gpu} {'has' if resolved == 'bf16' else 'has no'} native bf16 (trainer.precision=auto)"
    unit = _cpu_bf16_unit()
    if resolved == "bf16":
        return f"{name}: this CPU has native bf16 ({unit}) (trainer.precision=auto)"
    isa = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else device.type
    return f"{name}: this {device.type.upper()} has no native bf16 ({isa}) (trainer.precision=auto)"
