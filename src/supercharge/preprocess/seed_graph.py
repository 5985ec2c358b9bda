"""The blog post's baked preprocessing, reproduced with its mistakes so the suite can show them.

Kept in the grid on purpose: the accuracy gates must catch it (a test asserts they do), and its
rows in the speed table put a number on what the shortcut saves.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from supercharge.preprocess.onnx_graph import (
    INPUT_NAME,
    OUTPUT_NAME,
    RESIZE_NODE,
    Graph,
    check_opset,
    normalise,
)
from supercharge.preprocess.spec import PreprocessSpec

# What torch F.interpolate(mode="bicubic", align_corners=False) does, i.e. what the seed baked in.
SEED_RESIZE_ATTRS: dict[str, Any] = {"mode": "cubic", "cubic_coeff_a": -0.75, "antialias": 0}


def build_seed_model(
    spec: PreprocessSpec, *, opset: int = 20, ir_version: int | None = None
) -> onnx.ModelProto:
    """The blog post's baked preprocessing, reproduced as-is so the suite can show its cost.

    What is wrong with it: a squash resize straight to input_size (no aspect-preserving resize,
    no center crop, whatever crop_pct/crop_mode say), Keys a=-0.75 cubic without antialiasing
    (torch F.interpolate bicubic, align_corners=False) instead of Pillow's antialiased a=-0.5
    filter, no rounding to uint8 levels, and ImageNet mean/std typed by hand instead of the
    model's own (wrong for CLIP, Inception-style and other configs). Input is float32 NCHW
    0..255; only input_size is taken from `spec`.
    """
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    check_opset(opset)
    g = Graph()
    x = g.op(
        "Resize",
        INPUT_NAME,
        "",
        "",
        g.const(spec.input_size, np.int64, "input_size"),
        name=RESIZE_NODE,
        axes=[2, 3],
        coordinate_transformation_mode="half_pixel",
        **SEED_RESIZE_ATTRS,
    )
    normalise(g, x, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, out=OUTPUT_NAME)
    image = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, "H", "W"])
    return g.model(
        "seed_preprocess",
        [image],
        OUTPUT_NAME,
        spec.input_size,
        opset,
        ir_version,
        "the seed's baked preprocessing (squash, bicubic a=-0.75, no antialias, ImageNet mean/std)",
    )
