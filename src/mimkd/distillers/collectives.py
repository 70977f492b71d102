"""What a method needs to compute, under DDP, the loss one process computes on the global batch.

The loaders shard each epoch's permutation by stride: sample i of the global batch (the batch one
process would see) is on rank `i % world`, at local position `i // world`. So a per-sample
quantity gathered from every rank as [world, B, ...] and transposed to [B, world, ...] is the
global batch in one-process order (`gather_batch`), and this rank's anchors are the global rows
`rank::world` (`local_rows`). A random draw made for the whole global batch on every rank (same
seed, same shapes: the same numbers) and sliced to the local rows is the one-process draw.

Gradients: DDP averages the ranks' gradients, and each rank's loss is a mean over its own B
anchors, so the average is the one-process gradient of the mean over N * B anchors provided every
rank's loss also reaches the features other ranks own. `gather_batch` keeps that path: its
backward sums, over ranks, the gradient each rank's loss sends to a feature, and hands it to the
rank that computed the feature.

Single process (or no process group): every function is the identity, so a method's one-process
loss values and random draws do not move.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherRanks(torch.autograd.Function):
    """[B, ...] on each rank -> [world, B, ...] on every rank; backward: this rank's slice of the
    gradient summed over ranks (each rank's loss may have read this rank's rows).

    Written here rather than torch.distributed.nn.functional.all_gather: that one warns as
    deprecated from torch 2.8 on, and its replacements in the private functional-collectives
    module change names between releases. The backward all-reduces the whole gathered gradient
    (every backend has all_reduce; reduce_scatter is NCCL's only) and keeps this rank's part:
    world times the traffic of a reduce-scatter, on tensors of a batch of embeddings.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        rank, size = world()
        ctx.rank = rank
        parts = [torch.empty_like(tensor) for _ in range(size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:
        gradient = gradient.contiguous().clone()
        dist.all_reduce(gradient)
        return gradient[ctx.rank]


class _SumRanks(torch.autograd.Function):
    """The sum over ranks, on every rank; backward: the gradient summed over ranks (every rank's
    loss read the sum)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.contiguous().clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:
        gradient = gradient.contiguous().clone()
        dist.all_reduce(gradient)
        return gradient


def gather_batch(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows [B, ...] as the global batch [world * B, ...], in one-process order.

    Differentiable when `tensor` requires grad (gradients reach the rank that owns a row);
    otherwise a plain all_gather. Every rank must hold the same B (the training loaders make it so).
    """
    _, size = world()
    if size == 1:
        return tensor
    if tensor.requires_grad:
        stacked = _GatherRanks.apply(tensor)
    else:
        stacked = torch.stack(_plain_gather(tensor, size))
    # [world, B, ...] -> [B, world, ...]: global row j * world + r is rank r's local row j
    return stacked.transpose(0, 1).reshape(size * tensor.shape[0], *tensor.shape[1:])


def _plain_gather(tensor: torch.Tensor, size: int) -> list[torch.Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor.contiguous())
    return parts


def sum_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over ranks (differentiable when it requires grad); itself alone."""
    _, size = world()
    if size == 1:
        return tensor
    if tensor.requires_grad:
        return _SumRanks.apply(tensor)
    total = tensor.contiguous().clone()
    dist.all_reduce(total)
    return total


def local_rows(global_rows: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a tensor drawn for the whole global batch (rows `rank::world`)."""
    rank, size = world()
    return global_rows if size == 1 else global_rows[rank::size]


class RankSyncedBuffers:
    """Marks a module whose buffers every rank updates alike from every rank's samples (a memory
    bank fed by `gather_batch`): the trainer tells DDP not to broadcast them from rank 0 each
    step, which would only copy what every rank already holds (CRD's banks: ~51 MB a step)."""


__all__ = ["RankSyncedBuffers", "gather_batch", "local_rows", "sum_ranks", "world"]
