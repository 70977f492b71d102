import math

import pytest

from mimkd.config import OptimConfig
from mimkd.engine.optim import lr_factor, milestone_epochs


def test_multistep_decays_at_epoch_boundaries_like_repdistiller():
    config = OptimConfig(milestones=[150, 180, 210], lr_decay=0.1)
    steps = 782
    assert lr_factor(149 * steps + 781, steps, 240, config) == 1.0
    assert lr_factor(150 * steps, steps, 240, config) == pytest.approx(0.1)
    assert lr_factor(200 * steps, steps, 240, config) == pytest.approx(0.01)
    assert lr_factor(239 * steps, steps, 240, config) == pytest.approx(0.001)


def test_fractional_milestones_scale_with_the_run():
    assert milestone_epochs(OptimConfig(milestones=[0.625, 0.75, 0.875]), 240) == [150, 180, 210]
    assert milestone_epochs(OptimConfig(milestones=[0.5]), 10) == [5]


def test_cosine_with_linear_warmup():
    config = OptimConfig(schedule="cosine", warmup_epochs=1)
    steps = 10
    assert lr_factor(0, steps, 5, config) == pytest.approx(0.1)
    assert lr_factor(9, steps, 5, config) == pytest.approx(1.0)
    assert lr_factor(10, steps, 5, config) == pytest.approx(1.0)
    halfway = 10 + 2 * steps  # 2 of the 4 post-warm-up epochs
    assert lr_factor(halfway, steps, 5, config) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.5))
    )
    assert lr_factor(50, steps, 5, config) == pytest.approx(0.0, abs=1e-12)
