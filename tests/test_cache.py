"""The artifact cache: hits, corruption, failed builds, locking across processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.conftest import PYTHON

from supercharge.cache import ArtifactCache, ArtifactSpec
from supercharge.errors import ArtifactError


def _spec(**inputs) -> ArtifactSpec:
    return ArtifactSpec(kind="test-kind", name="thing", inputs={"v": 1, **inputs})


class CountingBuilder:
    def __init__(self, payload: bytes = b"payload" * 1000) -> None:
        self.calls = 0
        self.payload = payload

    def __call__(self, out_dir):
        self.calls += 1
        (out_dir / "blob.bin").write_bytes(self.payload)
        return {"note": "extra manifest field"}


def test_second_call_is_a_hit_and_does_not_rebuild(tmp_path):
    cache, build = ArtifactCache(tmp_path, log=lambda m: None), CountingBuilder()
    first = cache.get_or_build(_spec(), build)
    second = cache.get_or_build(_spec(), build)
    assert (first.built, second.built, build.calls) == (True, False, 1)
    assert first.path == second.path
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["inputs"] == {"v": 1}
    assert manifest["note"] == "extra manifest field"
    assert manifest["files"]["blob.bin"]["size"] == len(build.payload)
    assert manifest["build_seconds"] >= 0


def test_key_follows_inputs(tmp_path):
    assert _spec().key == _spec().key != _spec(v=2).key
    cache, build = ArtifactCache(tmp_path, log=lambda m: None), CountingBuilder()
    cache.get_or_build(_spec(), build)
    cache.get_or_build(_spec(v=2), build)
    assert build.calls == 2


@pytest.mark.parametrize("damage", ["truncate", "flip-byte", "delete-file", "bad-manifest"])
def test_damaged_artifact_is_detected_and_rebuilt(tmp_path, damage):
    logs: list[str] = []
    cache, build = ArtifactCache(tmp_path, log=logs.append), CountingBuilder()
    art = cache.get_or_build(_spec(), build)
    blob = art.file("blob.bin")
    if damage == "truncate":
        blob.write_bytes(blob.read_bytes()[:100])
    elif damage == "flip-byte":
        data = bytearray(blob.read_bytes())
        data[10] ^= 0xFF
        blob.write_bytes(bytes(data))
    elif damage == "delete-file":
        blob.unlink()
    else:
        (art.path / "manifest.json").write_text("{not json")
    assert cache.lookup(_spec()) is None
    again = cache.get_or_build(_spec(), build)
    assert again.built and build.calls == 2
    assert again.file("blob.bin").read_bytes() == build.payload
    assert any("corrupt, rebuilding" in m for m in logs)


def test_failed_build_leaves_nothing_behind(tmp_path):
    cache = ArtifactCache(tmp_path, log=lambda m: None)

    def broken(out_dir):
        (out_dir / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cache.get_or_build(_spec(), broken)
    kind_dir = tmp_path / "test-kind"
    assert list(kind_dir.iterdir()) == []
    assert cache.get_or_build(_spec(), CountingBuilder()).built


def test_build_that_writes_nothing_is_an_error(tmp_path):
    cache = ArtifactCache(tmp_path, log=lambda m: None)
    with pytest.raises(ArtifactError, match="wrote no files"):
        cache.get_or_build(_spec(), lambda out_dir: None)


def test_unusable_artifact_dir_is_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ArtifactError, match=r"artifact dir .*file/cache cannot be created"):
        ArtifactCache(blocker / "cache")


_BUILD_SLOWLY = """
import sys, time
from supercharge.cache import ArtifactCache, ArtifactSpec
def build(out):
    time.sleep(1.5)
    (out / "blob.bin").write_bytes(b"x" * 100)
art = ArtifactCache(sys.argv[1], log=lambda m: None).get_or_build(
    ArtifactSpec("test-kind", "thing", {"v": 1}), build)
print("built" if art.built else "reused")
"""


def test_concurrent_builders_are_serialised(tmp_path):
    """Both processes start before either finishes; the lock makes exactly one build."""
    procs = [
        subprocess.Popen(
            [PYTHON, "-c", _BUILD_SLOWLY, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == ["built", "reused"]


@pytest.mark.slow
def test_two_processes_exporting_into_an_empty_dir(tmp_path):
    """The real thing: two `supercharge export` processes at once, one export between them."""
    cmd = [
        PYTHON,
        "-m",
        "supercharge",
        "export",
        "--model",
        "test_resnet",
        "--weights",
        "random",
        "--artifact-dir",
        str(tmp_path / "artifacts"),
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    states = sorted(out.split(":")[0] for out, _ in results)
    assert states == ["onnx-model built", "onnx-model reused"]
    models = list((tmp_path / "artifacts" / "onnx-model").iterdir())
    assert len(models) == 1
    assert (models[0] / "model.onnx").is_file()
    assert sys.executable  # the same interpreter ran both
