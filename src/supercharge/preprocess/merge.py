"""One ONNX file from raw pixels to logits: a preprocessing graph joined to the exported model.

The preprocessing graph is built with the model's own opset and IR version (merge_models refuses
a mismatch), joined with onnx.compose.merge_models, checked, and cached as an "onnx-merged"
artifact keyed by everything that changes it: the model's ONNX artifact, the variant, the
preprocessing spec, the image size (separable only) and the tool versions. A model whose weights
are in external data (above 2 GB) is merged without them, and its model.onnx.data is copied.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx

from supercharge.cache import Artifact, ArtifactCache, ArtifactSpec
from supercharge.errors import SuperchargeError
from supercharge.export import (
    INPUT_NAME,
    MODEL_FILE,
    OUTPUT_NAME,
    export_onnx,
    versions,
    working_dir,
)
from supercharge.models import ModelBundle, ModelRef, load_bundle
from supercharge.preprocess import baked_graph, onnx_graph, seed_graph, separable_graph
from supercharge.preprocess.spec import PreprocessSpec

VARIANTS = ("baked", "seed", "separable")
KIND = "onnx-merged"
DATA_FILE = MODEL_FILE + ".data"
GRAPH_REVISION = 14  # bump when a *_graph.py changes what it builds, so caches rebuild
# 2: Pillow's two 1-D resize passes, ordered by an If node (branches hold their own constants)
# 3: NCHW resize, the first pass cropped to the center-crop window before the second
# 4: separable: banded MatMuls over the crop window only
# 5: baked: the same banded MatMuls, weights computed in the graph for any image size
# 6: the same numbers in fewer nodes (Split per operand, sign-magnitude rounding)
# 7: baked weights in Pillow's compact layout, both axes at once, scattered into the bands
# 8: both graphs cut the uint8 input to the lines the bands read before transposing it
# 9: baked: the weight chain in [axis, band, output, tap] layout, ~25 nodes fewer; no crop
#    Slice when the bands compute exactly the crop
# 10: (reverted) the pass order picked by the layout, the passes out of the If
# 11: revision 9's graphs again (caches built at 10 must not be served)
# 12: the weights' rounding without a float-to-int Cast (its rounding is unspecified in ONNX)
# 13: weights of outputs past the image's edge stay finite (their sum may be <= 0)
# 14: NEAREST picks Pillow's source pixels (a running sum of the scale), not Resize's
_PREFIX = "pre_"
_PROTOBUF_LIMIT = 2**31 - 1
_SMALL_ENOUGH = _PROTOBUF_LIMIT - 64 * 2**20  # headroom for the graph around the weights

_INPUT_LAYOUTS = {
    "baked": "uint8 NHWC RGB, any H and W",
    "seed": "float32 NCHW RGB 0..255, any H and W",
    "separable": "uint8 NHWC RGB, fixed H and W",
}


def _spec_for(model: ModelBundle | ModelRef, onnx_artifact: Artifact) -> PreprocessSpec:
    """From the bundle, else from the export's manifest (no model creation), else load it."""
    if isinstance(model, ModelBundle):
        return PreprocessSpec.from_data_config(model.data_config)
    config = onnx_artifact.manifest.get("data_config")
    if config is None:
        config = load_bundle(model).data_config
    return PreprocessSpec.from_data_config(config)


def _check_args(variant: str, image_size: tuple[int, int] | None) -> tuple[int, int] | None:
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
    if variant != "separable":
        if image_size is not None:
            raise ValueError(f"image_size is only for the separable variant, not {variant!r}")
        return None
    if image_size is None:
        raise ValueError("variant 'separable' needs image_size=(height, width)")
    if len(image_size) != 2 or not all(isinstance(s, int) and s > 0 for s in image_size):
        raise ValueError(f"image_size {image_size!r} must be two positive integers (h, w)")
    return (image_size[0], image_size[1])


