"""``trainer.compile``: whether the training step runs through ``torch.compile``, ``auto`` resolved per run.

``auto`` (the default) compiles when compiling pays for itself:

* the run is long: at least :data:`AUTO_MIN_STEPS` optimizer steps, or a
  time budget (``trainer.max_time``) of at least :data:`AUTO_MIN_SECONDS` (compiling
  the default model costs ~15 s with a warm inductor cache and ~60 s cold on the
  2-core dev machine, paid back within a few hundred steps);
* and a compiler backend exists: on the CPU a C++ compiler on ``PATH``
  (inductor generates C++ for the CPU); on CUDA a C compiler (``$CC``, or gcc or
  clang on ``PATH``: Triton builds its kernel launcher with it at the first
  compiled call). Without one ``torch.compile`` fails at the first step.

On CUDA this is the default run's choice too (its 10-minute budget is long):
the issue that added the CUDA path measured on an H200 (1024 x 8 decoder, 4096
tokens, bf16) FoX Pro at 131k tokens/s eager and 274k compiled, plain FoX at
269k and 341k. The attention path has no graph break (``fullgraph=True``
traces it; tests/test_compile.py), and the gate's cumsum stays fp32 under
autocast (the op runs with autocast off, :mod:`xforget.ops.dispatch`).

Measured on the dev machine (``scripts/bench_train.py``, same run, bf16
autocast): compiling the FoX Pro block (per-head QK-norm, KV-shift, output
gate and norm: many small elementwise ops) trains it 1.5x faster per second
(0.54x -> 0.81x of plain FoX's eager tokens/s); plain FoX gains ~1.0x.
``true`` / ``false`` force it either way.
"""

from __future__ import annotations

import os
import shutil

import torch

from xforget.train.choices import COMPILE_CHOICES, compile_choice

AUTO_MIN_STEPS = 1000
AUTO_MIN_SECONDS = 300  # a time budget this long compiles (compiling costs 15-85 s)
CXX_COMPILERS = ("c++", "g++", "clang++")
C_COMPILERS = ("gcc", "clang")  # what Triton looks for when $CC is not set


def has_compiler_backend(device: torch.device) -> bool:
    """Whether inductor can generate code for ``device``: a C++ compiler on PATH for the CPU; for CUDA a C
    compiler (``$CC``, or gcc / clang on PATH) for Triton's launcher. Other devices: False."""
    if device.type == "cuda":
        return bool(os.environ.get("CC")) or any(shutil.which(cc) for cc in C_COMPILERS)
    return device.type == "cpu" and any(shutil.which(cxx) for cxx in CXX_COMPILERS)


def normalise_compile(value) -> str:
    """``trainer.compile`` as one of :data:`COMPILE_CHOICES` (YAML/CLI booleans arrive as True/False or "True").

    Raises:
        ValueError: any other value (the message lists the valid ones).
    """
    text = compile_choice(value)
    if text is None:
        raise ValueError(f"invalid value trainer.compile={value!r}: must be one of {list(COMPILE_CHOICES)}")
    return text


def resolve_compile(value, max_steps: int | None, device: torch.device,
                    max_time_s: float | None = None) -> tuple[bool, str]:
    """``(compile?, why)`` for ``trainer.compile=value``; ``why`` is one line for the log.

    A run is long when its step limit (if any) is at least :data:`AUTO_MIN_STEPS` and its time
    budget (``max_time_s``, if any) at least :data:`AUTO_MIN_SECONDS`.

    Raises:
        ValueError: ``value`` is not auto/true/false.
    """
    choice = normalise_compile(value)
    if choice != "auto":
        return choice == "true", f"trainer.compile={choice}"
    if max_steps is not None and max_steps < AUTO_MIN_STEPS:
        return False, f"trainer.compile=auto: not compiled (run of {max_steps} < {AUTO_MIN_STEPS} steps)"
    if max_time_s is not None and max_time_s < AUTO_MIN_SECONDS:
        return False, f"trainer.compile=auto: not compiled (budget of {max_time_s:g} s < {AUTO_MIN_SECONDS} s)"
    if not has_compiler_backend(device):
        needs = (f"no C compiler for Triton ($CC or {list(C_COMPILERS)} on PATH)" if device.type == "cuda"
                 else f"no C++ compiler on PATH for {device.type}: {list(CXX_COMPILERS)}")
        return False, f"trainer.compile=auto: not compiled ({needs})"
    length = (f"run of {max_steps} >= {AUTO_MIN_STEPS} steps" if max_steps is not None
              else f"budget of {max_time_s:g} >= {AUTO_MIN_SECONDS} s")
    return True, f"trainer.compile=auto: compiled ({length}, backend found)"
