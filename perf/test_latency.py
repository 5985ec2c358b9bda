"""End-to-end latency per backend: decoded RGB image in, host logits out.

Runner creation, ONNX export and session set-up happen before timing (they are cached or
one-off); each case warms up before its rounds are recorded.
"""

from __future__ import annotations

import pytest

from supercharge.preprocess import TimmPreprocess
from supercharge.runners import create_runner

BACKENDS = ["torch-cpu", "ort-cpu"]
BATCH_SIZES = [1]


@pytest.mark.parametrize("batch_size", BATCH_SIZES, ids=lambda b: f"bs{b}")
@pytest.mark.parametrize("backend", BACKENDS)
def test_end_to_end(benchmark, model_bundle, artifact_cache, fixture_images, backend, batch_size):
    runner = create_runner(backend, model_bundle, artifact_cache)
    preprocess = TimmPreprocess(model_bundle.data_config)
    images = [fixture_images["coffee.png"]] * batch_size

    benchmark.group = f"{model_bundle.name} end-to-end bs{batch_size}"
    benchmark.extra_info.update(
        runner.describe(),
        preprocess=preprocess.name,
        precision="fp32",
        batch_size=batch_size,
    )
    logits = benchmark.pedantic(
        lambda: runner.run(preprocess(images)), warmup_rounds=5, rounds=30, iterations=1
    )
    assert logits.shape == (batch_size, len(model_bundle.class_names))
    median = benchmark.stats.stats.median
    benchmark.extra_info["images_per_s"] = batch_size / median
