"""The artifact cache: hits, corruption, failed builds, locking across processes."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import PYTHON

import supercharge.cache as cache_mod
from supercharge.cache import _PID_TAG, ArtifactCache, ArtifactSpec, pid_space_tag, this_pid_space
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


@pytest.mark.parametrize("step", ["mkdir", "lock", "build-dir", "replace"])
def test_os_error_below_the_root_is_one_line_error(tmp_path, monkeypatch, step):
    """Each filesystem step under the root, failing as for another user's read-only folder."""
    cache = _quiet(tmp_path)
    final = cache.path_for(_spec())
    real_mkdir, real_replace = os.mkdir, os.replace

    def mkdir(path, *args, **kwargs):
        if Path(path).name == "test-kind":
            raise _denied(path)
        return real_mkdir(path, *args, **kwargs)

    def mkdir_build(path, *args, **kwargs):
        if Path(path).name.startswith(".build-"):
            raise _denied(Path(path).parent)
        return real_mkdir(path, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if Path(src).name.startswith(".build-"):
            raise _denied(dst)
        return real_replace(src, dst, *args, **kwargs)

    def acquire(self, *args, **kwargs):
        raise _denied(self.lock_file)

    patch, named = {
        "mkdir": ((os, "mkdir", mkdir), final.parent),
        "lock": ((cache_mod.FileLock, "acquire", acquire), tmp_path / ".locks"),
        "build-dir": ((os, "mkdir", mkdir_build), final.parent),
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


def test_hosts_sharing_a_hostname_and_the_initial_pid_namespace_get_different_tags():
    """Two CI runners named alike, both in their host's initial pid namespace (same inode on
    every host), share a cache: one's pids must not judge the other's builds."""
    host, boot, pid_ns = this_pid_space()
    if Path("/proc/sys/kernel/random/boot_id").exists():
        assert boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert pid_space_tag(host, boot, pid_ns) == _PID_TAG
    init = "pid:[4026531836]"
    assert pid_space_tag("runner", "boot-a", init) != pid_space_tag("runner", "boot-b", init)
    assert pid_space_tag("runner", "boot-a", init) != pid_space_tag("runner", "boot-a", "pid:[1]")


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


# last use, hashing ---------------------------------------------------------------------------


def _age(path: Path, days: float) -> None:
    then = time.time() - days * 86400
    os.utime(path, (then, then))


def test_a_hit_marks_the_artifact_used_in_its_folder_and_its_lock_file(tmp_path):
    cache = _quiet(tmp_path)
    art = cache.get_or_build(_spec(), CountingBuilder())
    marker = tmp_path / ".locks" / f"test-kind-{_spec().key}.lock"
    _age(art.path, 40)
    _age(marker, 40)
    assert cache_mod.last_used(art.path) < time.time() - 39 * 86400
    assert cache.lookup(_spec()) is not None
    assert time.time() - art.path.stat().st_mtime < 60
    assert time.time() - marker.stat().st_mtime < 60


def test_a_use_never_follows_a_link_planted_in_the_locks_folder(tmp_path):
    """`.locks` of a shared cache is writable by all its users: a link there named as a lock
    file must not make its target (another file of whoever runs) world-writable."""
    cache = _quiet(tmp_path / "cache")
    cache.get_or_build(_spec(), CountingBuilder())
    victim = tmp_path / "private.key"
    victim.write_text("secret")
    victim.chmod(0o600)
    marker = tmp_path / "cache" / ".locks" / f"test-kind-{_spec().key}.lock"
    marker.unlink()
    marker.symlink_to(victim)
    assert cache.lookup(_spec()) is not None  # still served
    assert oct(victim.stat().st_mode & 0o777) == oct(0o600)
    assert victim.read_text() == "secret"


def test_a_use_is_recorded_where_the_folder_belongs_to_another_user(tmp_path, monkeypatch):
    """Only the owner (or a writer) may set a folder's times: a shared cache's other users
    record their uses in the world-writable lock file, which last_used reads too."""
    cache = _quiet(tmp_path)
    art = cache.get_or_build(_spec(), CountingBuilder())
    _age(art.path, 40)
    marker = tmp_path / ".locks" / f"test-kind-{_spec().key}.lock"
    marker.unlink()  # e.g. a cache copied without its .locks
    real_utime = os.utime

    def utime(path, *args, **kwargs):
        if Path(path) == art.path:
            raise _denied(path)
        return real_utime(path, *args, **kwargs)

    monkeypatch.setattr(cache_mod.os, "utime", utime)
    assert cache.lookup(_spec()) is not None
    assert art.path.stat().st_mtime < time.time() - 39 * 86400
    assert marker.is_file() and (marker.stat().st_mode & 0o777) == 0o666
    assert time.time() - cache_mod.last_used(art.path) < 60


def test_a_read_only_cache_records_uses_where_it_may_and_never_fails_for_it(tmp_path, monkeypatch):
    """A shared cache read-only to this user (its root and folders are the builder's) still
    takes a use in the world-writable lock file; on a read-only mount nothing can be written,
    and the hit is served all the same."""
    art = _quiet(tmp_path).get_or_build(_spec(), CountingBuilder())
    marker = tmp_path / ".locks" / f"test-kind-{_spec().key}.lock"
    _age(art.path, 40)
    _age(marker, 40)
    real_access, real_utime, real_open = os.access, os.utime, os.open
    monkeypatch.setattr(
        cache_mod.os,
        "access",
        lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode),
    )

    def utime(path, *args, **kwargs):
        if Path(path) == art.path or mount_read_only:
            raise OSError(errno.EPERM if not mount_read_only else errno.EROFS, "denied", path)
        return real_utime(path, *args, **kwargs)

    def open_(path, *args, **kwargs):
        if mount_read_only:
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(cache_mod.os, "utime", utime)
    monkeypatch.setattr(cache_mod.os, "open", open_)
    shared = _quiet(tmp_path)
    assert shared.read_only
    mount_read_only = True
    assert shared.lookup(_spec()) is not None
    assert cache_mod.last_used(art.path) < time.time() - 39 * 86400
    mount_read_only = False
    assert shared.lookup(_spec()) is not None
    assert art.path.stat().st_mtime < time.time() - 39 * 86400  # not this user's folder
    assert time.time() - cache_mod.last_used(art.path) < 60  # its lock file took the use


def test_published_folders_follow_the_umask_so_other_users_can_read_them(tmp_path):
    old = os.umask(0o022)
    try:
        art = _quiet(tmp_path).get_or_build(_spec(), CountingBuilder())
    finally:
        os.umask(old)
    assert art.path.stat().st_mode & 0o777 == 0o755  # mkdtemp would have published 0o700


def test_published_files_are_readable_as_the_umask_allows(tmp_path):
    """onnx writes external data (model.onnx.data, above 2 GB) 0600 whatever the umask."""

    def private_data(out_dir):
        (out_dir / "model.onnx").write_bytes(b"graph")
        fd = os.open(out_dir / "model.onnx.data", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"weights")
        os.close(fd)

    old = os.umask(0o022)
    try:
        art = _quiet(tmp_path).get_or_build(_spec(), private_data)
        tight = _quiet(tmp_path / "tight")
        os.umask(0o077)
        private = tight.get_or_build(_spec(), private_data)
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in art.path.iterdir()} == {
        "model.onnx": 0o644,
        "model.onnx.data": 0o644,
        "manifest.json": 0o644,
    }
    # a umask that keeps others out still does
    assert private.file("model.onnx.data").stat().st_mode & 0o777 == 0o600


