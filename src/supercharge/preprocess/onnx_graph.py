"""timm's eval transform as ONNX graphs, built node by node with onnx.helper.

torch's exporters get antialiased bicubic wrong or refuse it, and ONNX's antialiased Resize is
only close to Pillow (GUIDE.md, "Preprocessing: PIL vs ONNX Resize"), so the resampling is
Pillow's own: its two 1-D passes with its 22-bit quantised weights, each pass as banded MatMuls
(one per BAND outputs, over the input span their weights touch) computing only the rows or
columns the center crop keeps, rounded to uint8 levels between passes. Three variants share one
set of helpers (cast, round/clip, pad/crop, normalise):

- `build_preprocess_model`: the "baked" graph. One graph for every image size: the resize
  target, padding, crop origin and Pillow's weights are computed inside it from the runtime
  shape, exactly as `PreprocessSpec.geometry` and `pil_resample.weights` do in Python, and the
  passes run in the order Pillow takes for that shape (an If node).
- `build_separable_model`: the same passes for one fixed image size, the weights constants;
  bit-identical to the baked graph on that size, and a little faster (nothing to compute).
- `build_seed_model`: the blog post's baked preprocessing, kept on purpose to measure its cost.
No variant has an antialiased Resize node, which TensorRT rejects.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from supercharge.preprocess import pil_resample
from supercharge.preprocess.array_impl import _PILLOW_MAJOR, pass_order
from supercharge.preprocess.spec import PreprocessSpec

INPUT_NAME = "image"
OUTPUT_NAME = "pixel_values"
RESIZE_NODE = "resize"
MIN_OPSET = 18  # Resize `axes`, Pad `axes`
BAND = 32  # outputs per MatMul in a pass (lite0, 600x400 -> 224: 32 fastest of 32-112)
BAKED_FILTERS = ("bicubic", "bilinear", "nearest")  # what the any-size graph computes

# Pillow's NEAREST takes source pixel floor((i + 0.5) * in / out); Resize's half_pixel gives
# (i + 0.5) * in / out - 0.5, so rounding that half up ("round_prefer_ceil") picks the same
# pixel (checked against Pillow in the tests). No arithmetic, nothing to round: one Resize.
NEAREST_ATTRS: dict[str, Any] = {"mode": "nearest", "nearest_mode": "round_prefer_ceil"}
# What torch F.interpolate(mode="bicubic", align_corners=False) does, i.e. what the seed baked in.
SEED_RESIZE_ATTRS: dict[str, Any] = {"mode": "cubic", "cubic_coeff_a": -0.75, "antialias": 0}


# Every graph works on NCHW float after its input step.
_SPATIAL = (2, 3)  # axes of (H, W)
_CHANNEL_SHAPE = (1, 3, 1, 1)  # broadcasts a per-channel vector


class _Graph:
    """A tiny node builder: unique tensor names, constants as initializers."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = [0]  # shared with branches: names stay unique across subgraphs

    def _name(self, hint: str) -> str:
        self._count[0] += 1
        return f"{hint}_{self._count[0]}"

    def branch(self) -> _Graph:
        """A builder for an If branch, naming from the same counter (names stay unique).

        The branch keeps its own constants: onnx.compose.merge_models (onnx 1.23) prefixes a
        subgraph before it learns the outer initializers' new names, so a branch that read an
        outer initializer would point at a name that no longer exists after a merge. Outer node
        outputs are renamed correctly and may be read.
        """
        sub = _Graph()
        sub._count = self._count
        return sub

    def subgraph(self, name: str, output: str) -> onnx.GraphProto:
        """This builder's nodes and constants as an If branch: no inputs, one float output."""
        out_info = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
        return helper.make_graph(self.nodes, name, [], [out_info], initializer=self.initializers)

    def const(self, value: Any, dtype: Any, hint: str = "const") -> str:
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(
        self, op_type: str, *inputs: str, out: str | None = None, name: str | None = None, **attrs
    ) -> str:
        node_name = name or self._name(f"{op_type.lower()}_node")
        output = out or self._name(op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [output], name=node_name, **attrs)
        )
        return output

    def split(self, x: str, parts: int, axis: int = 0) -> list[str]:
        """Split into `parts` equal pieces along `axis`: one node, `parts` outputs."""
        outputs = [self._name("split") for _ in range(parts)]
        node = helper.make_node(
            "Split", [x], outputs, name=self._name("split_node"), axis=axis, num_outputs=parts
        )
        self.nodes.append(node)
        return outputs

    def model(
        self,
        graph_name: str,
        inputs: list[onnx.ValueInfoProto],
        output: str,
        out_hw: tuple[int, int],
        opset: int,
        ir_version: int | None,
        doc: str,
    ) -> onnx.ModelProto:
        out_info = helper.make_tensor_value_info(
            output, TensorProto.FLOAT, ["N", 3, out_hw[0], out_hw[1]]
        )
        graph = helper.make_graph(
            self.nodes, graph_name, inputs, [out_info], initializer=self.initializers
        )
        opsets = [helper.make_opsetid("", opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="supercharge")
        model.ir_version = ir_version or helper.find_min_ir_version_for(opsets)
        model.doc_string = doc
        onnx.checker.check_model(model, full_check=True)
        return model


def _check_opset(opset: int) -> None:
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: use {MIN_OPSET} or newer (Resize/Pad axes)")


def _image_input(h: int | str, w: int | str) -> onnx.ValueInfoProto:
    """uint8 [N, H, W, 3] RGB, the layout decoders produce (no host-side transpose needed)."""
    return helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", h, w, 3])


# --- shared steps -------------------------------------------------------------------------------


def _to_float(g: _Graph, x: str) -> str:
    """uint8 NHWC -> float NCHW: the transpose first, on a quarter of float32's bytes."""
    return g.op("Cast", g.op("Transpose", x, perm=[0, 3, 1, 2]), to=TensorProto.FLOAT)


def _input_window(g: _Graph, begin: str | list[int], end: str | list[int]) -> str:
    """The uint8 NHWC input cut to rows and columns [begin, end) (H, W), before anything else.

    The center crop keeps ~60% of a photo's pixels and the resize reads only a few past its
    edge, so transposing and casting just that window is about half the work: on a 600x400
    photo the Transpose and Cast were the two most expensive nodes of the front end.
    """
    begin = begin if isinstance(begin, str) else g.const(begin, np.int64, "window")
    end = end if isinstance(end, str) else g.const(end, np.int64, "window")
    return g.op("Slice", INPUT_NAME, begin, end, g.const([1, 2], np.int64, "window_axes"))


def _round_clip(g: _Graph, x: str) -> str:
    """Back to uint8 levels as Pillow stores them: floor(x + 0.5), clipped to [0, 255].

    Pillow rounds half up ((acc + 2^21) >> 22); ONNX Round is half to even, which differs on
    exact halves, frequent in bilinear upscales (weights 0.25 / 0.75). Kept as float: the
    next step needs float.
    """
    half_up = g.op("Floor", g.op("Add", x, g.const(0.5, np.float32, "half")))
    return g.op(
        "Clip", half_up, g.const(0.0, np.float32, "zero"), g.const(255.0, np.float32, "max")
    )


def _as_tensor(g: _Graph, value: str | np.ndarray) -> str:
    return value if isinstance(value, str) else g.const(value, np.int64, "geometry")


def _normalise(g: _Graph, x: str, mean: tuple[float, ...], std: tuple[float, ...], out: str) -> str:
    """(x / 255 - mean) / std on NCHW, op for op as ToTensor + Normalize do it in float32."""
    shape = _CHANNEL_SHAPE
    x = g.op("Div", x, g.const(255.0, np.float32, "levels"))
    x = g.op("Sub", x, g.const(np.reshape(mean, shape), np.float32, "mean"))
    return g.op("Div", x, g.const(np.reshape(std, shape), np.float32, "std"), out=out)


def _pad_crop_normalise(
    g: _Graph,
    x: str,
    spec: PreprocessSpec,
    pads: str | np.ndarray | None,
    starts: str | np.ndarray | None,
) -> str:
    """On NCHW x: pad (None: never needed), center-crop from `starts` (None: no crop), normalise.

    `pads` is [top, left, bottom, right] and `starts` [top, left], as int64 tensors computed in
    the graph or as constants when the geometry is known in Python.
    """
    if pads is not None:
        fill = np.asarray(spec.fill, dtype=np.float32).reshape(_CHANNEL_SHAPE)
        if fill.any():  # Pad takes one scalar: pad x - fill with zeros, then add fill back
            x = g.op("Sub", x, g.const(fill, np.float32, "fill"))
        zero = g.const(0.0, np.float32, "zero")
        x = g.op("Pad", x, _as_tensor(g, pads), zero, g.const(_SPATIAL, np.int64, "axes"))
        if fill.any():
            x = g.op("Add", x, g.const(fill, np.float32, "fill"))
    if starts is not None:
        begin = _as_tensor(g, starts)
        end = g.op("Add", begin, g.const(spec.input_size, np.int64, "crop_size"))
        x = g.op("Slice", x, begin, end, g.const(_SPATIAL, np.int64, "axes"))
    return _normalise(g, x, spec.mean, spec.std, out=OUTPUT_NAME)


# --- the baked graph ----------------------------------------------------------------------------


def _may_pad(spec: PreprocessSpec) -> bool:
    """Whether any image size can need padding: border mode, or scale_size below input_size."""
    return spec.crop_mode == "border" or any(
        s < t for s, t in zip(spec.scale_size, spec.input_size, strict=True)
    )


def _resized_size(g: _Graph, hw: str, spec: PreprocessSpec) -> str:
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


def _dynamic_pad_crop(g: _Graph, sizes: str, spec: PreprocessSpec) -> tuple[str | None, str]:
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


def _filter(g: _Graph, x: str, interpolation: str) -> str:
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
    g: _Graph, hw: str, sizes: str, begin: str, bands: int, spec: PreprocessSpec
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
        g: _Graph,
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
    g: _Graph, hw: str, sizes: str, window: tuple[str, str], spec: PreprocessSpec
) -> tuple[tuple[str, str], dict[int, _PassOperands]]:
    """Both axes' weights (`_pass_weights`), cut per axis to its own span, and the input window
    ([begin, end) per (H, W)) the bands read, band starts and ends relative to it."""
    lo, hi = window
    bands = {axis: -(-most // BAND) for axis, most in zip(_SPATIAL, spec.input_size, strict=True)}
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
    for index, axis in enumerate(_SPATIAL):
        w_i = g.op("Slice", weights_by_axis[index], zero, spans_by_axis[index], last_axis)
        lines_i, count_i = lines_by_axis[index], counts[index]
        operands[axis] = _PassOperands(g, w_i, lines_i, axis, bands[axis], most, count_i)
    return window, operands


def _banded_pass(g: _Graph, x: str, operands: _PassOperands) -> str:
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
    return _round_clip(g, y)


def _pillow_resize(
    g: _Graph, hw: str, sizes: str, window: tuple[str, str], spec: PreprocessSpec
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
    window's outputs in both passes. NEAREST picks pixels (no arithmetic, nothing to round):
    one 2-D Resize is exact.
    """
    begin, end = window
    if spec.interpolation == "nearest":
        x = g.op(
            "Resize",
            _to_float(g, INPUT_NAME),
            "",
            "",
            sizes,
            name=RESIZE_NODE,
            axes=[2, 3],
            coordinate_transformation_mode="half_pixel",
            **NEAREST_ATTRS,
        )
        return g.op("Slice", x, begin, end, g.const([2, 3], np.int64, "axes"))
    lines, operands = _pass_operands(g, hw, sizes, window, spec)
    x = _to_float(g, _input_window(g, *lines))

    def passes(b: _Graph, vertical_first: bool) -> str:
        y = x
        for axis in _SPATIAL if vertical_first else _SPATIAL[::-1]:
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
    _check_opset(opset)
    if spec.interpolation not in BAKED_FILTERS:
        raise ValueError(
            f"interpolation {spec.interpolation!r} is not in the baked graph: it supports "
            f"{', '.join(BAKED_FILTERS)} (the separable graph takes any Pillow filter)"
        )
    g = _Graph()
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
    _pad_crop_normalise(g, x, spec, pads, None)
    return g.model(
        "preprocess",
        [_image_input("H", "W")],
        OUTPUT_NAME,
        spec.input_size,
        opset,
        ir_version,
        "timm eval transform (Pillow's resampling as banded MatMuls, pad, crop, normalise)",
    )


# --- the seed's graph ---------------------------------------------------------------------------


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

    _check_opset(opset)
    g = _Graph()
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
    _normalise(g, x, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, out=OUTPUT_NAME)
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


# --- the separable graph ------------------------------------------------------------------------


def _bands(w: np.ndarray) -> list[tuple[int, int, int, int]]:
    """[out, in] banded weights -> (out_lo, out_hi, in_lo, in_hi) per BAND outputs: the input
    span the band's nonzero weights touch."""
    bands = []
    for lo in range(0, w.shape[0], BAND):
        hi = min(lo + BAND, w.shape[0])
        used = np.flatnonzero(np.any(w[lo:hi] != 0, axis=0))
        bands.append((lo, hi, int(used[0]), int(used[-1]) + 1))
    return bands


class _FixedPass:
    """One pass of the separable graph, planned in Python: Pillow's weights for the outputs
    the crop keeps, their bands (`_bands`) and the input lines [lo, hi) they read."""

    def __init__(self, in_size: int, kept: tuple[int, int], n_out: int, spec: PreprocessSpec):
        begin, end = kept
        if in_size == n_out:  # Pillow skips the pass: only the crop is left
            self.weights, self.bands, self.lines = None, [], (begin, end)
            return
        w = pil_resample.weights(in_size, n_out, spec.interpolation, (begin, end))
        self.weights = w / pil_resample.ONE
        self.bands = _bands(self.weights)
        self.lines = (min(b[2] for b in self.bands), max(b[3] for b in self.bands))


def _resample_pass(g: _Graph, x: str, plan: _FixedPass, axis: int) -> str:
    """One Pillow 1-D pass over NCHW `axis` (2: H, 3: W), on input already cut to `plan.lines`:
    the outputs the crop keeps, then round + clip.

    Pillow's weights are banded (a few taps per output), so a dense [in, out] MatMul spends
    almost all of its multiplications on zeros: here each BAND of outputs is one MatMul over
    just the input span its weights touch, and the bands are concatenated. Measured on a
    600x400 photo to 224x224: 0.34 ms for both passes, against 1.06 ms dense and 1.1 ms for
    two antialiased Resize nodes; exact against Pillow (float32 sums of 22-bit weights).
    """
    if plan.weights is None:  # the window was the whole pass
        return x
    first, last = plan.lines
    parts = []
    for lo, hi, s, e in plan.bands:
        span = x
        if (s, e) != (first, last):
            span = g.op(
                "Slice",
                x,
                g.const([s - first], np.int64, "begin"),
                g.const([e - first], np.int64, "end"),
                g.const([axis], np.int64, "axis"),
            )
        band = plan.weights[lo:hi, s:e]
        if axis == 3:  # [.., H, span] @ [span, band]
            parts.append(g.op("MatMul", span, g.const(band.T, np.float32, "weights_w")))
        else:  # [band, span] @ [.., span, W]
            parts.append(g.op("MatMul", g.const(band, np.float32, "weights_h"), span))
    x = parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=axis)
    return _round_clip(g, x)


def build_separable_model(
    spec: PreprocessSpec,
    in_h: int,
    in_w: int,
    *,
    opset: int = 20,
    ir_version: int | None = None,
) -> onnx.ModelProto:
    """uint8 NHWC images of one fixed size -> model input, with no Resize node at all.

    Pillow's two 1-D passes as banded MatMuls with its quantised weights (pil_resample.weights),
    each computing only the rows or columns the center crop keeps and followed by round + clip as
    Pillow rounds between passes, in the order of `array_impl.pass_order` (Pillow's own rule).
    The geometry is static, so pads and crop are constants. Any Pillow filter works here.
    """
    _check_opset(opset)
    if not (isinstance(in_h, int) and isinstance(in_w, int) and in_h > 0 and in_w > 0):
        raise ValueError(f"image size ({in_h!r}, {in_w!r}) must be two positive integers")
    if spec.interpolation not in (*pil_resample.FILTERS, "nearest"):
        raise ValueError(f"interpolation {spec.interpolation!r} is not a Pillow filter")
    geo = spec.geometry(in_h, in_w)
    out_h, out_w = geo.resized
    left, top, right, bottom = geo.pad
    g = _Graph()

    def kept(origin: int, padded: bool, n_out: int, target: int) -> tuple[int, int]:
        # a padded axis keeps all it has (the pad fills it to the target), another the crop
        return (0, n_out) if padded else (origin, origin + target)

    th, tw = geo.out
    plans = {
        3: _FixedPass(in_w, kept(geo.left, bool(left or right), out_w, tw), out_w, spec),
        2: _FixedPass(in_h, kept(geo.top, bool(top or bottom), out_h, th), out_h, spec),
    }
    lines = [plans[2].lines, plans[3].lines]
    x = INPUT_NAME
    if lines != [(0, in_h), (0, in_w)]:
        x = _input_window(g, [lo for lo, _ in lines], [hi for _, hi in lines])
    x = _to_float(g, x)
    order = (3, 2) if pass_order(in_h, in_w, out_h, out_w) == "hv" else (2, 3)
    for axis in order:
        x = _resample_pass(g, x, plans[axis], axis)
    pads = np.array([top, left, bottom, right]) if any(geo.pad) else None
    _pad_crop_normalise(g, x, spec, pads, None)
    return g.model(
        "separable_preprocess",
        [_image_input(in_h, in_w)],
        OUTPUT_NAME,
        spec.input_size,
        opset,
        ir_version,
        f"timm eval transform for {in_h}x{in_w} images as Pillow's two passes (MatMul)",
    )
