"""Content-addressed artifact cache: build once, reuse across sessions, rebuild what is corrupt.

An artifact is a directory `<root>/<kind>/<name>-<key>/` holding its files and a manifest.json that
records the inputs (hashed into the key), versions, build time and each file's size and sha256.
Builds happen in a temporary sibling directory that is renamed into place only when complete, and
concurrent builders of one key are serialised by a file lock, so readers never see half an
artifact and two processes never build the same thing twice. Temporary entries carry their
maker's pid, so a folder left by a killed build is deleted by the next build of that kind.
Every hit marks its folder used (mtime), so `entries` can list and `prune` can remove what a
cache shared by CI runners no longer needs: graph revisions and version bumps change keys, and
old artifacts would otherwise stay forever (an eva02 graph is 1.2 GB).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from supercharge.errors import ArtifactError

ENV_VAR = "SUPERCHARGE_ARTIFACT_DIR"
MANIFEST = "manifest.json"
_FORMAT = 1
_HEARTBEAT_S = 15.0
_USE_ANOTHER = f"or pass --artifact-dir or set {ENV_VAR} to use another cache"
# `.build-<pid>-<tag>-…` and `.trash-<pid>-<tag>-…`: who made a temporary entry, and where.
_TEMP_NAME = re.compile(r"\.(?:build|trash)-(\d+)-([0-9a-f]{8})-")


def this_pid_space() -> tuple[str, str, str]:
    """Hostname, kernel boot id and pid namespace: what a pid is valid within. The namespace
    alone does not tell hosts apart (every host's initial one has the same inode), nor does a
    hostname (CI runners often share one); the boot id does."""
    boot = pid_ns = ""
    with suppress(OSError):
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    with suppress(OSError, AttributeError):
        pid_ns = os.readlink("/proc/self/ns/pid")
    return socket.gethostname(), boot, pid_ns


def pid_space_tag(hostname: str, boot_id: str, pid_ns: str) -> str:
    """The 8-hex tag in temporary names: a pid means nothing on another host or container."""
    return hashlib.sha256("\0".join((hostname, boot_id, pid_ns)).encode()).hexdigest()[:8]


_PID_TAG = pid_space_tag(*this_pid_space())


def default_root() -> Path:
    """$SUPERCHARGE_ARTIFACT_DIR, else the per-user cache directory."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("supercharge-timm")) / "artifacts"


@dataclass(frozen=True)
class ArtifactSpec:
    """What to build. Everything that changes the result belongs in `inputs` (JSON-able)."""

    kind: str
    name: str
    inputs: Mapping[str, Any]

    @property
    def key(self) -> str:
        blob = json.dumps({"kind": self.kind, "inputs": self.inputs}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    @property
    def dirname(self) -> str:
        return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', self.name)}-{self.key}"


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict[str, Any]
    built: bool  # True when this call built it, False when it was reused

    def file(self, name: str) -> Path:
        return self.path / name


Builder = Callable[[Path], Mapping[str, Any] | None]


def _pid_alive(pid: int) -> bool:
    """Whether `pid` may still be running; when unsure say yes, since its folder is then kept."""
    if sys.platform == "win32" or pid <= 0:  # Windows os.kill(pid, 0) would send CTRL_C
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: alive under another user
        return True
    return True


def is_temp_name(name: str) -> bool:
    """A build's or a discard's temporary entry (`.build-…`, `.trash-…`), with or without a pid."""
    return name.startswith((".build-", ".trash-"))


def builder_alive(name: str) -> bool | None:
    """Whether the build that left temp entry `name` still runs: None when that cannot be told
    from here (no pid, or a pid from another host or pid namespace, where it means nothing)."""
    m = _TEMP_NAME.match(name)
    if m is None or m.group(2) != _PID_TAG:
        return None
    return _pid_alive(int(m.group(1)))


def trash_path(path: Path) -> Path:
    """Where `path` is moved before it is deleted: a temp name the sweeps recognise as ours."""
    return path.with_name(f".trash-{os.getpid()}-{_PID_TAG}-{path.name}-{time.time_ns()}")


def _remove(path: Path) -> None:
    """Delete a file, link or folder tree, best effort: leftovers are swept by a later build."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(OSError):
            path.unlink()


def lock_path(root: Path, kind: str, key: str) -> Path:
    """The lock a build of `<root>/<kind>/<name>-<key>` holds; its mtime also records uses."""
    return Path(root) / ".locks" / f"{kind}-{key}.lock"


# What the cache names a folder: ArtifactSpec.dirname's (and the TensorRT folders') characters,
# then the key. A name with other characters was not made here, so prune leaves it alone.
_FOLDER_KEY = re.compile(r"[A-Za-z0-9_.-]+-([0-9a-f]{16,64})")


def folder_key(folder: Path) -> str | None:
    """The key that ends a cache folder's name (artifacts, TensorRT's engine folders)."""
    m = _FOLDER_KEY.fullmatch(folder.name)
    return m.group(1) if m else None


def folder_lock_path(folder: Path) -> Path | None:
    """lock_path of the cache folder `<root>/<kind>/<name>-<key>`; None if its name has no key."""
    key = folder_key(folder)
    return lock_path(folder.parent.parent, folder.parent.name, key) if key else None


def mark_used(folder: Path) -> None:
    """Record a use of `<root>/<kind>/<name>-<key>` now, for `supercharge cache --prune`.

    Best effort, never an error: the folder's own mtime where this user may set it, and the
    world-writable lock file beside the others in `.locks`, which also records a use by a user
    who does not own the folder (a cache shared between CI users).
    """
    with suppress(OSError):
        os.utime(folder)
    marker = folder_lock_path(folder)
    if marker is None:
        return
    with suppress(OSError):
        # O_NOFOLLOW: a link planted in a shared `.locks` must not get its target chmod 0o666
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        try:
            with suppress(OSError):  # umask-proof, as filelock does; only the owner can
                os.fchmod(fd, 0o666)
            os.utime(fd if os.utime in os.supports_fd else marker)
        finally:
            os.close(fd)


def last_used(folder: Path) -> float:
    """When `folder` was last built or used (epoch seconds): its mtime or its marker's."""
    times = [folder.stat().st_mtime]
    marker = folder_lock_path(folder)
    if marker is not None:
        with suppress(OSError):
            times.append(marker.stat().st_mtime)
    return max(times)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# (path, device, inode, size, mtime_ns, ctime_ns) -> sha256: a file is hashed once per process,
# not at every lookup (eva02's 1.2 GB export takes ~2 s to hash; a session looks it up often).
# ctime cannot be set back by copying tools (cp -p, rsync -t restore mtime); a file changed less
# than _RACY_NS before it was hashed is not remembered, since a same-size rewrite within one
# timestamp tick (coarse on older kernels) would leave every field as it was (git's "racy" rule).
_DIGESTS: dict[tuple[str, int, int, int, int, int], str] = {}
_RACY_NS = 2_000_000_000


def _digest(path: Path, st: os.stat_result) -> str:
    key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        started = time.time_ns()
        digest = sha256_file(path)
        if started - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS:
            _DIGESTS[key] = digest
    return digest


def file_digest(path: Path) -> str:
    """sha256 of `path`, hashed once per process until the file changes (as lookups are)."""
    return _digest(path, path.stat())


CACHEDIR_TAG = "CACHEDIR.TAG"
_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by supercharge-timm: backup tools that honour\n"
    "# https://bford.info/cachedir/ skip this folder; `supercharge cache --prune` trims it.\n"
)


