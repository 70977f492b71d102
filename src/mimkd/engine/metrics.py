"""What a run measures: running sums of per-step values kept on the device, and evaluation.

Both read the device once (per `log_every` interval, per evaluation), never per step; under DDP
both add every rank's sums, so N processes report what one process reports.
"""

from __future__ import annotations

import torch

from mimkd.engine.distributed import DistributedContext


class RunningSums:
    """Device-side sums of per-step values; `read()` is the only place they reach the host."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.samples = torch.zeros((), device=device)
        self.steps = 0

    def add(self, values: dict[str, torch.Tensor], batch_size: torch.Tensor | int) -> None:
        for key, value in values.items():
            value = value.detach().float()
            if key in self.sums:
                self.sums[key] += value
            else:
                self.sums[key] = value.clone()
        self.samples += batch_size
        self.steps += 1

    def read(self, distributed: DistributedContext | None = None) -> dict[str, float]:
        """Means per step; with `distributed`, over every rank's steps (called on every rank at
        the same step: the mean one process reports, as every rank averages equal batches)."""
        if not self.sums:
            return {}
        keys = list(self.sums)
        stacked = torch.stack([self.sums[k] for k in keys])
        ranks = 1
        if distributed is not None and distributed.enabled:
            stacked = distributed.sum(stacked)
            ranks = distributed.world_size
        values = stacked.cpu().tolist()
        return {key: value / max(self.steps * ranks, 1) for key, value in zip(keys, values)}

    def state_dict(self) -> dict:
        return {
            "sums": {key: value.cpu() for key, value in self.sums.items()},
            "samples": self.samples.cpu(),
            "steps": self.steps,
        }

    @classmethod
    def from_state(cls, state: dict | None, device: torch.device) -> RunningSums:
        sums = cls(device)
        if state is not None:
            sums.sums = {key: value.to(device) for key, value in state["sums"].items()}
            sums.samples = state["samples"].to(device)
            sums.steps = state["steps"]
        return sums


def evaluate(
    model: torch.nn.Module, loader, autocast, distributed: DistributedContext | None = None
) -> dict[str, float]:
    """Top-1/top-5 accuracy and mean CE of `model` over a loader (one host sync at the end).

    With `distributed`, each rank evaluates its shard of the test set (every sample once over
    all ranks) and the sums are added over ranks: the numbers one process gets."""
    was_training = model.training
    model.eval()
    device_sums = None
    with torch.no_grad(), autocast():
        for images, labels, _ in loader:
            logits = model(images).float()
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top5 == labels[:, None]
            batch = torch.stack(
                [
                    hits[:, 0].sum().float(),
                    hits.any(dim=1).sum().float(),
                    torch.nn.functional.cross_entropy(logits, labels, reduction="sum"),
                    torch.tensor(float(labels.shape[0]), device=labels.device),
                ]
            )
            device_sums = batch if device_sums is None else device_sums + batch
    model.train(was_training)
    if device_sums is None:  # an empty shard (a test set smaller than the number of ranks)
        device_sums = torch.zeros(4, device=_module_device(model))
    if distributed is not None and distributed.enabled:
        device_sums = distributed.sum(device_sums)
    top1, top5, loss, count = device_sums.cpu().tolist()
    count = max(count, 1.0)
    return {"top1": top1 / count, "top5": top5 / count, "loss": loss / count, "count": count}


def _module_device(model) -> torch.device:
    parameter = next(iter(getattr(model, "parameters", list)()), None)
    return parameter.device if parameter is not None else torch.device("cpu")
