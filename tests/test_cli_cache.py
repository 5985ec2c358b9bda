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
    assert run_cli("cache", "--artifact-dir", tmp_path / "empty")[1] == (
        f"0 folders, 0 B in {tmp_path / 'empty'}\n"
    )


def test_cache_prune_removes_only_what_was_unused_for_days(run_cli, tmp_path):
    old = _artifact(tmp_path, 1, 2_000_000, age_days=40)
    new = _artifact(tmp_path, 2, 3_000_000, age_days=1)
    code, out, err = run_cli("cache", "--artifact-dir", tmp_path, "--prune", "30", "--dry-run")
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"would remove onnx-model/{old.path.name} (2.0 MB")
    assert out.splitlines()[-1] == (
        "would remove 1 folder, 2.0 MB (unused for 30 days); 1 folder, 3.0 MB would be left in "
        f"{tmp_path}"
    )
    assert old.path.is_dir()

    code, out, err = run_cli("cache", "--artifact-dir", tmp_path, "--prune", "30")
    assert code == 0, err
    assert out.splitlines()[-1] == (
        f"removed 1 folder, 2.0 MB (unused for 30 days); 1 folder, 3.0 MB left in {tmp_path}"
    )
    assert not old.path.exists() and new.path.is_dir()


def test_cache_prune_that_cannot_remove_a_folder_says_why_and_exits_1(
    run_cli, tmp_path, monkeypatch
):
    import supercharge.cache as cache_mod

    stuck = _artifact(tmp_path, 1, 1000, age_days=40)
    real_replace = os.replace

    def replace(src, dst):
        if str(src) == str(stuck.path):
            raise PermissionError(13, "Permission denied", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(cache_mod.os, "replace", replace)
    code, out, err = run_cli("cache", "--artifact-dir", tmp_path, "--prune", "30")
    assert code == 1
    assert err.startswith(f"could not remove onnx-model/{stuck.path.name}: cannot remove the ")
    assert len(err.splitlines()) == 1 and "fix the permissions" in err
    assert "removed 0 folders, 0 B" in out and stuck.path.is_dir()
