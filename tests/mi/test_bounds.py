"""Each bound against a hand computation (plain Python math) on a small score matrix."""

import math

import pytest
import torch

from mimkd.mi import bounds

# T(x_i, y_j): positives on the diagonal
SCORES = [
    [2.0, -1.0, 0.5],
    [0.0, 1.5, -2.0],
    [1.0, -0.5, 3.0],
]
POSITIVES = [SCORES[i][i] for i in range(3)]
NEGATIVES = [SCORES[i][j] for i in range(3) for j in range(3) if i != j]


def softplus(value):
    return math.log1p(math.exp(value))


def matrix():
    return torch.tensor(SCORES, dtype=torch.float64)


def test_diagonal_split_keeps_the_diagonal_as_positives():
    positives, negatives = bounds.diagonal_split(matrix())
    assert positives.tolist() == POSITIVES
    assert sorted(negatives.tolist()) == sorted(NEGATIVES)


def test_jsd_bound_matches_hand_computation():
    expected = sum(-softplus(-t) for t in POSITIVES) / 3 - sum(softplus(t) for t in NEGATIVES) / 6
    value = bounds.jsd_bound(*bounds.diagonal_split(matrix()))
    assert value.item() == pytest.approx(expected, rel=1e-6)
    loss = bounds.jsd_loss(*bounds.diagonal_split(matrix()))
    assert loss.item() == pytest.approx(-expected, rel=1e-6)


def test_jsd_loss_is_binary_cross_entropy_with_each_side_averaged_separately():
    # BCE(sigmoid(t), 1) = -log sigmoid(t); BCE(sigmoid(t), 0) = -log(1 - sigmoid(t))
    def sigmoid(t):
        return 1 / (1 + math.exp(-t))

    positive_bce = sum(-math.log(sigmoid(t)) for t in POSITIVES) / len(POSITIVES)
    negative_bce = sum(-math.log(1 - sigmoid(t)) for t in NEGATIVES) / len(NEGATIVES)
    loss = bounds.jsd_loss(torch.tensor(POSITIVES), torch.tensor(NEGATIVES))
    assert loss.item() == pytest.approx(positive_bce + negative_bce, rel=1e-5)


def test_jsd_loss_is_two_log_two_at_chance():
    loss = bounds.jsd_loss(torch.zeros(7), torch.zeros(13))
    assert loss.item() == pytest.approx(2 * math.log(2), rel=1e-7)
    assert loss.item() == pytest.approx(1.386294, abs=1e-6)


def test_infonce_matches_hand_computation():
    expected = (
        math.log(3)
        + sum(SCORES[i][i] - math.log(sum(math.exp(v) for v in SCORES[i])) for i in range(3)) / 3
    )
    assert bounds.infonce_bound(matrix()).item() == pytest.approx(expected, rel=1e-6)


def test_infonce_from_candidates_matches_hand_computation():
    positives = [1.0, -1.0]
    negatives = [[0.0, 2.0, -3.0], [0.5, 0.5, 0.5]]
    expected = (
        math.log(4)
        + sum(
            p - math.log(math.exp(p) + sum(math.exp(n) for n in row))
            for p, row in zip(positives, negatives)
        )
        / 2
    )
    value = bounds.infonce_bound_from_candidates(torch.tensor(positives), torch.tensor(negatives))
    assert value.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("batch", [2, 8, 64])
@pytest.mark.parametrize("diagonal", [10.0, 1e4, 1e30])
def test_infonce_never_exceeds_log_batch(batch, diagonal):
    scores = torch.full((batch, batch), -diagonal)
    scores.fill_diagonal_(diagonal)
    value = bounds.infonce_bound(scores)
    assert torch.isfinite(value)
    assert value.item() <= math.log(batch) + 1e-6
    assert value.item() == pytest.approx(math.log(batch), abs=1e-5)


def test_infonce_is_zero_for_uninformative_scores():
    assert bounds.infonce_bound(torch.zeros(5, 5)).item() == pytest.approx(0.0, abs=1e-6)


