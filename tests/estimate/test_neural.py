"""The neural estimators' pieces: held-out evaluation, sampled negatives, the mean of critics."""

from dataclasses import replace

import pytest
import torch
from known_mi import student_t_pairs

from mimkd.errors import ConfigError
from mimkd.estimate.neural import (
    ESTIMATORS,
    CriticOptions,
    MeanCritic,
    _bound_from_rows,
    _candidate_scores,
    _row_statistics,
    check_neural_options,
    neural_estimate,
)
from mimkd.mi import bounds
from mimkd.mi.critics import build_critic


@pytest.mark.parametrize("estimator", ["infonce", "nwj", "dv", "smile", "jsd-nwj"])
def test_held_out_evaluation_equals_the_bound_on_the_full_score_matrix(estimator):
    """The row-wise evaluation (which bootstrap resamples) is the bound on all pairs at once."""
    torch.manual_seed(0)
    spec = ESTIMATORS.create(estimator)
    critic = build_critic("separable", 2, 3, 8, score_scale="none")
    x, y = torch.randn(7, 2), torch.randn(7, 3)
    rows = torch.arange(7)
    statistics = _row_statistics(spec, critic, x, y, rows, rows, smile_clip=0.3, chunk_pairs=10)
    value = _bound_from_rows(spec, statistics, rows).item()
    critic.eval()
    with torch.no_grad():
        matrix = critic.matrix_scores(critic.encode_a(x), critic.encode_b(y)) + spec.score_shift
    positives, negatives = bounds.diagonal_split(matrix)
    expected = {
        "infonce": lambda: bounds.infonce_bound(matrix),
        "nwj": lambda: bounds.nwj_bound(positives, negatives),
        "dv": lambda: bounds.dv_bound(positives, negatives),
        "smile": lambda: bounds.smile_bound(positives, negatives, clip=0.3),
    }[spec.evaluate]()
    assert value == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("kind", ["separable", "concat"])
def test_sampled_negatives_are_other_rows_of_the_batch(kind):
    torch.manual_seed(0)
    critic = build_critic(kind, 2, 3, 8).eval()
    x, y = torch.randn(6, 2), torch.randn(6, 3)
    with torch.no_grad():
        matrix = critic.matrix_scores(critic.encode_a(x), critic.encode_b(y))
        positives, negatives = _candidate_scores(critic, x, y, 3, torch.Generator().manual_seed(1))
        all_positives, all_negatives = _candidate_scores(critic, x, y, None, None)
    assert torch.allclose(positives, matrix.diagonal(), atol=1e-6)
    assert negatives.shape == (6, 3) and all_negatives.shape == (6, 5)
    for row in range(6):
        others = torch.cat([matrix[row, :row], matrix[row, row + 1 :]])
        # every sampled negative is a score of this row against another row, each at most once
        matches = (negatives[row, :, None] - others[None, :]).abs() < 1e-5
        assert matches.any(1).all() and (matches.sum(0) <= 1).all()
    assert torch.allclose(all_positives, positives)


def test_mean_critic_scores_the_mean_of_its_members():
    torch.manual_seed(0)
    members = [build_critic("separable", 2, 2, 4), build_critic("concat", 2, 2, 4)]
    mean = MeanCritic(members).eval()
    x, y = torch.randn(5, 2), torch.randn(5, 2)
    with torch.no_grad():
        expected = sum(m.matrix_scores(m.encode_a(x), m.encode_b(y)) for m in members) / 2
        scores = mean.matrix_scores(mean.encode_a(x), mean.encode_b(y))
        pairs = mean.pair_scores(mean.encode_a(x), mean.encode_b(y))
    assert torch.allclose(scores, expected, atol=1e-6)
    assert torch.allclose(pairs, expected.diagonal(), atol=1e-6)


def test_input_candidates_train_one_critic_each_and_validation_keeps_one():
    x, y = (torch.from_numpy(side).float() for side in student_t_pairs(2, 2, 1, 1200))
    spec = ESTIMATORS.create("infonce")
    options = CriticOptions(
        hidden=16, steps=60, batch_size=64, gaussian_base=True, crossfit=True, patience=3
    )
    both = neural_estimate(
        x,
        y,
        spec,
        replace(options, inputs=("squares", "energy")),
        bootstrap=0,
        progress=False,
    )
    assert len(both.inputs) == 2 and set(both.inputs) <= {"squares", "energy"}
    # the paired excess over the Gaussian critic alone comes with every Gaussian-based InfoNCE run
    assert both.excess_over_gaussian is not None and both.excess_standard_error >= 0
    alone = neural_estimate(
        x,
        y,
        spec,
        replace(options, inputs=(both.inputs[0],)),
        bootstrap=0,
        progress=False,
    )
    assert alone.inputs[0] == both.inputs[0]
    with pytest.raises(ConfigError, match="critic inputs"):
        check_neural_options(replace(options, inputs=("cubes",)), 0.5, 0.2, 64)
