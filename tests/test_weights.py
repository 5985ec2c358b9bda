"""Weights resolution: HF cache first, then the packaged registry; seeded random; file formats."""

from __future__ import annotations

import pytest
import timm
import torch

import supercharge.cache as cache_mod
from supercharge.errors import WeightsMismatchError, WeightsUnavailableError
from supercharge.models import load_bundle, resolve_model
from supercharge.registry import PACKAGED_WEIGHTS
from supercharge.weights import (
    WeightsSpec,
    fit_by_order,
    packaged_file,
    read_state_dict,
    state_digest,
)


def test_spec_parsing():
    assert WeightsSpec.parse("pretrained").kind == "pretrained"
    assert WeightsSpec.parse("random") == WeightsSpec("random", seed=0)
    assert WeightsSpec.parse("random:7") == WeightsSpec("random", seed=7)
    spec = WeightsSpec.parse("~/w.pth")
    assert spec.kind == "file" and spec.path is not None and not str(spec.path).startswith("~")


def test_random_weights_are_seeded():
    a, b = load_bundle("test_resnet", "random:1"), load_bundle("test_resnet", "random:1")
    c = load_bundle("test_resnet", "random:2")
    digests = [state_digest(x.model.state_dict()) for x in (a, b, c)]
    assert digests[0] == digests[1] != digests[2]
    assert a.ref.weights.digest == b.ref.weights.digest != c.ref.weights.digest


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_round_trip(tmp_path, suffix):
    src = load_bundle("test_resnet", "random:3")
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save(src.model.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(src.model.state_dict(), str(path))
    loaded = load_bundle("test_resnet", str(path))
    assert state_digest(loaded.model.state_dict()) == state_digest(src.model.state_dict())
    assert loaded.weights_source == str(path)


def test_an_unreadable_weights_file_is_one_line_error_naming_it(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    torch.save(load_bundle("test_resnet", "random:3").model.state_dict(), path)

    def denied(p):  # what a file of another user, mode 0600, gives (root reads everything)
        raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr(cache_mod, "_DIGESTS", {})
    monkeypatch.setattr(cache_mod, "sha256_file", denied)
    with pytest.raises(WeightsUnavailableError, match=f"weights file {path} cannot be read"):
        resolve_model("test_resnet", str(path))


def test_a_weights_file_rewritten_after_it_was_hashed_is_refused(tmp_path):
    """Artifacts are keyed by the digest taken when the file was located (pytest: at
    collection); a checkpoint rewritten before the model is loaded must not be exported and
    cached under the old file's key."""
    path = tmp_path / "last.pth"
    torch.save(load_bundle("test_resnet", "random:1").model.state_dict(), path)
    ref = resolve_model("test_resnet", str(path))
    torch.save(load_bundle("test_resnet", "random:2").model.state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match="changed since it was located"):
        load_bundle(ref)


def test_pretrained_comes_from_hf_cache_when_present(tmp_path, monkeypatch):
    """timm's own pretrained loading is used when the hub file is already cached locally."""
    import huggingface_hub.constants
    from safetensors.torch import save_file

    cfg = timm.create_model("test_resnet").pretrained_cfg
    repo = cfg["hf_hub_id"]
    commit = "0" * 40
    repo_dir = tmp_path / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    reference = load_bundle("test_resnet", "random:5")
    save_file(reference.model.state_dict(), str(snap / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))

    bundle = load_bundle("test_resnet", "pretrained")
    assert bundle.weights_source.startswith("Hugging Face cache")
    assert state_digest(bundle.model.state_dict()) == state_digest(reference.model.state_dict())


def test_registry_resolves_default_model_weights():
    entry = PACKAGED_WEIGHTS["tf_efficientnet_lite0"]
    path = packaged_file(entry)
    assert path is not None and path.suffix == ".pth"
    bundle = load_bundle("tf_efficientnet_lite0", "pretrained")
    assert entry.distribution in bundle.weights_source
    # The model holds the packaged tensors, position by position (checked here without
    # fit_by_order, which load_bundle used: comparing it with its own output proves nothing).
    packaged = list(read_state_dict(path).values())
    held = list(bundle.model.state_dict().values())
    assert len(packaged) == len(held) == 296
    assert all(torch.equal(a, b) for a, b in zip(packaged, held, strict=True))


def test_order_remap_refuses_a_different_architecture():
    path = packaged_file(PACKAGED_WEIGHTS["tf_efficientnet_lite0"])
    target = timm.create_model("test_efficientnet").state_dict()
    with pytest.raises(WeightsMismatchError, match=r"do not fit: 296 tensors, model has \d+"):
        fit_by_order(read_state_dict(path), target, "lite0")


def test_order_remap_names_the_first_shape_mismatch():
    target = {"a.weight": torch.zeros(3, 3), "b.weight": torch.zeros(4)}
    source = {"x": torch.zeros(3, 3), "y": torch.zeros(5)}
    with pytest.raises(WeightsMismatchError, match=r"'y' \(5,\) lines up with 'b.weight' \(4,\)"):
        fit_by_order(source, target, "src")


def test_class_names_are_imagenet_descriptions():
    bundle = load_bundle("test_resnet", "random")
    assert len(bundle.class_names) == 1000
    assert bundle.class_names[967] == "espresso"


@pytest.mark.parametrize("name", ["gmlp_ti16_224", "test_resnet"])
def test_random_weights_never_give_every_class_the_same_logit(name):
    """timm zero-initialises the heads of MLP-Mixer, ResMLP, gMLP and Sequencer models: their
    random-weight logits were all 0 and every accuracy gate read cosine NaN (sequencer2d_s:
    7 of 7 gates, torch-cpu against itself included). A head timm initialises is left alone."""
    import timm

    bundle = load_bundle(name, "random")
    logits = bundle.model(torch.randn(2, *bundle.input_size, generator=torch.Generator()))
    assert (logits.std(dim=1) > 0).all()
    torch.manual_seed(0)
    plain = timm.create_model(name, pretrained=False)
    zero = not plain.get_classifier().weight.any()
    assert zero == (name == "gmlp_ti16_224")
    if not zero:  # the same random init as before for every other model
        assert torch.equal(plain.get_classifier().weight, bundle.model.get_classifier().weight)
    assert bundle.ref.weights.digest == "random:0:head2"  # rebuilt, not an old zero-head graph


def test_unknown_pretrained_tag_lists_known_tags():
    from supercharge.errors import UnknownModelError
    from supercharge.models import resolve_model

    with pytest.raises(UnknownModelError, match=r"unknown tag 'bogus' for model 'test_resnet'"):
        resolve_model("test_resnet.bogus", "random")
