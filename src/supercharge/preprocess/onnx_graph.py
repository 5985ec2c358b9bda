"""Building blocks for timm's eval transform as ONNX graphs, node by node with onnx.helper.

torch's exporters get antialiased bicubic wrong or refuse it, and ONNX's antialiased Resize is
only close to Pillow (docs/preprocessing.md), so the resampling is
Pillow's own: its two 1-D passes with its 22-bit quantised weights, each pass as banded MatMuls
(one per BAND outputs, over the input span their weights touch) computing only the rows or
columns the center crop keeps, rounded to uint8 levels between passes. Three graphs, one module
each, share the builder and the steps here (cast, round/clip, pad/crop, normalise):

- baked_graph.build_preprocess_model: the "baked" graph, one for every image size; the resize
  target, padding, crop origin and Pillow's weights are computed inside it from the runtime
  shape, exactly as `PreprocessSpec.geometry` and `pil_resample.weights` do in Python, and the
  passes run in the order Pillow takes for that shape (an If node).
- separable_graph.build_separable_model: the same passes for one fixed image size, the weights
  constants; bit-identical to the baked graph on that size, and a little faster.
- seed_graph.build_seed_model: the blog post's baked preprocessing, kept to measure its cost.
No graph has an antialiased Resize node, which TensorRT rejects.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from supercharge.preprocess.spec import PreprocessSpec

INPUT_NAME = "image"
OUTPUT_NAME = "pixel_values"
RESIZE_NODE = "resize"
MIN_OPSET = 18  # Resize `axes`, Pad `axes`
BAND = 32  # outputs per MatMul in a pass (lite0, 600x400 -> 224: 32 fastest of 32-112)


# Every graph works on NCHW float after its input step.
SPATIAL = (2, 3)  # axes of (H, W)
CHANNEL_SHAPE = (1, 3, 1, 1)  # broadcasts a per-channel vector


class Graph:
    """A tiny node builder: unique tensor names, constants as initializers."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = [0]  # shared with branches: names stay unique across subgraphs

    def _name(self, hint: str) -> str:
        self._count[0] += 1
        return f"{hint}_{self._count[0]}"

    def branch(self) -> Graph:
        """A builder for an If branch, naming from the same counter (names stay unique).

        The branch keeps its own constants: onnx.compose.merge_models (onnx 1.23) prefixes a
        subgraph before it learns the outer initializers' new names, so a branch that read an
        outer initializer would point at a name that no longer exists after a merge. Outer node
        outputs are renamed correctly and may be read.
        """
        sub = Graph()
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


def check_opset(opset: int) -> None:
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: use {MIN_OPSET} or newer (Resize/Pad axes)")


def image_input(h: int | str, w: int | str) -> onnx.ValueInfoProto:
    """uint8 [N, H, W, 3] RGB, the layout decoders produce (no host-side transpose needed)."""
    return helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", h, w, 3])


# --- shared steps -------------------------------------------------------------------------------


def to_float(g: Graph, x: str) -> str:
    """uint8 NHWC -> float NCHW: the transpose first, on a quarter of float32's bytes."""
    return g.op("Cast", g.op("Transpose", x, perm=[0, 3, 1, 2]), to=TensorProto.FLOAT)


def input_window(g: Graph, begin: str | list[int], end: str | list[int]) -> str:
    """The uint8 NHWC input cut to rows and columns [begin, end) (H, W), before anything else.

    The center crop keeps ~60% of a photo's pixels and the resize reads only a few past its
    edge, so transposing and casting just that window is about half the work: on a 600x400
    photo the Transpose and Cast were the two most expensive nodes of the front end.
    """
    begin = begin if isinstance(begin, str) else g.const(begin, np.int64, "window")
    end = end if isinstance(end, str) else g.const(end, np.int64, "window")
    return g.op("Slice", INPUT_NAME, begin, end, g.const([1, 2], np.int64, "window_axes"))


def round_clip(g: Graph, x: str) -> str:
    """Back to uint8 levels as Pillow stores them: floor(x + 0.5), clipped to [0, 255].

    Pillow rounds half up ((acc + 2^21) >> 22); ONNX Round is half to even, which differs on
    exact halves, frequent in bilinear upscales (weights 0.25 / 0.75). Kept as float: the
    next step needs float.
    """
    half_up = g.op("Floor", g.op("Add", x, g.const(0.5, np.float32, "half")))
    return g.op(
        "Clip", half_up, g.const(0.0, np.float32, "zero"), g.const(255.0, np.float32, "max")
    )


def as_tensor(g: Graph, value: str | np.ndarray) -> str:
    return value if isinstance(value, str) else g.const(value, np.int64, "geometry")


def normalise(g: Graph, x: str, mean: tuple[float, ...], std: tuple[float, ...], out: str) -> str:
    """(x / 255 - mean) / std on NCHW, op for op as ToTensor + Normalize do it in float32."""
    shape = CHANNEL_SHAPE
    x = g.op("Div", x, g.const(255.0, np.float32, "levels"))
    x = g.op("Sub", x, g.const(np.reshape(mean, shape), np.float32, "mean"))
    return g.op("Div", x, g.const(np.reshape(std, shape), np.float32, "std"), out=out)


def pad_crop_normalise(
    g: Graph,
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
        fill = np.asarray(spec.fill, dtype=np.float32).reshape(CHANNEL_SHAPE)
        if fill.any():  # Pad takes one scalar: pad x - fill with zeros, then add fill back
            x = g.op("Sub", x, g.const(fill, np.float32, "fill"))
        zero = g.const(0.0, np.float32, "zero")
        x = g.op("Pad", x, as_tensor(g, pads), zero, g.const(SPATIAL, np.int64, "axes"))
        if fill.any():
            x = g.op("Add", x, g.const(fill, np.float32, "fill"))
    if starts is not None:
        begin = as_tensor(g, starts)
        end = g.op("Add", begin, g.const(spec.input_size, np.int64, "crop_size"))
        x = g.op("Slice", x, begin, end, g.const(SPATIAL, np.int64, "axes"))
    return normalise(g, x, spec.mean, spec.std, out=OUTPUT_NAME)
