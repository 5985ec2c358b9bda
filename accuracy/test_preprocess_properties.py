"""Property tests: every preprocessing implementation against timm's PIL transform.

Images: 1-2000 px per side, aspect ratios 1:20 to 20:1, PIL modes RGB/L/LA/RGBA/P/I;16 (all
converted to RGB the way timm is fed: `Image.convert("RGB")`), photographic content (crops and
rescales of the fixture photos) and synthetic content (noise, flat colours, hard edges). Data
configs come from real timm models, never typed here. Implementations: numpy and cupy (one
array-namespace code path, `ArrayPreprocess`; cupy skips with the reason where it cannot run), the
baked ONNX graph (Pillow's two passes as banded MatMuls, weights computed in the graph for any
size) and the separable ONNX graph (the same, weights constant for one size), both on ORT CPU;
the seed's graph is shown to break the photographic bound. Run with
--hypothesis-profile=thorough for 1000 examples per test; set SUPERCHARGE_LEVEL_LOG=<file> to
collect every example's differences (docs/preprocessing.md was measured that way).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from supercharge.gpu import cupy_unavailable_reason
from supercharge.preprocess.array_impl import ArrayPreprocess
from supercharge.preprocess.baked_graph import build_preprocess_model
from supercharge.preprocess.compare import LevelDiff, level_diff
from supercharge.preprocess.onnx_graph import INPUT_NAME, OUTPUT_NAME
from supercharge.preprocess.reference import timm_transform
from supercharge.preprocess.seed_graph import build_seed_model
from supercharge.preprocess.separable_graph import build_separable_model
from supercharge.preprocess.spec import PreprocessSpec

IMAGENET_MEAN, IMAGENET_STD = tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "images"

# Real pretrained configs (checked in test_config_models_cover_the_required_kinds).
CONFIG_MODELS = [
    "tf_efficientnet_lite0",  # bicubic, crop_pct 0.875, mean = std = 0.5
    "dla34",  # bilinear
    "efficientnetv2_rw_s",  # crop_pct 1.0, 288 px
    "eva02_base_patch14_448",  # squash, 448 px, CLIP mean/std
    "tf_efficientnet_lite2",  # 260 px, crop_pct 0.89
    "volo_d4_448",  # crop_pct 1.15: the crop is larger than the resized image (zero padding)
    "deepseek_vit_412m.deepseek_v4_flash_vision_exp",  # crop_mode border, 392 px
]
MODES = ["RGB", "L", "LA", "RGBA", "P", "I;16"]


# --- data configs, reference, implementations ---------------------------------------------------


@cache
def data_config(model: str) -> dict:
    import timm
    from timm.models import get_pretrained_cfg

    return timm.data.resolve_data_config({}, pretrained_cfg=get_pretrained_cfg(model).to_dict())


@cache
def spec_of(model: str) -> PreprocessSpec:
    return PreprocessSpec.from_data_config(data_config(model))


@cache
def reference(model: str):
    return timm_transform(data_config(model))


def _session(model_proto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        model_proto.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )


@cache
def _numpy_impl(model: str) -> ArrayPreprocess:
    return ArrayPreprocess(spec_of(model))


@cache
def _cupy_impl(model: str) -> ArrayPreprocess:
    import cupy

    return ArrayPreprocess(spec_of(model), xp=cupy)


@cache
def _baked_session(model: str) -> ort.InferenceSession:
    return _session(build_preprocess_model(spec_of(model)))


@lru_cache(maxsize=4)  # one graph per image size; shrinking re-runs the same size
def _separable_session(model: str, h: int, w: int) -> ort.InferenceSession:
    return _session(build_separable_model(spec_of(model), h, w))


@cache
def _seed_session(model: str) -> ort.InferenceSession:
    return _session(build_seed_model(spec_of(model)))


def _run(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def run_impl(impl: str, model: str, rgb: np.ndarray) -> np.ndarray:
    """One uint8 HWC RGB image through `impl` -> float32 [1, 3, H, W] on the host."""
    if impl == "numpy":
        return _numpy_impl(model)([rgb])
    if impl == "cupy":
        import cupy

        return _cupy_impl(model)([cupy.asarray(rgb)]).get()
    if impl == "baked":
        return _run(_baked_session(model), rgb[None])
    if impl == "separable":
        return _run(_separable_session(model, *rgb.shape[:2]), rgb[None])
    if impl == "seed":  # the seed feeds float32 NCHW 0..255
        return _run(_seed_session(model), rgb.astype(np.float32).transpose(2, 0, 1)[None])
    raise AssertionError(impl)


IMPLS = ["numpy", "cupy", "baked", "separable"]


@pytest.fixture(scope="module")
def impl(request: pytest.FixtureRequest) -> str:
    """The implementation under test; cupy skips with the reason where it cannot run (and
    fails instead under --require-gpu)."""
    name = request.param
    if name == "cupy" and (reason := cupy_unavailable_reason()):
        if request.config.getoption("--require-gpu", default=False):
            pytest.fail(f"--require-gpu: {reason}", pytrace=False)
        pytest.skip(reason)
    return name


# --- images -------------------------------------------------------------------------------------


@cache
def photo(name: str) -> Image.Image:
    return Image.open(FIXTURES / name).convert("RGB")


PHOTOS = sorted(p.name for p in FIXTURES.iterdir() if p.suffix in {".png", ".jpg"})


@st.composite
def sizes(draw, min_side: int = 1) -> tuple[int, int]:
    """(h, w) with both sides in min_side..2000 and aspect ratio within 1:20..20:1."""
    h = draw(st.integers(min_side, 2000))
    log_r = draw(st.floats(-math.log(20), math.log(20)))
    w = min(2000, max(min_side, round(h * math.exp(log_r))))
    w = min(max(w, math.ceil(h / 20)), h * 20)
    return h, w


def _to_mode(rgb: np.ndarray, mode: str) -> Image.Image:
    """The image in `mode`; tests convert it back with .convert("RGB"), as timm's loader does.

    I;16 holds grey levels 0..255: Pillow's I;16 -> RGB conversion clips (it does not rescale),
    so full-range 16-bit values would all turn white, in timm as here.
    """
    im = Image.fromarray(rgb, "RGB")
    if mode == "I;16":
        grey = np.asarray(im.convert("L"), dtype=np.uint16)
        return Image.fromarray(grey)  # uint16 -> mode I;16
    return im.convert(mode)


@st.composite
def photographic(draw, min_side: int = 1) -> Image.Image:
    """A crop of a fixture photo (1/8 to all of each side), rescaled to a drawn size."""
    src = photo(draw(st.sampled_from(PHOTOS)))
    h, w = draw(sizes(min_side))
    sw, sh = src.size
    cw, ch = draw(st.integers(max(1, sw // 8), sw)), draw(st.integers(max(1, sh // 8), sh))
    x0, y0 = draw(st.integers(0, sw - cw)), draw(st.integers(0, sh - ch))
    resample = draw(st.sampled_from([Image.Resampling.BILINEAR, Image.Resampling.LANCZOS]))
    rgb = np.asarray(src.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), resample))
    return _to_mode(rgb, draw(st.sampled_from(MODES)))


@st.composite
def synthetic(draw) -> Image.Image:
    h, w = draw(sizes())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["noise", "flat", "edges"]))
    if kind == "noise":
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    elif kind == "flat":
        rgb = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (h, w, 3)).copy()
    else:  # random axis-aligned rectangles of saturated colours
        rgb = np.zeros((h, w, 3), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 8))):
            y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            y1, x1 = int(rng.integers(y0, h)) + 1, int(rng.integers(x0, w)) + 1
            rgb[y0:y1, x0:x1] = rng.choice([0, 255], 3)
    return _to_mode(rgb, draw(st.sampled_from(MODES)))


# --- comparing ----------------------------------------------------------------------------------


def _record(impl: str, content: str, model: str, image: Image.Image, diff: LevelDiff) -> None:
    """Append each example's result to $SUPERCHARGE_LEVEL_LOG, to measure worst cases.

    One tab-separated line: impl, content, model, mode, WxH, max, mean, within_1.
    """
    log = os.environ.get("SUPERCHARGE_LEVEL_LOG")
    if log:
        with open(log, "a") as f:
            f.write(
                f"{impl}\t{content}\t{model}\t{image.mode}\t{image.size[0]}x{image.size[1]}"
                f"\t{diff.max:.3f}\t{diff.mean:.5f}\t{diff.within_1:.6f}\n"
            )


def compare(impl: str, content: str, model: str, image: Image.Image) -> LevelDiff:
    rgb = image.convert("RGB")
    want = reference(model)(rgb).numpy()[None]
    got = run_impl(impl, model, np.asarray(rgb))
    diff = level_diff(got, want, spec_of(model))
    _record(impl, content, model, image, diff)
    return diff


@dataclass(frozen=True)
class Bound:
    """Worst allowed: max level difference, mean difference, fraction within 1 level."""

    max: float
    mean: float
    within_1: float

    def check(self, diff: LevelDiff, what: str) -> None:
        assert diff.max <= self.max and diff.mean <= self.mean, f"{what}: {diff} vs {self}"
        assert diff.within_1 >= self.within_1, f"{what}: {diff} vs {self}"


# The bound on photos, for every implementation.
PHOTO_BOUND = Bound(max=math.inf, mean=0.25, within_1=0.999)

# Each implementation's own bound, measured (three thorough-profile runs, ~3000 random cases and
# searches aimed at the worst content, see docs/preprocessing.md) and kept tight:
# - numpy/cupy compute Pillow's integer arithmetic exactly in float64; only the float32 output
#   rounds (about 1e-5 levels).
# - separable and baked (Pillow's quantised weights in float32 banded MatMuls; bit-identical
#   since graph revision 5, when baked stopped using Resize nodes with ORT's unquantised weights)
#   round between the passes as Pillow does, so noise and hard edges stay within 1 level (2
#   where a flipped first-pass level feeds the second pass). What is left are near-ties: Pillow
#   decides x.5 +- 2^-22 in integers, float32 cannot. Dithered palette (P) images, a few levels
#   in periodic patterns, put up to ~45% of sums on such ties: worst means found were 0.17 on a
#   dithered flat colour (0.24 for the former Resize-based baked graph).
EXACT = Bound(max=0.01, mean=0.001, within_1=1.0)
PHOTO_BOUNDS = {
    "numpy": EXACT,
    "cupy": EXACT,
    "baked": Bound(max=2.0 + 1e-3, mean=0.1, within_1=0.9995),
    "separable": Bound(max=2.0 + 1e-3, mean=0.1, within_1=0.9995),
}
SYNTHETIC_BOUNDS = {
    "numpy": EXACT,
    "cupy": EXACT,
    "baked": Bound(max=2.0 + 1e-3, mean=0.25, within_1=0.9995),
    "separable": Bound(max=2.0 + 1e-3, mean=0.25, within_1=0.9995),
}

# The seed's graph: (least mean difference, most fraction within 1 level) on every photographic
# example of at least SEED_MIN_SIDE px per side, for the models whose mean/std are not the
# ImageNet constants the seed typed by hand. On dla34 and efficientnetv2_rw_s those constants
# happen to be right and only the seed's resize and crop are wrong, which a nearly flat crop
# hides (measured: 99.4% within 1 level on astronaut.jpg's black background); the fixture-photo
# test below shows the seed breaking the bound on them too.
SEED_MIN_SIDE = 16
SEED_VIOLATION = {
    "tf_efficientnet_lite0": (15.0, 0.10),
    "tf_efficientnet_lite2": (15.0, 0.10),
    "eva02_base_patch14_448": (1.5, 0.50),
    "deepseek_vit_412m.deepseek_v4_flash_vision_exp": (15.0, 0.10),
}


# --- the tests ----------------------------------------------------------------------------------


def test_config_models_cover_the_required_kinds():
    specs = {m: spec_of(m) for m in CONFIG_MODELS}
    assert "tf_efficientnet_lite0" in specs
    assert any(s.interpolation == "bilinear" for s in specs.values())
    assert any(s.crop_pct == 1.0 and s.crop_mode == "center" for s in specs.values())
    assert any(s.crop_mode == "squash" for s in specs.values())
    assert any(s.crop_mode == "border" for s in specs.values())
    assert any(s.crop_pct > 1 for s in specs.values())
    assert any(s.input_size != (224, 224) for s in specs.values())
    imagenet = {m for m, s in specs.items() if (s.mean, s.std) == (IMAGENET_MEAN, IMAGENET_STD)}
    assert set(SEED_VIOLATION) == set(CONFIG_MODELS) - imagenet


@pytest.mark.parametrize("impl", IMPLS, indirect=True)
@given(model=st.sampled_from(CONFIG_MODELS), image=photographic())
def test_photographic_within_one_level(impl, model, image):
    """Photos: <= 1 level on 99.9% of values, mean <= 0.25 levels, for every implementation;
    then each implementation's own bound (PHOTO_BOUNDS).

    Measured worst cases (thorough profile, 1000 examples each; max / worst mean / least
    fraction within 1 level):
    numpy, separable and baked over three runs (3000 examples each; cupy is numpy's code):
    numpy      < 0.001 / 0.00001 / 100%       (float32 output rounding only: bit-exact)
    separable  2       / 0.011   / 99.997%
    baked      2       / 0.137   / 99.951%    (efficientnetv2_rw_s, dithered P 588x588)
    A search over dithered flat regions of the photos found baked at 0.226 (camera.png sky,
    tf_efficientnet_lite2), separable at 0.064. Those baked figures are the former Resize-based
    graph's; since graph revision 5 baked is bit-identical to separable and held to its bound.
    """
    diff = compare(impl, "photographic", model, image)
    what = f"{impl} on {model}, {image.mode} {image.size}"
    PHOTO_BOUND.check(diff, what)
    PHOTO_BOUNDS[impl].check(diff, what)


@pytest.mark.parametrize("impl", IMPLS, indirect=True)
@given(model=st.sampled_from(CONFIG_MODELS), image=synthetic())
def test_synthetic_within_measured_bound(impl, model, image):
    """Noise, flat colours, hard edges: Pillow clips cubic overshoot to uint8 between its two
    passes, which only an implementation that rounds between passes, in Pillow's pass order,
    reproduces (the baked graph's former single 2-D Resize was off by up to 23 levels, with
    1-7% of values beyond 1 level, on noise).

    Measured worst cases (thorough profile, 1000 examples each; max / worst mean / least
    fraction within 1 level):
    numpy, separable and baked over three runs (3000 examples each; cupy is numpy's code):
    numpy      < 0.001 / 0.00001 / 100%
    separable  2       / 0.072   / 99.9975%   (dla34, dithered P 2000x2000)
    baked      2       / 0.164   / 99.951%    (tf_efficientnet_lite0, dithered P 824x500)
    A search over dithered flat colours found baked at 0.241 and separable at 0.168 (dla34,
    261x600), hence SYNTHETIC_BOUNDS' mean of 0.25 (baked figures: the former Resize-based graph;
    it is now bit-identical to separable).
    """
    diff = compare(impl, "synthetic", model, image)
    SYNTHETIC_BOUNDS[impl].check(diff, f"{impl} on {model}, {image.mode} {image.size}")


@given(model=st.sampled_from(sorted(SEED_VIOLATION)), image=photographic(SEED_MIN_SIDE))
def test_seed_breaks_the_photographic_bound(model, image):
    """The seed's graph (squash, torch bicubic without antialias, no rounding, ImageNet mean/std
    typed by hand) misses the photographic bound on every example, by SEED_VIOLATION at least.

    Measured (thorough profile, two runs, 2000 examples): least mean / most within 1 level
    tf_efficientnet_lite0 19.95 / 3.1%, tf_efficientnet_lite2 26.8 / 3.6% (mean = std = 0.5,
    not ImageNet's), eva02_base_patch14_448 2.82 / 22.4% (CLIP constants; its squash is right):
    11x to 107x the 0.25-level mean allowed, and 78% to 96% of values more than 1 level off where
    0.1% are allowed. Asserted: SEED_VIOLATION (15 / 10%, 15 / 10%, 1.5 / 50%).
    """
    diff = compare("seed", "photographic", model, image)
    least_mean, most_within = SEED_VIOLATION[model]
    what = f"seed on {model}, {image.mode} {image.size}: {diff}"
    assert diff.mean > PHOTO_BOUND.mean or diff.within_1 < PHOTO_BOUND.within_1, what
    assert diff.mean >= least_mean and diff.within_1 <= most_within, what


@pytest.mark.parametrize("model", CONFIG_MODELS)
def test_seed_breaks_the_photographic_bound_on_the_fixture_photos(model):
    """Every fixture photo at its own size, every config model, including the two whose mean/std
    the seed gets right (dla34, efficientnetv2_rw_s): there its squash, missing crop and
    missing antialias alone break the bound.

    Measured (mean levels / fraction within 1 level), least violation per model:
    tf_efficientnet_lite0 63.4 / 0.97% (chelsea.png), tf_efficientnet_lite2 63.1 / 0.94%
    (chelsea.png), eva02_base_patch14_448 5.73 / 11.9% (chelsea.png), dla34 15.6 / 9.25%
    (rocket.jpg; astronaut.jpg), efficientnetv2_rw_s 1.98 / 61.2% (astronaut.jpg, square:
    the squash is right, the aliasing of a 512 -> 288 resize without antialias is not),
    volo_d4_448 17.8 / 11.4% (rocket.jpg; its padded crop), deepseek_vit_412m 58.2 / 1.1%
    (chelsea.png).
    Asserted: mean >= 1.5 levels (6x the bound) and <= 70% within 1 level (99.9% required).
    """
    for name in PHOTOS:
        diff = compare("seed", "fixture", model, photo(name))
        assert diff.mean >= 1.5 and diff.within_1 <= 0.70, f"seed on {model}, {name}: {diff}"
