"""Several processes: ``torchrun --nproc_per_node=N -m xforget.train ...``.

torchrun starts N copies of the command with ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`init_distributed`
joins them into one process group (``gloo`` on the CPU, ``nccl`` on CUDA, one
GPU per process: ``cuda:LOCAL_RANK``). Without ``WORLD_SIZE`` nothing is
initialised and training is a plain single process.

How the loop divides the work (see :mod:`.loop`):

* data: the global batch of step ``s`` (``trainer.batch_size * grad_accum``
  windows, a pure function of ``(seed, s)``) is drawn by every rank, and rank
  ``r`` keeps micro-batch columns ``[r * b, (r + 1) * b)`` with
  ``b = batch_size / world_size``. The global data order is that of one
  process, whatever the number of processes: 2 processes with
  ``trainer.batch_size=16`` train on exactly the batches of 1 process with
  ``trainer.batch_size=16`` (8 windows each);
* gradients: DistributedDataParallel averages them over ranks (synchronising
  only on the last micro-batch of a step), so each step equals the
  single-process step up to float summation order;
* the logged train loss and the validation loss are reduced over ranks;
* rank 0 alone writes the log, progress bar, ``metrics.jsonl``, TensorBoard,
  checkpoints and the final model; checkpoints hold every rank's RNG state.

``trainer.strategy=fsdp`` replaces DDP by FSDP2 (``fully_shard`` on every block,
then the whole model): weights, gradients and optimizer state are sharded;
checkpoints gather full weights and a full optimizer state keyed by parameter
name, which any strategy (also one process) resumes from, and vice versa.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from xforget.models.wrapper import build_model

T = TypeVar("T")
_ENV = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the group; ``DistInfo()`` is the single-process case."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # init_distributed created the group: the caller destroys it with shutdown()

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ


def wants_cuda(device_name: str) -> bool:
    """Whether ``trainer.device`` resolves to CUDA on this machine."""
    return device_name != "cpu" and (device_name.startswith("cuda") or device_name == "auto") and torch.cuda.is_available()


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the torchrun process group (idempotent); ``DistInfo()`` when not launched by torchrun.

    Raises:
        RuntimeError: ``WORLD_SIZE`` is set but the other torchrun variables are missing.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), False)
    if not launched_by_torchrun():
        return DistInfo()
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not; "
                           "launch several processes with torchrun --nproc_per_node=N -m xforget.train ...")
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; run without torchrun")
    world_size, rank, local_rank = (int(os.environ[k]) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    if wants_cuda(device_name):
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return DistInfo(rank, world_size, local_rank, True)


def shutdown(info: DistInfo) -> None:
    """Destroy the process group if ``info`` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: T, info: DistInfo) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place sum over ranks (returns ``tensor``)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def rank0_first(info: DistInfo, fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0, then on the other ranks (e.g. building a cached corpus once).

    If rank 0 fails, every rank raises the same exception type with the same
    message (instead of the others waiting for a rank that has gone).
    """
    if not info.enabled:
        return fn()
    result, failure = None, None
    if info.is_main:
        try:
            result = fn()
        except Exception as exc:  # re-raised below, on every rank
            failure = exc
    shared = broadcast_object(None if failure is None else (type(failure), str(failure)), info)
    if failure is not None:
        raise failure
    if shared is not None:
        kind, message = shared
        try:
            error = kind(message)
        except Exception:
            error = RuntimeError(message)
        raise error
    return result if info.is_main else fn()


# --------------------------------------------------------------------------- FSDP2 (trainer.strategy=fsdp)


def shard_model(model: torch.nn.Module, device: torch.device, info: DistInfo) -> None:
    """FSDP2 in place: every block of ``model.attn_layers.blocks`` is one shard group, the rest the root's."""
    # imported here: torch.distributed.fsdp / .checkpoint take ~2 s to import, needed by FSDP runs only
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (info.world_size,))
    for block in getattr(getattr(model, "attn_layers", None), "blocks", []):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_model(model: torch.nn.Module, model_cfg, info: DistInfo) -> torch.nn.Module | None:
    """An unsharded CPU copy of an FSDP2 model on rank 0 (None elsewhere); collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # FSDP only (slow import)

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not info.is_main:
        return None
    with torch.random.fork_rng(devices=[]):  # building the copy must not move the training RNG stream
        copy = build_model(model_cfg)
    copy.load_state_dict(state)
    return copy


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole optimizer state keyed by parameter name, on rank 0 (collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict  # FSDP only

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a checkpoint's optimizer state, whichever strategy wrote it.

    Single process and DDP write ``optimizer.state_dict()`` (parameters numbered
    in optimizer order); FSDP writes the full state keyed by parameter name.
    Either loads into either: the numbering is that of the optimizer's
    parameter groups, the same for the same model config.
    """
    names = _param_names(model, optimizer)
    by_name = any(isinstance(g["params"][0], str) for g in state["param_groups"] if g["params"])
    sharded = any(type(p).__name__ == "DTensor" for p in model.parameters())
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict  # FSDP only

        if not by_name:
            state = {"state": {names[i]: v for i, v in state["state"].items()},
                     "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                                 options=StateDictOptions(full_state_dict=True))
        return
    if by_name:
        index = {n: i for i, n in enumerate(names)}
        state = {"state": {index[n]: v for n, v in state["state"].items()},
                 "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]}
    optimizer.load_state_dict(state)
