"""Which device a run trains on, and the attention backends that cannot train there.

``trainer.device=auto`` is CUDA when it is available, else the CPU (:func:`device_type`). Some attention
backends need CUDA to train: ``flex`` (FlexAttention has no backward on the CPU: its CPU kernel is
forward-only), ``fla`` (FLA's Triton kernel) and ``cuda`` (the fold on GPU SDPA). A run that names one of them
on a CPU would fail at its first step, after its run directory was written; :func:`check_backend_device`
refuses it before anything is written (``xforget-train``'s checks, and :func:`xforget.train.loop.train`).
"""

from __future__ import annotations

import torch

from xforget.errors import ConfigError
from xforget.models.config import ModelConfig

CUDA_ONLY_BACKENDS = {
    "flex": "CPU FlexAttention is forward-only",
    "fla": "FLA's Triton kernel runs on CUDA only",
    "cuda": "it runs GPU SDPA",
}
CPU_TRAINING_BACKENDS = ("auto", "fold")  # what to name instead (reference and chunked train too, slowly)


def device_type(name: str) -> str:
    """``cpu`` or ``cuda``: the type of device ``trainer.device=name`` trains on (``auto``: CUDA if available)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name).type


def check_backend_device(model: ModelConfig, device_name: str) -> None:
    """Refuse an attention backend that cannot train on the device ``trainer.device=device_name`` resolves to.

    Raises:
        ConfigError: one line naming ``model.attn_backend``, why, and the backends that train on a CPU.
    """
    backend = model.attn_backend
    if backend not in CUDA_ONLY_BACKENDS or device_type(device_name) == "cuda":
        return
    choices = " or ".join(f"model.attn_backend={b}" for b in CPU_TRAINING_BACKENDS)
    raise ConfigError(f"model.attn_backend={backend} cannot train on the CPU ({CUDA_ONLY_BACKENDS[backend]}; "
                      f"trainer.device={device_name}): use {choices} to train on a CPU")
