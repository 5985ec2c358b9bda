"""Content-addressed artifact cache: build once, reuse across sessions, rebuild what is corrupt.

An artifact is a directory `<root>/<kind>/<name>-<key>/` holding its files and a manifest.json that
records the inputs (hashed into the key), versions, build time and each file's size and sha256.
Builds happen in a temporary sibling directory that is renamed into place only when complete, and
concurrent builders of one key are serialised by a file lock, so readers never see half an
artifact and two processes never build the same thing twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from supercharge.errors import ArtifactError

ENV_VAR = "SUPERCHARGE_ARTIFACT_DIR"
MANIFEST = "manifest.json"
_FORMAT = 1
_HEARTBEAT_S = 15.0


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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class ArtifactCache:
    """Get-or-build access to artifacts under one root directory."""

    def __init__(self, root: str | Path | None = None, log: Callable[[str], None] | None = None):
        self.root = Path(root).expanduser() if root is not None else default_root()
        self._log = log or (lambda msg: print(f"[supercharge] {msg}", file=sys.stderr, flush=True))
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / ".locks").mkdir(exist_ok=True)
        except OSError as exc:
            raise ArtifactError(
                f"artifact dir {self.root} cannot be created ({exc.strerror}): "
                f"pass --artifact-dir or set {ENV_VAR} to a writable directory"
            ) from exc
        if not os.access(self.root, os.W_OK):
            raise ArtifactError(
                f"artifact dir {self.root} is not writable: "
                f"pass --artifact-dir or set {ENV_VAR} to a writable directory"
            )

    def path_for(self, spec: ArtifactSpec) -> Path:
        return self.root / spec.kind / spec.dirname

    def lookup(self, spec: ArtifactSpec) -> Artifact | None:
        """The valid artifact for `spec`, or None when missing or corrupt."""
        path = self.path_for(spec)
        manifest = self._verified_manifest(path, spec)
        return Artifact(path, manifest, built=False) if manifest is not None else None

    def get_or_build(self, spec: ArtifactSpec, build: Builder) -> Artifact:
        """Reuse a valid artifact or build it; `build(tmpdir)` writes files, may return extras."""
        found = self.lookup(spec)
        if found is not None:
            return found
        final = self.path_for(spec)
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / ".locks" / f"{spec.kind}-{spec.key}.lock")):
            found = self.lookup(spec)  # another process may have built it while we waited
            if found is not None:
                return found
            if final.exists():
                self._log(f"{spec.kind} {spec.name}: cached artifact is corrupt, rebuilding")
                self._discard(final)
            return self._build(spec, build, final)

    def _build(self, spec: ArtifactSpec, build: Builder, final: Path) -> Artifact:
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
        self._log(f"building {spec.kind} for {spec.name} -> {final}")
        start = time.perf_counter()
        done = threading.Event()
        heartbeat = threading.Thread(target=self._heartbeat, args=(spec, start, done), daemon=True)
        heartbeat.start()
        try:
            extra = dict(build(tmp) or {})
            seconds = time.perf_counter() - start
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
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
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
        trash = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.time_ns()}")
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

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
                if p.stat().st_size != meta["size"] or sha256_file(p) != meta["sha256"]:
                    return None
            except (OSError, KeyError, TypeError):
                return None
        return manifest
