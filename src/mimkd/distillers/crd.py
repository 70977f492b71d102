"""CRD: contrastive representation distillation with NCE against a memory of past embeddings.

Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020 (arXiv 1910.10699).
Student and teacher penultimate vectors are embedded (Linear + L2 normalisation, both trained) into
a shared space. Each student embedding is contrasted against the teacher memory row of its own
sample (the positive) and K rows of other samples (negatives), and each teacher embedding likewise
against the student memory. With P = exp(s / T) / Z, NCE's loss is
    -[log P_pos / (P_pos + K/N) + sum_neg log (K/N) / (P_neg + K/N)] / B
(RepDistiller's `ContrastLoss`, N the memory size, 1/N the uniform noise probability, eps 1e-7 in
the denominators); Z is estimated once, on the first step, as mean(exp(s / T)) * N.

Defaults and their sources (RepDistiller `crd/criterion.py`, `crd/memory.py`, `train_student.py`
and the CIFAR-100 script `--distill crd -r 1 -a 0 -b 0.8`): CRD weight 0.8, CE weight 1, KD weight 0
(`-a 1` is the "CRD+KD" row); 128-d embeddings (`--feat_dim`), 16,384 negatives (`--nce_k`),
NCE temperature 0.07 (`--nce_t`), memory momentum 0.5 (`--nce_m`): a sample's row becomes
normalize(m * row + (1 - m) * embedding) after the step has read the memory; memory rows start
uniform in +-1/sqrt(dim/3).

Memory, `memory="bank"` (RepDistiller's `ContrastMemory`): two banks of num_train_samples x
embed_dim, one row per training sample and side, read at the batch's dataset `indices`. Negatives
are drawn uniformly over the whole bank with `torch.randint` on the default generator (global
seeding reproduces them); the positive itself is not excluded, as in the memory's own AliasMethod
sampler over uniform weights. Deviation: RepDistiller's CIFAR-100 loader (`CIFAR100InstanceSample`,
mode "exact") instead draws each sample's negatives from other classes only; the memory here does
not see labels.
Memory, `memory="queue"` (MoCo-style, He et al. CVPR 2020): two FIFO queues of `queue_size` recent
embeddings, independent of the dataset size; the positive is the other side's current embedding of
the same sample (detached, as a memory row is), the negatives are all queue entries, N = K =
queue_size. Sample indices are not needed.
Either memory is a set of registered buffers (rows, Z, the queue pointer), so `state_dict()` holds
it and a resumed run continues bit-exactly. Under DDP N processes compute what one process computes
on the global batch (`mimkd.distillers.collectives`): every rank applies every rank's update (the
batch gathered in one-process order), draws the global batch's negatives and keeps its own rows,
and estimates Z from the global first batch; the buffers stay identical on every rank without
DDP's per-step broadcast from rank 0 (the memory is marked `RankSyncedBuffers`).

Cost: RepDistiller gathers a [B, K+1, dim] tensor per side and step (0.5 GB at batch 64). Here,
whenever N * (dim + B) <= B * (K+1) * dim (CIFAR-100: 9.6M vs 134M floats), the batch is scored
against the whole memory with one matmul instead ([B, N] scores plus a copy of the memory that
backward reads, since the rows are updated in place within the step) and the K+1 columns are
picked; otherwise it gathers as RepDistiller does. The step stays on the device (Z is set by
`torch.where` on a buffer, no `.item()`), in fp32 as every method's loss (exp(1 / 0.07) ~ 1.6e6
overflows fp16).

Pairs: any two models (the embeddings map any widths, flattened, to 128-d).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mimkd.distillers.adapters import LinearEmbed, flat_size
from mimkd.distillers.base import DistillConfig, Distiller
from mimkd.distillers.collectives import (
    RankSyncedBuffers,
    gather_batch,
    local_rows,
    sum_ranks,
    world,
)
from mimkd.distillers.registry import register_distiller
from mimkd.errors import ConfigError
from mimkd.options import option

# RepDistiller's eps in ContrastLoss's denominators
NCE_EPS = 1e-7
MEMORY_KINDS = ("bank", "queue")


@dataclass
class CRDConfig(DistillConfig):
    distill_weight: float = option(0.8, "CRD (NCE) loss weight (RepDistiller -b)", minimum=0)
    embed_dim: int = option(
        128, "embedding size on both sides (RepDistiller --feat_dim)", minimum=1
    )
    num_negatives: int = option(
        16384, "bank negatives per anchor, K (RepDistiller --nce_k)", minimum=1
    )
    nce_temperature: float = option(
        0.07, "NCE temperature T (RepDistiller --nce_t)", greater_than=0
    )
    memory_momentum: float = option(
        0.5, "bank row momentum m (RepDistiller --nce_m)", minimum=0, maximum=1
    )
    memory: str = option(
        "bank",
        "bank: a row per training sample (RepDistiller); queue: recent FIFO",
        choices=MEMORY_KINDS,
    )
    queue_size: int = option(
        16384, "queue length for memory=queue; all entries are negatives", minimum=1
    )
    student_layer: str = option("", "student tap; empty: its penultimate vector")
    teacher_layer: str = option("", "teacher tap; empty: its penultimate vector")


def nce_loss(probabilities: torch.Tensor, memory_size: int) -> torch.Tensor:
    """RepDistiller's ContrastLoss on [B, 1 + K] probabilities, the positive in column 0."""
    batch, draws = probabilities.shape
    noise = (draws - 1) / memory_size  # K * P_n with the uniform noise P_n = 1 / N
    positive, negative = probabilities[:, 0], probabilities[:, 1:]
    log_positive = torch.log(positive / (positive + noise + NCE_EPS))
    log_negative = torch.log(noise / (negative + noise + NCE_EPS))
    return -(log_positive.sum() + log_negative.sum()) / batch


