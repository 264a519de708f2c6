"""AdamW parameter groups: weight decay on the weight matrices of linear layers only.

Decoupled weight decay (Loshchilov & Hutter 2019, arXiv 1711.05101) pulls every
decayed parameter towards 0. That is right for the matrices that multiply
activations (attention and feed-forward projections, gates, the output
projection) and wrong for everything that is a scale, an offset or a table:

* norms: LayerNorm/RMSNorm/ScaleNorm gains, the per-head QK-norm and output
  norm gains (``q_norm``, ``k_norm``, ``out_norm``, stored as an offset from 1),
* biases (also the forget gate's bias, which sets the initial decay),
* embeddings: token and position tables, T5 bucket tables, and an output
  projection tied to the token embedding,
* learned memory key/values (``num_mem_kv``) and any other parameter that is
  not the ``weight`` of an ``nn.Linear``.

The rule is by module type and parameter name (``<linear>.weight``), so a new
block gets no decay unless it is a linear layer.
"""

from __future__ import annotations

from torch import nn


def decay_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """(names of the parameters weight decay applies to, names of those it does not).

    Names as in ``model.named_parameters()`` (a shared parameter is listed once,
    under its first name); parameters with ``requires_grad=False`` are left out.
    """
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    matrices = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)} - tables
    decay, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if id(p) in matrices else rest).append(name)
    return decay, rest


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: ``{"params": matrices, "weight_decay": weight_decay}`` and the rest with 0."""
    decay, rest = decay_names(model)
    params = dict(model.named_parameters())
    return [{"params": [params[n] for n in decay], "weight_decay": weight_decay},
            {"params": [params[n] for n in rest], "weight_decay": 0.0}]


def adamw_impl(impl: str, sharded: bool = False) -> dict:
    """``torch.optim.AdamW`` keywords for ``optim.impl``.

    ``fused`` (one kernel over all parameters; CPU and CUDA) falls back to
    ``foreach`` for FSDP's DTensor shards; ``auto`` leaves the choice to torch
    (foreach on CUDA, a per-parameter loop on the CPU). All give the same update
    up to float rounding; a resumed run continues with the same implementation.
    """
    if impl == "fused" and sharded:
        impl = "foreach"
    return {"auto": {}, "for_loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[impl]
