"""`supercharge cache`: what the cache holds, and pruning what no run has used lately."""

from __future__ import annotations

import os
import time

import pytest

from supercharge.cache import ArtifactCache, ArtifactSpec


def _artifact(root, v: int, size: int, age_days: float):
    def build(out):
        (out / "model.onnx").write_bytes(b"x" * size)

    art = ArtifactCache(root, log=lambda m: None).get_or_build(
        ArtifactSpec("onnx-model", f"model{v}", {"v": v}), build
    )
    then = time.time() - age_days * 86400
    os.utime(art.path, (then, then))
    os.utime(root / ".locks" / f"onnx-model-{art.path.name.rsplit('-', 1)[1]}.lock", (then, then))
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
    (tmp_path / "empty").mkdir()
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
    import supercharge.cache_usage as usage

    stuck = _artifact(tmp_path, 1, 1000, age_days=40)
    real_replace = os.replace

    def replace(src, dst):
        if str(src) == str(stuck.path):
            raise PermissionError(13, "Permission denied", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(usage.os, "replace", replace)
    code, out, err = run_cli("cache", "--artifact-dir", tmp_path, "--prune", "30")
    assert code == 1
    assert err.startswith(f"could not remove onnx-model/{stuck.path.name}: cannot move it aside")
    assert len(err.splitlines()) == 1 and "prune as the user who owns" in err
    assert "removed 0 folders, 0 B (unused for 30 days)" in out and stuck.path.is_dir()


def test_cache_of_a_dir_that_does_not_exist_says_so_and_creates_nothing(run_cli, tmp_path):
    typo = tmp_path / "typo" / "dir"
    code, out, err = run_cli("cache", "--artifact-dir", typo)
    assert code == 2 and not out and len(err.splitlines()) == 1
    assert f"artifact dir {typo} does not exist: nothing is cached there" in err
    assert not typo.exists() and not typo.parent.exists()
    plain = tmp_path / "plain"
    plain.mkdir()
    assert run_cli("cache", "--artifact-dir", plain)[0] == 0
    assert list(plain.iterdir()) == []  # listing writes nothing, not even .locks


@pytest.mark.parametrize(
    ("days", "said"),
    [
        ("1", "unused for 1 day"),
        ("0.5", "unused for 0.5 days"),
        ("-0", "unused for 0 days"),
        ("1e300", "unused for 1e+300 days"),
    ],
)
def test_cache_prune_says_the_days_as_given(run_cli, tmp_path, days, said):
    _artifact(tmp_path, 1, 10, age_days=40)
    code, out, _ = run_cli("cache", "--artifact-dir", tmp_path, "--prune", days, "--dry-run")
    assert code == 0 and f"({said})" in out


def test_sizes_read_in_decimal_units():
    from supercharge.cli import _size

    assert [_size(n) for n in (0, 999, 999_949, 999_999, 1_500_000, 5 * 10**12, None)] == [
        "0 B",
        "999 B",
        "999.9 KB",
        "1.0 MB",
        "1.5 MB",
        "5000.0 GB",
        "?",
    ]
