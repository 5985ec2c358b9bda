"""ONNX export: checked against PyTorch, dynamic batch, cached, refused when wrong."""

from __future__ import annotations

from dataclasses import replace

import onnx
import pytest
import torch

from supercharge.cache import ArtifactCache
from supercharge.errors import ExportCheckError
from supercharge.export import (
    MODEL_FILE,
    ExportOptions,
    check_against_torch,
    export_onnx,
    onnx_spec,
)
from supercharge.models import ModelBundle, ModelRef, load_bundle, resolve_model

pytestmark = pytest.mark.slow


def test_default_pretrained_model_exports_and_matches(model_bundle, onnx_model):
    assert onnx_model.manifest["check"]["relative_error"] <= ExportOptions().check_tolerance
    path = onnx_model.file(MODEL_FILE)
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 20
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param  # dynamic batch
    # Re-check now, at a batch size the export never saw.
    assert check_against_torch(model_bundle, path, batch=3) <= 1e-3


@pytest.mark.parametrize(
    "name", ["test_vit", "test_resnet", "test_efficientnet", "test_convnext", "test_byobnet"]
)
def test_export_check_passes_for_test_models(name, artifact_cache):
    bundle = load_bundle(name, "random")
    art = export_onnx(bundle, artifact_cache)
    assert art.manifest["check"]["relative_error"] <= 1e-3
    assert check_against_torch(bundle, art.file(MODEL_FILE), batch=1) <= 1e-3
    assert check_against_torch(bundle, art.file(MODEL_FILE), batch=5) <= 1e-3


def test_second_export_is_reused(tmp_path):
    cache = ArtifactCache(tmp_path, log=lambda m: None)
    bundle = load_bundle("test_resnet", "random:1")
    first, second = export_onnx(bundle, cache), export_onnx(bundle, cache)
    assert first.built and not second.built
    assert second.manifest["build_seconds"] == first.manifest["build_seconds"]
    # Other weights, other key: the cache never serves a stale model.
    other = export_onnx(load_bundle("test_resnet", "random:2"), cache)
    assert other.built and other.path != first.path


def test_cache_hit_does_not_create_the_model(tmp_path, monkeypatch):
    import supercharge.export

    cache = ArtifactCache(tmp_path, log=lambda m: None)
    ref = resolve_model("test_resnet", "random:4")
    assert export_onnx(ref, cache).built

    def no_model(*args, **kwargs):
        raise AssertionError("a cache hit must not create the model")

    monkeypatch.setattr(supercharge.export, "load_bundle", no_model)
    assert not export_onnx(ref, cache).built


def test_external_data_artifact(tmp_path):
    cache = ArtifactCache(tmp_path, log=lambda m: None)
    bundle = load_bundle("test_resnet", "random")
    art = export_onnx(bundle, cache, ExportOptions(external_data=True))
    assert (art.path / "model.onnx.data").is_file()
    assert set(art.manifest["files"]) == {"model.onnx", "model.onnx.data"}
    assert check_against_torch(bundle, art.file(MODEL_FILE), batch=2) <= 1e-3


class _ExportsSomethingElse(torch.nn.Module):
    """Eager forward differs from the exported graph: exactly what the check must catch."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        y = self.inner(x)
        return y * 2 if torch.compiler.is_exporting() else y


def test_mismatching_export_fails_loudly_and_is_not_cached(tmp_path):
    good = load_bundle("test_resnet", "random")
    liar = ModelRef("test_resnet", replace(good.ref.weights, digest="liar"))
    bad = ModelBundle(liar, _ExportsSomethingElse(good.model).eval(), good.data_config, [])
    cache = ArtifactCache(tmp_path, log=lambda m: None)
    with pytest.raises(ExportCheckError, match=r"does not match PyTorch: relative error"):
        export_onnx(bad, cache)
    assert cache.lookup(onnx_spec(bad.ref)) is None


def test_weights_that_give_nan_are_named_not_blamed_on_the_export(tmp_path):
    """NaN weights used to surface as 'relative error nan'; the check names the weights."""
    good = load_bundle("test_resnet", "random")
    with torch.no_grad():
        next(good.model.parameters()).fill_(float("nan"))
    nan_ref = ModelRef("test_resnet", replace(good.ref.weights, digest="nan"))
    bad = ModelBundle(nan_ref, good.model, good.data_config, [])
    cache = ArtifactCache(tmp_path, log=lambda m: None)
    with pytest.raises(ExportCheckError, match=r"returns NaN or inf .*check the weights file"):
        export_onnx(bad, cache)
    assert cache.lookup(onnx_spec(bad.ref)) is None


def test_opset_below_18_is_refused():
    with pytest.raises(ValueError, match="opset 17 is too old"):
        ExportOptions(opset=17)


_HIERA_SUMMARY = (
    "Failed to convert the exported program to an ONNX model. This is step 3/3\n"
    "## Exception summary\n"
    "<class 'AssertionError'>: only 4D query, key, and value are supported\n"
    "<class 'torch.onnx._internal.exporter._errors.GraphConstructionError'>: Error when "
    "calling function 'TracedOnnxFunction(<function aten_scaled_dot_product_attention>)'\n"
)


def test_fused_attention_torch_onnx_cannot_translate_is_exported_unfused(tmp_path, monkeypatch):
    """hiera_tiny_224's 5-D scaled_dot_product_attention fails torch.onnx (torch 2.14.1:
    "only 4D query, key, and value are supported"); timm's unfused attention exports and matches
    PyTorch. The model is left fused afterwards (the torch runners share it)."""
    real = torch.onnx.export
    bundle = load_bundle("test_vit", "random")
    fused = [m for m in bundle.model.modules() if getattr(m, "fused_attn", False) is True]
    assert fused

    def like_hiera(*args, **kwargs):
        if any(m.fused_attn for m in fused):
            raise RuntimeError(_HIERA_SUMMARY)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", like_hiera)
    artifact = export_onnx(bundle, ArtifactCache(tmp_path, log=lambda m: None))
    assert artifact.manifest["check"]["relative_error"] <= 1e-3
    assert all(m.fused_attn for m in fused)


def test_a_model_torch_onnx_cannot_export_is_one_line(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError(_HIERA_SUMMARY.replace("only 4D", "no rule for aten.foo: only 4D"))

    monkeypatch.setattr(torch.onnx, "export", refuse)
    bundle = load_bundle("test_resnet", "random")  # no fused attention to fall back from
    cache = ArtifactCache(tmp_path, log=lambda m: None)
    with pytest.raises(ExportCheckError) as info:
        export_onnx(bundle, cache)
    line = str(info.value)
    assert "\n" not in line and line.startswith("torch.onnx cannot export test_resnet (")
    assert "(AssertionError: no rule for aten.foo: only 4D query" in line
    assert cache.lookup(onnx_spec(bundle.ref)) is None
