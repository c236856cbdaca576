"""torch.distributed plumbing for ``torchrun`` launches: process group, rank, averages, barriers,
and the choice between DDP and FSDP2 (:func:`choose_parallel`, :func:`shard_model`).

Under ``torchrun`` (``WORLD_SIZE`` > 1) the trainer gives each rank its share of every global
batch and either replicates the model (DDP: every rank holds the whole model, its gradients and
the AdamW state) or shards it (FSDP2 ``fully_shard``: each rank holds 1/N of the parameters,
gradients and optimizer state, gathering a block's parameters just before it runs). Rank 0 alone
writes logs and released-format files; an FSDP checkpoint is written by every rank. Backend: NCCL
on CUDA, gloo on CPU. The same code runs one node or many: ``torchrun``'s rendezvous gives every
process its rank, and the process group spans the nodes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: float, device: torch.device) -> float:
        """The average of ``value`` over all ranks."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t) / self.world_size

    def minimum(self, value: int, device: torch.device) -> int:
        """The smallest ``value`` over all ranks (every rank must call this at the same point)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t)

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is true on any rank (every rank must call this at the same point)."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int32, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup(device_type: str) -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        owns = True
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")), owns_group=owns)


# AdamW training holds, per parameter: the float32 weight, its gradient and two moments.
TRAIN_BYTES_PER_PARAM = 16
# DDP is picked when that state takes at most this share of the free device memory; the rest is
# left to the activations, the bucketed gradient copies DDP all-reduces and the allocator.
DDP_MEMORY_SHARE = 0.5


def choose_parallel(requested: str, parameters: int, device: torch.device,
                    free_bytes: int | None = None) -> tuple[str, str]:
    """``("ddp" | "fsdp", why)``: the data-parallel scheme of a multi-process run. ``auto`` picks
    DDP when the weights, gradients and AdamW state of ``parameters`` (16 bytes each) fit in
    half the free memory of a GPU (``free_bytes``: the least any rank has; None: asked of
    ``device``), FSDP otherwise; on
    the CPU it picks DDP (nothing to gain from sharding host memory among processes of one host)."""
    if requested in ("ddp", "fsdp"):
        return requested, f"--parallel {requested}"
    need = parameters * TRAIN_BYTES_PER_PARAM
    if device.type != "cuda":
        return "ddp", "auto: training on the CPU"
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    gib = 2**30
    if need <= DDP_MEMORY_SHARE * free_bytes:
        return "ddp", (f"auto: weights, gradients and AdamW state ({need / gib:.1f} GiB) fit in half "
                       f"the {free_bytes / gib:.1f} GiB free per GPU")
    return "fsdp", (f"auto: weights, gradients and AdamW state ({need / gib:.1f} GiB) need more than "
                    f"half the {free_bytes / gib:.1f} GiB free per GPU; sharding them")


def shard_model(model: torch.nn.Module, blocks: Any, device: torch.device, param_dtype: torch.dtype,
                cpu_offload: bool = False) -> None:
    """FSDP2: ``fully_shard`` every decoder block of ``blocks``, then the root ``model`` (in
    place). The root's group holds what no block owns: the embedding, which the output head
    shares (one parameter, so one group), the meta tokens and the final norm. Parameters are
    gathered in ``param_dtype``; gradients are reduced in float32. ``cpu_offload`` keeps the
    sharded parameters, gradients and optimizer state in host memory (the optimizer steps there).
    A model on the CPU is moved to ``device`` one group at a time, each group's shard only."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        MixedPrecisionPolicy,
        OffloadPolicy,
        fully_shard,
    )

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cpu_offload else OffloadPolicy()
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, offload_policy=offload)
    fully_shard(model, mesh=mesh, mp_policy=policy, offload_policy=offload)