def build_preprocess(
    spec: PreprocessSpec,
    variant: str,
    image_size: tuple[int, int] | None,
    opset: int,
    ir_version: int,
) -> onnx.ModelProto:
    """The preprocessing graph of `variant` for a model with this opset and IR version."""
    if variant == "baked":
        return baked_graph.build_preprocess_model(spec, opset=opset, ir_version=ir_version)
    if variant == "seed":
        return seed_graph.build_seed_model(spec, opset=opset, ir_version=ir_version)
    assert image_size is not None
    return separable_graph.build_separable_model(
        spec, *image_size, opset=opset, ir_version=ir_version
    )


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ValueError("the model imports no default-domain opset")


def _check_input_size(model: onnx.ModelProto, input_name: str, spec: PreprocessSpec) -> None:
    """The model must take the spec's input size, or the graphs would join but not run."""
    for value in model.graph.input:
        if value.name == input_name:
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim[2:]]
            if all(dims) and tuple(dims) != spec.input_size:
                raise SuperchargeError(
                    f"model input {input_name!r} is {tuple(dims)} but the data config says "
                    f"{spec.input_size}: re-export the model"
                )
            return
    raise SuperchargeError(f"the ONNX model has no input {input_name!r}: re-export the model")


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs: list[onnx.GraphProto] = []
    for attribute in node.attribute:
        if attribute.HasField("g"):
            graphs.append(attribute.g)
        graphs.extend(attribute.graphs)
    return graphs


def prefix_names(graph: onnx.GraphProto, prefix: str, keep: set[str]) -> None:
    """Prefix every value and node name in `graph` and its subgraphs (If branches), in place,
    except the names in `keep`.

    onnx.compose.add_prefix (onnx 1.23) renames a branch before it has seen the outer graph's
    initializers, so a branch reading an outer constant is left pointing at the old name; here
    every name is collected first, then renamed everywhere.
    """
    names: set[str] = set()

    def collect(g: onnx.GraphProto) -> None:
        for values in (g.input, g.output, g.initializer, g.value_info):
            names.update(v.name for v in values)
        for node in g.node:
            names.update(node.output)
            for sub in _subgraphs(node):
                collect(sub)

    def rename(g: onnx.GraphProto) -> None:
        for values in (g.input, g.output, g.initializer, g.value_info):
            for v in values:
                if v.name in names:
                    v.name = prefix + v.name
        for node in g.node:
            if node.name:
                node.name = prefix + node.name
            node.input[:] = [prefix + n if n in names else n for n in node.input]
            node.output[:] = [prefix + n if n in names else n for n in node.output]
            for sub in _subgraphs(node):
                rename(sub)

    collect(graph)
    names -= keep
    names.discard("")
    rename(graph)


def merge(
    pre: onnx.ModelProto,
    model: onnx.ModelProto,
    input_name: str,
    weights_dir: Path | None = None,
) -> onnx.ModelProto:
    """pre's pixel_values feed the model's `input_name`; input 'image' and the model's outputs.

    Only the preprocessing side is prefixed (the model keeps its names, so 'logits' stays), and
    its input 'image' keeps its name. weights_dir: the folder of a model loaded with
    load_external_data=False; merge_models checks the merged proto in memory, and the checker
    looks for external data files relative to the working directory.
    """
    pre = onnx.ModelProto.FromString(pre.SerializeToString())  # prefix a copy
    prefix_names(pre.graph, _PREFIX, keep={onnx_graph.INPUT_NAME})
    with contextlib.nullcontext() if weights_dir is None else working_dir(weights_dir):
        merged = onnx.compose.merge_models(
            pre,
            model,
            io_map=[(_PREFIX + onnx_graph.OUTPUT_NAME, input_name)],
            doc_string=f"{pre.doc_string}, then {model.graph.name or 'the model'}",
        )
    # merge_models (onnx 1.23) checks the two opset lists agree but keeps both: dedupe them
    opsets = {entry.domain: entry.version for entry in merged.opset_import}
    del merged.opset_import[:]
    merged.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
    return merged


def _weights_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) or t.ByteSize() for t in model.graph.initializer)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor in `graph`: initializers and node attributes, in subgraphs (If branches) too."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
        for sub in _subgraphs(node):
            yield from _tensors(sub)


