"""`mimkd predict`: picture files go through exactly the evaluation transform, on every format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mimkd.cli import main
from mimkd.data import make_loader
from mimkd.deploy.preprocess import load_images
from mimkd.deploy.runtime import open_model
from mimkd.engine.evaluate import load_test_set

FORMATS = ("onnx", "safetensors", "pt2")


@pytest.fixture(scope="module")
def models(train_run, tmp_path_factory) -> dict[str, Path]:
    """A grey 28x28 student with its three exports, and a CIFAR-zoo model that reads the same
    images padded to 32x32 and repeated to RGB (so predict must pad and repeat like eval)."""
    folder = tmp_path_factory.mktemp("predict")
    checkpoint = train_run(folder / "tiny")
    paths = {"checkpoint": checkpoint}
    for format in FORMATS:
        paths[format] = folder / f"tiny.{format}"
        assert (
            main(["export", str(checkpoint), "--format", format, "--out", str(paths[format])]) == 0
        )
    paths["padded"] = train_run(
        folder / "resnet8",
        "model=resnet8",
        "data.image_size=32",
        "data.channels=3",
        "max_steps=2",
    )
    return paths


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[Path]:
    """PNG and JPEG files, grey and colour, of odd sizes and modes."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    made = {
        "grey_37x53.png": Image.fromarray(rng.integers(0, 256, (53, 37), dtype=np.uint8)),
        "rgb_71x29.jpg": Image.fromarray(rng.integers(0, 256, (29, 71, 3), dtype=np.uint8)),
        "rgba_29x29.png": Image.fromarray(rng.integers(0, 256, (29, 29, 4), dtype=np.uint8)),
        "grey_100x64.jpg": Image.fromarray(rng.integers(0, 256, (64, 100), dtype=np.uint8)),
        "palette_40x40.png": Image.fromarray(
            rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        ).convert("P"),
        "grey16_31x30.png": Image.fromarray(rng.integers(0, 65536, (30, 31), dtype=np.uint16)),
    }
    paths = []
    for name, image in made.items():
        image.save(folder / name)
        paths.append(folder / name)
    return paths


def _predict_json(capsys, model: Path, images: list[Path], *options: str) -> dict:
    assert main(["predict", str(model), *map(str, images), "--json", *options]) == 0
    return json.loads(capsys.readouterr().out)  # the whole stdout is one JSON document


def test_dataset_pictures_become_exactly_the_tensors_eval_feeds(models, idx_folder, tmp_path):
    from conftest import synthetic_images

    # the synthetic test split of conftest's IDX files, written as PNG files
    images, _ = synthetic_images(200, 10, 28, 1, 1)
    paths = []
    for index in range(8):
        paths.append(tmp_path / f"test_{index}.png")
        Image.fromarray(images[index, 0]).save(paths[-1])
    for key in ("checkpoint", "padded"):
        runner = open_model(models[key])
        bundle = load_test_set(runner.data)
        loader = make_loader(
            bundle.test, 8, mean=bundle.mean, std=bundle.std, device="cpu", train=False
        )
        evaluation_batch = next(iter(loader))[0]
        assert torch.equal(load_images(paths, runner.card), evaluation_batch), key


def test_predict_agrees_with_the_eval_forward_on_every_format(models, pictures, capsys):
    checkpoint_top1 = None
    for key in ("checkpoint", *FORMATS, "padded"):
        runner = open_model(models[key])
        with torch.no_grad():
            logits = runner.as_module().eval()(load_images(pictures, runner.card))
        expected_top1 = logits.argmax(dim=1).tolist()
        document = _predict_json(capsys, models[key], pictures, "--top", "3")
        predictions = document["predictions"]
        assert [p["image"] for p in predictions] == [str(p) for p in pictures]
        assert [p["top"][0]["index"] for p in predictions] == expected_top1, key
        if key == "checkpoint":
            checkpoint_top1 = expected_top1
        elif key in FORMATS:  # an export answers as the checkpoint it came from
            assert expected_top1 == checkpoint_top1, key
        probabilities = torch.softmax(logits, dim=1)
        for row, prediction in zip(probabilities, predictions):
            assert len(prediction["top"]) == 3
            best = prediction["top"][0]
            assert best["probability"] == pytest.approx(float(row.max()), abs=1e-5)
            assert best["name"] == runner.card.class_names[best["index"]]


def test_predict_prints_one_line_per_image_with_class_names(models, pictures, capsys):
    assert main(["predict", str(models["pt2"]), str(pictures[0]), "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{pictures[0]}: ")
    from mimkd.data.idx import FASHION_CLASSES

    assert any(name in lines[0] for name in FASHION_CLASSES)


def test_bad_images_fail_cleanly(models, pictures, tmp_path, capsys):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is text, not a picture")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(pictures[0].read_bytes()[:60])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for bad, fragment in (
        (not_an_image, "not an image"),
        (truncated, "damaged"),
        (empty, "empty"),
        (tmp_path / "missing.png", "does not exist"),
        (tmp_path, "is a folder"),
    ):
        assert main(["predict", str(models["onnx"]), str(pictures[0]), str(bad)]) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mimkd: error: ") and fragment in lines[0]
        assert captured.out == ""


def test_a_checkpoint_predicts_without_its_dataset(idx_folder, train_run, tmp_path, capsys):
    """A run records how an image becomes the model's input (`input` in the checkpoint), so the
    checkpoint alone predicts once its training data is gone."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(idx_folder, data)
    checkpoint = train_run(tmp_path / "run", "max_steps=2", data_root=data)
    shutil.rmtree(data)
    capsys.readouterr()  # the training's own output
    picture = tmp_path / "picture.png"
    Image.fromarray(np.full((30, 20), 200, dtype=np.uint8)).save(picture)
    assert main(["predict", str(checkpoint), str(picture), "--json", "--top", "3"]) == 0
    document = json.loads(capsys.readouterr().out)
    top = document["predictions"][0]["top"]
    assert len(top) == 3 and all(entry["name"] for entry in top)  # class names from the file
