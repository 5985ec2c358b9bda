"""The artifact cache: hits, corruption, failed builds, locking across processes."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from tests.conftest import PYTHON

import supercharge.cache as cache_mod
from supercharge.cache import _PID_TAG, ArtifactCache, ArtifactSpec
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


def _quiet(root: Path) -> ArtifactCache:
    return ArtifactCache(root, log=lambda m: None)


def _denied(path: object) -> PermissionError:
    return PermissionError(errno.EACCES, "Permission denied", str(path))


def _assert_one_line(exc: pytest.ExceptionInfo[ArtifactError], path: Path) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert "--artifact-dir" in msg


def _leftovers(kind_dir: Path) -> list[str]:
    return sorted(p.name for p in kind_dir.iterdir() if p.name.startswith((".build-", ".trash-")))


def test_kind_dir_that_is_a_file_is_one_line_error(tmp_path):
    blocker = tmp_path / "test-kind"
    blocker.write_text("mine")
    with pytest.raises(ArtifactError, match="is not a directory: remove the file") as exc:
        _quiet(tmp_path).get_or_build(_spec(), CountingBuilder())
    _assert_one_line(exc, blocker)
    assert blocker.read_text() == "mine"


def test_locks_dir_that_is_a_file_is_one_line_error(tmp_path):
    (tmp_path / ".locks").write_text("mine")
    with pytest.raises(ArtifactError, match="is not a directory: remove the file") as exc:
        _quiet(tmp_path)
    _assert_one_line(exc, tmp_path / ".locks")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_read_only_kind_dir_is_one_line_error(tmp_path):
    kind_dir = tmp_path / "test-kind"
    kind_dir.mkdir()
    kind_dir.chmod(0o555)
    try:
        if os.access(kind_dir, os.W_OK):
            pytest.skip("running as root: permissions are bypassed (see the monkeypatched test)")
        with pytest.raises(ArtifactError, match="cannot create a build folder") as exc:
            _quiet(tmp_path).get_or_build(_spec(), CountingBuilder())
        _assert_one_line(exc, kind_dir)
    finally:
        kind_dir.chmod(0o755)


@pytest.mark.parametrize("step", ["mkdir", "lock", "mkdtemp", "replace"])
def test_os_error_below_the_root_is_one_line_error(tmp_path, monkeypatch, step):
    """Each filesystem step under the root, failing as for another user's read-only folder."""
    cache = _quiet(tmp_path)
    final = cache.path_for(_spec())
    real_mkdir, real_replace = os.mkdir, os.replace

    def mkdir(path, *args, **kwargs):
        if Path(path).name == "test-kind":
            raise _denied(path)
        return real_mkdir(path, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if Path(src).name.startswith(".build-"):
            raise _denied(dst)
        return real_replace(src, dst, *args, **kwargs)

    def acquire(self, *args, **kwargs):
        raise _denied(self.lock_file)

    def mkdtemp(*args, **kwargs):
        raise _denied(kwargs.get("dir"))

    patch, named = {
        "mkdir": ((os, "mkdir", mkdir), final.parent),
        "lock": ((cache_mod.FileLock, "acquire", acquire), tmp_path / ".locks"),
        "mkdtemp": ((tempfile, "mkdtemp", mkdtemp), final.parent),
        "replace": ((os, "replace", replace), final),
    }[step]
    with monkeypatch.context() as m:
        m.setattr(*patch)
        with pytest.raises(ArtifactError, match="Permission denied") as exc:
            cache.get_or_build(_spec(), CountingBuilder())
    _assert_one_line(exc, named)
    if final.parent.is_dir():
        assert _leftovers(final.parent) == []
    assert cache.get_or_build(_spec(), CountingBuilder()).built  # nothing left half-done


def test_corrupt_artifact_that_cannot_be_moved_aside_is_kept(tmp_path, monkeypatch):
    cache = _quiet(tmp_path)
    art = cache.get_or_build(_spec(), CountingBuilder())
    (art.path / "manifest.json").write_text("{not json")
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(src) == art.path:
            raise _denied(src)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(ArtifactError, match="cannot remove the corrupt artifact") as exc:
        cache.get_or_build(_spec(), CountingBuilder())
    _assert_one_line(exc, art.path)
    assert (art.path / "blob.bin").is_file()
    assert _leftovers(art.path.parent) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_lock_files_can_be_taken_by_other_users(tmp_path):
    _quiet(tmp_path).get_or_build(_spec(), CountingBuilder())
    [lock] = (tmp_path / ".locks").iterdir()
    assert lock.stat().st_mode & 0o777 == 0o666


def test_file_shaped_artifact_is_discarded_without_leftovers(tmp_path):
    cache = _quiet(tmp_path)
    final = cache.path_for(_spec())
    final.parent.mkdir()
    final.write_bytes(b"not an artifact")
    art = cache.get_or_build(_spec(), CountingBuilder())
    assert art.built and art.path.is_dir()
    assert [p.name for p in final.parent.iterdir()] == [final.name]
    stray = final.parent / "stray-file"
    stray.write_bytes(b"x")
    ArtifactCache._discard(stray)
    assert [p.name for p in final.parent.iterdir()] == [final.name]


def _dead_pid() -> int:
    proc = subprocess.Popen([PYTHON, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(sys.platform == "win32", reason="pid liveness is only checked on POSIX")
def test_abandoned_temp_entries_of_dead_builders_are_swept(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    other_tag = "0" * 8 if _PID_TAG != "0" * 8 else "1" * 8
    kind_dir = tmp_path / "test-kind"
    kind_dir.mkdir()
    stale_build = kind_dir / f".build-{dead}-{_PID_TAG}-x"
    stale_build.mkdir()
    (stale_build / "big.bin").write_bytes(b"x" * 1000)
    (kind_dir / f".trash-{dead}-{_PID_TAG}-thing-1").write_bytes(b"x")
    kept = [
        f".build-{alive}-{_PID_TAG}-y",  # a live builder
        f".build-{dead}-{other_tag}-z",  # another host or container: its pid means nothing here
        ".build-abc123xy",  # from before pids were recorded: left alone
    ]
    for name in kept:
        (kind_dir / name).mkdir()
    logs: list[str] = []
    assert ArtifactCache(tmp_path, log=logs.append).get_or_build(_spec(), CountingBuilder()).built
    assert _leftovers(kind_dir) == sorted(kept)
    assert sum("interrupted build" in m for m in logs) == 2


@pytest.mark.skipif(sys.platform == "win32", reason="pid liveness is only checked on POSIX")
def test_temp_folder_of_another_users_process_is_kept(tmp_path, monkeypatch):
    kind_dir = tmp_path / "test-kind"
    kind_dir.mkdir()
    theirs = kind_dir / f".build-{_dead_pid()}-{_PID_TAG}-x"
    theirs.mkdir()

    def kill(pid, sig):
        raise _denied(pid)  # what os.kill says for a live process of another user

    monkeypatch.setattr(os, "kill", kill)
    _quiet(tmp_path).get_or_build(_spec(), CountingBuilder())
    assert theirs.is_dir()


_BUILD_FOREVER = """
import sys, time
from supercharge.cache import ArtifactCache, ArtifactSpec
def build(out):
    (out / "blob.bin").write_bytes(b"x" * 100)
    time.sleep(600)
ArtifactCache(sys.argv[1], log=lambda m: None).get_or_build(
    ArtifactSpec("test-kind", "thing", {"v": 1}), build)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_build_killed_midway_is_cleaned_up_by_the_next_build(tmp_path):
    proc = subprocess.Popen([PYTHON, "-c", _BUILD_FOREVER, str(tmp_path)])
    kind_dir = tmp_path / "test-kind"
    try:
        deadline = time.monotonic() + 120
        while not list(kind_dir.glob(".build-*/blob.bin")):
            assert proc.poll() is None and time.monotonic() < deadline, "build never started"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(_leftovers(kind_dir)) == 1
    art = _quiet(tmp_path).get_or_build(_spec(), CountingBuilder())
    assert art.built
    assert [p.name for p in kind_dir.iterdir()] == [art.path.name]


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


def test_a_read_only_cache_serves_its_artifacts_and_refuses_only_a_build(tmp_path, monkeypatch):
    """A cache built once and shared read-only (CI runners) needs no lock for a hit; a miss
    names the missing artifact and what to do. (Root bypasses permissions: os.access is
    patched to say what a read-only mount would.)"""
    spec, builder = _spec(), CountingBuilder()
    built = ArtifactCache(tmp_path, log=lambda m: None).get_or_build(spec, builder)
    real_access = os.access
    monkeypatch.setattr(
        cache_mod.os,
        "access",
        lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode),
    )
    shared = ArtifactCache(tmp_path, log=lambda m: None)
    assert shared.read_only
    hit = shared.get_or_build(spec, builder)
    assert hit.path == built.path and not hit.built and builder.calls == 1
    with pytest.raises(ArtifactError) as info:
        shared.get_or_build(_spec(v=2), builder)
    message = str(info.value)
    assert "\n" not in message and f"artifact dir {tmp_path} is read-only" in message
    assert "holds no valid test-kind thing" in message and builder.calls == 1


def test_an_artifact_dir_that_is_a_file_says_so(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ArtifactError, match=f"artifact dir {blocker} is a file, not a folder: "):
        ArtifactCache(blocker)


# last use, listing and pruning ------------------------------------------------------------

DAY = 86400.0


def _age(path: Path, days: float) -> None:
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def test_a_hit_marks_the_artifact_used(tmp_path):
    cache = _quiet(tmp_path)
    art = cache.get_or_build(_spec(), CountingBuilder())
    _age(art.path, 40)
    assert cache.lookup(_spec()) is not None
    assert time.time() - art.path.stat().st_mtime < 60


def test_a_file_is_hashed_once_per_process_until_it_changes(tmp_path, monkeypatch):
    cache = _quiet(tmp_path)
    art = cache.get_or_build(_spec(), CountingBuilder())
    hashed: list[Path] = []
    real = cache_mod.sha256_file
    monkeypatch.setattr(cache_mod, "sha256_file", lambda p: hashed.append(p) or real(p))
    assert cache.lookup(_spec()) is not None and cache.lookup(_spec()) is not None
    assert hashed == [art.file("blob.bin")]
    data = bytearray(art.file("blob.bin").read_bytes())
    data[0] ^= 0xFF  # same size, new mtime: hashed again, and found corrupt
    art.file("blob.bin").write_bytes(bytes(data))
    assert cache.lookup(_spec()) is None and len(hashed) == 2


def test_entries_list_artifacts_engine_folders_and_leftovers_with_sizes(tmp_path):
    cache = _quiet(tmp_path)
    art = cache.get_or_build(_spec(), CountingBuilder(b"x" * 5000))
    engines = tmp_path / "ort-trt" / "H200-sm90-fp16-abc"
    (engines / "engines").mkdir(parents=True)
    (engines / "engines" / "a.engine").write_bytes(b"e" * 300)
    leftover = tmp_path / "test-kind" / f".build-{os.getpid()}-{_PID_TAG}-q"
    leftover.mkdir()
    found = {e.path: e for e in cache.entries()}
    assert set(found) == {art.path, engines, leftover}
    manifest_size = (art.path / "manifest.json").stat().st_size
    assert (found[art.path].state, found[art.path].size) == ("artifact", 5000 + manifest_size)
    assert found[art.path].key == _spec().key and found[art.path].kind == "test-kind"
    assert (found[engines].state, found[engines].size, found[engines].key) == ("files", 300, None)
    assert found[leftover].state == "leftover"


def test_prune_removes_what_was_not_used_for_the_given_time_and_nothing_else(tmp_path):
    cache = _quiet(tmp_path)
    old = cache.get_or_build(_spec(v=1), CountingBuilder())
    recent = cache.get_or_build(_spec(v=2), CountingBuilder())
    engines = tmp_path / "ort-trt" / "old-engines"
    engines.mkdir(parents=True)
    (engines / "a.engine").write_bytes(b"e")
    _age(old.path, 31)
    _age(engines, 31)
    _age(recent.path, 29)

    pruned = cache.prune(30 * DAY, dry_run=True)
    assert {e.path for e in pruned.removed} == {old.path, engines}
    assert not pruned.in_use and not pruned.failed
    assert old.path.is_dir() and engines.is_dir()  # a dry run removes nothing

    pruned = cache.prune(30 * DAY)
    assert {e.path for e in pruned.removed} == {old.path, engines}
    assert not pruned.in_use and not pruned.failed
    assert not old.path.exists() and not engines.exists() and recent.path.is_dir()
    assert [p.name for p in (tmp_path / "test-kind").iterdir()] == [recent.path.name]
    rebuilt = CountingBuilder()
    assert cache.get_or_build(_spec(v=1), rebuilt).built and rebuilt.calls == 1
    assert not cache.get_or_build(_spec(v=2), rebuilt).built


def test_prune_keeps_an_artifact_whose_build_lock_is_held(tmp_path):
    cache = _quiet(tmp_path)
    art = cache.get_or_build(_spec(), CountingBuilder())
    _age(art.path, 100)
    holder = subprocess.Popen(
        [
            PYTHON,
            "-c",
            "import sys, time; from filelock import FileLock; "
            "l = FileLock(sys.argv[1]); l.acquire(); print('held', flush=True); time.sleep(600)",
            str(tmp_path / ".locks" / f"test-kind-{_spec().key}.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        pruned = cache.prune(0)
    finally:
        holder.kill()
        holder.wait()
    assert not pruned.removed and [e.path for e in pruned.in_use] == [art.path]
    assert art.path.is_dir()
    assert [e.path for e in cache.prune(0).removed] == [art.path]  # once the lock is free


@pytest.mark.skipif(sys.platform == "win32", reason="pid liveness is only checked on POSIX")
def test_prune_removes_leftovers_of_dead_builders_only(tmp_path):
    kind_dir = tmp_path / "test-kind"
    kind_dir.mkdir()
    dead = kind_dir / f".build-{_dead_pid()}-{_PID_TAG}-x"
    alive = kind_dir / f".build-{os.getpid()}-{_PID_TAG}-y"
    dead.mkdir()
    alive.mkdir()
    pruned = _quiet(tmp_path).prune(365 * DAY)  # however recent, a dead builder's goes
    assert [e.path for e in pruned.removed] == [dead]
    assert not dead.exists() and alive.is_dir()


def test_prune_of_a_read_only_cache_is_one_line_error(tmp_path, monkeypatch):
    _quiet(tmp_path).get_or_build(_spec(), CountingBuilder())
    real_access = os.access
    monkeypatch.setattr(
        cache_mod.os,
        "access",
        lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode),
    )
    shared = _quiet(tmp_path)
    with pytest.raises(ArtifactError, match=f"artifact dir {tmp_path} is read-only: prune it"):
        shared.prune(0)
    assert len(shared.entries()) == 1


def test_prune_reports_a_folder_it_cannot_remove_and_removes_the_others(tmp_path, monkeypatch):
    cache = _quiet(tmp_path)
    stuck = cache.get_or_build(_spec(v=1), CountingBuilder())
    other = cache.get_or_build(_spec(v=2), CountingBuilder())
    real_replace = os.replace

    def replace(src, dst):
        if Path(src) == stuck.path:
            raise PermissionError(errno.EACCES, "Permission denied", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(cache_mod.os, "replace", replace)
    pruned = cache.prune(0)
    assert [e.path for e in pruned.removed] == [other.path] and not other.path.exists()
    [(entry, reason)] = pruned.failed
    assert entry.path == stuck.path and stuck.path.is_dir()
    assert f"cannot remove the unused artifact {stuck.path} (Permission denied)" in reason
    assert cache.lookup(_spec(v=1)) is not None  # still whole and usable