def _tag_as_cache(root: Path) -> None:
    """Write CACHEDIR.TAG once, best effort: backups (tar --exclude-caches, borg, restic) then
    skip gigabytes that any run rebuilds."""
    with suppress(OSError), open(root / CACHEDIR_TAG, "x") as f:
        f.write(_TAG)


def _make_build_dir(parent: Path, prefix: str) -> Path:
    """A new folder `<prefix><random>` with the umask's permissions: mkdtemp's 0700 would be
    published as is, and another user of a shared cache could then not read the artifact."""
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir(mode=0o777)
            return path
        except FileExistsError:
            continue


def _share_files(folder: Path) -> None:
    """Give each file built in `folder` the read bits the folder has (the umask's, see
    _make_build_dir): onnx (1.23) creates external data (model.onnx.data, the weights of a model
    above 2 GB and of quantize_static's int8 one) 0600, which another user of a shared cache
    could not read, hash or load."""
    read = folder.stat().st_mode & 0o444
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            mode = path.stat().st_mode
            if mode & read != read:
                path.chmod(mode | read)


def _ensure_dir(path: Path) -> None:
    """Create a folder below the root, turning a blocking file or bad permissions into one line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise ArtifactError(
            f"artifact folder {path} is not a directory: remove the file, {_USE_ANOTHER}"
        ) from exc
    except OSError as exc:
        raise ArtifactError(
            f"cannot create artifact folder {path} ({exc.strerror or exc}): "
            f"fix the permissions of {path.parent}, {_USE_ANOTHER}"
        ) from exc


class ArtifactCache:
    """Get-or-build access to artifacts under one root directory.

    A root that exists but is read-only (a cache built once and shared, e.g. mounted into CI
    runners) serves every artifact it holds: artifacts are published whole by a rename, so a
    hit needs no lock. Only a miss, which would have to build, is an error there. With
    `create=False` (listing) nothing is created, not even the root.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        log: Callable[[str], None] | None = None,
        create: bool = True,
    ):
        self.root = Path(root).expanduser() if root is not None else default_root()
        self._log = log or (lambda msg: print(f"[supercharge] {msg}", file=sys.stderr, flush=True))
        if self.root.exists() and not self.root.is_dir():
            raise ArtifactError(
                f"artifact dir {self.root} is a file, not a folder: pass --artifact-dir or set "
                f"{ENV_VAR} to a folder"
            )
        if not create and not self.root.is_dir():
            raise ArtifactError(
                f"artifact dir {self.root} does not exist: nothing is cached there (check the "
                f"path; --artifact-dir, else {ENV_VAR}, else the per-user cache is used)"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactError(
                f"artifact dir {self.root} cannot be created ({exc.strerror}): "
                f"pass --artifact-dir or set {ENV_VAR} to a writable directory"
            ) from exc
        self.read_only = not os.access(self.root, os.W_OK)
        if create and not self.read_only:
            _ensure_dir(self.root / ".locks")
            _tag_as_cache(self.root)

    def path_for(self, spec: ArtifactSpec) -> Path:
        return self.root / spec.kind / spec.dirname

    def lookup(self, spec: ArtifactSpec) -> Artifact | None:
        """The valid artifact for `spec`, or None when missing or corrupt."""
        path = self.path_for(spec)
        if path.is_dir():  # a use, recorded before the check (seconds for a large file), so a
            mark_used(path)  # prune meanwhile keeps it; also in a read-only cache, where its
            # lock file may be writable
        manifest = self._verified_manifest(path, spec)
        if manifest is None:
            return None
        return Artifact(path, manifest, built=False)

    def get_or_build(self, spec: ArtifactSpec, build: Builder) -> Artifact:
        """Reuse a valid artifact or build it; `build(tmpdir)` writes files, may return extras."""
        found = self.lookup(spec)
        if found is not None:
            return found
        if self.read_only:
            raise ArtifactError(
                f"artifact dir {self.root} is read-only and holds no valid {spec.kind} "
                f"{spec.name}: build it where the cache is writable (supercharge export; "
                "--image-size HxW for a separable graph), "
                f"or pass --artifact-dir or set {ENV_VAR} to a writable directory"
            )
        final = self.path_for(spec)
        _ensure_dir(final.parent)
        # 0o666: whoever else uses a shared cache must be able to open the lock file too.
        lock_file = lock_path(self.root, spec.kind, spec.key)
        lock = FileLock(str(lock_file), mode=0o666)
        try:
            lock.acquire()
        except OSError as exc:
            raise ArtifactError(
                f"cannot take lock file {lock_file} ({exc.strerror or exc}): fix its permissions "
                f"or remove it (another user may own it), {_USE_ANOTHER}"
            ) from exc
        try:
            found = self.lookup(spec)  # another process may have built it while we waited
            if found is not None:
                return found
            self._sweep_abandoned(final.parent)
            if os.path.lexists(final):
                self._log(f"{spec.kind} {spec.name}: cached artifact is corrupt, rebuilding")
                self._discard(final)
            return self._build(spec, build, final)
        finally:
            lock.release()

    def _sweep_abandoned(self, kind_dir: Path) -> None:
        """Delete temp entries of dead builders: a killed export leaves gigabytes behind.

        Only names carrying a pid from this host and pid namespace are judged; older pid-less
        names and those from other hosts or containers are left alone, as their owner's
        liveness cannot be checked from here. A live process's entry is never touched.
        """
        try:
            entries = list(kind_dir.iterdir())
        except OSError:
            return
        for entry in entries:
            if builder_alive(entry.name) is False:
                pid = entry.name.split("-")[1]  # .build-<pid>-<tag>-...
                self._log(f"removing {entry}, left by an interrupted build (pid {pid})")
                _remove(entry)

    def _build(self, spec: ArtifactSpec, build: Builder, final: Path) -> Artifact:
        try:
            prefix = f".build-{os.getpid()}-{_PID_TAG}-"
            tmp = _make_build_dir(final.parent, prefix)
        except OSError as exc:
            raise ArtifactError(
                f"cannot create a build folder in {final.parent} ({exc.strerror or exc}): "
                f"fix its permissions, {_USE_ANOTHER}"
            ) from exc
        self._log(f"building {spec.kind} for {spec.name} -> {final}")
        start = time.perf_counter()
        done = threading.Event()
        heartbeat = threading.Thread(target=self._heartbeat, args=(spec, start, done), daemon=True)
        heartbeat.start()
        try:
            extra = dict(build(tmp) or {})
            seconds = time.perf_counter() - start
            _share_files(tmp)
            files = {
                str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            }
            if not files:
                raise ArtifactError(f"{spec.kind} {spec.name}: the build wrote no files")
            manifest = {
                "format": _FORMAT,
                "kind": spec.kind,
                "name": spec.name,
                "key": spec.key,
                "inputs": dict(spec.inputs),
                "build_seconds": round(seconds, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "files": files,
                **extra,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            try:
                os.replace(tmp, final)
            except OSError as exc:
                raise ArtifactError(
                    f"cannot move the built artifact into {final} ({exc.strerror or exc}): "
                    f"fix the permissions of {final.parent} or remove {final}, {_USE_ANOTHER}"
                ) from exc
        except BaseException:
            _remove(tmp)
            raise
        finally:
            done.set()
        self._log(f"built {spec.kind} for {spec.name} in {seconds:.1f}s")
        return Artifact(final, manifest, built=True)

    def _heartbeat(self, spec: ArtifactSpec, start: float, done: threading.Event) -> None:
        while not done.wait(_HEARTBEAT_S):
            self._log(
                f"still building {spec.kind} for {spec.name} ({time.perf_counter() - start:.0f}s)"
            )

    @staticmethod
    def _discard(path: Path) -> None:
        """Move aside first (atomic), then delete, so no reader sees a half-deleted artifact."""
        trash = trash_path(path)
        try:
            os.replace(path, trash)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ArtifactError(
                f"cannot remove the corrupt artifact {path} ({exc.strerror or exc}): fix the "
                f"permissions of {path.parent} or remove {path} by hand, {_USE_ANOTHER}"
            ) from exc
        _remove(trash)

    @staticmethod
    def _verified_manifest(path: Path, spec: ArtifactSpec) -> dict[str, Any] | None:
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict) or manifest.get("key") != spec.key:
            return None
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            return None
        for rel, meta in files.items():
            p = path / rel
            try:
                st = p.stat()
                if st.st_size != meta["size"] or _digest(p, st) != meta["sha256"]:
                    return None
            except (OSError, KeyError, TypeError):
                return None
        return manifest
