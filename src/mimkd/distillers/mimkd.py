"""MIMKD: distil by maximising a lower bound on teacher-student mutual information.

Shrivastava, Qi, Ordonez, "Estimating and Maximizing Mutual Information for Knowledge
Distillation", arXiv 2110.15946 (CVPR-W 2023). The paper's full text is not available to us; this
is the reconstruction of /work/shared/MIMKD.md: Deep InfoMax's Jensen-Shannon estimator (Hjelm et
al., ICLR 2019, eq. 4) applied across networks, with separable "encode and dot product" critics
that student and critics both minimise (no min-max) while the teacher stays frozen.

    L = ce_weight CE + kd_weight T^2 KL + beta_global L_global + beta_local sum_layers L_local
    L_MI = E_pos[softplus(-T)] + E_neg[softplus(T)]                      (2 log 2 at chance)

Every *choice* of MIMKD.md is a switch in `MIMKDConfig`, documented at its field. Defaults:
- ce_weight 0.1, kd_weight 0.9, T 4 and beta_global = beta_local = 0.1: MIMKD.md's measured best
  ("global+local 0.1 + KD", 0.835 +- 0.004 against KD's 0.832 and CE's 0.811, low-data regime);
  MIMKD alone (the MI terms with CE, no KD) stayed at the CE level there. Set kd_weight=0,
  ce_weight=1 for MIMKD without KD.
- local_mode "teacher_global_student_local" (Deep InfoMax's local objective across networks: no
  spatial alignment needed, so any teacher fits any student).
- negatives "one": one negative per positive through a derangement of the batch redrawn each step.
  Under DDP the batch is the global one (`negatives_across_ranks`, on): the student encodings are
  gathered from every process (`collectives.gather_batch`, gradients kept) and the derangement is
  drawn over the global batch on every rank, so N processes compute one process's loss.
- critic "separable", scores divided by sqrt(h), hidden h = 128 (measured: on Fashion-MNIST,
  cnn_small -> cnn_tiny, 2k images, 30 epochs, 2 seeds, h = 128 gave 0.820 / 0.817 against 0.814 /
  0.806 for MIMKD.md's h = 512, at 0.4x its CPU step time). MIMKD.md suggests 512 on CIFAR and
  1024 on ImageNet, where features are 256-2048 wide: the identity shortcut only carries the first
  h channels, so raise `hidden` to the feature width there.
- layers: the last map before global pooling of the student (and of the teacher where a mode
  reads a teacher map); aliases "last_map" and "stages" expand from the model's TapSet.

Pairs: any teacher with any student. The global term needs only pooled vectors; the default local
term scores the teacher's global vector against every location of the student's map (or token
sequence: tokens are locations), so it needs no spatial alignment; local_local pools the teacher's
map to the student's locations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mimkd.distillers.base import DistillConfig, Distiller, with_default
from mimkd.distillers.collectives import gather_batch, local_rows, world
from mimkd.distillers.registry import register_distiller
from mimkd.errors import ConfigError, ShapeError
from mimkd.features import TapSet, as_locations
from mimkd.mi import bounds
from mimkd.mi.critics import SCORE_SCALES, build_critic
from mimkd.options import option

LOCAL_MODES = ("teacher_global_student_local", "student_global_teacher_local", "local_local")
NEGATIVE_MODES = ("one", "all", "same_class")
CRITIC_KINDS = ("separable", "concat")
PROJECTIONS = ("mlp", "linear")
# enough candidate permutations that none being a derangement has probability < 1e-11 for any n
_DERANGEMENT_CANDIDATES = 64


@dataclass
class MIMKDConfig(DistillConfig):
    """MIMKD's switches; each default is the choice documented in the module docstring."""

    ce_weight: float = with_default("ce_weight", 0.1)
    kd_weight: float = with_default("kd_weight", 0.9)
    beta_global: float = option(
        0.1, "global term (penultimate vectors); 0: no term, no critic", minimum=0
    )
    beta_local: float = option(
        0.1, "local term, summed over layers; 0: no term, no critic", minimum=0
    )
    local_mode: str = option(
        "teacher_global_student_local", "which features the local critic pairs", choices=LOCAL_MODES
    )
    negatives: str = option(
        "one",
        "one (a derangement) | all (N-1 in-batch) | same_class (hard)",
        choices=NEGATIVE_MODES,
    )
    critic: str = option(
        "separable",
        "separable (encode and dot product) | concat (MLP on [t; s])",
        choices=CRITIC_KINDS,
    )
    hidden: int = option(
        128, "h: the critics' width (512 on CIFAR per MIMKD.md; see the docstring)", minimum=1
    )
    score_scale: str = option(
        "sqrt_h", "sqrt_h (dot / sqrt(h), O(1) initial scores) | none", choices=SCORE_SCALES
    )
    student_projection: str = option(
        "mlp", "mlp (residual MLP) | linear (identity-init projection only)", choices=PROJECTIONS
    )
    normalize: bool = option(False, "L2-normalise encodings, score = cosine / score_temperature")
    score_temperature: float = option(
        0.1, "temperature of normalised scores (normalize=true)", greater_than=0
    )
    student_layers: list[str] | None = option(
        None, "local taps or aliases last_map/stages (None: last_map)"
    )
    teacher_layers: list[str] | None = option(
        None, "teacher local taps for the modes that read its maps"
    )
    student_global: str | None = option(
        None, "tap of the student's global vector (None: penultimate)"
    )
    teacher_global: str | None = option(
        None, "tap of the teacher's global vector (None: penultimate)"
    )
    negatives_across_ranks: bool = option(
        True,
        "under DDP, negatives come from every process's batch (the one-process loss on the "
        "global batch; an all_gather of the student encodings a step); false: the local batch",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.student_projection == "linear" and self.critic == "concat":
            raise ConfigError("mimkd student_projection='linear' needs critic='separable'")


def random_derangement(
    n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """A uniformly random permutation of range(n) without fixed points, as a LongTensor [n].

    Rejection sampling, vectorised so it never syncs with the host: 64 uniform permutations are
    drawn at once and the first derangement among them is taken (each candidate is a derangement
    with probability >= 1/3, so all failing has probability < 1e-11; then a cyclic shift, itself a
    derangement, is returned). Conditioned on success the result is exactly uniform over
    derangements. Uses torch's RNG (`generator`, or the default one of `device`): seeded, it is
    deterministic.
    """
    if n < 2:
        raise ShapeError(f"a derangement needs n >= 2 (a batch of {n} has no other sample)")
    gen_device = generator.device if generator is not None else device
    # float64 keys: ties (which would bias argsort) are ~2^-53 likely instead of ~2^-24
    keys = torch.rand(
        _DERANGEMENT_CANDIDATES, n, generator=generator, device=gen_device, dtype=torch.float64
    )
    candidates = keys.argsort(dim=1)
    identity = torch.arange(n, device=candidates.device)
    valid = (candidates != identity).all(dim=1)
    # argmax of a bool picks the first True (0 when none: masked by the fallback below)
    first = valid.to(torch.uint8).argmax()
    shifted = identity.roll(1)
    # index_select keeps the index on the device: no host sync, no graph break under compile
    chosen = torch.where(valid.any(), candidates.index_select(0, first.view(1)).squeeze(0), shifted)
    return chosen.to(device) if device is not None else chosen


def same_class_negatives(labels: torch.Tensor, generator: torch.Generator | None = None):
    """For each i a uniformly random j != i with labels[j] == labels[i] (any j != i if none)."""
    n = labels.shape[0]
    not_self = ~torch.eye(n, dtype=torch.bool, device=labels.device)
    same = (labels[:, None] == labels[None, :]) & not_self
    allowed = torch.where(same.any(dim=1, keepdim=True), same, not_self)
    keys = torch.rand(n, n, generator=generator, device=labels.device)
    return keys.masked_fill(~allowed, -1.0).argmax(dim=1)


@dataclass
class _Term:
    """One MI term: which features feed each side of its critic and whether they are maps."""

    name: str
    teacher_path: str
    student_path: str
    teacher_local: bool
    student_local: bool


@register_distiller(
    "mimkd",
    paper="Shrivastava, Qi, Ordonez, arXiv 2110.15946 (CVPR-W 2023)",
    taps="penultimate vectors (global) + last map before pooling (local); configurable",
)
class MIMKD(Distiller):
    """MIMKD: maximise a JSD bound on teacher-student MI (global and local) with learned critics."""

    Config = MIMKDConfig
    min_batch_size = 2

    def setup(self):
        cfg: MIMKDConfig = self.config
        student_global = cfg.student_global or self.student_taps.penultimate
        teacher_global = cfg.teacher_global or self.teacher_taps.penultimate
        self.global_terms: list[_Term] = []
        self.local_terms: list[_Term] = []
        if cfg.beta_global > 0:
            self.global_terms.append(_Term("global", teacher_global, student_global, False, False))
        if cfg.beta_local > 0:
            self.local_terms = self._local_terms(cfg, teacher_global, student_global)
        terms = self.global_terms + self.local_terms
        self.tap(
            dict.fromkeys(term.student_path for term in terms),
            dict.fromkeys(term.teacher_path for term in terms),
        )
        self.critics = nn.ModuleDict()
        for term in terms:
            teacher_dim = _channels(self.teacher_shapes[term.teacher_path], term.teacher_local)
            student_dim = _channels(self.student_shapes[term.student_path], term.student_local)
            self.critics[term.name] = build_critic(
                cfg.critic,
                teacher_dim,
                student_dim,
                cfg.hidden,
                local_a=term.teacher_local,
                local_b=term.student_local,
                mlp_b=cfg.student_projection == "mlp",
                score_scale=cfg.score_scale,
                normalize=cfg.normalize,
                temperature=cfg.score_temperature,
            )
        if cfg.local_mode == "local_local":
            for term in self.local_terms:
                _check_poolable(
                    self.teacher_shapes[term.teacher_path], self.student_shapes[term.student_path]
                )

    def _local_terms(self, cfg: MIMKDConfig, teacher_global: str, student_global: str):
        student_maps = _expand_layers(cfg.student_layers, self.student_taps)
        teacher_maps = _expand_layers(cfg.teacher_layers, self.teacher_taps)
        if cfg.local_mode == "teacher_global_student_local":
            pairs = [(teacher_global, path, False, True) for path in student_maps]
        elif cfg.local_mode == "student_global_teacher_local":
            pairs = [(path, student_global, True, False) for path in teacher_maps]
        else:
            if len(student_maps) != len(teacher_maps):
                raise ConfigError(
                    f"local_mode='local_local' pairs layers one to one; got {len(student_maps)} "
                    f"student and {len(teacher_maps)} teacher layers. List as many of each."
                )
            pairs = [(t, s, True, True) for t, s in zip(teacher_maps, student_maps)]
        return [
            _Term(f"local_{index}", teacher_path, student_path, teacher_local, student_local)
            for index, (teacher_path, student_path, teacher_local, student_local) in enumerate(
                pairs
            )
        ]

    # ---- one step ----------------------------------------------------------------------------
    def loss(self, step):
        cfg: MIMKDConfig = self.config
        losses: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}
        across_ranks = cfg.negatives_across_ranks and world()[1] > 1
        negatives = self._draw_negatives(step.labels, across_ranks)
        for group, terms, weight in (
            ("global", self.global_terms, cfg.beta_global),
            ("local", self.local_terms, cfg.beta_local),
        ):
            if not terms:
                continue
            results = [
                self._term(term, step.teacher, step.student, negatives, across_ranks)
                for term in terms
            ]
            mi_loss = sum(result[0] for result in results)
            losses[f"mi_{group}"] = weight * mi_loss
            metrics[f"mi_loss_{group}"] = mi_loss
            # means over layers, so a many-layer local term still reads on the single-term scale
            for index, key in enumerate(("bound", "critic_acc_pos", "critic_acc_neg"), start=1):
                metrics[f"{key}_{group}"] = torch.stack(
                    [result[index] for result in results]
                ).mean()
        return losses, metrics

    def _draw_negatives(self, labels: torch.Tensor, across_ranks: bool) -> torch.Tensor | None:
        """Indices pi with sample pi(i) the negative of anchor i; None means all in-batch.

        Across ranks: drawn over the global batch on every rank (the same numbers everywhere,
        those of one process), then this rank's anchors' rows: indices into the global batch."""
        if self.config.negatives == "all":
            return None
        if across_ranks:
            labels = gather_batch(labels)
        if self.config.negatives == "same_class":
            drawn = same_class_negatives(labels)
        else:
            drawn = random_derangement(labels.shape[0], device=labels.device)
        return local_rows(drawn) if across_ranks else drawn

    def _term(self, term: _Term, teacher_features, student_features, negatives, across_ranks):
        """(L_MI, bound, accuracy on positives, accuracy on negatives) of one term."""
        critic = self.critics[term.name]
        teacher_feature = teacher_features[term.teacher_path]
        student_feature = student_features[term.student_path]
        if term.teacher_local and term.student_local:
            teacher_feature = _pool_to(teacher_feature, student_feature)
        teacher_encoded = critic.encode_a(teacher_feature)
        student_encoded = critic.encode_b(student_feature)
        positive = critic.pair_scores(teacher_encoded, student_encoded)
        # the samples negatives are drawn from: this batch, or the global one
        candidates = gather_batch(student_encoded) if across_ranks else student_encoded
        if negatives is None:
            matrix = critic.matrix_scores(teacher_encoded, candidates)
            negative = _off_anchor(matrix) if across_ranks else bounds.diagonal_split(matrix)[1]
        else:
            negative = critic.pair_scores(teacher_encoded, candidates[negatives])
        mi_loss = bounds.jsd_loss(positive, negative)
        accuracy_positive = (positive > 0).float().mean()
        accuracy_negative = (negative < 0).float().mean()
        return mi_loss, -mi_loss, accuracy_positive, accuracy_negative


def _off_anchor(matrix: torch.Tensor) -> torch.Tensor:
    """The scores [B, world * B, ...] of local anchors against the global batch, less each
    anchor's own sample (local row j is global row j * world + rank): its negatives."""
    rank, size = world()
    anchors = matrix.shape[0]
    own = torch.arange(anchors, device=matrix.device) * size + rank
    others = torch.ones(matrix.shape[:2], dtype=torch.bool, device=matrix.device)
    others[torch.arange(anchors, device=matrix.device), own] = False
    return matrix[others]


def _expand_layers(layers: list[str] | None, taps: TapSet) -> list[str]:
    expanded: list[str] = []
    for layer in layers or ["last_map"]:
        if layer == "last_map":
            expanded.append(taps.last_map)
        elif layer == "stages":
            expanded.extend(taps.stages or [taps.last_map])
        else:
            expanded.append(layer)
    return list(dict.fromkeys(expanded))


def _channels(shape: torch.Size, local: bool) -> int:
    """Feature width: channels of a map [B, C, H, W] or tokens [B, N, C]; flat size of a vector."""
    if not local:
        return int(torch.Size(shape[1:]).numel())
    if len(shape) == 4:
        return int(shape[1])
    if len(shape) == 3:
        return int(shape[2])
    raise ShapeError(
        f"a local term needs a map [B, C, H, W] or tokens [B, N, C]; the tap gives {tuple(shape)}. "
        "Pick another layer with method.student_layers / method.teacher_layers."
    )


def _pool_to(teacher_map: torch.Tensor, student_map: torch.Tensor) -> torch.Tensor:
    """The teacher map resampled to the student's locations (local_local's correspondence)."""
    if teacher_map.dim() == 4 and student_map.dim() == 4:
        return F.adaptive_avg_pool2d(teacher_map, student_map.shape[-2:])
    teacher_locations = as_locations(teacher_map)
    student_count = as_locations(student_map).shape[1]
    if teacher_locations.shape[1] == student_count:
        return teacher_locations
    pooled = F.adaptive_avg_pool1d(teacher_locations.transpose(1, 2), student_count)
    return pooled.transpose(1, 2)


def _check_poolable(teacher_shape: torch.Size, student_shape: torch.Size) -> None:
    if len(teacher_shape) not in (3, 4) or len(student_shape) not in (3, 4):
        raise ShapeError(
            f"local_local pairs maps or token sequences; got teacher {tuple(teacher_shape)} and "
            f"student {tuple(student_shape)}."
        )


__all__ = ["MIMKD", "MIMKDConfig", "random_derangement", "same_class_negatives"]
