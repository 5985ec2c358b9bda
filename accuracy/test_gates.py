"""Accuracy gates: every combination of the grid gives PyTorch's answers on every gate photo.

The golden reference is timm's eval transform (PIL) + PyTorch CPU fp32 (TF32 off), computed once
per session, one image at a time. Each combination (backend x preprocessing x precision, filtered
by --backends/--preprocess/--precisions; GPU ones skip with the reason, or fail under
--require-gpu) runs every gate photo (--gate-images, default fixtures/images) on its own and
all of them in one batch; every (image, run) is judged by supercharge.agreement against the
tolerances in pyproject.toml [tool.supercharge.tolerances] and becomes a row of the session's
accuracy report.

The `seed` preprocessing (the blog's) is in the grid to show what it gets wrong: it is expected
to fail, so its test asserts that the gates catch it; it is reported, never a red job.
"""

from __future__ import annotations

import numpy as np
import pytest

from supercharge.accuracy_report import format_row
from supercharge.agreement import agreement_row, expected_verdict, is_relative_only
from supercharge.errors import SuperchargeError
from supercharge.preprocess import TimmPreprocess
from supercharge.runners import create_runner
from supercharge.tolerances import load_tolerances

pytestmark = pytest.mark.slow

_RAN_KEYS = ("device", "providers", "precision")


@pytest.fixture(scope="session")
def golden(model_bundle, artifact_cache, gate_images) -> dict[str, np.ndarray]:
    """Reference logits per gate photo: timm's PIL eval transform + torch-cpu fp32."""
    runner = create_runner("torch-cpu", model_bundle, artifact_cache, precision="fp32")
    preprocess = TimmPreprocess(model_bundle.data_config)
    return {name: runner.run(preprocess([image]))[0] for name, image in gate_images.items()}


@pytest.fixture(scope="session")
def tolerance_table(pytestconfig):
    path = pytestconfig.rootpath / "pyproject.toml"
    try:
        return load_tolerances(path if path.is_file() else None)
    except SuperchargeError as exc:
        pytest.fail(str(exc), pytrace=False)


def test_gates(
    grid_combo,
    model_bundle,
    gate_images,
    calibration_folder,
    pipeline_for,
    golden,
    tolerance_table,
    suite_results,
):
    """Top-1, top-5 overlap, cosine and probability errors within the precision's tolerances,
    on each gate photo alone and in one batch of all of them."""
    try:
        tolerances = tolerance_table.get(grid_combo.precision, grid_combo.preprocess)
    except SuperchargeError as exc:
        pytest.fail(str(exc), pytrace=False)
    combo = grid_combo
    pipeline = pipeline_for(combo)
    names, images = list(gate_images), list(gate_images.values())
    runs = [(name, "single", pipeline([image])) for name, image in zip(names, images, strict=True)]
    batch = pipeline(images)
    assert batch.shape[0] == len(images), (
        f"{grid_combo.id}: {batch.shape[0]} rows for {len(images)}"
    )
    runs += [(name, f"batch of {len(images)}", batch[i]) for i, name in enumerate(names)]

    described = pipeline.runner.describe()
    ran = {k: described[k] for k in _RAN_KEYS if k in described}
    if grid_combo.precision == "int8":  # the report says what int8 was calibrated on
        ran["calibration"] = str(calibration_folder)
    rows = [
        agreement_row(
            reference=golden[name],
            candidate=np.asarray(logits).reshape(-1),
            class_names=model_bundle.class_names,
            tolerances=tolerances,
            relative_only=is_relative_only(model_bundle),
            combo=grid_combo.id,
            backend=grid_combo.backend,
            preprocess=grid_combo.preprocess,
            precision=grid_combo.precision,
            image=name,
            mode=mode,
            model=model_bundle.name,
            weights=str(model_bundle.ref.weights.spec),
            ran=ran,
        )
        for name, mode, logits in runs
    ]
    suite_results.accuracy.extend(rows)
    failed = [r for r in rows if r["verdict"] == "fail"]

    expected, why = expected_verdict(grid_combo.preprocess)
    if expected == "fail":
        # The gates must catch this pipeline; passing everywhere means they are too loose.
        if not failed:
            pytest.fail(
                f"{combo.id} is expected to fail ({why}) but passed the gates on every image:\n\n"
                + "\n\n".join(format_row(r) for r in rows),
                pytrace=False,
            )
        return
    if failed:
        pytest.fail(
            f"{combo.id}: {len(failed)} of {len(rows)} judged images fail the accuracy gates\n\n"
            + "\n\n".join(format_row(r) for r in failed),
            pytrace=False,
        )
