"""2 processes at batch B train as 1 process at batch 2B (torchrun, gloo, sync_batchnorm=true).

Three steps of ce, kd, mimkd (negatives from every rank) and crd with crop/flip augmentation: the
distiller's whole state (student, critics, embeddings, CRD's memory, BatchNorm statistics) within
1e-5 of the one-process run, identical on both ranks; the test accuracy, evaluated on both ranks'
shards of an odd-sized test set, is one process's; only rank 0 wrote into the run folder.

Why 16x16 images and fp32: the comparison needs a reference that is itself reproducible to well
below 1e-5. Measured here, the one-process run moves by itself when only its summation order
changes (1 vs 2 CPU threads): at 28x28 by up to 4.7e-5 after 3 steps (crd; 7.7e-6 for ce): fp32
BatchNorm sums over 25k values per channel in the first layer, and ReLU/max-pool decisions that
rounding flips, amplify it. At 16x16 that noise is below 7e-7 for all four methods. bf16 autocast
(precision=auto on CPUs with AMX) keeps 3 digits and is left out.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
from ddp_worker import launch_jobs

from mimkd.config import load_config
from mimkd.data import load_dataset, make_loader
from mimkd.engine.build import build_run
from mimkd.engine.metrics import evaluate
from mimkd.engine.run import run_from_args
from mimkd.engine.trainer import Trainer
from mimkd.models import create_model
from mimkd.serialization import load_checkpoint

TOLERANCE = 1e-5  # the bound on the max abs difference of any parameter
METHODS = {
    "ce": [],
    "kd": [],
    "mimkd": ["mimkd.negatives_across_ranks=true"],
    "crd": ["crd.num_negatives=64"],  # the default 16384 outnumber the 400 images
}
RUN_FILES = {
    ".mimkd.lock", "config.yaml", "metrics.jsonl", "last.pt", "best.pt", "curves.png",
    "report.md", "results.json",
}  # fmt: skip


def _overrides(method: str, idx_folder, teacher: Path, run_dir: Path, batch: int) -> list[str]:
    overrides = [
        f"method={method}",
        "model=cnn_tiny",
        f"data.root={idx_folder}",
        "data.download=false",
        f"data.batch_size={batch}",
        "data.augment=crop_flip",
        "data.image_size=16",  # see the module docstring
        "data.test_subset=199",  # shards of 100 and 99 images
        "data.eval_batch_size=64",
        "epochs=1",
        "max_steps=3",
        "sync_batchnorm=true",
        "precision=fp32",  # auto is bf16 on CPUs with AMX: 3 digits, no 1e-5 comparison
        "device=cpu",
        "progress=false",
        f"run_dir={run_dir}",
        *METHODS.get(method, []),
    ]
    return [*overrides, f"teacher={teacher}"] if method != "ce" else overrides


@pytest.fixture(scope="module")
def teacher(idx_folder, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("teacher") / "run"
    overrides = _overrides("ce", idx_folder, Path(), folder, 32)
    run_from_args(None, [*overrides, "model=cnn_small", "max_steps=6"])
    return folder / "best.pt"


@pytest.fixture(scope="module")
def two_processes(idx_folder, teacher, tmp_path_factory):
    """Every method's 2-process run, in one torchrun start; (folder, launch)."""
    folder = tmp_path_factory.mktemp("ddp")
    jobs = [
        {
            "overrides": _overrides(method, idx_folder, teacher, folder / method, 16),
            "dump": str(folder / f"{method}-state"),
        }
        for method in METHODS
    ]
    local = [*_overrides("mimkd", idx_folder, teacher, folder / "local", 16)]
    local.append("mimkd.negatives_across_ranks=false")
    jobs.append({"overrides": local, "dump": str(folder / "local-state")})
    # the stage step compiled inside DDP's forward, the all-gathers inside it (aot_eager: traced,
    # no code generation, as tests/distillers/test_contract.py)
    compiled = [*_overrides("mimkd", idx_folder, teacher, folder / "compiled", 16)]
    compiled += ["compile=true", "compile_backend=aot_eager"]
    jobs.append({"overrides": compiled, "dump": str(folder / "compiled-state")})
    launch = launch_jobs(jobs, folder)
    print(f"\n2-process runs ({len(jobs)} jobs, one torchrun start): {launch.seconds:.1f} s")
    return folder, launch