def test_a_file_is_hashed_once_per_process_until_it_changes(tmp_path, monkeypatch):
    cache = _quiet(tmp_path)
    art = cache.get_or_build(_spec(), CountingBuilder())
    blob = art.file("blob.bin")
    hashed: list[Path] = []
    real = cache_mod.sha256_file
    monkeypatch.setattr(cache_mod, "sha256_file", lambda p: hashed.append(p) or real(p))
    monkeypatch.setattr(cache_mod, "_RACY_NS", 0)
    assert cache.lookup(_spec()) is not None and cache.lookup(_spec()) is not None
    assert hashed == [blob]
    # A same-size rewrite whose mtime is set back (cp -p, rsync -t) still changes the ctime.
    st = blob.stat()
    data = bytearray(blob.read_bytes())
    data[0] ^= 0xFF
    blob.write_bytes(bytes(data))
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert blob.stat().st_mtime_ns == st.st_mtime_ns
    assert cache.lookup(_spec()) is None and len(hashed) == 2


def test_a_file_changed_just_before_hashing_is_not_remembered(tmp_path, monkeypatch):
    """Within one timestamp tick (coarse on older kernels) a same-size rewrite can leave size,
    mtime and ctime as they were: a file that recent is hashed again at its next lookup. (The
    window is widened to a day, so a slow machine between the write and the lookups cannot
    carry the file out of it.)"""
    monkeypatch.setattr(cache_mod, "_RACY_NS", 86_400 * 10**9)
    cache = _quiet(tmp_path)
    cache.get_or_build(_spec(), CountingBuilder())  # just written: inside the racy window
    hashed: list[Path] = []
    real = cache_mod.sha256_file
    monkeypatch.setattr(cache_mod, "sha256_file", lambda p: hashed.append(p) or real(p))
    assert cache.lookup(_spec()) is not None and cache.lookup(_spec()) is not None
    assert len(hashed) == 2


def test_the_cache_root_is_tagged_for_backup_tools_once(tmp_path):
    _quiet(tmp_path).get_or_build(_spec(), CountingBuilder())
    tag = tmp_path / "CACHEDIR.TAG"
    assert tag.read_bytes().startswith(b"Signature: 8a477f597d28d172789f06886806bc55")
    tag.write_text(tag.read_text() + "# a user's note\n")
    _quiet(tmp_path)
    assert tag.read_text().endswith("# a user's note\n")  # never rewritten
    listing = tmp_path / "listed"
    listing.mkdir()
    cache_mod.ArtifactCache(listing, log=lambda m: None, create=False)
    assert list(listing.iterdir()) == []  # listing writes nothing
