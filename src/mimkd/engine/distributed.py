"""torchrun/DDP: N processes that train as one process would on the global batch.

Launched with `torchrun --nproc_per_node=N -m mimkd distill ...`, each process reads RANK,
WORLD_SIZE and LOCAL_RANK from the environment and joins the process group (NCCL on GPUs, gloo on
CPUs) with a collective timeout (`dist_timeout`), so a rank that stops answering makes the others
fail instead of waiting forever. What makes N processes equal one (README "Multi-GPU and
clusters"):

- the loaders shard one permutation per epoch by stride and draw the global batch's augmentation
  on every rank, so the global batches are the one-process batches;
- DDP averages gradients and every rank's loss is a mean over its local batch; methods that
  compare samples gather them from every rank (`mimkd.distillers.collectives`);
- `sync_batchnorm=true` normalises with the global batch's statistics (`convert_sync_batchnorm`:
  torch's SyncBatchNorm on CUDA, `CrossRankBatchNorm` where that does not run, e.g. CPU/gloo);
- buffers a method keeps identical itself (CRD's memory) are not re-broadcast by DDP;
- evaluation sums hits and counts over every rank's shard of the test set.

Agreement: rank 0 alone owns the run folder and writes; an error in one rank's set-up is raised by
that rank and the others stop quietly (`agreement`), and a preemption signal on any rank stops all
ranks at the same step (`max_over_ranks`, on a gloo group of its own so it never syncs a GPU stream).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mimkd.distillers.collectives import RankSyncedBuffers, sum_ranks
from mimkd.engine.preemption import ignore_stop_signals
from mimkd.errors import MimkdError

# what a collective's error says when the other end of it failed or stopped answering
_PEER_FAILURE_MARKERS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "timed out",
    "Timed out",
    "NCCL communicator was aborted",
    "remote process exited",
)


class RankStopped(MimkdError):
    """This process stops because another process of the run failed; that one shows its error.

    `quiet`: print nothing (the other process printed the error); `exit_code` for the CLI."""

    def __init__(self, message: str, *, quiet: bool = False, exit_code: int = 1):
        super().__init__(message)
        self.quiet = quiet
        self.exit_code = exit_code


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # the gloo group host-side flags are agreed on (None: the default group is gloo already)
    control_group: Any = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """`module` under DDP (itself in one process). Buffers of `RankSyncedBuffers` modules are
        left out of DDP's per-step broadcast from rank 0: every rank updates them alike."""
        if not self.enabled:
            return module
        ignored = rank_synced_buffer_names(module)
        if ignored:
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                module, ignored
            )
        device_ids = [self.local_rank] if torch.cuda.is_available() else None
        find_unused = getattr(module, "ddp_find_unused_parameters", False)
        return nn.parallel.DistributedDataParallel(
            module, device_ids=device_ids, find_unused_parameters=find_unused
        )

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank."""
        if not self.enabled:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def broadcast_path(self, path: Path) -> Path:
        return Path(self.broadcast_object(str(path)))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over ranks (no gradient), on every rank."""
        return sum_ranks(tensor.detach()) if self.enabled else tensor

    def max_over_ranks(self, value: int) -> int:
        """The largest of every rank's `value`, on every rank: one small host-side all-reduce."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.control_group)
        return int(tensor.item())

    @contextlib.contextmanager
    def agreement(self) -> Iterator[None]:
        """Run a block on every rank, then agree on how it went: when any rank raised, the lowest
        such rank re-raises its error (the one shown) and the others raise a quiet `RankStopped`
        with the exit code that error gets (2 for a mimkd error, 1 otherwise). The block must
        hold no collective: a rank that failed before one would leave the others waiting in it.
        """
        if not self.enabled:
            yield
            return
        try:
            yield
        except Exception as error:
            self._share_outcome(error)
            raise
        self._share_outcome(None)

    def _share_outcome(self, error: Exception | None) -> None:
        outcomes: list[Any] = [None] * self.world_size
        mine = None if error is None else isinstance(error, MimkdError)
        dist.all_gather_object(outcomes, mine)
        failed = [rank for rank, outcome in enumerate(outcomes) if outcome is not None]
        if failed:
            ignore_stop_signals()  # every rank now stops with its own exit code
        if not failed or (error is not None and failed[0] == self.rank):
            return  # all well, or this rank's error is the one to show: the caller raises it
        first = failed[0]
        raise RankStopped(
            f"process {self.rank} stops: process {first} failed (its error is shown).",
            quiet=True,
            exit_code=2 if outcomes[first] else 1,
        )

    def peer_failure(self, error: BaseException) -> RankStopped | None:
        """A short note replacing `error` when it is a collective failing because another rank
        failed or stopped answering (that rank shows its own error); None for anything else."""
        if not self.enabled or not is_peer_failure(error):
            return None
        return RankStopped(
            f"process {self.rank} of {self.world_size} stops: a collective failed "
            f"({_first_sentence(error)}); another process of the run failed or stopped answering "
            "(see its error)."
        )


def _first_sentence(error: BaseException) -> str:
    """'Connection closed by peer [127.0.0.1]:22940' out of gloo's '[.../pair.cc:561] Connection
    closed by peer [127.0.0.1]:22940. This is typically caused by ...'."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # the C++ source location
    return text.split(". ", 1)[0][:160]


def is_peer_failure(error: BaseException) -> bool:
    """Whether `error` is a collective that failed at the other end (dead peer, timeout)."""
    dist_error = getattr(dist, "DistError", None)  # torch >= 2.2
    if dist_error is not None and isinstance(error, dist_error):
        return True
    return isinstance(error, RuntimeError) and any(
        marker in str(error) for marker in _PEER_FAILURE_MARKERS
    )