def memory_scores(
    memory: torch.Tensor, anchors: torch.Tensor, draws: torch.Tensor, dense: bool | None = None
) -> torch.Tensor:
    """Dot products [B, K+1] of each anchor [B, D] with the memory rows `draws` [B, K+1] names.

    Dense: one [B, N] matmul against the whole memory, then pick columns; it moves less memory than
    gathering [B, K+1, D] rows whenever N * (D + B) <= B * (K+1) * D (CIFAR-100 at batch 64:
    9.6M vs 134M floats). `dense=None` picks the cheaper one.
    """
    batch, count = draws.shape
    size, dim = memory.shape
    if dense is None:
        dense = size * (dim + batch) <= batch * count * dim
    if dense:
        # a copy: the memory is updated in place before backward reads it
        keys = memory.clone() if anchors.requires_grad else memory
        return (anchors @ keys.t()).gather(1, draws)
    rows = memory.index_select(0, draws.reshape(-1)).view(batch, count, dim)
    return torch.bmm(rows, anchors.unsqueeze(2)).squeeze(2)


def _global_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean over every rank's values (the local mean in one process, computed as before)."""
    if world()[1] == 1:
        return values.mean()
    # float64: the count of every rank's scores can pass 2^24
    count = torch.tensor(float(values.numel()), dtype=torch.float64, device=values.device)
    totals = sum_ranks(torch.stack([values.sum().double(), count]))
    return (totals[0] / totals[1]).to(values.dtype)


def _uniform_rows(rows: int, dim: int) -> torch.Tensor:
    """RepDistiller's memory init: uniform in +-1/sqrt(dim/3), rows of unit norm on average."""
    bound = 1.0 / math.sqrt(dim / 3)
    return torch.rand(rows, dim).mul_(2 * bound).add_(-bound)


