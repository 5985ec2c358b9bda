"""What the artifact cache holds, and pruning what no run has used lately (`supercharge cache`).

Keys change with graph revisions and package versions, and the artifacts they leave behind are
never asked for again, so a cache kept by CI runners only grows: one merged graph holds a copy
of the model (20 MB for the default model, 1.2 GB for eva02). Every hit records a use
(cache.mark_used; the TensorRT runner records its engine folders'), and pruning goes by that.
Listing reads no file contents; pruning takes each artifact's build lock, so nothing being built
is removed, and moves a folder aside before deleting it, so a reader never sees half of one.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from supercharge.cache import (
    MANIFEST,
    ArtifactCache,
    builder_alive,
    folder_key,
    folder_lock_path,
    is_temp_name,
    last_used,
    trash_path,
)
from supercharge.errors import ArtifactError

# A leftover whose builder cannot be checked from here (another host, or a name without a pid)
# goes only once nothing changed in it for this long, or for DAYS if longer: a build that wrote
# nothing for a day is not running.
UNKNOWN_BUILDER_S = 86400.0


@dataclass(frozen=True)
class Entry:
    """One folder of the cache, as `supercharge cache` lists it."""

    kind: str
    path: Path
    size: int | None  # bytes of its files; None when part of it cannot be read
    last_used: float  # epoch seconds: built, or last reused (cache.last_used)
    state: str  # "artifact" (has a manifest), "files" (none: TensorRT's engine folders, or an
    # artifact damaged beyond its manifest), "leftover" (an interrupted build's temp folder),
    # "unreadable" (this user may not read all of it), "foreign" (not named as the cache names
    # its folders: listed, never pruned)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label(self) -> str:
        """`kind/name`, or the kind alone for a kind folder that could not be listed."""
        return self.kind if self.path.name == self.kind else f"{self.kind}/{self.name}"


@dataclass
class Pruned:
    """What `prune` removed (in a dry run: would remove), kept because another process is
    building it, and could not remove, with the reason."""

    removed: list[Entry] = field(default_factory=list)
    in_use: list[Entry] = field(default_factory=list)
    failed: list[tuple[Entry, str]] = field(default_factory=list)


def _tree_size(path: Path) -> int | None:
    """Bytes of the regular files under `path` (links not followed); None if any is unreadable."""
    errors: list[OSError] = []
    total = 0
    for folder, _dirs, names in os.walk(path, onerror=errors.append):
        for name in names:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError as exc:
                errors.append(exc)
                continue
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return None if errors else total


def _entry(kind: str, path: Path) -> Entry | None:
    """The entry for one folder, or None if it vanished while we looked."""
    leftover = is_temp_name(path.name)
    try:
        used = path.stat().st_mtime if leftover else last_used(path)
    except OSError:
        return None
    size = _tree_size(path)
    if leftover:
        state = "leftover"
    elif folder_key(path) is None:
        state = "foreign"
    elif size is None:
        state = "unreadable"
    else:
        state = "artifact" if (path / MANIFEST).is_file() else "files"
    return Entry(kind, path, size, used, state)


def entries(root: Path) -> list[Entry]:
    """Every folder under the root's kind folders (not `.locks`), without hashing anything.

    Links are never followed (the cache makes none, and one planted in a shared cache must not
    lead a prune outside it); an unreadable kind folder is one entry."""
    try:
        kinds = sorted(
            p
            for p in Path(root).iterdir()
            if p.is_dir() and not p.is_symlink() and p.name != ".locks"
        )
    except OSError as exc:
        raise ArtifactError(
            f"cannot list artifact dir {root} ({exc.strerror or exc}): fix its permissions, "
            "or pass --artifact-dir or set SUPERCHARGE_ARTIFACT_DIR to another cache"
        ) from exc
    found: list[Entry] = []
    for kind_dir in kinds:
        try:
            children = sorted(p for p in kind_dir.iterdir() if p.is_dir() and not p.is_symlink())
        except OSError:
            with suppress(OSError):
                found.append(
                    Entry(kind_dir.name, kind_dir, None, kind_dir.stat().st_mtime, "unreadable")
                )
            continue
        found.extend(e for e in (_entry(kind_dir.name, p) for p in children) if e is not None)
    return found


def prune(
    cache: ArtifactCache, unused_for_s: float, dry_run: bool = False, now: float | None = None
) -> Pruned:
    """Remove what was last used more than `unused_for_s` ago (a dry run only lists it).

    A folder is judged again under its build lock just before it goes, so a build or a reuse
    since the listing keeps it. Leftovers of interrupted builds go when their builder is dead,
    however recent; when that cannot be told, once unchanged for UNKNOWN_BUILDER_S or
    `unused_for_s`, the longer. A folder that cannot be removed is reported with the reason and
    left whole where possible, and the others are still pruned.
    """
    locks = cache.root / ".locks"
    if not locks.is_dir() or locks.is_symlink():
        raise ArtifactError(
            f"{cache.root} is not an artifact cache (it has no .locks folder): nothing pruned; "
            "pass the cache's own folder to --artifact-dir"
        )
    listed = entries(cache.root)
    if cache.read_only and not dry_run:
        raise ArtifactError(
            f"artifact dir {cache.root} is read-only: prune it where it is writable, or list "
            "what would go with --dry-run"
        )
    now = time.time() if now is None else now
    cutoff = now - unused_for_s
    result = Pruned()
    for entry in listed:
        if entry.state == "leftover":
            alive = builder_alive(entry.name)
            quiet_since = min(cutoff, now - UNKNOWN_BUILDER_S)
            if alive is False or (alive is None and entry.last_used <= quiet_since):
                reason = None if dry_run else _delete(entry.path, restore=False)
                if reason is None:
                    result.removed.append(entry)
                else:
                    result.failed.append((entry, reason))
            continue
        if entry.state == "foreign" or entry.last_used > cutoff:
            continue
        if entry.state == "unreadable":
            reason = "cannot read all of it: prune as the user who owns it, or fix its permissions"
            result.failed.append((entry, reason))
            continue
        if dry_run:
            result.removed.append(entry)
            continue
        _prune_one(entry, cutoff, result)
    return result


def _prune_one(entry: Entry, cutoff: float, result: Pruned) -> None:
    """Remove one due folder under its lock, after judging it again; record the outcome."""
    lock_file = folder_lock_path(entry.path)
    lock = None
    try:
        # Read before taking the lock: filelock 3 (3.32.7 measured; not 4.3) sets the lock
        # file's mtime when it takes it, which would mark the folder used.
        used = last_used(entry.path)
        if lock_file is not None:
            lock = FileLock(str(lock_file), mode=0o666)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                result.in_use.append(entry)
                lock = None
                return
            except OSError as exc:
                lock = None
                result.failed.append(
                    (
                        entry,
                        f"cannot take its lock file {lock_file} ({exc.strerror or exc}): prune "
                        "as the user who owns it, or fix its permissions",
                    )
                )
                return
        if max(used, entry.path.stat().st_mtime) > cutoff:
            return  # built or reused since the listing
        reason = _delete(entry.path, restore=True)
        if reason is None:
            result.removed.append(entry)
        else:
            result.failed.append((entry, reason))
    except FileNotFoundError:
        return  # removed by someone else meanwhile
    finally:
        if lock is not None:
            lock.release()


def _delete(path: Path, restore: bool) -> str | None:
    """Move `path` aside, then delete it; the reason it could not be, or None.

    If the delete fails (files of another user), what is left is moved back when `restore`: a
    whole artifact stays usable, and a partly deleted one is found corrupt and rebuilt."""
    trash = trash_path(path)
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return (
            f"cannot move it aside ({exc.strerror or exc}): prune as the user who owns "
            f"{path.parent}, or fix its permissions"
        )
    try:
        shutil.rmtree(trash)
    except OSError as exc:
        where = f"what is left is in {trash}"
        if restore:
            with suppress(OSError):
                os.replace(trash, path)
                where = "what is left was put back"
        return (
            f"cannot delete {exc.filename} ({exc.strerror or exc}): prune as the user who owns "
            f"it, or fix its permissions ({where})"
        )
    return None
