"""Model loading: a timm name and a weights spec become a ModelBundle (model, config, labels).

Names are resolved through timm's registry (with close-match suggestions for typos); the data
config is timm's own `resolve_model_data_config`, never typed by hand. `resolve_model` identifies
a model and its weights without building it, so a cache hit never pays for model creation.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from supercharge.errors import (
    UnknownModelError,
    WeightsMismatchError,
    WeightsUnavailableError,
    out_of_memory,
)
from supercharge.weights import (
    ResolvedWeights,
    WeightsSpec,
    checkpoint_classes,
    fit_by_name,
    fit_by_order,
    read_state_dict,
    resolve_weights,
    weights_digest,
)

DEFAULT_MODEL = "tf_efficientnet_lite0"


@dataclass(frozen=True)
class ModelRef:
    """A timm model name and where its weights come from: enough to key artifacts."""

    name: str
    weights: ResolvedWeights


@dataclass
class ModelBundle:
    """A loaded eval-mode model with everything needed to feed it and read its output."""

    ref: ModelRef
    model: torch.nn.Module
    data_config: dict[str, Any]
    class_names: list[str]

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def weights_source(self) -> str:
        return self.ref.weights.source

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.data_config["input_size"])  # type: ignore[return-value]


def check_model_name(name: str) -> None:
    """Raise UnknownModelError, with the closest registered names, if timm does not know `name`."""
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    base, tag = split_model_name_tag(name)
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
        raise UnknownModelError(f"unknown model {name!r}: {hint}")
    if tag:
        try:
            get_pretrained_cfg(name)
        except RuntimeError:
            tags = timm.list_pretrained(f"{base}.*")
            hint = f"known: {', '.join(tags[:5])}" if tags else "it has no tagged weights"
            raise UnknownModelError(f"unknown tag {tag!r} for model {base!r}: {hint}") from None


def check_has_classifier(
    name: str, num_classes: int | None, weights_file: Path | None = None
) -> None:
    """Raise UnknownModelError when timm builds `name` without a classifier head
    (num_classes=0: its default weights are a feature extractor, e.g. eva02_*.mim_in22k, or
    `weights_file` is a checkpoint without one): every pipeline here ranks class logits."""
    if num_classes is None or int(num_classes) != 0:
        return
    if weights_file is not None:
        raise UnknownModelError(
            f"weights file {weights_file} holds no classifier head for {name} (a feature "
            "extractor's checkpoint) and supercharge compares class logits: give a checkpoint "
            "fine-tuned with a head, or --weights random"
        )
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    base, _ = split_model_name_tag(name)
    heads = [
        t
        for t in timm.list_pretrained(f"{base}.*")
        if getattr(get_pretrained_cfg(t), "num_classes", 0)
    ]
    hint = f"pick a tag that has one ({', '.join(heads[:3])})" if heads else "pick another model"
    raise UnknownModelError(
        f"{name} has no classifier head (timm builds it with num_classes=0, a feature "
        f"extractor) and supercharge compares class logits: {hint}"
    )


def resolve_model(name: str = DEFAULT_MODEL, weights: str | WeightsSpec = "pretrained") -> ModelRef:
    """Validate the name and locate the weights; cheap, creates no model."""
    from timm.models import get_pretrained_cfg

    check_model_name(name)
    spec = weights if isinstance(weights, WeightsSpec) else WeightsSpec.parse(weights)
    if spec.kind != "file":  # a checkpoint brings its own head: load_bundle checks the model
        check_has_classifier(name, getattr(get_pretrained_cfg(name), "num_classes", None))
    return ModelRef(name, resolve_weights(name, spec))


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


def randomise_zero_head(net: torch.nn.Module) -> None:
    """timm zero-initialises the classifier of some families (MLP-Mixer, ResMLP, gMLP,
    Sequencer): with random weights every class then gets the same logit and no accuracy gate
    can judge anything (cosine NaN on every pipeline, PyTorch against itself included). Such a
    head gets timm's usual trunc_normal(std=0.02) instead (the random weights' digest says so)."""
    get = getattr(net, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, torch.nn.Module):
        return
    with torch.no_grad():
        for module in head.modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dim() >= 2 and not weight.any():
                torch.nn.init.trunc_normal_(weight, std=0.02)


def _head_size(name: str, state: dict[str, torch.Tensor]) -> dict[str, int]:
    """{"num_classes": N} when the checkpoint's classifier (named by timm's config) has N rows:
    a fine-tuned checkpoint's class count, which no option could give. {} when it has none."""
    from timm.models import get_pretrained_cfg

    classes = checkpoint_classes(state, getattr(get_pretrained_cfg(name), "classifier", None))
    return {} if classes is None else {"num_classes": classes}


def _timm_pretrained(name: str, resolved: ResolvedWeights) -> torch.nn.Module:
    """timm's pretrained model from the file in the local Hugging Face cache; a file timm
    cannot load (cut short, another model's) is a one-line error naming it, not a traceback."""
    import timm

    try:
        return timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"file": str(resolved.path)}
        )
    except Exception as exc:  # safetensors, torch.load and load_state_dict raise many types
        if out_of_memory(exc):
            raise
        raise WeightsMismatchError(
            f"the Hugging Face cache's weights {resolved.path} for {name} cannot be loaded "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}): delete it so the next "
            "download replaces it, or use --weights random or --weights PATH"
        ) from exc


def load_bundle(
    model: str | ModelRef = DEFAULT_MODEL, weights: str | WeightsSpec = "pretrained"
) -> ModelBundle:
    """Create the model in eval mode with the requested weights; never downloads anything."""
    import timm

    ref = model if isinstance(model, ModelRef) else resolve_model(model, weights)
    resolved = ref.weights
    if resolved.loader == "timm":  # timm's own pretrained loading, from the local file
        net = _timm_pretrained(ref.name, resolved)
    elif resolved.path is not None:
        torch.manual_seed(resolved.spec.seed)  # what the file leaves out starts as it always did
        state = read_state_dict(resolved.path)
        net = timm.create_model(ref.name, pretrained=False, **_head_size(ref.name, state))
        fit = fit_by_order if resolved.loader == "order" else fit_by_name
        net.load_state_dict(fit(state, net.state_dict(), resolved.source))
    else:
        torch.manual_seed(resolved.spec.seed)
        net = timm.create_model(ref.name, pretrained=False)
        randomise_zero_head(net)
    if resolved.path is not None and weights_digest(resolved.path) != resolved.digest:
        # the artifacts are keyed by the digest taken when the weights were located
        raise WeightsUnavailableError(
            f"weights file {resolved.path} changed since it was located (rewritten while this "
            "ran?): run again once it no longer changes"
        )
    check_has_classifier(ref.name, getattr(net, "num_classes", None), resolved.path)
    net.eval()
    return ModelBundle(
        ref=ref,
        model=net,
        data_config=timm.data.resolve_model_data_config(net),
        class_names=class_names_for(net),
    )
