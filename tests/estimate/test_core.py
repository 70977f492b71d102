"""The MI tool: known-MI Gaussians, file formats and their errors, outputs, layer-by-layer MI."""

import json
import math

import numpy as np
import pytest
import torch

from mimkd.errors import ConfigError, DataError, UnknownNameError
from mimkd.estimate import (
    estimate_mi,
    estimator_names,
    format_layer_table,
    layer_mi,
    load_pairs,
    pair_by_depth,
    write_estimate,
)
from mimkd.models import create_model

# short critic training that still converges on low-dimensional Gaussians (~1-2 s each)
FAST = {"hidden": 64, "steps": 500, "batch_size": 128, "lr": 2e-3, "bootstrap": 100}


@pytest.fixture(autouse=True)
def one_thread():
    """Critic steps are tiny matmuls: a second OpenMP thread only spins (10x slower on a busy
    2-core machine), so these tests run single-threaded and restore the setting after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def correlated_gaussians(dims: int, mi_nats: float, n: int, seed: int = 0):
    """d independent pairs with correlation rho, so I = -(d/2) log(1 - rho^2) = mi_nats."""
    generator = torch.Generator().manual_seed(seed)
    rho = math.sqrt(1 - math.exp(-2 * mi_nats / dims))
    noise_scale = math.exp(-mi_nats / dims)  # sqrt(1 - rho^2), exact even when rho ~ 1
    x = torch.randn(n, dims, generator=generator)
    y = rho * x + noise_scale * torch.randn(n, dims, generator=generator)
    return x, y


@pytest.mark.parametrize(
    ("estimator", "dims", "true_mi", "tolerance"),
    [
        ("infonce", 1, 0.5, 0.1),
        ("infonce", 2, 1.0, 0.15),
        ("mine", 1, 0.5, 0.15),
        ("smile", 2, 1.0, 0.25),
    ],
)
def test_recovers_known_gaussian_mi(estimator, dims, true_mi, tolerance):
    x, y = correlated_gaussians(dims, true_mi, 4000)
    result = estimate_mi(x, y, estimator, progress=False, **FAST)
    # lower bounds: allow a small overshoot from held-out sampling noise, the stated tolerance below
    assert true_mi - tolerance < result.mi_nats < true_mi + 0.05
    assert result.ci_low <= result.mi_nats <= result.ci_high
    assert result.n == 4000 and result.n_heldout == 2000


def test_independent_variables_have_near_zero_mi():
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(3000, 3, generator=generator), torch.randn(3000, 3, generator=generator)
    result = estimate_mi(x, y, "infonce", progress=False, **FAST)
    assert abs(result.mi_nats) < 0.05


def test_infonce_estimate_is_capped_by_log_of_the_candidates():
    x, y = correlated_gaussians(1, 12.0, 600)  # far more MI than log(300) ~ 5.7 can show
    result = estimate_mi(x, y, "infonce", progress=False, eval_negatives=31, **FAST)
    assert result.negatives_per_row >= 30
    assert result.mi_nats <= math.log(32) + 1e-6


def test_same_seed_same_estimate_and_history():
    x, y = correlated_gaussians(1, 0.5, 600)
    options = dict(FAST, steps=60, bootstrap=20)
    first = estimate_mi(x, y, "nwj", seed=3, progress=False, **options)
    second = estimate_mi(x, y, "nwj", seed=3, progress=False, **options)
    assert first.mi_nats == second.mi_nats
    assert first.history == second.history
    assert [step for step, _, _ in first.history][-1] == 60


def test_unknown_estimator_names_the_closest():
    x, y = correlated_gaussians(1, 0.5, 100)
    with pytest.raises(UnknownNameError, match="infonce"):
        estimate_mi(x, y, "infonse", progress=False)
    assert {"infonce", "nwj", "mine", "dv", "smile", "jsd-dv"} <= set(estimator_names())


def test_mismatched_rows_are_a_data_error():
    with pytest.raises(DataError, match="rows"):
        estimate_mi(torch.zeros(10, 2), torch.zeros(9, 2), progress=False)


def test_bad_options_are_config_errors():
    x, y = correlated_gaussians(1, 0.5, 100)
    with pytest.raises(ConfigError, match="train_fraction"):
        estimate_mi(x, y, train_fraction=1.5, progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        estimate_mi(x, y, batch_size=1, progress=False)


def test_progress_bar_goes_to_stderr(capsys):
    x, y = correlated_gaussians(1, 0.5, 200)
    estimate_mi(x, y, "infonce", steps=5, hidden=8, bootstrap=0, progress=True)
    captured = capsys.readouterr()
    assert "mi infonce" in captured.err
    assert captured.out == ""


def test_write_estimate_writes_json_and_curve(tmp_path):
    x, y = correlated_gaussians(1, 0.5, 300)
    result = estimate_mi(x, y, "infonce", progress=False, **dict(FAST, steps=40))
    paths = write_estimate(result, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "mi.json").read_text())
    assert {"mi_nats", "ci_low", "ci_high", "estimator", "n", "seconds"} <= set(summary)
    assert summary["estimator"] == "infonce" and summary["n"] == 300
    assert summary["mi_nats"] == pytest.approx(result.mi_nats)
    assert paths["curve"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- load_pairs ---------------------------------------------------------------------------------


def arrays():
    rng = np.random.default_rng(0)
    return rng.normal(size=(20, 3)).astype(np.float32), rng.normal(size=(20, 2, 2))


def test_load_pairs_reads_npz_with_default_and_custom_keys(tmp_path):
    x, y = arrays()
    np.savez(tmp_path / "pairs.npz", x=x, y=y, teacher=y)
    loaded_x, loaded_y = load_pairs(tmp_path / "pairs.npz")
    assert loaded_x.shape == (20, 3) and loaded_y.shape == (20, 4)
    assert loaded_x.dtype == torch.float32
    assert np.allclose(loaded_y.numpy(), y.reshape(20, 4))
    _, custom = load_pairs(tmp_path / "pairs.npz", x_key="x", y_key="teacher")
    assert np.allclose(custom.numpy(), y.reshape(20, 4))


def test_load_pairs_reads_pt_npy_pair_and_directory(tmp_path):
    x, y = arrays()
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp_path / "pairs.pt")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    for source in (
        tmp_path / "pairs.pt",
        f"{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}",
        tmp_path,
    ):
        loaded_x, loaded_y = load_pairs(source)
        assert np.allclose(loaded_x.numpy(), x)
        assert loaded_y.shape == (20, 4)


def test_load_pairs_one_dimensional_arrays_are_one_feature(tmp_path):
    np.savez(tmp_path / "pairs.npz", x=np.arange(5.0), y=np.arange(5.0))
    x, _ = load_pairs(tmp_path / "pairs.npz")
    assert x.shape == (5, 1)


def test_load_pairs_errors_say_what_to_do(tmp_path):
    x, y = arrays()
    with pytest.raises(DataError, match="does not exist"):
        load_pairs(tmp_path / "missing.npz")
    np.savez(tmp_path / "short.npz", x=x, y=y[:7])
    with pytest.raises(DataError, match="20 rows.*7"):
        load_pairs(tmp_path / "short.npz")
    np.savez(tmp_path / "keys.npz", a=x, b=y)
    with pytest.raises(DataError, match=r"\['a', 'b'\]"):
        load_pairs(tmp_path / "keys.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match="re-save"):
        load_pairs(tmp_path / "corrupt.npz")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match="torch.save"):
        load_pairs(tmp_path / "corrupt.pt")
    np.save(tmp_path / "single.npy", x)
    with pytest.raises(DataError, match="pairs"):
        load_pairs(tmp_path / "single.npy")
    (tmp_path / "pairs.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="unknown format"):
        load_pairs(tmp_path / "pairs.csv")
    np.savez(tmp_path / "nan.npz", x=np.full((3, 1), np.nan), y=np.zeros((3, 1)))
    with pytest.raises(DataError, match="NaN"):
        load_pairs(tmp_path / "nan.npz")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(DataError, match="dict"):
        load_pairs(tmp_path / "list.pt")


# ---- layer by layer -----------------------------------------------------------------------------


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


@pytest.mark.parametrize("estimator", ["infonce", "nwj", "dv", "smile", "jsd-nwj"])
def test_held_out_evaluation_equals_the_bound_on_the_full_score_matrix(estimator):
    """The row-wise evaluation (which bootstrap resamples) is the bound on all pairs at once."""
    from mimkd.estimate.neural import ESTIMATORS, _bound_from_rows, _row_statistics
    from mimkd.mi import bounds
    from mimkd.mi.critics import build_critic

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
