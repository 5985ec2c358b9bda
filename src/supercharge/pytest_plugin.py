"""The pytest layer's options and session fixtures; conftest.py only loads this module.

Artifacts come from the cache, so they are built once per session and reused across sessions.
GPU tests carry the `gpu` marker: without a CUDA device they skip with the reason, and under
--require-gpu that skip becomes a failure, so a misconfigured GPU runner cannot pass by skipping.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from supercharge.errors import SuperchargeError
from supercharge.models import DEFAULT_MODEL


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("supercharge")
    group.addoption("--model", default=DEFAULT_MODEL, help="timm model name (default: %(default)s)")
    group.addoption(
        "--weights", default="pretrained", help="pretrained | random[:SEED] | path to a state dict"
    )
    group.addoption("--artifact-dir", default=None, help="artifact cache directory")
    group.addoption(
        "--require-gpu",
        action="store_true",
        default=False,
        help="fail, instead of skipping, tests that need a GPU when none is usable",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device")


def _register_hypothesis_profiles() -> None:
    """`fast` (default, for the README test command) and `thorough` (>= 1000 examples).

    Choose with hypothesis' own option: --hypothesis-profile=thorough.
    """
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:
        return
    common = {
        "deadline": None,
        "derandomize": False,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    }
    settings.register_profile("fast", max_examples=25, **common)
    settings.register_profile("thorough", max_examples=1000, **common)
    settings.load_profile("fast")


_register_hypothesis_profiles()


def gpu_unavailable_reason() -> str | None:
    """Why GPU tests cannot run here, or None when a CUDA device is usable."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is None:
        return
    reason = gpu_unavailable_reason()
    if reason is None:
        return
    if item.config.getoption("--require-gpu"):
        pytest.fail(f"--require-gpu: {reason}", pytrace=False)
    pytest.skip(reason)


def _user_error(exc: SuperchargeError) -> None:
    pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def artifact_cache(pytestconfig: pytest.Config):
    from supercharge.cache import ArtifactCache

    try:
        return ArtifactCache(pytestconfig.getoption("--artifact-dir"))
    except SuperchargeError as exc:
        _user_error(exc)


@pytest.fixture(scope="session")
def model_bundle(pytestconfig: pytest.Config):
    """The model under test (--model, --weights), loaded once per session."""
    from supercharge.models import load_bundle

    try:
        return load_bundle(pytestconfig.getoption("--model"), pytestconfig.getoption("--weights"))
    except SuperchargeError as exc:
        _user_error(exc)


@pytest.fixture(scope="session")
def onnx_model(model_bundle, artifact_cache):
    """The checked ONNX export of the model under test (an Artifact), from the cache."""
    from supercharge.export import export_onnx

    try:
        return export_onnx(model_bundle, artifact_cache)
    except SuperchargeError as exc:
        _user_error(exc)


@pytest.fixture(scope="session")
def fixture_image_paths(pytestconfig: pytest.Config) -> list[Path]:
    """The photos in fixtures/images (sources and licenses in fixtures/README.md)."""
    folder = pytestconfig.rootpath / "fixtures" / "images"
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if not paths:
        pytest.fail(f"no fixture images in {folder}", pytrace=False)
    return paths


@pytest.fixture(scope="session")
def fixture_images(fixture_image_paths):
    """Decoded RGB PIL images of the fixture photos."""
    from supercharge.images import load_image

    return {p.name: load_image(p) for p in fixture_image_paths}
