"""Critics: identity-initialised shortcuts, score scaling, shapes over locations, concat = MLP."""

import math

import pytest
import torch
from torch import nn

from mimkd.mi.critics import ConcatCritic, Encoder, SeparableCritic, build_critic


@pytest.mark.parametrize(("in_dim", "hidden"), [(6, 10), (10, 6), (8, 8)])
def test_shortcut_is_identity_on_the_first_min_dims(in_dim, hidden):
    encoder = Encoder(in_dim, hidden)
    weight = encoder.shortcut.weight.detach()
    assert encoder.shortcut.bias is None
    for row in range(hidden):
        for col in range(in_dim):
            assert weight[row, col].item() == (1.0 if row == col else 0.0)


def test_encoder_output_is_the_padded_input_when_the_mlp_branch_is_silent():
    torch.manual_seed(0)
    encoder = Encoder(3, 5)
    nn.init.zeros_(encoder.mlp[-1].weight)
    nn.init.zeros_(encoder.mlp[-1].bias)
    x = torch.randn(4, 3)
    padded = torch.cat([x, torch.zeros(4, 2)], dim=1)
    assert torch.allclose(encoder(x), padded)
    truncating = Encoder(5, 3)
    nn.init.zeros_(truncating.mlp[-1].weight)
    nn.init.zeros_(truncating.mlp[-1].bias)
    wide = torch.randn(4, 5)
    assert torch.allclose(truncating(wide), wide[:, :3])


def test_linear_projection_has_no_mlp():
    encoder = Encoder(4, 4, mlp=False)
    x = torch.randn(3, 4)
    assert encoder.mlp is None
    assert torch.allclose(encoder(x), x)


def test_map_encoder_reads_locations_and_normalises_channels():
    encoder = Encoder(8, 16, layer_norm=True)
    out = encoder(torch.randn(2, 5, 8))
    assert out.shape == (2, 5, 16)
    # LayerNorm over channels (default affine init): zero mean, unit variance per location
    assert torch.allclose(out.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(out.var(-1, unbiased=False), torch.ones(2, 5), atol=1e-3)


def test_separable_score_is_dot_product_over_sqrt_h():
    critic = SeparableCritic(3, 3, 4)
    a, b = torch.randn(2, 4), torch.randn(2, 4)
    expected = [sum(a[i, k].item() * b[i, k].item() for k in range(4)) / 2.0 for i in range(2)]
    assert critic.pair_scores(a, b).tolist() == pytest.approx(expected, rel=1e-5)
    unscaled = SeparableCritic(3, 3, 4, score_scale="none")
    assert unscaled.pair_scores(a, b).tolist() == pytest.approx([2 * v for v in expected], rel=1e-5)


def test_separable_matrix_scores_global_against_locations():
    critic = SeparableCritic(6, 4, 8, local_b=True)
    teacher = torch.randn(3, 6)
    student_map = torch.randn(3, 4, 2, 2)  # 4 locations of 4 channels
    encoded_t, encoded_s = critic.encode_a(teacher), critic.encode_b(student_map)
    assert encoded_s.shape == (3, 4, 8)
    matrix = critic.matrix_scores(encoded_t, encoded_s)
    assert matrix.shape == (3, 3, 4)
    for i in range(3):
        for j in range(3):
            for loc in range(4):
                direct = (encoded_t[i] * encoded_s[j, loc]).sum() / math.sqrt(8)
                assert matrix[i, j, loc].item() == pytest.approx(direct.item(), rel=1e-4, abs=1e-5)
    pairs = critic.pair_scores(encoded_t, encoded_s)
    assert torch.allclose(pairs, torch.stack([matrix[i, i] for i in range(3)]), atol=1e-5)


def test_tokens_are_locations():
    critic = build_critic("separable", 6, 5, 8, local_b=True)
    tokens = torch.randn(2, 7, 5)  # [B, N, C]
    assert critic.encode_b(tokens).shape == (2, 7, 8)


def test_normalized_scores_are_cosine_over_temperature():
    critic = SeparableCritic(3, 3, 3, normalize=True, temperature=0.5)
    a = critic._finish(torch.tensor([[3.0, 4.0, 0.0]]))
    b = critic._finish(torch.tensor([[0.0, 1.0, 0.0]]))
    assert critic.pair_scores(a, b).item() == pytest.approx((4 / 5) / 0.5, rel=1e-6)


def test_concat_critic_equals_an_mlp_on_the_concatenation():
    torch.manual_seed(0)
    critic = ConcatCritic(3, 2, 5)
    a, b = torch.randn(4, 3), torch.randn(4, 2)
    # the same network written as Linear on [a; b]
    first = torch.cat([critic.project_a.weight, critic.project_b.weight], dim=1)
    hidden = torch.relu(torch.cat([a, b], dim=1) @ first.T + critic.project_a.bias)
    hidden = torch.relu(critic.head[1](hidden))
    expected = critic.head[3](hidden).squeeze(-1)
    encoded_a, encoded_b = critic.encode_a(a), critic.encode_b(b)
    assert torch.allclose(critic.pair_scores(encoded_a, encoded_b), expected, atol=1e-5)
    matrix = critic.matrix_scores(encoded_a, encoded_b)
    assert matrix.shape == (4, 4)
    assert torch.allclose(torch.diagonal(matrix), expected, atol=1e-5)


def test_scores_are_float32_under_bf16_autocast():
    critic = build_critic("separable", 4, 4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        encoded_a, encoded_b = (
            critic.encode_a(torch.randn(3, 4)),
            critic.encode_b(torch.randn(3, 4)),
        )
        scores = critic.matrix_scores(encoded_a, encoded_b)
    assert scores.dtype == torch.float32
