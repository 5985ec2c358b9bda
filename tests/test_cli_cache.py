"""`supercharge cache`: what the cache holds, and pruning what no run has used lately."""

from __future__ import annotations

import os
import time

from supercharge.cache import ArtifactCache, ArtifactSpec


def _artifact(root, v: int, size: int, age_days: float):
    def build(out):
        (out / "model.onnx").write_bytes(b"x" * size)

    art = ArtifactCache(root, log=lambda m: None).get_or_build(
        ArtifactSpec("onnx-model", f"model{v}", {"v": v}), build
    )
    then = time.time() - age_days * 86400
    os.utime(art.path, (then, then))
    return art


def test_cache_lists_each_folder_with_its_size_and_the_total(run_cli, tmp_path):
    old = _artifact(tmp_path, 1, 2_000_000, age_days=40)
    new = _artifact(tmp_path, 2, 3_000_000, age_days=1)
    code, out, err = run_cli("cache", "--artifact-dir", tmp_path)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("onnx-model") and lines[0].endswith(new.path.name)  # newest first
    assert "3.0 MB" in lines[0] and "2.0 MB" in lines[1] and lines[1].endswith(old.path.name)
    when = time.strftime("%Y-%m-%d", time.localtime(old.path.stat().st_mtime))
    assert when in lines[1]
    assert lines[-1] == f"2 folders, 5.0 MB in {tmp_path}"


def test_cache_prune_removes_only_what_was_unused_for_days(run_cli, tmp_path):
    old = _artifact(tmp_path, 1, 2_000_000, age_days=40)
    new = _artifact(tmp_path, 2, 3_000_000, age_days=1)
    code, out, err = run_cli("cache", "--artifact-dir", tmp_path, "--prune", "30", "--dry-run")
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"would remove onnx-model/{old.path.name} (2.0 MB")
    assert "would remove 1 folders, 2.0 MB (unused for 30 days); 1 folders would be left" in out
    assert old.path.is_dir()

    code, out, err = run_cli("cache", "--artifact-dir", tmp_path, "--prune", "30")
    assert code == 0, err
    assert out.splitlines()[-1] == (
        f"removed 1 folders, 2.0 MB (unused for 30 days); 1 folders, 3.0 MB left in {tmp_path}"
    )
    assert not old.path.exists() and new.path.is_dir()
