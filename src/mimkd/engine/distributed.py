"""torchrun/DDP support: one process per device, gradients all-reduced by DDP.

Launched with `torchrun --nproc_per_node=N -m mimkd distill ...`, each process reads RANK/WORLD_SIZE
from the environment; the data loaders shard every epoch's permutation by rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        if not self.enabled:
            return module
        device_ids = [self.local_rank] if torch.cuda.is_available() else None
        find_unused = getattr(module, "ddp_find_unused_parameters", False)
        return nn.parallel.DistributedDataParallel(
            module, device_ids=device_ids, find_unused_parameters=find_unused
        )

    def broadcast_path(self, path: Path) -> Path:
        if not self.enabled:
            return path
        holder = [str(path)]
        dist.broadcast_object_list(holder, src=0)
        return Path(holder[0])

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed() -> DistributedContext:
    """Join the process group torchrun set up, or return a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistributedContext(rank, world_size, local_rank)