def _one_process(method: str, idx_folder, teacher, run_dir: Path, extra=()) -> dict:
    config, method_config = load_config(
        None, [*_overrides(method, idx_folder, teacher, run_dir, 32), *extra]
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: a CPU kernel's sums follow its thread count
    try:
        trainer = Trainer(build_run(config, method_config), log_line=lambda _: None)
        trainer.fit()
    finally:
        torch.set_num_threads(threads)
    return trainer.distiller.state_dict()


def _max_difference(a: dict, b: dict) -> float:
    """Max abs difference over every tensor of the state; relative for tensors holding values
    above 1 (CRD's normaliser Z is ~900: float32 resolves it to 6e-5)."""
    assert a.keys() == b.keys()
    worst = 0.0
    for key in a:
        if a[key].is_floating_point():
            scale = max(1.0, b[key].abs().max().item())
            worst = max(worst, (a[key] - b[key]).abs().max().item() / scale)
        else:
            assert torch.equal(a[key], b[key]), key  # BatchNorm's num_batches_tracked
    return worst


@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_train_as_one_process_on_the_global_batch(
    method, idx_folder, teacher, two_processes, tmp_path
):
    folder, _ = two_processes
    rank0 = torch.load(folder / f"{method}-state-rank0.pt")
    rank1 = torch.load(folder / f"{method}-state-rank1.pt")
    reference = _one_process(method, idx_folder, teacher, tmp_path / "one")
    difference = _max_difference(rank0, reference)
    print(f"\n{method}: max |2 processes - 1 process| = {difference:.3g}")
    assert difference <= TOLERANCE
    assert all(torch.equal(rank0[key], rank1[key]) for key in rank0)  # both ranks hold one state
    outcome = json.loads((folder / f"{method}-state-rank0.json").read_text())
    assert outcome["at"] == 3
    # CRD's memory is kept equal by every rank's update, not re-broadcast by DDP each step
    memory = ["memory.normalizers", "memory.student_memory", "memory.teacher_memory"]
    assert outcome["ddp_ignored"] == (memory if method == "crd" else [])

    # evaluated on both ranks' shards: what one process measures with the same weights
    run_dir = folder / method
    results = json.loads((run_dir / "results.json").read_text())
    checkpoint = load_checkpoint(run_dir / "last.pt")
    student = create_model("cnn_tiny", num_classes=10, in_channels=1)
    student.load_state_dict(checkpoint["model"])
    data = load_dataset(
        "fashion_mnist", root=str(idx_folder), download=False, image_size=16, test_subset=199
    )
    loader = make_loader(data.test, 64, mean=data.mean, std=data.std, device="cpu", train=False)
    measured = evaluate(student, loader, contextlib.nullcontext)
    assert measured["count"] == 199
    assert results["best_accuracy"] == measured["top1"]
    assert math.isclose(checkpoint["history"][-1]["test_loss"], measured["loss"], rel_tol=1e-5)

    # only rank 0 wrote: the run's files once each, nothing else anywhere
    assert {p.name for p in run_dir.iterdir()} == RUN_FILES
    records = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(records) == len(set(records)) == 2  # one interval (step 3) and one epoch
    assert results["world_size"] == 2 and results["global_batch_size"] == 32


def test_local_negatives_are_not_the_one_process_loss(idx_folder, teacher, two_processes, tmp_path):
    """The comparison can see a difference: MIMKD with each rank's own negatives moves away."""
    folder, _ = two_processes
    local = torch.load(folder / "local-state-rank0.pt")
    reference = _one_process("mimkd", idx_folder, teacher, tmp_path / "one")
    assert _max_difference(local, reference) > 100 * TOLERANCE


def test_the_compiled_step_under_ddp_is_the_eager_one_process_step(
    idx_folder, teacher, two_processes, tmp_path
):
    folder, _ = two_processes
    assert json.loads((folder / "compiled-state-rank0.json").read_text())["compiled"]
    compiled = torch.load(folder / "compiled-state-rank0.pt")
    reference = _one_process("mimkd", idx_folder, teacher, tmp_path / "one")
    assert _max_difference(compiled, reference) <= TOLERANCE


def test_only_the_asked_files_exist(two_processes):
    folder, _ = two_processes
    names = {p.name for p in folder.iterdir()}
    jobs = [*METHODS, "local", "compiled"]
    dumps = {f"{job}-state-rank{r}.{ext}" for job in jobs for r in (0, 1) for ext in ("pt", "json")}
    assert names == {*jobs, "jobs.json", *dumps}
