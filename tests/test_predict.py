"""The default pretrained model classifies the fixture photos correctly on every CPU backend."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.slow


def _first_block(out: str) -> list[tuple[str, float]]:
    rows = re.findall(r"^(.+): ([0-9.]+)%$", out, flags=re.M)
    return [(label, float(p)) for label, p in rows]


@pytest.mark.parametrize(
    "backend, preprocess",
    [("torch-cpu", "timm"), ("ort-cpu", "timm"), ("ort-cpu", "baked"), ("ort-cpu", "separable")],
)
def test_pretrained_default_model_says_espresso(
    run_cli, coffee, artifact_cache, backend, preprocess
):
    code, out, err = run_cli(
        "predict", coffee, "--backend", backend, "--preprocess", preprocess,
        "--artifact-dir", artifact_cache.root,
    )  # fmt: skip
    assert code == 0, err
    rows = _first_block(out)
    assert len(rows) == 5
    assert rows[0][0] == "espresso"
    assert rows[0][1] > 90.0
    assert [p for _, p in rows] == sorted((p for _, p in rows), reverse=True)


def test_predict_prints_top_k_per_image(run_cli, coffee, artifact_cache):
    chelsea = coffee.with_name("chelsea.png")
    code, out, err = run_cli("predict", coffee, chelsea, "--top", "3")
    assert code == 0, err
    headers = [
        line
        for line in out.splitlines()
        if line.endswith("(tf_efficientnet_lite0, torch-cpu, timm, fp32):")
    ]
    assert [h.split(" (")[0] for h in headers] == [str(coffee), str(chelsea)]
    rows = _first_block(out)
    assert len(rows) == 6
    assert rows[3][0] == "tiger cat"  # measured: tiger cat 39.3%, Egyptian cat 35.6%


def test_top_must_be_positive(run_cli, coffee):
    code, _, err = run_cli("predict", coffee, "--top", "0")
    assert code == 2
    assert "--top 0" in err


def test_predict_tells_tensorrt_the_batch_it_will_run(run_cli, coffee, tmp_path, monkeypatch):
    """All images go in one batch: a backend whose profile fixes its largest batch (TensorRT)
    is built for that many, so predicting on N photos never outgrows the engine."""
    import supercharge.models
    import supercharge.pipeline
    from supercharge.errors import SuperchargeError

    seen = []

    def build(bundle, cache, backend, preprocess, **options):
        seen.append((backend, options))
        raise SuperchargeError("stop before any session")

    monkeypatch.setattr(supercharge.models, "load_bundle", lambda *args: None)
    monkeypatch.setattr(supercharge.pipeline, "build_pipeline", build)
    for backend in ("ort-trt", "ort-cpu"):
        code, _, err = run_cli(
            "predict", coffee, coffee, coffee, "--backend", backend, "--artifact-dir", tmp_path
        )
        assert code == 2 and "stop before any session" in err
    assert seen == [
        ("ort-trt", {"precision": "fp32", "max_batch": 3}),
        ("ort-cpu", {"precision": "fp32"}),
    ]


def test_predict_runs_the_int8_model(run_cli, coffee, artifact_cache):
    code, out, err = run_cli(
        "predict", coffee, "--backend", "ort-cpu", "--preprocess", "separable",
        "--precision", "int8", "--artifact-dir", artifact_cache.root,
    )  # fmt: skip
    assert code == 0, err
    assert out.splitlines()[0].endswith("(tf_efficientnet_lite0, ort-cpu, separable, int8):")
    assert _first_block(out)[0][0] == "espresso"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--backend", "torch-cpu", "--precision", "int8"), "does not run precision 'int8'"),
        (("--backend", "torch-cpu", "--preprocess", "baked"), "use an ONNX Runtime backend"),
    ],
)
def test_predict_refuses_a_combination_before_loading_anything(
    run_cli, coffee, monkeypatch, args, message
):
    import supercharge.models

    def never(*_):
        raise AssertionError("the model was loaded for a combination that cannot run")

    monkeypatch.setattr(supercharge.models, "load_bundle", never)
    code, _, err = run_cli("predict", coffee, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
