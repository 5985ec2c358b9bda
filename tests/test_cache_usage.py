"""Listing the artifact cache and pruning what no run used lately (supercharge.cache_usage)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import PYTHON
from tests.test_cache import CountingBuilder, _dead_pid, _denied, _quiet, _spec

import supercharge.cache as cache_mod
import supercharge.cache_usage as usage
from supercharge.cache import _PID_TAG
from supercharge.errors import ArtifactError

DAY = 86400.0
ENGINES = "H200-sm90-fp16-0123456789abcdef"  # an ort-trt folder: <slug>-<16 hex key>


def _age(path: Path, days: float) -> None:
    """Set a folder's last use `days` ago: its mtime and its lock file's, where it has one."""
    then = time.time() - days * DAY
    os.utime(path, (then, then))
    key = cache_mod.folder_key(path)
    marker = cache_mod.lock_path(path.parent.parent, path.parent.name, key) if key else None
    if marker is not None and marker.exists():
        os.utime(marker, (then, then))


def _engines(root: Path, name: str = ENGINES, size: int = 300) -> Path:
    folder = root / "ort-trt" / name
    (folder / "engines").mkdir(parents=True)
    (folder / "engines" / "a.engine").write_bytes(b"e" * size)
    return folder


def test_entries_list_artifacts_engine_folders_and_leftovers_with_sizes(tmp_path):
    cache = _quiet(tmp_path)
    art = cache.get_or_build(_spec(), CountingBuilder(b"x" * 5000))
    engines = _engines(tmp_path)
    leftover = tmp_path / "test-kind" / f".build-{os.getpid()}-{_PID_TAG}-q"
    leftover.mkdir()
    (tmp_path / "test-kind" / "stray.txt").write_text("not a folder: not listed")
    (tmp_path / "test-kind" / "link-0123456789abcdef0123").symlink_to(art.path)
    found = {e.path: e for e in usage.entries(tmp_path)}
    assert set(found) == {art.path, engines, leftover}
    manifest_size = (art.path / "manifest.json").stat().st_size
    assert (found[art.path].state, found[art.path].size) == ("artifact", 5000 + manifest_size)
    assert found[art.path].kind == "test-kind"
    assert (found[engines].state, found[engines].size) == ("files", 300)
    assert found[leftover].state == "leftover"


def test_an_unreadable_folder_is_listed_as_such_not_left_out(tmp_path, monkeypatch):
    art = _quiet(tmp_path).get_or_build(_spec(), CountingBuilder())
    real_walk = os.walk

    def walk(top, *args, onerror=None, **kwargs):
        if Path(top) == art.path:
            onerror(_denied(top))
            return iter(())
        return real_walk(top, *args, onerror=onerror, **kwargs)

    monkeypatch.setattr(usage.os, "walk", walk)
    [entry] = usage.entries(tmp_path)
    assert (entry.path, entry.state, entry.size) == (art.path, "unreadable", None)
    _age(art.path, 40)
    pruned = usage.prune(_quiet(tmp_path), 30 * DAY)
    [(failed, reason)] = pruned.failed
    assert failed.path == art.path and "cannot read all of it" in reason and art.path.is_dir()


def test_an_unlistable_root_is_one_line_error(tmp_path, monkeypatch):
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == tmp_path:
            raise _denied(self)
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(ArtifactError) as info:
        usage.entries(tmp_path)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"cannot list artifact dir {tmp_path} (Permission denied)")


def test_prune_removes_what_was_not_used_for_the_given_time_and_nothing_else(tmp_path):
    cache = _quiet(tmp_path)
    old = cache.get_or_build(_spec(v=1), CountingBuilder())
    recent = cache.get_or_build(_spec(v=2), CountingBuilder())
    engines = _engines(tmp_path)
    _age(old.path, 31)
    _age(engines, 31)
    _age(recent.path, 29)

    pruned = usage.prune(cache, 30 * DAY, dry_run=True)
    assert {e.path for e in pruned.removed} == {old.path, engines}
    assert not pruned.in_use and not pruned.failed
    assert old.path.is_dir() and engines.is_dir()  # a dry run removes nothing

    pruned = usage.prune(cache, 30 * DAY)
    assert {e.path for e in pruned.removed} == {old.path, engines}
    assert not pruned.in_use and not pruned.failed
    assert not old.path.exists() and not engines.exists() and recent.path.is_dir()
    assert [p.name for p in (tmp_path / "test-kind").iterdir()] == [recent.path.name]
    rebuilt = CountingBuilder()
    assert cache.get_or_build(_spec(v=1), rebuilt).built and rebuilt.calls == 1
    assert not cache.get_or_build(_spec(v=2), rebuilt).built


def test_a_use_since_the_listing_keeps_the_artifact(tmp_path, monkeypatch):
    """The listing can take minutes on a large cache; a run that reuses an artifact meanwhile
    must not lose it."""
    cache = _quiet(tmp_path)
    art = cache.get_or_build(_spec(), CountingBuilder())
    _age(art.path, 40)
    real_entries = usage.entries

    def entries_then_a_hit(root):
        listed = real_entries(root)
        assert cache.lookup(_spec()) is not None  # another job reuses it right after the scan
        return listed

    monkeypatch.setattr(usage, "entries", entries_then_a_hit)
    pruned = usage.prune(cache, 30 * DAY)
    assert not pruned.removed and not pruned.failed and art.path.is_dir()


def test_a_reuse_whose_check_is_under_way_keeps_the_artifact(tmp_path, monkeypatch):
    """A lookup checks an artifact's sha256 first (seconds for a 1.2 GB graph): a prune in
    those seconds must not remove what the lookup then hands out."""
    cache = _quiet(tmp_path)
    art = cache.get_or_build(_spec(), CountingBuilder())
    _age(art.path, 40)
    monkeypatch.setattr(cache_mod, "_DIGESTS", {})
    real_sha256 = cache_mod.sha256_file
    pruned = []

    def hash_while_pruning(path):
        digest = real_sha256(path)
        pruned.append(usage.prune(_quiet(tmp_path), 30 * DAY))
        return digest

    monkeypatch.setattr(cache_mod, "sha256_file", hash_while_pruning)
    found = cache.lookup(_spec())
    assert pruned and not pruned[0].removed
    assert found is not None and found.file("blob.bin").is_file()


def _hold(lock_file: Path) -> subprocess.Popen:
    holder = subprocess.Popen(
        [
            PYTHON,
            "-c",
            "import sys, time; from filelock import FileLock; "
            "l = FileLock(sys.argv[1]); l.acquire(); print('held', flush=True); time.sleep(600)",
            str(lock_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.parametrize("what", ["artifact", "tensorrt-engines"])
def test_prune_keeps_a_folder_whose_build_lock_is_held(tmp_path, what):
    cache = _quiet(tmp_path)
    if what == "artifact":
        folder = cache.get_or_build(_spec(), CountingBuilder()).path
        lock_file = tmp_path / ".locks" / f"test-kind-{_spec().key}.lock"
    else:  # the TensorRT runner holds this lock while it builds engines (test_runners)
        folder = _engines(tmp_path)
        lock_file = tmp_path / ".locks" / f"ort-trt-{ENGINES.rsplit('-', 1)[1]}.lock"
    _age(folder, 100)
    holder = _hold(lock_file)
    try:
        pruned = usage.prune(cache, 0)
    finally:
        holder.kill()
        holder.wait()
    assert not pruned.removed and [e.path for e in pruned.in_use] == [folder]
    assert folder.is_dir()
    _age(folder, 100)
    assert [e.path for e in usage.prune(cache, 0).removed] == [folder]  # once the lock is free


@pytest.mark.skipif(sys.platform == "win32", reason="pid liveness is only checked on POSIX")
def test_prune_removes_leftovers_of_dead_builders_at_any_age_and_unknown_ones_once_quiet(
    tmp_path,
):
    kind_dir = tmp_path / "test-kind"
    kind_dir.mkdir()
    other_tag = "0" * 8 if _PID_TAG != "0" * 8 else "1" * 8
    dead = kind_dir / f".build-{_dead_pid()}-{_PID_TAG}-x"
    alive = kind_dir / f".build-{os.getpid()}-{_PID_TAG}-y"
    other_host_quiet = kind_dir / f".build-{_dead_pid()}-{other_tag}-z"
    other_host_busy = kind_dir / f".trash-{_dead_pid()}-{other_tag}-w"
    pidless = kind_dir / ".build-abc123xy"
    for path in (dead, alive, other_host_quiet, other_host_busy, pidless):
        path.mkdir()
    for path in (alive, other_host_quiet, pidless):
        _age(path, 2)
    pruned = usage.prune(_quiet(tmp_path), 0)
    assert {e.path for e in pruned.removed} == {dead, other_host_quiet, pidless}
    assert sorted(p.name for p in kind_dir.iterdir()) == sorted([alive.name, other_host_busy.name])
    # a longer DAYS waits longer for those whose builder cannot be checked
    _age(other_host_busy, 2)
    assert not usage.prune(_quiet(tmp_path), 3 * DAY).removed
    assert [e.path for e in usage.prune(_quiet(tmp_path), DAY).removed] == [other_host_busy]


def test_prune_of_a_read_only_cache_is_one_line_error_but_a_dry_run_lists(tmp_path, monkeypatch):
    art = _quiet(tmp_path).get_or_build(_spec(), CountingBuilder())
    _age(art.path, 40)
    real_access = os.access
    monkeypatch.setattr(
        cache_mod.os,
        "access",
        lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode),
    )
    shared = _quiet(tmp_path)
    with pytest.raises(ArtifactError, match=f"artifact dir {tmp_path} is read-only: prune it"):
        usage.prune(shared, 0)
    assert [e.path for e in usage.prune(shared, 30 * DAY, dry_run=True).removed] == [art.path]
    assert art.path.is_dir()


@pytest.mark.parametrize("step", ["move-aside", "delete"])
def test_prune_reports_a_folder_it_cannot_remove_and_removes_the_others(
    tmp_path, monkeypatch, step
):
    cache = _quiet(tmp_path)
    stuck = cache.get_or_build(_spec(v=1), CountingBuilder())
    other = cache.get_or_build(_spec(v=2), CountingBuilder())
    real_replace, real_rmtree = os.replace, usage.shutil.rmtree

    def replace(src, dst, *args, **kwargs):
        if step == "move-aside" and Path(src) == stuck.path:
            raise PermissionError(errno.EACCES, "Permission denied", str(src))
        return real_replace(src, dst, *args, **kwargs)

    def rmtree(path, *args, **kwargs):  # files of another user, in a folder of theirs
        if step == "delete" and stuck.path.name in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(Path(path) / "blob.bin"))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(usage.os, "replace", replace)
    monkeypatch.setattr(usage.shutil, "rmtree", rmtree)
    pruned = usage.prune(cache, 0)
    assert [e.path for e in pruned.removed] == [other.path] and not other.path.exists()
    [(entry, reason)] = pruned.failed
    assert entry.path == stuck.path and "(Permission denied)" in reason
    assert "prune as the user who owns" in reason
    assert stuck.path.is_dir() and cache.lookup(_spec(v=1)) is not None  # whole, usable
    assert [p.name for p in (tmp_path / "test-kind").iterdir()] == [stuck.path.name]


def test_prune_never_follows_a_link_out_of_the_cache(tmp_path):
    """In a world-writable shared cache anyone can plant a link; a prune by another user (or
    root's cron) must not delete what it points to."""
    cache_dir, victim = tmp_path / "cache", tmp_path / "victim"
    cache = _quiet(cache_dir)
    (victim / "work-0123456789abcdef").mkdir(parents=True)  # named like a cache folder, even
    (victim / "work-0123456789abcdef" / "thesis.tex").write_text("years of work")
    (cache_dir / "evil-kind").symlink_to(victim)
    (cache_dir / "ort-trt").mkdir()
    (cache_dir / "ort-trt" / "evil-fedcba9876543210").symlink_to(victim)
    _age(victim / "work-0123456789abcdef", 100)
    assert usage.entries(cache_dir) == []
    assert usage.prune(cache, 0).removed == []
    assert (victim / "work-0123456789abcdef" / "thesis.tex").read_text() == "years of work"


def test_prune_refuses_a_folder_that_is_not_a_cache(tmp_path):
    project = tmp_path / "myproject"
    for sub in ("src", "docs"):
        (project / sub / "pkg").mkdir(parents=True)
        _age(project / sub / "pkg", 100)
    not_a_cache = cache_mod.ArtifactCache(project, log=lambda m: None, create=False)
    with pytest.raises(ArtifactError) as info:
        usage.prune(not_a_cache, 0)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"{project} is not an artifact cache (it has no .locks")
    assert sorted(p.name for p in project.iterdir()) == ["docs", "src"]
    assert (project / "src" / "pkg").is_dir() and not (project / ".locks").exists()


def test_folders_not_named_as_the_cache_names_them_are_listed_and_never_pruned(tmp_path):
    cache = _quiet(tmp_path)
    mine = tmp_path / "onnx-model" / "notes"
    # a key at the end, but characters ArtifactSpec.dirname never writes: not the cache's
    odd = tmp_path / "onnx-model" / "weird é name-0123456789abcdef0123"
    for folder in (mine, odd):
        folder.mkdir(parents=True, exist_ok=True)
        _age(folder, 100)
    entries = usage.entries(tmp_path)
    assert {(e.path, e.state) for e in entries} == {(mine, "foreign"), (odd, "foreign")}
    assert usage.prune(cache, 0).removed == [] and mine.is_dir() and odd.is_dir()
