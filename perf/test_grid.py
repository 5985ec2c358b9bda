"""The benchmark grid: model x backend x preprocessing x precision x batch size.

Parametrized by the plugin (`grid_case` fixture; filters --backends, --preprocess, --precisions,
--batch-sizes). Pipelines are built (exports, engine builds, session creation, warm-up per
batch size) before any timing; GPU runners synchronise the device inside every timed call.
Two groups: end to end (decoded uint8 images in, host logits out) and the model alone (inputs
already placed where the runtime wants them), so preprocessing and transfer costs are visible.
Every case's baseline (`baseline_for`) is also timed right before and after it, so its speedup
is a ratio of neighbours in time, not of cases minutes apart on a drifting machine.
"""

from __future__ import annotations

import numpy as np
import pytest

from supercharge.report import END_TO_END, MODEL_ONLY
from supercharge.timing import time_call


@pytest.fixture
def images(benchmark_image, grid_case):
    """One photo (--image) repeated: every batch is one size, as a camera feed's would be."""
    return [benchmark_image] * grid_case.batch_size


def test_end_to_end(
    benchmark, grid_case, images, pipeline_for, baseline_for, suite_results, model_bundle
):
    pipeline = pipeline_for(grid_case.combo)
    baseline = baseline_for(grid_case.combo)
    pipeline.prepare_for(images)  # a separable graph is built for this image size, untimed
    expected = (grid_case.batch_size, len(model_bundle.class_names))

    def check(logits):
        assert logits.shape == expected

    time_call(
        benchmark,
        lambda: pipeline(images),
        grid_case,
        END_TO_END,
        pipeline.describe(),
        suite_results,
        reference=None if baseline is None else lambda: baseline(images),
        check=check,
    )


def test_model_alone(
    benchmark, grid_case, images, pipeline_for, baseline_for, suite_results, model_bundle
):
    pipeline = pipeline_for(grid_case.combo)
    pipeline.prepare_for(images)
    placed = pipeline.placed_batches(images)  # preprocessing and upload, outside the timing
    assert placed, "nothing placed: the timing would measure an empty loop"
    run = pipeline.runner.run_placed
    reference = None
    baseline = baseline_for(grid_case.combo)
    if baseline is not None:
        base_placed, base_run = baseline.placed_batches(images), baseline.runner.run_placed

        def reference():
            return [base_run(p) for p in base_placed]

    expected = (grid_case.batch_size, len(model_bundle.class_names))

    def check(outputs):
        logits = np.concatenate([pipeline.runner.to_host(out) for out in outputs])
        assert logits.shape == expected

    time_call(
        benchmark,
        lambda: [run(p) for p in placed],
        grid_case,
        MODEL_ONLY,
        pipeline.describe(),
        suite_results,
        reference=reference,
        check=check,
    )
