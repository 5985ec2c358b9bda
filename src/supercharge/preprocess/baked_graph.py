"""The baked preprocessing graph: timm's eval transform for images of any size, in one graph.

Everything Python knows only at run time (the resize target, padding, crop origin, Pillow's
weights for this size and its pass order) is computed inside the graph from the input's shape,
so one merged model serves every photo; the separable graph (separable_graph.py) is the same
arithmetic with the weights as constants for one size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from supercharge.preprocess import pil_resample
from supercharge.preprocess.array_impl import _PILLOW_MAJOR
from supercharge.preprocess.onnx_graph import (
    BAND,
    INPUT_NAME,
    OUTPUT_NAME,
    SPATIAL,
    Graph,
    check_opset,
    image_input,
    input_window,
    pad_crop_normalise,
    round_clip,
    to_float,
)
from supercharge.preprocess.spec import PreprocessSpec

BAKED_FILTERS = ("bicubic", "bilinear", "nearest")  # what the any-size graph computes


def _may_pad(spec: PreprocessSpec) -> bool:
    """Whether any image size can need padding: border mode, or scale_size below input_size."""
    return spec.crop_mode == "border" or any(
        s < t for s, t in zip(spec.scale_size, spec.input_size, strict=True)
    )


def _resized_size(g: Graph, hw: str, spec: PreprocessSpec) -> str:
    """int64 [2] (h, w) after the resize: `PreprocessSpec.resized_size`, inside the graph."""
    sh, sw = spec.scale_size
    if spec.crop_mode == "squash":
        return g.const([sh, sw], np.int64, "scale_size")
    if spec.crop_mode == "center" and sh == sw:
        # torchvision Resize(int): the short side becomes sh (sh * short // short), the long side
        # int(sh * long / short); int64 floor division is exact where the float can round.
        short = g.op("ReduceMin", hw, keepdims=1)
        return g.op("Div", g.op("Mul", hw, g.const([sh], np.int64, "scale")), short)
    # timm ResizeKeepRatio: round(side / ratio) in float64, round half to even like Python
    hw_f = g.op("Cast", hw, to=TensorProto.DOUBLE)
    ratios = g.op("Div", hw_f, g.const([sh, sw], np.float64, "scale_size"))
    reduce = "ReduceMax" if spec.crop_mode == "border" else "ReduceMin"  # longest=1.0 / 0.0
    ratio = g.op(reduce, ratios, keepdims=1)
    return g.op("Cast", g.op("Round", g.op("Div", hw_f, ratio)), to=TensorProto.INT64)


def _dynamic_pad_crop(g: Graph, sizes: str, spec: PreprocessSpec) -> tuple[str | None, str]:
    """Pads and crop origin from the runtime resized size, as `PreprocessSpec.geometry`."""
    target = g.const(spec.input_size, np.int64, "input_size")
    pads = None
    padded = sizes
    if _may_pad(spec):
        need = g.op("Max", g.op("Sub", target, sizes), g.const([0], np.int64, "zero"))
        before = g.op("Div", need, g.const([2], np.int64, "two"))
        pads = g.op("Concat", before, g.op("Sub", need, before), axis=0)
        padded = g.op("Max", sizes, target)
    excess = g.op("Cast", g.op("Sub", padded, target), to=TensorProto.FLOAT)
    half = g.op("Round", g.op("Div", excess, g.const([2.0], np.float32, "two")))  # half to even
    return pads, g.op("Cast", half, to=TensorProto.INT64)


def _filter(g: Graph, x: str, interpolation: str) -> str:
    """Pillow's filter (pil_resample.FILTERS) of float64 distances `x`, as graph ops."""
    ax = g.op("Abs", x)

    def f(v: float) -> str:
        return g.const([v], np.float64, "filter")

    if interpolation == "bilinear":
        return g.op("Max", g.op("Sub", f(1.0), ax), f(0.0))
    a = -0.5  # bicubic: pil_resample._bicubic
    near = g.op("Mul", g.op("Sub", g.op("Mul", ax, f(a + 2.0)), f(a + 3.0)), ax)
    near = g.op("Add", g.op("Mul", near, ax), f(1.0))
    far = g.op("Add", g.op("Mul", g.op("Sub", ax, f(5.0)), ax), f(8.0))
    far = g.op("Mul", g.op("Sub", g.op("Mul", far, ax), f(4.0)), f(a))
    return g.op(
        "Where",
        g.op("Less", ax, f(1.0)),
        near,
        g.op("Where", g.op("Less", ax, f(2.0)), far, f(0.0)),
    )