def external_files(model: onnx.ModelProto) -> list[str]:
    """The files (relative to the model file) that the weights of a model loaded with
    load_external_data=False still live in; [] when they are all in the proto.

    Refused unless each is a plain name in the model's folder, as the exports and
    quantize_static write them: a merged artifact copies them into its own folder.
    """
    files: set[str] = set()
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if not location or Path(location).name != location or location in (".", ".."):
            raise SuperchargeError(
                f"tensor {tensor.name!r} has its data at {location!r}, not a file beside the "
                "model: re-export the model"
            )
        files.add(location)
    return sorted(files)


def save_checked(
    model: onnx.ModelProto, path: Path, external_data: bool, weights_dir: Path | None = None
) -> None:
    """Save (weights beside it in model.onnx.data when asked or when over 2 GB), then check.

    weights_dir: where the files of a model loaded with load_external_data=False are. Its
    weights are never read into memory (protobuf cannot hold more than 2 GB, and a copy of a
    large model's weights in one process is gigabytes more): their files are copied beside
    `path` as they are, and the tensors keep pointing at them (same names, same offsets).
    """
    on_disk = external_files(model)
    if on_disk:
        if weights_dir is None:
            raise ValueError("the model's weights are in external files: give weights_dir")
        for name in on_disk:
            shutil.copyfile(weights_dir / name, path.parent / name)
        onnx.save_model(model, str(path))  # the rest (the preprocessing's constants) inline
    elif external_data or _weights_bytes(model) > _SMALL_ENOUGH:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=DATA_FILE,
        )
    else:
        onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))  # by path: works above 2 GB too


def merged_model(
    model: ModelBundle | ModelRef,
    cache: ArtifactCache,
    variant: str = "baked",
    *,
    image_size: tuple[int, int] | None = None,
    onnx_artifact: Artifact | None = None,
) -> Artifact:
    """The model with `variant` preprocessing in front, as one cached, checked ONNX file.

    variant: "baked" (Pillow-matched Resize, any image size), "seed" (the blog post's, to show
    its cost) or "separable" (two MatMuls, TensorRT-friendly; needs image_size=(h, w)).
    onnx_artifact: the model graph to put it in front of, the fp32 export by default; another
    ONNX artifact of the same model (e.g. runners.quantize's int8 one) is keyed apart by its key.
    The artifact's "model.onnx" takes input "image" and returns the model's "logits".
    """
    size = _check_args(variant, image_size)
    if onnx_artifact is None:
        onnx_artifact = export_onnx(model, cache)
    spec = _spec_for(model, onnx_artifact)
    inputs: dict[str, Any] = {
        "model_onnx": onnx_artifact.manifest["key"],
        "variant": variant,
        "spec": spec.as_data_config(),
        "image_size": list(size) if size else None,
        "graph_revision": GRAPH_REVISION,
        "versions": versions(),
    }

    def build(out_dir: Path) -> dict[str, Any]:
        source = onnx_artifact.file(MODEL_FILE)
        # weights in model.onnx.data stay there: merge_models checks the merged proto in
        # memory, which protobuf cannot serialise above 2 GB; save_checked copies the file
        net = onnx.load(str(source), load_external_data=False)
        input_name = onnx_artifact.manifest.get("input_name", INPUT_NAME)
        _check_input_size(net, input_name, spec)
        opset = default_opset(net)
        pre = build_preprocess(spec, variant, size, opset, net.ir_version)
        merged = merge(pre, net, input_name, weights_dir=source.parent)
        external = onnx_artifact.file(DATA_FILE).exists()
        save_checked(merged, out_dir / MODEL_FILE, external, weights_dir=source.parent)
        return {
            "input_name": onnx_graph.INPUT_NAME,
            "input_layout": _INPUT_LAYOUTS[variant],
            "output_name": onnx_artifact.manifest.get("output_name", OUTPUT_NAME),
            "opset": opset,
            "ir_version": net.ir_version,
            "data_config": spec.as_data_config(),
        }

    source_kind = onnx_artifact.manifest.get("kind", "onnx-model")
    flavour = "" if source_kind == "onnx-model" else f"-{source_kind.removeprefix('onnx-')}"
    # a separable graph's name carries its size: a read-only cache's miss names what to build
    shape = f"-{size[0]}x{size[1]}" if size is not None else ""
    name = f"{model.name}{flavour}-{variant}{shape}"
    return cache.get_or_build(ArtifactSpec(kind=KIND, name=name, inputs=inputs), build)
