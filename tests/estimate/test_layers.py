"""Layer-by-layer MI between two networks."""

import math

import pytest
import torch

from mimkd.estimate import format_layer_table, layer_mi, pair_by_depth
from mimkd.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pair_by_depth_matches_relative_depth():
    teacher = ["t1", "t2", "t3", "t4"]
    # student depths 1/3, 2/3, 1 -> nearest teacher depths 1/4, 3/4, 1
    assert pair_by_depth(teacher, ["s1", "s2", "s3"]) == [("t1", "s1"), ("t3", "s2"), ("t4", "s3")]
    # equal stage counts pair one to one
    assert pair_by_depth(["a", "b"], ["c", "d"]) == [("a", "c"), ("b", "d")]


def test_layer_mi_rows_for_two_small_cnns():
    torch.manual_seed(0)
    teacher = create_model("cnn_small", num_classes=10, in_channels=1)
    student = create_model("cnn_tiny", num_classes=10, in_channels=1)
    images = torch.randn(300, 1, 28, 28)
    loader = [(chunk, torch.zeros(len(chunk))) for chunk in images.split(64)]
    rows = layer_mi(teacher, student, loader, steps=20, hidden=16, bootstrap=10, progress=False)
    pairs = [(row.teacher_layer, row.student_layer) for row in rows]
    assert pairs == [
        ("stage1", "stage1"),
        ("stage2", "stage2"),
        ("stage3", "stage3"),
        ("fc:input", "fc:input"),
    ]
    assert [(row.teacher_dim, row.student_dim) for row in rows] == [
        (32, 8),
        (64, 16),
        (64, 16),
        (64, 16),
    ]
    assert all(row.n == 300 and math.isfinite(row.mi_nats) for row in rows)
    assert teacher.training and student.training  # modes restored
    table = format_layer_table(rows).splitlines()
    assert table[0].startswith("teacher layer") and len(table) == 2 + len(rows)
    assert "fc:input" in table[-1]