def _pass_weights(
    g: Graph, hw: str, sizes: str, begin: str, bands: int, spec: PreprocessSpec
) -> tuple[str, str, str]:
    """Pillow's weights for both 1-D passes at once, for any image size.

    Axis i (0: H, 1: W) goes from `hw[i]` to `sizes[i]` pixels; its outputs are `begin[i]` ..
    `begin[i] + bands * BAND` (those past the crop window are cut after the MatMuls). The
    weights are computed as Pillow's precompute_coeffs lays them out (a few taps per output from
    its xmin, in float64, normalised, quantised to 22 bits), then scattered into one [BAND, S]
    matrix per band over the input span the band touches (an axis's spans all as long as its
    longest, shifted to stay inside the image). Why this shape: at this size ORT's cost is per
    node (~1 us) more than per element, so the filter runs on ~K taps per output rather than on
    the dense band matrices (7x fewer elements for a 1.56x downscale), both axes share one chain
    (leading axis 2) outside the If, and every tensor is [axis, band, output, tap] from the
    start, so nothing is reshaped between steps. Returns (starts int64 [2, bands], spans int64
    [2, 1], weights float32 [2, bands, BAND, S], S the longer axis's span, taps past an axis's
    own span zero).
    """
    support = pil_resample.FILTERS[spec.interpolation][1]

    def f(v: Any) -> str:
        return g.const(v, np.float64, "pass")

    def i64(v: Any) -> str:
        return g.const(v, np.int64, "pass")

    def per_axis(t: str) -> str:  # int64 [2] -> float64 [2, 1, 1, 1]
        return g.op("Reshape", g.op("Cast", t, to=TensorProto.DOUBLE), i64([2, 1, 1, 1]))

    size_in, n_out, first = per_axis(hw), per_axis(sizes), per_axis(begin)
    scale = g.op("Div", size_in, n_out)
    filterscale = g.op("Max", scale, f([1.0]))
    reach = g.op("Mul", filterscale, f([support]))
    # output j's centre, (j + 0.5) * scale, for j = begin .. begin + bands * BAND - 1
    offsets = np.arange(bands * BAND, dtype=np.float64).reshape(bands, BAND, 1) + 0.5
    center = g.op("Mul", g.op("Add", first, f(offsets)), scale)  # [2, bands, BAND, 1]
    xmin = g.op("Floor", g.op("Add", g.op("Sub", center, reach), f([0.5])))
    xmin = g.op("Max", xmin, f([0.0]))
    xmax = g.op("Min", g.op("Floor", g.op("Add", g.op("Add", center, reach), f([0.5]))), size_in)
    # precompute_coeffs: K taps from xmin per output, K the most any output has
    taps = g.op("Range", f(0.0), g.op("ReduceMax", g.op("Sub", xmax, xmin), keepdims=0), f(1.0))
    pos = g.op("Add", xmin, taps)  # [2, bands, BAND, K]
    x = g.op("Div", g.op("Add", g.op("Sub", pos, center), f([0.5])), filterscale)
    w = g.op("Where", g.op("Less", pos, xmax), _filter(g, x, spec.interpolation), f([0.0]))
    # normalised by the sum: >= 0.5 for an output inside the image; outputs past its edge (cut
    # after the MatMuls) can sum to 0 or below, so they divide by 1 and stay finite
    total = g.op("ReduceSum", w, i64([3]), keepdims=1)
    total = g.op("Where", g.op("Greater", total, f([0.0])), total, f([1.0]))
    w = g.op("Mul", g.op("Div", w, total), f([pil_resample.ONE]))
    # normalize_coeffs_8bpc: (int)(w * ONE +- 0.5), C truncating toward zero; as sign * floor(
    # |w| + 0.5), since ONNX leaves Cast's rounding from float to int unspecified (onnx#3876)
    w = g.op("Mul", g.op("Sign", w), g.op("Floor", g.op("Add", g.op("Abs", w), f([0.5]))))
    w = g.op("Cast", g.op("Div", w, f([pil_resample.ONE])), to=TensorProto.FLOAT)
    # the bands: the input span each band's outputs touch, as long as the axis's longest
    start = g.op("ReduceMin", xmin, i64([2]), keepdims=1)  # [2, bands, 1, 1]
    end = g.op("ReduceMax", xmax, i64([2]), keepdims=1)
    span = g.op("ReduceMax", g.op("Sub", end, start), i64([1]), keepdims=1)  # [2, 1, 1, 1]
    start = g.op("Min", start, g.op("Sub", size_in, span))  # keeps start + span inside
    longest = g.op("ReduceMax", span, keepdims=1)  # [1, 1, 1, 1]: S
    # each tap's row in its band's matrix; taps past an output's own (zero weight) are clipped
    # into range and added, so they change nothing
    row = g.op("Min", g.op("Sub", pos, start), g.op("Sub", longest, f([1.0])))
    shape = g.op(
        "Concat",
        i64([2, bands, BAND]),
        g.op("Cast", g.op("Reshape", longest, i64([1])), to=TensorProto.INT64),
        axis=0,
    )
    zeros = g.op("ConstantOfShape", shape, value=numpy_helper.from_array(np.zeros(1, np.float32)))
    row = g.op("Cast", row, to=TensorProto.INT64)
    w = g.op("ScatterElements", zeros, row, w, axis=3, reduction="add")
    starts = g.op("Reshape", g.op("Cast", start, to=TensorProto.INT64), i64([2, bands]))
    spans = g.op("Reshape", g.op("Cast", span, to=TensorProto.INT64), i64([2, 1]))
    return starts, spans, w


