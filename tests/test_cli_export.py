"""`supercharge export --image-size`: the separable graphs for given image sizes, and bad sizes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from supercharge.cli import parse_image_size


@pytest.mark.parametrize("text, size", [("480x640", (480, 640)), ("300X451", (300, 451))])
def test_image_sizes_read_height_by_width(text, size):
    assert parse_image_size(text) == size


@pytest.mark.parametrize("text", ["480", "480x", "x640", "0x640", "480x-1", "480by640", "4.5x6"])
def test_a_bad_image_size_stops_before_any_work(run_cli, tmp_path, text):
    artifacts = tmp_path / "artifacts"
    code, out, err = run_cli(
        "export", "--model", "test_resnet", "--weights", "random", "--artifact-dir", artifacts,
        "--image-size", text,
    )  # fmt: skip
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"--image-size {text!r}: give HEIGHTxWIDTH" in err
    assert not artifacts.exists() or not any(artifacts.iterdir())


def test_export_builds_separable_graphs_for_each_size(run_cli, tmp_path):
    args = ["export", "--model", "test_resnet", "--weights", "random"]
    args += ["--artifact-dir", tmp_path / "artifacts", "--image-size", "40x60"]
    args += ["--image-size", "30x30", "--image-size", "40x60"]  # a size given twice: once
    code, out, _ = run_cli(*args)
    assert code == 0 and out.count("merged-separable-40x60 built") == 2  # fp32 and int8
    lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    path = lines["merged-separable-40x60 built"]
    for size in ("40x60", "30x30"):
        assert f"merged-separable-{size} built" in lines
        assert f"int8-merged-separable-{size} built" in lines
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    assert image.shape == ["N", 40, 60, 3] and image.type == "tensor(uint8)"
    logits = session.run(None, {image.name: np.zeros((2, 40, 60, 3), np.uint8)})[0]
    assert logits.shape[0] == 2
    code, out, _ = run_cli(*args)  # a second run reuses them all
    assert code == 0 and "built" not in out and "merged-separable-40x60 reused" in out


def test_export_calibrates_int8_on_the_folder_given(run_cli, tmp_path):
    import json
    import shutil
    from pathlib import Path

    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "images"
    own = tmp_path / "own-photos"
    own.mkdir()
    for name in ("chelsea.png", "rocket.jpg"):
        shutil.copy(fixtures / name, own / name)
    args = ["export", "--model", "test_resnet", "--weights", "random"]
    code, out, err = run_cli(*args, "--artifact-dir", tmp_path / "artifacts", "--calibration", own)
    assert code == 0, err
    path = Path(
        dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)["int8 built"]
    )
    manifest = json.loads((path.parent / "manifest.json").read_text())
    assert manifest["inputs"]["calibration"]["images"] == ["chelsea.png", "rocket.jpg"]


@pytest.mark.parametrize(
    ("make", "message"), [(None, "does not exist"), ("empty", "no calibration images")]
)
def test_a_bad_calibration_folder_stops_export_before_any_work(run_cli, tmp_path, make, message):
    folder, artifacts = tmp_path / "photos", tmp_path / "artifacts"
    if make:
        folder.mkdir()
    code, out, err = run_cli(
        "export", "--model", "test_resnet", "--weights", "random", "--artifact-dir", artifacts,
        "--calibration", folder,
    )  # fmt: skip
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err
    assert not artifacts.exists() or not any(artifacts.iterdir())


def test_an_unreadable_calibration_photo_stops_export_before_any_work(run_cli, tmp_path):
    """pytest's --calibration decodes every photo at configure; export must too, not after
    the fp32 export and the merged graphs are built."""
    folder, artifacts = tmp_path / "photos", tmp_path / "artifacts"
    folder.mkdir()
    (folder / "notes.png").write_bytes(b"not a picture")
    code, out, err = run_cli(
        "export", "--model", "test_resnet", "--weights", "random", "--artifact-dir", artifacts,
        "--calibration", folder,
    )  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "notes.png is not an image" in err
    assert out == "" and (not artifacts.exists() or not any(artifacts.iterdir()))


def test_a_calibration_path_that_is_a_file_is_called_a_file(run_cli, tmp_path):
    photo = tmp_path / "one.png"
    photo.write_bytes(b"x")
    code, _, err = run_cli("export", "--calibration", photo, "--artifact-dir", tmp_path / "a")
    assert code == 2 and err.count("\n") == 1
    assert "does not exist" not in err and "is a file" in err, err


def test_a_fine_tuned_checkpoint_exports_and_predicts_its_own_classes(run_cli, tmp_path, coffee):
    """`--weights` a timm training checkpoint fine-tuned to 3 classes: every artifact builds
    and `predict` ranks those 3 (it was a 'do not fit' error before any of it)."""
    import timm
    import torch

    path = tmp_path / "model_best.pth.tar"
    net = timm.create_model("test_resnet", num_classes=3)
    torch.save({"epoch": 4, "arch": "test_resnet", "state_dict": net.state_dict()}, path)
    common = ["--model", "test_resnet", "--weights", path, "--artifact-dir", tmp_path / "a"]
    code, out, err = run_cli("export", *common)
    assert code == 0, err
    assert "int8-merged-baked built" in out
    code, out, err = run_cli(
        "predict", coffee, *common, "--backend", "ort-cpu", "--precision", "int8",
        "--preprocess", "baked",
    )  # fmt: skip
    assert code == 0, err
    assert sorted(line.split(":")[0] for line in out.splitlines()[1:]) == [
        "class 0", "class 1", "class 2",
    ]  # fmt: skip
