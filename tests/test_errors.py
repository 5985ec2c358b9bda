"""Every user error is one line, names the input, says what to do, and exits 2."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import PYTHON


def _one_line_error(code: int, err: str) -> str:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("supercharge: error: ")
    return lines[0]


def test_unknown_model_suggests_close_names(run_cli, coffee):
    line = _one_line_error(*run_cli("predict", coffee, "--model", "tf_efficientnet_lite00")[::2])
    assert "unknown model 'tf_efficientnet_lite00'" in line
    assert "did you mean" in line and "tf_efficientnet_lite0" in line


@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_model_without_a_classifier_head_is_one_line(run_cli, coffee, tmp_path, command):
    """eva02_tiny_patch14_224 (default weights mim_in22k) is built with num_classes=0: its
    output is 192 features, which failed the grid's shape check and crashed `predict` with an
    IndexError on the class names. Refused before any model is built or exported."""
    args = [coffee] if command == "predict" else []
    code, _out, err = run_cli(
        command,
        *args,
        "--model",
        "eva02_tiny_patch14_224",
        "--weights",
        "random",
        "--artifact-dir",
        tmp_path,
    )
    line = _one_line_error(code, err)
    assert "eva02_tiny_patch14_224 has no classifier head" in line and "num_classes=0" in line
    assert not list(tmp_path.glob("onnx-*/*"))


def test_a_head_less_model_built_anyway_is_refused():
    from supercharge.errors import UnknownModelError
    from supercharge.models import ModelRef, load_bundle, resolve_model

    ref = resolve_model("eva02_tiny_patch14_336.mim_in22k_ft_in1k", "random")
    headless = ModelRef("eva02_tiny_patch14_224", ref.weights)  # past resolve_model's check
    with pytest.raises(UnknownModelError, match="eva02_tiny_patch14_224 has no classifier head"):
        load_bundle(headless)


def test_pretrained_unavailable_offline(run_cli, coffee, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    line = _one_line_error(*run_cli("predict", coffee, "--model", "test_resnet")[::2])
    assert "pretrained weights for 'test_resnet' are not available offline" in line
    assert "--weights random" in line


def _save(model_name: str, path, seed: int = 0, mutate=None) -> None:
    import timm

    torch.manual_seed(seed)
    sd = timm.create_model(model_name).state_dict()
    if mutate:
        mutate(sd)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)


def test_weights_from_another_model_name_first_missing_key(run_cli, coffee, tmp_path):
    path = tmp_path / "resnet.pth"
    _save("test_resnet", path)
    line = _one_line_error(
        *run_cli("predict", coffee, "--model", "test_vit", "--weights", path)[::2]
    )
    assert f"weights {path} do not fit: missing key 'cls_token'" in line


def test_weights_with_wrong_shape_name_the_tensor(run_cli, coffee, tmp_path):
    path = tmp_path / "bad.safetensors"
    _save("test_resnet", path, mutate=lambda sd: sd.update({"fc.bias": torch.zeros(7)}))
    line = _one_line_error(
        *run_cli("predict", coffee, "--model", "test_resnet", "--weights", path)[::2]
    )
    assert "'fc.bias' has shape (7,), model expects (1000,)" in line


def test_weights_with_unexpected_key(run_cli, coffee, tmp_path):
    path = tmp_path / "extra.pth"
    _save("test_resnet", path, mutate=lambda sd: sd.update({"extra.weight": torch.zeros(1)}))
    line = _one_line_error(
        *run_cli("predict", coffee, "--model", "test_resnet", "--weights", path)[::2]
    )
    assert "unexpected key 'extra.weight'" in line


def test_weights_file_missing(run_cli, coffee, tmp_path):
    path = tmp_path / "nope.pth"
    line = _one_line_error(
        *run_cli("predict", coffee, "--model", "test_resnet", "--weights", path)[::2]
    )
    assert f"weights file {path} does not exist" in line


class _NotTensors:
    pass


def test_pickled_objects_are_refused(run_cli, coffee, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": _NotTensors()}, path)
    line = _one_line_error(
        *run_cli("predict", coffee, "--model", "test_resnet", "--weights", path)[::2]
    )
    assert f"weights file {path} cannot be read as a state dict (RuntimeError: weights_only" in line


@pytest.mark.parametrize("content", [b"hello\n", b""])
def test_a_weights_file_in_no_weights_format_says_what_it_starts_with(
    run_cli, coffee, tmp_path, content
):
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    line = _one_line_error(
        *run_cli("predict", coffee, "--model", "test_resnet", "--weights", path)[::2]
    )
    assert line.startswith(
        f"supercharge: error: weights file {path} cannot be read as a state dict (neither a "
        f"torch.save file nor safetensors: it starts with {content!r}); give a .pth"
    ), line


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "does not exist"),
        ("empty", "is empty (0 bytes)"),
        ("not-image", "is not an image PIL can read"),
        ("truncated", "is truncated or corrupt"),
        ("directory", "is a directory"),
        ("bomb", "is too large to decode safely (Image size (900000000 pixels) exceeds limit"),
        ("grey16", "is greyscale with levels 0..65535 (PIL mode I;16): PIL's convert('RGB')"),
    ],
)
def test_unreadable_image(run_cli, coffee, tmp_path, case, expected):
    path = tmp_path / f"{case}.png"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "not-image":
        path.write_text("this is a text file, not a picture\n")
    elif case == "truncated":
        path.write_bytes(coffee.read_bytes()[: coffee.stat().st_size // 2])
    elif case == "directory":
        path.mkdir()
    elif case == "bomb":  # 30000 x 30000 1-bit: 109 KB on disk, 900 M pixels to decode
        Image.new("1", (30000, 30000)).save(path)
    elif case == "grey16":  # a 16-bit greyscale photo: clipped to white by convert("RGB")
        levels = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
        Image.fromarray(levels).save(path)
    line = _one_line_error(*run_cli("predict", coffee, path)[::2])
    assert f"image {path} {expected}" in line


def test_a_16_bit_greyscale_image_within_8_bit_levels_converts_as_timm_does(tmp_path):
    """Levels 0..255 stored in 16 bits convert exactly, so such an image is accepted."""
    from supercharge.errors import ImageReadError
    from supercharge.images import load_image

    levels = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) % 256
    path = tmp_path / "grey16-low.png"
    Image.fromarray(levels).save(path)
    rgb = np.asarray(load_image(path))
    assert Image.open(path).mode == "I;16" and rgb.shape == (48, 64, 3)
    assert (rgb == levels[..., None]).all()
    # big-endian 16-bit TIFF, whose mode PIL's getextrema() refuses: read, not "corrupt"
    tiff = tmp_path / "grey16-big-endian.tif"
    Image.frombytes("I;16B", (64, 48), levels.astype(">u2").tobytes()).save(tiff)
    assert Image.open(tiff).mode == "I;16B"
    assert (np.asarray(load_image(tiff)) == levels[..., None]).all()
    # a float image scaled 0..1 would turn black: refused like levels past 255
    ones = tmp_path / "float-0-1.tif"
    Image.fromarray((levels / 255.0).astype(np.float32), "F").save(ones)
    with pytest.raises(ImageReadError, match=r"levels 0\.\.1 \(PIL mode F\)"):
        load_image(ones)


def test_cli_process_exits_2_with_one_line(tmp_path):
    """The installed entry point, as a user runs it: exit status 2 and a single stderr line."""
    proc = subprocess.run(
        [PYTHON, "-m", "supercharge", "predict", str(tmp_path / "missing.jpg")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"supercharge: error: image {tmp_path / 'missing.jpg'} does not exist: check the path"
    ]
    assert proc.stdout == ""


def test_a_pyproject_tool_entry_that_is_not_a_table_is_one_line(run_cli, tmp_path):
    """`[tool] supercharge = 3` is a user's typo, not an AttributeError."""
    bad = tmp_path / "pyproject.toml"
    bad.write_text("[tool]\nsupercharge = 3\n")
    run = tmp_path / "run.json"
    run.write_text('{"benchmarks": []}')
    code, _, err = run_cli("gate", run, "--floors", bad)
    assert code == 2
    assert "`supercharge` is not a table (int): make it [tool.supercharge.speedup_floors]" in err


