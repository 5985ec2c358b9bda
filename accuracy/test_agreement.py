"""Every CPU backend agrees with the PyTorch reference on every fixture photo.

Reference: timm's eval transform + PyTorch CPU fp32, computed once per session.
"""

from __future__ import annotations

import numpy as np
import pytest

from supercharge.predict import top_k
from supercharge.preprocess import TimmPreprocess
from supercharge.runners import create_runner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def reference_logits(model_bundle, artifact_cache, fixture_images):
    runner = create_runner("torch-cpu", model_bundle, artifact_cache)
    batch = TimmPreprocess(model_bundle.data_config)(list(fixture_images.values()))
    return dict(zip(fixture_images, runner.run(batch), strict=True))


@pytest.mark.parametrize("backend", ["ort-cpu"])
def test_top5_matches_pytorch(
    backend, model_bundle, artifact_cache, fixture_images, reference_logits
):
    runner = create_runner(backend, model_bundle, artifact_cache)
    batch = TimmPreprocess(model_bundle.data_config)(list(fixture_images.values()))
    got = dict(zip(fixture_images, runner.run(batch), strict=True))
    for name, ref in reference_logits.items():
        want = top_k(ref[None], model_bundle.class_names)[0]
        have = top_k(got[name][None], model_bundle.class_names)[0]
        table = "\n".join(f"  {w!s:<45} {h!s}" for w, h in zip(want, have, strict=True))
        assert have[0].index == want[0].index, f"{name}: top-1 differs\n{table}"
        assert {p.index for p in have} == {p.index for p in want}, f"{name}: top-5 differs\n{table}"
        cos = float(np.dot(ref, got[name]) / (np.linalg.norm(ref) * np.linalg.norm(got[name])))
        assert cos > 0.9999, f"{name}: cosine {cos:.6f}"
