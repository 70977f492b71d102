"""`mimkd export`: every format round-trips with its card; bad targets never replace anything."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors import safe_open

import mimkd
from mimkd.cli import main
from mimkd.deploy.runtime import open_model
from mimkd.models import create_model

FORMATS = ("onnx", "safetensors", "pt2")
FASHION_CLASSES_FIRST = "T-shirt/top"


@pytest.fixture(scope="module")
def checkpoint(train_run, tmp_path_factory) -> Path:
    return train_run(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def exports(checkpoint, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exports")
    paths = {}
    for format in FORMATS:
        paths[format] = folder / f"student.{format}"
        assert (
            main(["export", str(checkpoint), "--format", format, "--out", str(paths[format])]) == 0
        )
    return paths


def _student(checkpoint: Path) -> torch.nn.Module:
    model = create_model("cnn_tiny", num_classes=10, in_channels=1)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    return model.eval()


def _card_written_in(path: Path, format: str) -> dict:
    """The card read with each format's own library, not through mimkd."""
    if format == "onnx":
        return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["mimkd"])
    if format == "safetensors":
        with safe_open(str(path), framework="pt") as file:
            return json.loads(file.metadata()["mimkd"])
    extra = {"mimkd.json": ""}
    torch.export.load(str(path), extra_files=extra)
    return json.loads(extra["mimkd.json"])


def test_each_format_round_trips_with_its_card(checkpoint, exports):
    batch = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _student(checkpoint)(batch)
    record = torch.load(checkpoint, weights_only=True)
    umask = os.umask(0)
    os.umask(umask)
    for format, path in exports.items():
        # written through a temp file, yet with a new file's usual permissions
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
        got = open_model(path)(batch)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0, msg=format)
        card = _card_written_in(path, format)
        assert card["architecture"] == "cnn_tiny" and card["num_classes"] == 10
        assert card["class_names"][0] == FASHION_CLASSES_FIRST and len(card["class_names"]) == 10
        assert card["input_shape"] == [1, 28, 28] and card["native_shape"] == [1, 28, 28]
        assert card["mean"] == [0.286] and card["std"] == [0.353]
        assert card["accuracy"] == record["best_accuracy"] and card["dataset"] == "fashion_mnist"
        assert "teacher_sha256" in card and card["mimkd_version"] == mimkd.__version__
    # the ONNX graph reads any batch size, one image included
    session_batch = open_model(exports["onnx"])(batch[:1])
    torch.testing.assert_close(session_batch, expected[:1], atol=1e-4, rtol=0)


def test_eval_gives_the_same_numbers_on_every_format(checkpoint, exports, capsys):
    results = {}
    for name, path in {"checkpoint": checkpoint, **exports}.items():
        assert main(["eval", str(path), "--json"]) == 0
        results[name] = json.loads(capsys.readouterr().out)
    reference = results["checkpoint"]
    for name, result in results.items():
        assert result["top1"] == reference["top1"] and result["top5"] == reference["top5"], name
        assert result["loss"] == pytest.approx(reference["loss"], abs=1e-5), name
        assert result["count"] == reference["count"] == 200


def test_export_holds_the_student_only(checkpoint, idx_folder, tmp_path):
    run = tmp_path / "mimkd"
    code = main(
        [
            "distill",
            "method=mimkd",
            "model=cnn_tiny",
            f"teacher={checkpoint}",
            f"data.root={idx_folder}",
            "data.download=false",
            "epochs=1",
            "progress=false",
            "compile=false",
            f"run_dir={run}",
        ]
    )
    assert code == 0
    record = torch.load(run / "best.pt", weights_only=True)
    assert record["distiller"], "the MIMKD run should hold critic tensors to leave out"
    student = record["model"]
    teacher_sha256 = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    for format in FORMATS:
        path = tmp_path / f"s.{format}"
        assert main(["export", str(run / "best.pt"), "--format", format, "--out", str(path)]) == 0
        card = _card_written_in(path, format)
        assert card["method"] == "mimkd" and card["teacher_sha256"] == teacher_sha256
        if format == "safetensors":
            with safe_open(str(path), framework="pt") as file:
                assert set(file.keys()) == set(student)  # noqa: SIM118
        elif format == "pt2":
            program = torch.export.load(str(path))
            assert set(program.state_dict) <= set(student)
        else:
            initializers = onnx.load(str(path)).graph.initializer
            exported = sum(int(np.prod(tensor.dims)) for tensor in initializers)
            assert exported <= sum(value.numel() for value in student.values())
            assert not any("critic" in t.name or "teacher" in t.name for t in initializers)


