"""Critic networks T(a, b): the score a mutual-information bound is computed from.

The default is Deep InfoMax's separable "encode and dot product" critic (Hjelm et al. 2019): each
side is encoded once and every pair is scored by a dot product, so one batch yields all N^2 (or
N^2 x L) scores for the price of 2N encodings, and a permuted negative costs an index gather. The
alternative is a concat critic, an MLP on [a; b].

Features arrive as vectors [B, D] or as locations [B, L, C] (`mimkd.features.as_locations`: a map
[B, C, H, W] is H*W locations, tokens [B, N, C] are N). Scores broadcast over locations: a global
vector against a local map scores every location.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mimkd.errors import ConfigError, ShapeError
from mimkd.features import as_locations

SCORE_SCALES = ("sqrt_h", "none")


class Encoder(nn.Module):
    """Linear(d, h) -> BatchNorm1d -> ReLU -> Linear(h, h), plus a linear shortcut; output the sum.

    The shortcut starts as the identity on the first min(d, h) dims (zeros elsewhere, no bias) so
    the critic at initialisation already scores with the raw features, and the MLP learns a residual
    (Deep InfoMax's encoders). `mlp=False` keeps only the shortcut: a linear projection, so the
    features themselves, not the critic's MLP, must carry the information. `layer_norm=True` adds
    LayerNorm over the output channels (the map encoder).

    Accepts [B, d] or [B, L, d] (a 1x1 convolution over a map is this Linear on its locations; the
    BatchNorm statistics over B*L rows are BatchNorm2d's over B, H, W).
    """

    def __init__(self, in_dim: int, hidden: int, *, mlp: bool = True, layer_norm: bool = False):
        super().__init__()
        self.in_dim = in_dim
        self.hidden = hidden
        self.mlp = (
            nn.Sequential(
                nn.Linear(in_dim, hidden),
                nn.BatchNorm1d(hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, hidden),
            )
            if mlp
            else None
        )
        self.shortcut = nn.Linear(in_dim, hidden, bias=False)
        with torch.no_grad():
            self.shortcut.weight.copy_(torch.eye(hidden, in_dim))
        self.norm = nn.LayerNorm(hidden) if layer_norm else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != self.in_dim:
            raise ShapeError(
                f"encoder built for {self.in_dim} channels got features {tuple(features.shape)}"
            )
        leading = features.shape[:-1]
        rows = features.reshape(-1, self.in_dim)
        out = self.shortcut(rows)
        if self.mlp is not None:
            out = out + self.mlp(rows)
        if self.norm is not None:
            out = self.norm(out)
        return out.reshape(*leading, self.hidden)


def vector_encoder(in_dim: int, hidden: int, *, mlp: bool = True) -> Encoder:
    """The encoder for pooled vectors g [B, d]."""
    return Encoder(in_dim, hidden, mlp=mlp, layer_norm=False)


def map_encoder(in_channels: int, hidden: int, *, mlp: bool = True) -> Encoder:
    """The encoder for maps/tokens as locations [B, L, C]: the 1x1-conv MLP plus LayerNorm."""
    return Encoder(in_channels, hidden, mlp=mlp, layer_norm=True)


def _as_rows(features: torch.Tensor, local: bool) -> torch.Tensor:
    if local:
        return as_locations(features)
    return features.reshape(features.shape[0], -1)


class SeparableCritic(nn.Module):
    """T(a, b) = <E_a(a), E_b(b)> / sqrt(h) (Deep InfoMax "encode and dot product").

    Dividing by sqrt(h) keeps initial scores O(1) whatever the width (*choice*, `score_scale`);
    `normalize=True` scores cosine similarity / `temperature` instead (a CRD/SimCLR-style variant).
    Dot products run in fp32 with autocast off: scores feed exp/softplus and must not be bf16.
    """

    def __init__(
        self,
        dim_a: int,
        dim_b: int,
        hidden: int,
        *,
        local_a: bool = False,
        local_b: bool = False,
        mlp_a: bool = True,
        mlp_b: bool = True,
        score_scale: str = "sqrt_h",
        normalize: bool = False,
        temperature: float = 0.1,
    ):
        super().__init__()
        if score_scale not in SCORE_SCALES:
            raise ConfigError(f"score_scale must be one of {SCORE_SCALES}, got {score_scale!r}")
        self.local_a, self.local_b = local_a, local_b
        self.encoder_a = (map_encoder if local_a else vector_encoder)(dim_a, hidden, mlp=mlp_a)
        self.encoder_b = (map_encoder if local_b else vector_encoder)(dim_b, hidden, mlp=mlp_b)
        self.normalize = normalize
        self.temperature = temperature
        self.scale = 1.0 / math.sqrt(hidden) if score_scale == "sqrt_h" else 1.0

    def encode_a(self, features: torch.Tensor) -> torch.Tensor:
        return self._finish(self.encoder_a(_as_rows(features, self.local_a)))

    def encode_b(self, features: torch.Tensor) -> torch.Tensor:
        return self._finish(self.encoder_b(_as_rows(features, self.local_b)))

    def _finish(self, encoded: torch.Tensor) -> torch.Tensor:
        encoded = encoded.float()
        if self.normalize:
            encoded = nn.functional.normalize(encoded, dim=-1)
        return encoded

    def _factor(self) -> float:
        return 1.0 / self.temperature if self.normalize else self.scale

    def pair_scores(self, encoded_a: torch.Tensor, encoded_b: torch.Tensor) -> torch.Tensor:
        """Scores of aligned rows: [B, h] x [B, h] -> [B]; with locations -> [B, L]."""
        encoded_a, encoded_b = _broadcast_locations(encoded_a, encoded_b)
        with torch.autocast(encoded_a.device.type, enabled=False):
            scores = (encoded_a * encoded_b).sum(-1) * self._factor()
        return _squeeze_global(scores, encoded_a, encoded_b)

    def matrix_scores(self, encoded_a: torch.Tensor, encoded_b: torch.Tensor) -> torch.Tensor:
        """All pairs: out[i, j] = T(a_i, b_j): [B, B], or [B, B, L] with locations."""
        encoded_a, encoded_b = _broadcast_locations(encoded_a, encoded_b)
        with torch.autocast(encoded_a.device.type, enabled=False):
            # [L, B, h] @ [L, h, B] -> [L, B, B]; matmul broadcasts a size-1 location dim
            scores = encoded_a.transpose(0, 1) @ encoded_b.permute(1, 2, 0)
            scores = scores.permute(1, 2, 0) * self._factor()
        return _squeeze_global(scores, encoded_a, encoded_b)


class ConcatCritic(nn.Module):
    """T(a, b) = MLP([a; b]) -> scalar: the non-separable alternative ("concat", Poole et al. 2019).

    The first layer of an MLP on a concatenation is additive, W[a; b] = W_a a + W_b b, so each side
    is projected once and pairs are formed by broadcasting before the ReLU: all N^2 pairs cost
    N^2 x (h^2 + h) instead of N^2 x (d_a + d_b) h. Scores are still O(N^2 h^2): prefer the
    separable critic with all-pairs negatives.
    """

    def __init__(
        self,
        dim_a: int,
        dim_b: int,
        hidden: int,
        *,
        local_a: bool = False,
        local_b: bool = False,
    ):
        super().__init__()
        self.local_a, self.local_b = local_a, local_b
        self.project_a = nn.Linear(dim_a, hidden)
        self.project_b = nn.Linear(dim_b, hidden, bias=False)
        self.head = nn.Sequential(
            nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def encode_a(self, features: torch.Tensor) -> torch.Tensor:
        return self.project_a(_as_rows(features, self.local_a))

    def encode_b(self, features: torch.Tensor) -> torch.Tensor:
        return self.project_b(_as_rows(features, self.local_b))

    def pair_scores(self, encoded_a: torch.Tensor, encoded_b: torch.Tensor) -> torch.Tensor:
        encoded_a, encoded_b = _broadcast_locations(encoded_a, encoded_b)
        scores = self.head(encoded_a + encoded_b).squeeze(-1).float()
        return _squeeze_global(scores, encoded_a, encoded_b)

    def matrix_scores(self, encoded_a: torch.Tensor, encoded_b: torch.Tensor) -> torch.Tensor:
        encoded_a, encoded_b = _broadcast_locations(encoded_a, encoded_b)
        scores = self.head(encoded_a[:, None] + encoded_b[None, :]).squeeze(-1).float()
        return _squeeze_global(scores, encoded_a, encoded_b)


def _broadcast_locations(
    encoded_a: torch.Tensor, encoded_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides as [B, L, h] (a global side gets L = 1 and broadcasts)."""
    if encoded_a.dim() == 2:
        encoded_a = encoded_a[:, None]
    if encoded_b.dim() == 2:
        encoded_b = encoded_b[:, None]
    la, lb = encoded_a.shape[1], encoded_b.shape[1]
    if la != lb and 1 not in (la, lb):
        raise ShapeError(
            f"cannot pair {la} locations with {lb}; pool one side to the other's size first"
        )
    return encoded_a, encoded_b


def _squeeze_global(
    scores: torch.Tensor, encoded_a: torch.Tensor, encoded_b: torch.Tensor
) -> torch.Tensor:
    if encoded_a.shape[1] == 1 and encoded_b.shape[1] == 1:
        return scores.squeeze(-1)
    return scores


def build_critic(
    kind: str,
    dim_a: int,
    dim_b: int,
    hidden: int,
    *,
    local_a: bool = False,
    local_b: bool = False,
    mlp_b: bool = True,
    score_scale: str = "sqrt_h",
    normalize: bool = False,
    temperature: float = 0.1,
) -> SeparableCritic | ConcatCritic:
    """A critic by kind ("separable" | "concat"); side a is the anchor, side b the sample."""
    if kind == "separable":
        return SeparableCritic(
            dim_a,
            dim_b,
            hidden,
            local_a=local_a,
            local_b=local_b,
            mlp_b=mlp_b,
            score_scale=score_scale,
            normalize=normalize,
            temperature=temperature,
        )
    if kind == "concat":
        return ConcatCritic(dim_a, dim_b, hidden, local_a=local_a, local_b=local_b)
    raise ConfigError(f"critic must be 'separable' or 'concat', got {kind!r}")


__all__ = [
    "ConcatCritic",
    "Encoder",
    "SeparableCritic",
    "build_critic",
    "map_encoder",
    "vector_encoder",
]