class _ContrastMemory(RankSyncedBuffers, nn.Module):
    """Shared part of both memories: the NCE normaliser Z per side, estimated on the first step."""

    size: int

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = temperature
        # Z for student anchors [0] and teacher anchors [1]; negative: not estimated yet
        self.register_buffer("normalizers", torch.full((2,), -1.0))

    def probabilities(self, scores: torch.Tensor, side: int) -> torch.Tensor:
        exp_scores = torch.exp(scores / self.temperature)
        with torch.no_grad():
            current = self.normalizers[side]
            normalizer = torch.where(current > 0, current, _global_mean(exp_scores) * self.size)
            self.normalizers[side] = normalizer
        # divide by the fresh tensor, not a view of the buffer the other side writes next
        return exp_scores / normalizer


class ContrastBank(_ContrastMemory):
    """RepDistiller's ContrastMemory: a student bank and a teacher bank, one row per sample."""

    def __init__(
        self,
        num_samples: int,
        embed_dim: int,
        num_negatives: int,
        temperature: float,
        momentum: float,
        dense: bool | None = None,
    ):
        super().__init__(temperature)
        self.size = num_samples
        self.num_negatives = num_negatives
        self.momentum = momentum
        self.dense = dense
        self.register_buffer("student_memory", _uniform_rows(num_samples, embed_dim))
        self.register_buffer("teacher_memory", _uniform_rows(num_samples, embed_dim))

    def forward(
        self,
        student_embed: torch.Tensor,
        teacher_embed: torch.Tensor,
        indices: torch.Tensor,
        negatives: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """P for student anchors and for teacher anchors, each [B, 1 + K]; then the update."""
        indices = indices.to(self.student_memory.device)
        if negatives is None:
            # drawn for the global batch on every rank, this rank's rows kept: one process's draw
            global_batch = indices.shape[0] * world()[1]
            negatives = local_rows(
                torch.randint(self.size, (global_batch, self.num_negatives), device=indices.device)
            )
        draws = torch.cat([indices.view(-1, 1), negatives], dim=1)
        student_scores = memory_scores(self.teacher_memory, student_embed, draws, self.dense)
        teacher_scores = memory_scores(self.student_memory, teacher_embed, draws, self.dense)
        student_probabilities = self.probabilities(student_scores, 0)
        teacher_probabilities = self.probabilities(teacher_scores, 1)
        self.update(student_embed, teacher_embed, indices)
        return student_probabilities, teacher_probabilities

    @torch.no_grad()
    def update(
        self, student_embed: torch.Tensor, teacher_embed: torch.Tensor, indices: torch.Tensor
    ) -> None:
        """row <- normalize(m * row + (1 - m) * embedding) for the batch's samples."""
        indices = gather_batch(indices)
        for memory, embed in (
            (self.student_memory, student_embed),
            (self.teacher_memory, teacher_embed),
        ):
            embed = gather_batch(embed.detach().to(memory.dtype))
            rows = memory.index_select(0, indices).mul_(self.momentum)
            rows.add_(embed, alpha=1 - self.momentum)
            memory.index_copy_(0, indices, F.normalize(rows, dim=1))


class ContrastQueue(_ContrastMemory):
    """Two FIFO queues of recent student and teacher embeddings (MoCo-style), any dataset size."""

    def __init__(self, queue_size: int, embed_dim: int, temperature: float):
        super().__init__(temperature)
        self.size = queue_size
        self.register_buffer("student_queue", _uniform_rows(queue_size, embed_dim))
        self.register_buffer("teacher_queue", _uniform_rows(queue_size, embed_dim))
        self.register_buffer("pointer", torch.zeros(1, dtype=torch.long))

    def forward(
        self,
        student_embed: torch.Tensor,
        teacher_embed: torch.Tensor,
        indices: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """P for student anchors and for teacher anchors, each [B, 1 + queue_size]; then enqueue."""
        positive = (student_embed * teacher_embed.detach()).sum(1, keepdim=True)
        student_scores = torch.cat(
            [positive, student_embed @ self._keys(self.teacher_queue, student_embed).t()], dim=1
        )
        positive = (teacher_embed * student_embed.detach()).sum(1, keepdim=True)
        teacher_scores = torch.cat(
            [positive, teacher_embed @ self._keys(self.student_queue, teacher_embed).t()], dim=1
        )
        student_probabilities = self.probabilities(student_scores, 0)
        teacher_probabilities = self.probabilities(teacher_scores, 1)
        self.enqueue(student_embed, teacher_embed)
        return student_probabilities, teacher_probabilities

    @staticmethod
    def _keys(queue: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        # a copy: the queue is overwritten in place before backward reads it
        return queue.clone() if anchors.requires_grad else queue

    @torch.no_grad()
    def enqueue(self, student_embed: torch.Tensor, teacher_embed: torch.Tensor) -> None:
        # the global batch in one-process order: the queue holds what one process's would
        student_rows = gather_batch(student_embed.detach().to(self.student_queue.dtype))
        teacher_rows = gather_batch(teacher_embed.detach().to(self.teacher_queue.dtype))
        count = min(student_rows.shape[0], self.size)
        positions = (self.pointer + torch.arange(count, device=self.pointer.device)) % self.size
        self.student_queue.index_copy_(0, positions, student_rows[-count:])
        self.teacher_queue.index_copy_(0, positions, teacher_rows[-count:])
        self.pointer.copy_((self.pointer + count) % self.size)


@register_distiller(
    "crd",
    paper="Tian et al., ICLR 2020 (arXiv 1910.10699)",
    taps="penultimate (student and teacher)",
)
class ContrastiveRepresentationDistillation(Distiller):
    """CRD: NCE between student and teacher embeddings against a memory bank (or queue)."""

    Config = CRDConfig
    needs_indices = True
    min_batch_size = 2

    def setup(self):
        cfg = self.config
        # the queue keys on the current batch alone; only the bank reads dataset indices
        self.needs_indices = cfg.memory == "bank"
        if cfg.memory == "bank" and self.context.num_train_samples <= 0:
            raise ConfigError(
                "crd's memory bank holds one row per training sample but the dataset size is "
                "unknown (num_train_samples=0); use crd.memory=queue or pass the dataset size."
            )
        self.student_layer = cfg.student_layer or self.student_taps.penultimate
        self.teacher_layer = cfg.teacher_layer or self.teacher_taps.penultimate
        self.tap([self.student_layer], [self.teacher_layer])
        self.embed_student = LinearEmbed(
            flat_size(self.student_shapes[self.student_layer]), cfg.embed_dim
        )
        self.embed_teacher = LinearEmbed(
            flat_size(self.teacher_shapes[self.teacher_layer]), cfg.embed_dim
        )
        if cfg.memory == "bank":
            self.memory: ContrastBank | ContrastQueue = ContrastBank(
                self.context.num_train_samples,
                cfg.embed_dim,
                cfg.num_negatives,
                cfg.nce_temperature,
                cfg.memory_momentum,
            )
        else:
            self.memory = ContrastQueue(cfg.queue_size, cfg.embed_dim, cfg.nce_temperature)

    def contrast_loss(
        self,
        student_embed: torch.Tensor,
        teacher_embed: torch.Tensor,
        indices: torch.Tensor | None,
    ) -> torch.Tensor:
        """NCE loss of both anchors (student and teacher sides summed); updates the memory."""
        student_probabilities, teacher_probabilities = self.memory(
            student_embed, teacher_embed, indices
        )
        return nce_loss(student_probabilities, self.memory.size) + nce_loss(
            teacher_probabilities, self.memory.size
        )

    def loss(self, step):
        contrast = self.contrast_loss(
            self.embed_student(step.student[self.student_layer]),
            self.embed_teacher(step.teacher[self.teacher_layer]),
            step.indices,
        )
        return {"crd": self.config.distill_weight * contrast}, {"crd_nce": contrast}
