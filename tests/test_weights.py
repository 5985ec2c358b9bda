"""Weights resolution: HF cache first, then the packaged registry; seeded random; file formats."""

from __future__ import annotations

from pathlib import Path

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


def _hf_cached(tmp_path, monkeypatch, name: str = "test_resnet") -> Path:
    """Where `name`'s model.safetensors goes in a local Hugging Face cache at tmp_path."""
    import huggingface_hub.constants

    repo = timm.create_model(name).pretrained_cfg["hf_hub_id"]
    commit = "0" * 40
    repo_dir = tmp_path / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    return snap / "model.safetensors"


def test_pretrained_comes_from_hf_cache_when_present(tmp_path, monkeypatch):
    """timm's own pretrained loading is used when the hub file is already cached locally."""
    from safetensors.torch import save_file

    reference = load_bundle("test_resnet", "random:5")
    save_file(reference.model.state_dict(), str(_hf_cached(tmp_path, monkeypatch)))

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


@pytest.mark.parametrize(
    ("name", "wrap"),
    [
        ("test_resnet", lambda sd: sd),
        ("test_vit", lambda sd: {"state_dict": sd, "epoch": 3, "arch": "test_vit"}),
        ("deit_tiny_distilled_patch16_224", lambda sd: {"model": sd, "epoch": 3}),
    ],
)
def test_a_fine_tuned_checkpoint_brings_its_own_class_count(tmp_path, name, wrap):
    """A checkpoint fine-tuned to 10 classes (the usual `--weights ckpt.pth`) was refused with
    "'fc.weight' has shape (10, 512), model expects (1000, 512); use weights saved from the same
    timm model": it was, and no option set the class count. The head's rows now set it (both
    heads of a distilled model), and the classes are named by number."""
    src = timm.create_model(name, pretrained=False, num_classes=10)
    path = tmp_path / "fine-tuned.pth"
    torch.save(wrap(src.state_dict()), path)
    bundle = load_bundle(name, str(path))
    assert bundle.model.num_classes == 10
    assert bundle.class_names == [f"class {i}" for i in range(10)]
    assert state_digest(bundle.model.state_dict()) == state_digest(src.state_dict())


def test_a_checkpoint_of_another_model_is_still_refused_naming_the_first_mismatch(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("test_vit", num_classes=10).state_dict(), path)
    with pytest.raises(WeightsMismatchError, match=r"do not fit: missing key 'conv1\.0\.weight'"):
        load_bundle("test_resnet", str(path))


def test_a_fine_tuned_checkpoint_of_a_headless_default_gets_its_head(tmp_path):
    """timm builds eva02_tiny_patch14_224 without a head (its default weights are MIM
    features), which random weights are rightly refused for; a checkpoint fine-tuned with a
    head (timm's create_model(..., num_classes=N), then training) classifies."""
    src = timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=7)
    path = tmp_path / "eva02-ft.pth"
    torch.save(src.state_dict(), path)
    bundle = load_bundle("eva02_tiny_patch14_224", str(path))
    assert bundle.model.num_classes == 7
    headless = tmp_path / "eva02-mim.pth"
    torch.save(timm.create_model("eva02_tiny_patch14_224").state_dict(), headless)
    from supercharge.errors import UnknownModelError

    with pytest.raises(UnknownModelError, match=r"eva02-mim\.pth holds no classifier head") as e:
        load_bundle("eva02_tiny_patch14_224", str(headless))
    assert "fine-tuned with a head" in str(e.value) and "pick a tag" not in str(e.value)


def test_a_safetensors_file_without_its_suffix_is_read_as_safetensors(tmp_path):
    """A Hugging Face cache blob (no suffix), or a .bin that holds safetensors, was refused
    as a pickle ("weights_only=True blocked loading ..."), and told to be a .safetensors file,
    which it was: the file's header decides, not its name."""
    from safetensors.torch import save_file

    src = load_bundle("test_resnet", "random:4")
    path = tmp_path / "0123abcd"
    save_file(src.model.state_dict(), str(path))
    loaded = load_bundle("test_resnet", str(path))
    assert state_digest(loaded.model.state_dict()) == state_digest(src.model.state_dict())


def test_a_folder_given_as_weights_is_named_a_folder_not_missing(tmp_path):
    """`--weights ckpt/` (a Hugging Face snapshot folder, say) said the folder "does not
    exist"; it names the weights files inside instead."""
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WeightsUnavailableError, match=r"is a folder.*model\.safetensors"):
        resolve_model("test_resnet", str(tmp_path))


@pytest.mark.parametrize("key", ["state_dict_ema", "model_ema"])
def test_a_checkpoint_holding_only_ema_weights_loads_them(tmp_path, key):
    """timm's loader is asked for the trained weights (use_ema=False), so a checkpoint that
    holds only its EMA copy (`{"state_dict_ema": ..., "epoch": ...}`) was refused as "not a
    state dict of tensors"; with nothing else in it, the EMA weights are the weights."""
    src = load_bundle("test_resnet", "random:6")
    path = tmp_path / "ema.pth"
    torch.save({key: src.model.state_dict(), "epoch": 9}, path)
    loaded = load_bundle("test_resnet", str(path))
    assert state_digest(loaded.model.state_dict()) == state_digest(src.model.state_dict())


def test_a_checkpoint_without_a_state_dict_names_what_it_holds(tmp_path):
    path = tmp_path / "opt.pth"
    torch.save({"optimizer": {"lr": torch.tensor(0.1)}, "epoch": 9}, path)
    with pytest.raises(WeightsMismatchError, match=r"holds 'optimizer', 'epoch'"):
        read_state_dict(path)


@pytest.mark.parametrize("content", ["truncated", "another model"])
def test_a_hf_cache_file_timm_cannot_load_is_one_line_naming_it(tmp_path, monkeypatch, content):
    """A truncated file in the local Hugging Face cache (a copy cut short, a full disk) ended
    `supercharge predict` in a SafetensorError traceback, one holding another model's tensors
    in a screenful of missing keys: both are one line naming the file and what to do."""
    from safetensors.torch import save_file

    path = _hf_cached(tmp_path, monkeypatch)
    if content == "truncated":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    else:
        save_file(timm.create_model("test_vit").state_dict(), str(path))
    with pytest.raises(WeightsMismatchError) as caught:
        load_bundle("test_resnet", "pretrained")
    assert f"{path} for test_resnet cannot be loaded" in str(caught.value)
    assert "\n" not in str(caught.value) and "delete it" in str(caught.value)


def test_a_checkpoint_without_batchnorm_step_counters_loads(tmp_path):
    """BatchNorm's num_batches_tracked counts training steps and plays no part in eval; old
    torch versions and converted checkpoints leave it out, and torch's own strict loading
    accepts that. fit_by_name refused it ("missing key 'conv1.1.num_batches_tracked'")."""
    src = load_bundle("test_resnet", "random:7")
    state = {
        k: v for k, v in src.model.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    path = tmp_path / "converted.pth"
    torch.save(state, path)
    loaded = load_bundle("test_resnet", str(path)).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