def test_nwj_matches_hand_computation():
    expected = sum(POSITIVES) / 3 - sum(math.exp(t - 1) for t in NEGATIVES) / 6
    value = bounds.nwj_bound(*bounds.diagonal_split(matrix()))
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_dv_matches_hand_computation():
    expected = sum(POSITIVES) / 3 - math.log(sum(math.exp(t) for t in NEGATIVES) / 6)
    value = bounds.dv_bound(*bounds.diagonal_split(matrix()))
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_dv_is_invariant_to_shifting_the_scores():
    shifted = bounds.dv_bound(*bounds.diagonal_split(matrix() + 7.0))
    assert shifted.item() == pytest.approx(bounds.dv_bound(*bounds.diagonal_split(matrix())).item())


def test_smile_clips_the_partition_term_only():
    clip = 1.0
    clipped = [min(max(t, -clip), clip) for t in NEGATIVES]
    expected = sum(POSITIVES) / 3 - math.log(sum(math.exp(t) for t in clipped) / 6)
    value = bounds.smile_bound(*bounds.diagonal_split(matrix()), clip=clip)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    # a large clip is plain DV
    wide = bounds.smile_bound(*bounds.diagonal_split(matrix()), clip=100.0)
    assert wide.item() == pytest.approx(bounds.dv_bound(*bounds.diagonal_split(matrix())).item())


def test_bounds_accept_locations_as_extra_pairs():
    # [N, N, L] scores: positives [N, L], negatives [N (N-1), L]
    scores = torch.arange(2 * 2 * 3, dtype=torch.float64).reshape(2, 2, 3) / 10
    positives, negatives = bounds.diagonal_split(scores)
    assert positives.shape == (2, 3) and negatives.shape == (2, 3)
    flat_pos = [scores[i, i, k].item() for i in range(2) for k in range(3)]
    flat_neg = [
        scores[i, j, k].item() for i in range(2) for j in range(2) if i != j for k in range(3)
    ]
    expected = sum(-softplus(-t) for t in flat_pos) / 6 - sum(softplus(t) for t in flat_neg) / 6
    assert bounds.jsd_bound(positives, negatives).item() == pytest.approx(expected, rel=1e-6)


def test_with_gradient_of_keeps_the_value_and_takes_the_other_gradient():
    t = torch.tensor(2.0, requires_grad=True)
    combined = bounds.with_gradient_of(t**2, 3 * t)
    combined.backward()
    assert combined.item() == pytest.approx(4.0)
    assert t.grad.item() == pytest.approx(3.0)


def test_dv_moving_average_value_is_dv_and_gradient_uses_the_average():
    average = bounds.DVMovingAverage(momentum=0.5)
    positives = torch.tensor([1.0, 2.0])
    first_negatives = torch.tensor([0.0, 0.0])  # E[e^T] = 1
    average(positives, first_negatives)  # initialises the average to log 1 = 0
    negatives = torch.tensor([math.log(3.0), math.log(5.0)], requires_grad=True)  # E[e^T] = 4
    value = average(positives, negatives)
    # value: plain DV on this batch
    assert value.item() == pytest.approx(1.5 - math.log(4.0), rel=1e-6)
    # the average after the update: 0.5 * 1 + 0.5 * 4 = 2.5 (arithmetic mean of E[e^T])
    assert average.log_average.exp().item() == pytest.approx(2.5, rel=1e-6)
    value.backward()
    # d/dT_k of -log E[e^T] with the denominator replaced by the average: -(e^T_k / 2) / 2.5
    expected = [-(3.0 / 2) / 2.5, -(5.0 / 2) / 2.5]
    assert negatives.grad.tolist() == pytest.approx(expected, rel=1e-6)


def test_dv_moving_average_is_frozen_in_eval_mode():
    average = bounds.DVMovingAverage()
    average(torch.zeros(2), torch.zeros(3))
    average.eval()
    before = average.log_average.clone()
    average(torch.zeros(2), torch.full((3,), 5.0))
    assert torch.equal(before, average.log_average)