class _PassOperands:
    """One axis's banded-pass operands: its band starts, then its band ends (int64
    [2 * pieces], relative to the input window), the band weights ([1, pieces, .., ..], as
    MatMul takes them for this axis), of which the axis uses its first `bands`, and, when the
    graph may keep fewer outputs than its bands compute, that count (int64 [1]).

    Whole tensors, split into bands by the pass itself: inside an If branch each outer value is
    an implicit input with its own cost, so the branch reads two or three per axis, not one per
    band.
    """

    def __init__(
        self,
        g: Graph,
        weights: str,
        lines: str,
        axis: int,
        bands: int,
        pieces: int,
        count: str | None,
    ) -> None:
        self.axis, self.bands, self.pieces, self.count = axis, bands, pieces, count
        self.lines = lines
        if axis == 3:  # [.., H, span] @ [span, band]
            weights = g.op("Transpose", weights, perm=[0, 1, 3, 2])
        self.weights = weights


def _pass_operands(
    g: Graph, hw: str, sizes: str, window: tuple[str, str], spec: PreprocessSpec
) -> tuple[tuple[str, str], dict[int, _PassOperands]]:
    """Both axes' weights (`_pass_weights`), cut per axis to its own span, and the input window
    ([begin, end) per (H, W)) the bands read, band starts and ends relative to it."""
    lo, hi = window
    bands = {axis: -(-most // BAND) for axis, most in zip(SPATIAL, spec.input_size, strict=True)}
    most = max(bands.values())
    starts, spans, w = _pass_weights(g, hw, sizes, lo, most, spec)  # [2, most], [2, 1], ..
    flat = g.const([-1], np.int64, "flat")
    ends = g.op("Add", starts, spans)
    # the input lines any band reads, per axis: from the first band's start to the last's end
    # (band starts never decrease)
    first = g.op("ReduceMin", starts, g.const([1], np.int64, "axis"), keepdims=1)  # [2, 1]
    last = g.const([[bands[2] - 1], [bands[3] - 1]], np.int64, "last_band")
    window = (
        g.op("Reshape", first, flat),
        g.op("Reshape", g.op("GatherElements", ends, last, axis=1), flat),
    )
    # per axis, relative to the window: its band starts, then its band ends ([2 * most])
    lines = g.op("Sub", g.op("Concat", starts, ends, axis=1), first)
    lines_by_axis = g.split(g.op("Reshape", lines, flat), 2)
    spans_by_axis = g.split(g.op("Reshape", spans, flat), 2)  # [1] each
    weights_by_axis = g.split(w, 2)  # [1, most, BAND, S] each
    # every band computes BAND outputs; the crop window keeps fewer only when the crop size is
    # not a multiple of BAND or an axis may be padded (then the window is the resized extent)
    exact = not _may_pad(spec) and all(side % BAND == 0 for side in spec.input_size)
    counts = [None, None] if exact else g.split(g.op("Sub", hi, lo), 2)
    zero, last_axis = g.const([0], np.int64, "zero"), g.const([3], np.int64, "axis")
    operands = {}
    for index, axis in enumerate(SPATIAL):
        w_i = g.op("Slice", weights_by_axis[index], zero, spans_by_axis[index], last_axis)
        lines_i, count_i = lines_by_axis[index], counts[index]
        operands[axis] = _PassOperands(g, w_i, lines_i, axis, bands[axis], most, count_i)
    return window, operands


def _banded_pass(g: Graph, x: str, operands: _PassOperands) -> str:
    """One Pillow 1-D pass over NCHW `operands.axis` (2: H, 3: W): one MatMul per band over the
    input lines its weights touch, the crop window's outputs kept, then round + clip.

    The same banded MatMuls as the separable graph, for any image size. Measured on a 600x400
    photo, horizontal pass: 0.31 ms, against ~0.7 ms for an antialiased Resize that computes
    every output; exact against Pillow's weights.
    """
    axis, n, pieces = operands.axis, operands.bands, operands.pieces
    along = g.const([axis], np.int64, "axis")
    # an axis with fewer bands than the other (a non-square crop) leaves its last pieces unread
    lines = g.split(operands.lines, 2 * pieces)
    begins, ends = lines[:pieces], lines[pieces:]
    weights = g.split(operands.weights, pieces, axis=1)  # [1, 1, .., ..] each
    parts = []
    for begin, end, band in zip(begins[:n], ends[:n], weights[:n], strict=True):
        read = g.op("Slice", x, begin, end, along)
        pair = (read, band) if axis == 3 else (band, read)  # [1, 1, ..] broadcasts
        parts.append(g.op("MatMul", *pair))
    y = parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=axis)
    if operands.count is not None:
        y = g.op("Slice", y, g.const([0], np.int64, "zero"), operands.count, along)
    return round_clip(g, y)


def _nearest_pixels(g: Graph, hw: str, sizes: str, window: tuple[str, str]) -> str:
    """Pillow's NEAREST resize of the uint8 NHWC input, crop `window` only, as float NCHW.

    Per axis, the source lines are `pil_resample.nearest_sources` (Pillow's running double sum
    of the scale, here a CumSum, truncated), gathered from the input. Not a Resize node: its
    nearest modes compute each source from (i + 0.5) * scale and take the line after Pillow's
    where that is a whole number and Pillow's sum has drifted below it (224 -> 48 px: 6 rows).
    """
    zero, one = g.const(0, np.int64, "zero"), g.const(1, np.int64, "one")
    first = g.const([0], np.int64, "axis")
    x = INPUT_NAME
    per_axis = zip(*(g.split(t, 2) for t in (hw, sizes, *window)), strict=True)
    for axis, (n_in, n_out, begin, end) in enumerate(per_axis, start=1):
        scale = g.op(
            "Div",
            g.op("Cast", n_in, to=TensorProto.DOUBLE),
            g.op("Cast", n_out, to=TensorProto.DOUBLE),
        )
        index = g.op("Range", zero, g.op("Squeeze", n_out, first), one)
        halved = g.op("Mul", scale, g.const([0.5], np.float64, "half"))
        steps = g.op("Where", g.op("Equal", index, zero), halved, scale)
        sums = g.op("Floor", g.op("CumSum", steps, first))
        source = g.op("Min", g.op("Cast", sums, to=TensorProto.INT64), g.op("Sub", n_in, one))
        x = g.op("Gather", x, g.op("Slice", source, begin, end, first), axis=axis)
    return to_float(g, x)


def _pillow_resize(
    g: Graph, hw: str, sizes: str, window: tuple[str, str], spec: PreprocessSpec
) -> str:
    """The uint8 NHWC input resized to `sizes` (int64 [2]) the way Pillow does it, as float NCHW,
    keeping only the crop `window` ([begin, end) per (h, w), in resized coordinates).

    Pillow resamples in two 1-D passes and rounds and clips to uint8 after each one; on sharp
    content (noise, dithered palette images) cubic overshoot clipped between the passes moves
    results by up to ~25 levels, which one 2-D Resize cannot reproduce. Pillow >= 13 runs the
    vertical pass first when the height shrinks by more than twice as many pixels as the width
    (array_impl.pass_order); the order depends on the runtime size, so an If node picks it.
    Both passes sit in its branches so that both branches end in the same shape, the crop:
    TensorRT's If requires that unless the condition is a build-time constant. (Picking the
    order by the layout instead, transposing the image to [N, C, W, H] in a small If, was
    ~0.04 ms a run faster on CPU but gives branches of different shapes.)
    Each output row or column of a 1-D pass depends only on its own input line, so cropping the
    first pass's axis before the second pass is exact and spares the second pass the rows or
    columns the center crop throws away; the banded passes go further and compute only the
    window's outputs in both passes. NEAREST picks pixels (`_nearest_pixels`).
    """
    if spec.interpolation == "nearest":
        return _nearest_pixels(g, hw, sizes, window)
    lines, operands = _pass_operands(g, hw, sizes, window, spec)
    x = to_float(g, input_window(g, *lines))

    def passes(b: Graph, vertical_first: bool) -> str:
        y = x
        for axis in SPATIAL if vertical_first else SPATIAL[::-1]:
            y = _banded_pass(b, y, operands[axis])
        return y

    if _PILLOW_MAJOR < 13:  # horizontal pass first, always (array_impl.pass_order)
        return passes(g, vertical_first=False)
    # vertical first iff dh > 0 and dh > 2 * dw, i.e. dh > max(0, 2 * dw), with dh, dw the
    # pixels each side loses (If takes a one-element condition)
    zero, two = g.const([0], np.int64, "zero"), g.const([2], np.int64, "two")
    dh, dw = g.split(g.op("Sub", hw, sizes), 2)
    cond = g.op("Greater", dh, g.op("Max", g.op("Mul", dw, two), zero))
    branches = {}
    for vertical_first in (True, False):
        b = g.branch()
        result = passes(b, vertical_first)
        branches[vertical_first] = b.subgraph(
            "vertical_first" if vertical_first else "horizontal_first", result
        )
    return g.op(
        "If",
        cond,
        name="pillow_pass_order",
        then_branch=branches[True],
        else_branch=branches[False],
    )


def build_preprocess_model(
    spec: PreprocessSpec, *, opset: int = 20, ir_version: int | None = None
) -> onnx.ModelProto:
    """uint8 NHWC images of any size -> the model's float32 NCHW input, matching timm's PIL path.

    The resize is Pillow's: two 1-D passes with Pillow's quantised weights, computed in the
    graph for the runtime size (`_banded_pass`), each followed by round half up + clip to uint8
    levels as Pillow stores them, in Pillow's pass order (`_pillow_resize`); then pad and
    center crop as spec.geometry, then ToTensor + Normalize with the spec's mean/std. Only
    float32 sums separate it from Pillow (the separable graph's bound, bit-identical to it):
    within 1 level on >= 99.9% of values, sums that sit on x.5 (dithered palette images)
    rounding either way (docs/preprocessing.md has the measurements).
    """
    check_opset(opset)
    if spec.interpolation not in BAKED_FILTERS:
        raise ValueError(
            f"interpolation {spec.interpolation!r} is not in the baked graph: it supports "
            f"{', '.join(BAKED_FILTERS)} (the separable graph takes any Pillow filter)"
        )
    g = Graph()
    hw = g.op(
        "Slice",
        g.op("Shape", INPUT_NAME),
        g.const([1], np.int64, "begin"),
        g.const([3], np.int64, "end"),
    )
    sizes = _resized_size(g, hw, spec)
    pads, starts = _dynamic_pad_crop(g, sizes, spec)
    # the crop in resized coordinates: where an axis gets padded, its start is 0 and it keeps
    # the whole resized extent; elsewhere it keeps input_size from the start
    end = g.op("Add", starts, g.op("Min", sizes, g.const(spec.input_size, np.int64, "crop_size")))
    x = _pillow_resize(g, hw, sizes, (starts, end), spec)
    pad_crop_normalise(g, x, spec, pads, None)
    return g.model(
        "preprocess",
        [image_input("H", "W")],
        OUTPUT_NAME,
        spec.input_size,
        opset,
        ir_version,
        "timm eval transform (Pillow's resampling as banded MatMuls, pad, crop, normalise)",
    )