def ort_allocation_failure() -> None:
    """ONNX Runtime failing to allocate 16 TiB (at once: nothing is touched), as it raises it."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    value = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    node = helper.make_node("ConstantOfShape", ["shape"], ["y"], value=value)
    graph = helper.make_graph(
        [node],
        "huge",
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    options = ort.SessionOptions()
    options.log_severity_level = 4  # its own error log would only repeat the exception
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    session.run(None, {"shape": np.array([2**42], np.int64)})


def _raised(fn) -> BaseException:
    try:
        fn()
    except BaseException as exc:  # what it raised is what is tested
        return exc
    raise AssertionError(f"{fn} raised nothing")


def test_real_allocation_failures_are_told_from_bugs():
    """The runtimes' own out-of-memory exceptions, provoked for real (16-512 TiB, refused at
    once): numpy's MemoryError, ONNX Runtime's Fail (not a RuntimeError), torch's RuntimeError;
    each becomes one line quoting what could not be allocated. Other errors are bugs."""
    import torch

    from supercharge.errors import memory_error, out_of_memory

    failures = {
        "numpy": _raised(lambda: np.empty(2**46)),
        "onnxruntime": _raised(ort_allocation_failure),
        "torch": _raised(lambda: torch.empty(2**42)),
    }
    assert not isinstance(failures["onnxruntime"], RuntimeError)
    said = {
        name: str(memory_error("predict of 2 images", exc, "pass fewer"))
        for name, exc in failures.items()
        if out_of_memory(exc)
    }
    assert said == {
        "numpy": "predict of 2 images does not fit in this machine's memory (Unable to allocate"
        " 512. TiB for an array with shape (70368744177664,) and data type float64): pass fewer",
        "onnxruntime": "predict of 2 images does not fit in this machine's memory (Failed to"
        " allocate memory for requested buffer of size 17592186044416): pass fewer",
        "torch": "predict of 2 images does not fit in this machine's memory (can't allocate"
        " memory: you tried to allocate 17592186044416 bytes. Error code 12 (Cannot allocate"
        " memory)): pass fewer",
    }
    assert not out_of_memory(RuntimeError("shape mismatch"))
    assert not out_of_memory(_raised(lambda: torch.zeros(2) @ torch.zeros(3)))
    assert not out_of_memory(ValueError("out of memory"))  # not how any runtime says it