_CONTROL_GROUPS: dict[int, Any] = {}


def init_distributed(timeout_s: float = 600.0) -> DistributedContext:
    """Join the process group torchrun set up, or return a single-process context.

    `timeout_s` bounds every collective: a rank that died or hangs makes the others raise after
    it instead of blocking (NCCL's watchdog aborts the communicator; gloo's ops time out)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    timeout = datetime.timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=timeout)
    key = id(dist.group.WORLD)
    if key not in _CONTROL_GROUPS:
        # every rank creates it, in the same order: new_group is a collective call
        gloo = dist.get_backend() == "gloo"
        _CONTROL_GROUPS[key] = None if gloo else dist.new_group(backend="gloo", timeout=timeout)
    return DistributedContext(rank, world_size, local_rank, _CONTROL_GROUPS[key])


def shutdown_distributed() -> None:
    """Leave the process group (so a failed process closes its connections at once and its
    peers' collectives fail now, instead of at the timeout)."""
    if dist.is_available() and dist.is_initialized():
        _CONTROL_GROUPS.clear()
        dist.destroy_process_group()


def rank_synced_buffer_names(module: nn.Module) -> list[str]:
    """Dotted names of the buffers under `RankSyncedBuffers` modules of `module`."""
    names = []
    for path, child in module.named_modules():
        if isinstance(child, RankSyncedBuffers):
            prefix = f"{path}." if path else ""
            names.extend(f"{prefix}{name}" for name, _ in child.named_buffers())
    return names


# ---- batch statistics over the global batch -----------------------------------------------------
class CrossRankBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are the global batch's (every rank's samples), for the
    devices torch's SyncBatchNorm refuses (it runs on CUDA-like devices only).

    Mean and biased variance over every rank (two all-reduces, differentiable: each rank's loss
    reaches every rank's inputs through the statistics, as in one process); the running variance
    is updated with the unbiased one, as BatchNorm does. Eval mode, or one process: BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dims, got {input.dim()}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        synced = self.training and dist.is_available() and dist.is_initialized()
        if not synced or dist.get_world_size() == 1:
            return super().forward(input)
        self._check_input_dim(input)
        values = input.float()  # statistics in fp32 whatever autocast ran the layer in
        dims = [0, *range(2, values.dim())]
        shape = [1, -1] + [1] * (values.dim() - 2)
        count = torch.tensor([values.numel() / values.shape[1]], device=values.device)
        totals = sum_ranks(torch.cat([values.sum(dims), count]))
        samples = totals[-1]
        mean = totals[:-1] / samples
        centered = values - mean.view(shape)
        variance = sum_ranks((centered * centered).sum(dims)) / samples
        output = centered * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), variance.detach(), samples.detach())
        return output.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(
        self, mean: torch.Tensor, variance: torch.Tensor, samples: torch.Tensor
    ) -> None:
        self.num_batches_tracked.add_(1)
        # momentum None: a cumulative average, as BatchNorm does
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = variance * samples / (samples - 1).clamp(min=1)
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


# every per-module hook table a forward runs through: taps registered on a BatchNorm survive
_HOOK_TABLES = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
)


def convert_sync_batchnorm(module: nn.Module) -> int:
    """Replace, in place, every BatchNorm under `module` with one that normalises over the
    global batch; parameters, buffers and hooks (a distiller's taps) move to the replacement.
    Returns how many were replaced. What torch.nn.SyncBatchNorm.convert_sync_batchnorm does,
    keeping hooks, and with `CrossRankBatchNorm` where torch's does not run."""
    replaced: dict[int, nn.Module] = {}
    _convert_children(module, replaced)
    return len(replaced)


def _convert_children(module: nn.Module, replaced: dict[int, nn.Module]) -> None:
    # every name, not named_children(): that lists a module used at two names once
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        if id(child) in replaced:  # one module used at two places stays one module
            setattr(module, name, replaced[id(child)])
        elif isinstance(child, _BatchNorm) and not isinstance(
            child, (nn.SyncBatchNorm, CrossRankBatchNorm)
        ):
            replaced[id(child)] = _synced_copy(child)
            setattr(module, name, replaced[id(child)])
        else:
            _convert_children(child, replaced)


def _synced_copy(norm: _BatchNorm) -> nn.Module:
    tensors = [*norm.parameters(recurse=False), *norm.buffers(recurse=False)]
    on_cuda = bool(tensors) and tensors[0].device.type == "cuda"
    kind = nn.SyncBatchNorm if on_cuda else CrossRankBatchNorm
    synced = kind(
        norm.num_features,
        eps=norm.eps,
        momentum=norm.momentum,
        affine=norm.affine,
        track_running_stats=norm.track_running_stats,
    )
    for name, tensor in [*norm.named_parameters(recurse=False), *norm.named_buffers(recurse=False)]:
        setattr(
            synced, name, tensor
        )  # the same tensors: an optimizer built before still holds them
    for table in _HOOK_TABLES:
        if hasattr(norm, table):
            setattr(synced, table, getattr(norm, table))
    synced.train(norm.training)
    return synced


__all__ = [
    "CrossRankBatchNorm",
    "DistributedContext",
    "RankStopped",
    "convert_sync_batchnorm",
    "init_distributed",
    "is_peer_failure",
    "rank_synced_buffer_names",
    "shutdown_distributed",
]