def test_int8_static_quantisation_records_its_measured_accuracy(checkpoint, tmp_path, capsys):
    out = tmp_path / "student.onnx"
    code = main(["export", str(checkpoint), "--out", str(out), "--int8", "static"])
    assert code == 0
    int8 = tmp_path / "student.int8.onnx"
    assert "int8 (static)" in capsys.readouterr().out
    card = _card_written_in(int8, "onnx")
    assert card["precision"] == "int8 static"
    assert any(node.op_type == "QuantizeLinear" for node in onnx.load(str(int8)).graph.node)
    assert main(["eval", str(int8), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == card["accuracy"]


def test_a_repdistiller_teacher_exports_with_its_dataset(tmp_path):
    from conftest import write_cifar

    write_cifar(tmp_path / "c100", "cifar100")
    teacher = tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    teacher.parent.mkdir()
    state = create_model("resnet8", num_classes=100).state_dict()
    torch.save({"epoch": 240, "model": state, "accuracy": 70.0, "optimizer": {}}, teacher)
    out = tmp_path / "teacher.safetensors"
    data = [f"data.root={tmp_path / 'c100'}", "data.download=false"]
    assert main(["export", str(teacher), *data, "--format", "safetensors", "--out", str(out)]) == 0
    card = _card_written_in(out, "safetensors")
    assert card["architecture"] == "resnet8" and card["dataset"] == "cifar100"
    assert card["class_names"][:2] == ["c0", "c1"] and card["accuracy"] == pytest.approx(0.7)


def test_safetensors_teacher_loads_for_distillation(exports, tmp_path, idx_folder):
    # the architecture comes from the file's card: no teacher.model needed
    code = main(
        [
            "distill",
            "method=kd",
            f"teacher={exports['safetensors']}",
            f"data.root={idx_folder}",
            "data.download=false",
            "epochs=1",
            "max_steps=2",
            "progress=false",
            "compile=false",
            f"run_dir={tmp_path / 'kd'}",
        ]
    )
    assert code == 0


def _one_line_exit_2(capsys, argv: list[str], *fragments: str) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mimkd: error: "), captured.err
    assert "Traceback" not in captured.err and "weights_only=False" not in captured.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_bad_out_targets_fail_cleanly_and_replace_nothing(checkpoint, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for format in FORMATS:
        export = ["export", str(checkpoint), "--format", format, "--out"]
        _one_line_exit_2(capsys, [*export, str(tmp_path / "missing" / "x")], "does not exist")
        _one_line_exit_2(capsys, [*export, str(a_file / "x")], "which is a file")
        _one_line_exit_2(capsys, [*export, str(tmp_path)], "is a folder")
        _one_line_exit_2(capsys, [*export, str(fifo)], "not a regular file")
        _one_line_exit_2(capsys, [*export, "/dev/full"], "not a regular file")
    assert a_file.read_text() == "keep me" and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "pipe"]  # no temp files


# Run inside the private mount: export every format into a full, then a read-only, filesystem
# that already holds a good file under each target name.
_FULL_DISK_SCRIPT = r"""
import contextlib, io, json, os, subprocess, sys
import torch
torch.set_num_threads(1)
from mimkd.cli import main
checkpoint, mount, formats, mode = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
for format in formats:
    with open(os.path.join(mount, "student." + format), "w") as file:
        file.write("good " + format)
if mode == "fill_then_read_only":  # fill the filesystem to the last byte
    try:
        with open(os.path.join(mount, "filler"), "wb") as file:
            while True:
                file.write(b"\0" * 4096)
                file.flush()
    except OSError:
        pass
def export_all():
    results = {}
    for format in formats:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["export", checkpoint, "--format", format,
                         "--out", os.path.join(mount, "student." + format)])
        results[format] = [code, err.getvalue()]
    return results
full = export_all()
read_only = {}
if mode == "fill_then_read_only":
    subprocess.run(["mount", "-o", "remount,ro", mount], check=True)
    read_only = export_all()
kept = {f: open(os.path.join(mount, "student." + f)).read() for f in formats}
leftovers = sorted(n for n in os.listdir(mount) if n.startswith("."))
print(json.dumps({"full": full, "read_only": read_only, "kept": kept, "leftovers": leftovers}))
"""


def _private_mounts_work(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-r", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs '{tmp_path}'"],
        capture_output=True,
    )
    return probe.returncode == 0


def _check_disk_results(report: dict, key: str, fragment: str) -> None:
    for format, (code, err) in report[key].items():
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (key, format, err)
        assert lines[0].startswith("mimkd: error: ") and fragment in lines[0], lines[0]


def test_full_and_read_only_filesystems(checkpoint, tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if not _private_mounts_work(mount):
        pytest.skip("no unprivileged mount namespaces here (unshare -r -m) to make a small disk")
    script = tmp_path / "full_disk.py"
    script.write_text(_FULL_DISK_SCRIPT)
    command = (
        f"mount -t tmpfs -o size=256k tmpfs '{mount}' && "
        f"exec '{sys.executable}' '{script}' '{checkpoint}' '{mount}' {','.join(FORMATS)} fill_then_read_only"
    )
    done = subprocess.run(
        ["unshare", "-r", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    _check_disk_results(report, "full", "disk is full")
    _check_disk_results(report, "read_only", "not writable")
    assert report["kept"] == {format: f"good {format}" for format in FORMATS}
    assert report["leftovers"] == []


def test_a_file_size_limit_fails_cleanly(checkpoint, tmp_path):
    # the same write-error path without privileges: RLIMIT_FSIZE makes writes fail with EFBIG
    import resource

    script = tmp_path / "limited.py"
    script.write_text(_FULL_DISK_SCRIPT)
    folder = tmp_path / "out"
    folder.mkdir()

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    done = subprocess.run(
        [sys.executable, str(script), str(checkpoint), str(folder), "safetensors", "as_is"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_file_size,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    _check_disk_results(report, "full", "too large")
    assert report["kept"] == {"safetensors": "good safetensors"} and report["leftovers"] == []


def test_corrupt_foreign_or_empty_model_files(checkpoint, exports, tmp_path, capsys):
    files = {
        "empty.pt": b"",
        "noise.pt": bytes(range(256)) * 8,
        "truncated.pt": checkpoint.read_bytes()[:3000],
        "truncated.safetensors": exports["safetensors"].read_bytes()[:500],
        "truncated.pt2": exports["pt2"].read_bytes()[:5000],
        "noise.onnx": b"\x08\x07" + bytes(range(200)),
        "config.json": b'{"model": "resnet8"}',
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    # foreign files: a whole pickled module, and an ONNX model without mimkd's card
    torch.save(create_model("cnn_tiny", num_classes=10, in_channels=1), tmp_path / "module.pt")
    foreign_onnx = onnx.load(str(exports["onnx"]))
    del foreign_onnx.metadata_props[:]
    onnx.save(foreign_onnx, str(tmp_path / "foreign.onnx"))
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("L", (28, 28)).save(image)
    for name in [*files, "module.pt", "foreign.onnx"]:
        path = str(tmp_path / name)
        for argv in (
            ["eval", path],
            ["export", path, "--format", "safetensors", "--out", str(tmp_path / "o.safetensors")],
            ["predict", path, str(image)],
        ):
            line = _one_line_exit_2(capsys, argv)
            # one short line (torch's own text ran to 340-490 characters)
            assert len(line.replace(str(tmp_path), "")) <= 250, line
    assert not (tmp_path / "o.safetensors").exists()
    line = _one_line_exit_2(capsys, ["eval", str(tmp_path / "module.pt")], "pickled Python")
    assert "state_dict" in line
    _one_line_exit_2(capsys, ["eval", str(tmp_path / "foreign.onnx")], "without mimkd's metadata")
    _one_line_exit_2(capsys, ["eval", str(tmp_path / "empty.pt")], "empty")


class _WritesMarker:
    """Unpickling this would call os.system: the payload a poisoned file carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _rewrite_archive(source: Path, target: Path, replace) -> None:
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for info in original.infolist():
            copy.writestr(info, replace(info.filename, original.read(info)))


def test_a_pt2_archive_that_would_run_code_is_refused(exports, tmp_path, capsys):
    # torch.export.load unpickles weights flagged `use_pickle` with weights_only=False: a .pt2
    # can carry code. Flag the first weight and put the payload in its place.
    marker = tmp_path / "code_ran"
    payload = io.BytesIO()
    torch.save(_WritesMarker(marker), payload)
    flagged = {}

    def poison(name: str, data: bytes) -> bytes:
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"], flagged["file"] = True, first["path_name"]
            return json.dumps(config).encode()
        return data

    step = tmp_path / "step.pt2"
    _rewrite_archive(exports["pt2"], step, poison)
    poisoned = tmp_path / "poisoned.pt2"
    _rewrite_archive(
        step,
        poisoned,
        lambda name, data: (
            payload.getvalue() if name.endswith(f"data/weights/{flagged['file']}") else data
        ),
    )
    line = _one_line_exit_2(capsys, ["eval", str(poisoned)], "pickled Python objects")
    assert "posix.system" in line or "os.system" in line
    _one_line_exit_2(capsys, ["predict", str(poisoned), str(tmp_path / "x.png")])
    assert not marker.exists()
    # an archive with a pickled-object constant is refused before torch reads it
    opaque = tmp_path / "opaque.pt2"
    _rewrite_archive(exports["pt2"], opaque, lambda name, data: data)
    with zipfile.ZipFile(opaque, "a") as archive:
        root = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{root}/data/constants/opaque_obj_0", payload.getvalue())
    _one_line_exit_2(capsys, ["eval", str(opaque)], "pickled objects")
    assert not marker.exists()
