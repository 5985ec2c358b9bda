"""Static int8 QDQ quantisation for ONNX Runtime CPU, calibrated on real photos, cached.

The fp32 export goes through `quant_pre_process` (symbolic and ONNX shape inference plus ORT's
basic graph optimisation, which ORT's quantisation docs recommend before quantize_static), then
`quantize_static` in QDQ format with uint8 activations and per-channel int8 weights (ORT's advice
for x86 CPUs with VNNI, such as Zen 4; no reduce_range). Calibration batches are photos run
through the model's own timm eval transform, so ranges are those of real inputs; by default
fixtures/calibration, held out from the photos the accuracy gates judge int8 on.

Measured on tf_efficientnet_lite0 calibrated on the five gate photos (the 2-core CI machine; before
the held-out set): per-tensor weights changed top-1 on 2 of 5 photos, per-channel weights kept
all 5, at about the same speed.

The artifact (kind "onnx-int8") is keyed by the fp32 export's key, the settings, the calibration
images' content and the data config, and the onnxruntime version; its manifest records how often
int8 top-1 agrees with fp32 on the calibration photos (in-sample: a smoke check, not an accuracy
gate; gate int8 on held-out images).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from supercharge.cache import Artifact, ArtifactCache, ArtifactSpec, sha256_file
from supercharge.errors import SuperchargeError, first_line
from supercharge.export import INPUT_NAME, MODEL_FILE, OUTPUT_NAME, export_onnx, working_dir
from supercharge.models import ModelBundle, ModelRef

KIND = "onnx-int8"
QUANT_REVISION = 4  # bump when this module changes what it builds, so caches rebuild
# 2: LayerNormalization left in float; 3: logits not quantised (float_outputs); 4: nor those
# of a distilled head, (head + head_dist) / 2
DATA_FILE = MODEL_FILE + ".data"
# The default calibration photos: held out from fixtures/images, which the accuracy gates judge
# int8 on (calibrating on those would grade the int8 model on the photos it was fitted to).
CALIBRATION_IMAGES = Path(__file__).resolve().parents[3] / "fixtures" / "calibration"

Calibration = str | Path | Sequence[str | Path] | None


@dataclass(frozen=True)
class QuantSettings:
    """quantize_static's knobs (names as in onnxruntime.quantization)."""

    quant_format: str = "QDQ"
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    per_channel: bool = True
    reduce_range: bool = False
    calibrate_method: str = "MinMax"
    pre_process: bool = True
    # Ops left in float. Quantising LayerNormalization broke transformers (measured on the
    # fixture photos, cosine of logits vs fp32: test_vit 0.85 -> 0.999 and top-1 4/10 -> 10/10,
    # test_convnext top-1 8/10 -> 10/10 without it) and changed nothing for CNNs (lite0, resnet).
    # InstanceNormalization (timm's GroupNorm exports as one) is left in float for the same
    # reason, and because quantising it made quantize_static raise on poolformer_s12 ("shared
    # mode is not supported for weight yet"); kept in float its logits are at cosine 0.9995.
    keep_float: tuple[str, ...] = ("LayerNormalization", "InstanceNormalization")
    # The logits are not quantised: the model's output is float anyway, and a uint8 QDQ pair on
    # it only rounds every logit to 1/256 of their range (fastvit_t8, random weights: cosine to
    # fp32 0.97994 -> 0.98339; lite0 0.98691 -> 0.98707, same speed). The head's weights and
    # input stay int8: leaving the whole head in float reads 4x the weights (lite0 +0.1 ms).
    float_outputs: bool = True

    def op_types(self) -> list[str]:
        """op_types_to_quantize: every op ORT can quantise in QDQ form, less `keep_float`."""
        from onnxruntime.quantization.registry import QDQRegistry

        return sorted(set(QDQRegistry) - set(self.keep_float))


def output_op_types(model_path: Path, quantised: Sequence[str] | None = None) -> list[str]:
    """The op types of the quantised nodes nearest the graph's outputs (the head: Gemm, usually),
    found back through nodes left in float (a distilled head's `(head + head_dist) / 2`): their
    outputs are where the logits would be rounded. quantised: QuantSettings().op_types() if None.
    """
    import onnx

    quantised = set(QuantSettings().op_types() if quantised is None else quantised)
    graph = onnx.load(str(model_path), load_external_data=False).graph
    producers = {out: n for n in graph.node for out in n.output}
    pending, seen, found = [o.name for o in graph.output], set(), set()
    while pending:
        node = producers.get(pending.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in quantised:
            found.add(node.op_type)
        else:
            pending.extend(node.input)
    return sorted(found)


def calibration_paths(calibration: Calibration = None) -> list[Path]:
    """The calibration photos: a folder's images, a list of files, or fixtures/calibration."""
    if calibration is None:
        if not CALIBRATION_IMAGES.is_dir():
            raise SuperchargeError(
                f"no default calibration images ({CALIBRATION_IMAGES} is missing outside a source "
                "checkout): give a folder of photos with --calibration DIR (calibration= in "
                "Python)"
            )
        calibration = CALIBRATION_IMAGES
    if isinstance(calibration, str | Path):
        from supercharge.images import image_files

        return image_files(calibration, "calibration")
    paths = [Path(p) for p in calibration]
    if not paths:
        raise SuperchargeError(
            f"no calibration images in {calibration}: give at least one photo (.png/.jpg)"
        )
    return paths


def calibration_digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        if not p.is_file():
            raise SuperchargeError(f"calibration image {p} does not exist: check the path")
        try:
            digest = sha256_file(p)
        except OSError as exc:
            raise SuperchargeError(
                f"calibration image {p} cannot be read ({exc.strerror or exc}): fix its "
                "permissions or leave it out"
            ) from None
        h.update(p.name.encode() + b"\0" + digest.encode())
    return h.hexdigest()


def _data_config(model: ModelBundle | ModelRef, onnx_artifact: Artifact) -> dict[str, Any]:
    if isinstance(model, ModelBundle):
        return dict(model.data_config)
    config = onnx_artifact.manifest.get("data_config")
    if config is None:
        from supercharge.models import load_bundle

        config = load_bundle(model).data_config
    return dict(config)


QDQ_FUSIONS_FIXED = (1, 32)


def warn_if_qdq_fusions_are_unreliable(version: str | None = None) -> str | None:
    """The warning (also issued) when this onnxruntime's CPU QDQ fusions are known to go wrong.

    onnxruntime before 1.32 (1.30.0 and 1.31.1 measured; onnxruntime-gpu has no 1.32 yet) runs
    the same, correct int8 QDQ model of a timm ViT with logits at cosine 0.42 to fp32 once
    QDQSelectorActionTransformer fuses it, 0.999 with it disabled or on 1.32; CNNs (lite0)
    were right. The accuracy gates catch it per model; this says why before they do.
    """
    if version is None:
        import onnxruntime

        version = onnxruntime.__version__
    try:
        parsed = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return None
    if parsed >= QDQ_FUSIONS_FIXED:
        return None
    import warnings

    message = (
        f"onnxruntime {version}'s CPU QDQ fusions give wrong int8 results for some models "
        "(a timm ViT: logits at cosine 0.42 to fp32; fixed in onnxruntime 1.32): trust int8 "
        "only where the accuracy gates pass, or install onnxruntime>=1.32"
    )
    warnings.warn(message, stacklevel=3)
    return message


def _pre_process(source: Path, prepared: Path, external: bool, name: str) -> str:
    """quant_pre_process, with ORT's symbolic shape inference where it works; what was used.

    That inference is version-fragile: onnxruntime 1.30's crashes on timm ViT exports
    (IndexError in _infer_Concat; 1.31 and 1.32 are fine). ONNX's own shape inference then
    does, and the int8 model is still checked against fp32 (manifest "check", and the accuracy
    gates), so the fallback is said and recorded, not silent.
    """
    import warnings

    import onnxruntime
    from onnxruntime import quantization as q

    options = {
        "save_as_external_data": external,
        "all_tensors_to_one_file": True,
        "external_data_location": DATA_FILE if external else None,
    }
    try:
        # in the work folder: on a model it cannot complete, ORT's symbolic shape inference
        # saves sym_shape_infer_temp.onnx and a <uuid>.data copy of the weights in the cwd
        with working_dir(prepared.parent):
            q.quant_pre_process(str(source), str(prepared), **options)
        return "symbolic"
    except Exception as exc:  # any failure inside ORT's shape inference
        why = (
            f"onnxruntime {onnxruntime.__version__}'s symbolic shape inference failed on "
            f"{name} ({type(exc).__name__}: {exc})"
        )
    for leftover in prepared.parent.glob(prepared.name + "*"):
        leftover.unlink()
    q.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True, **options)
    warnings.warn(f"{why}: int8 pre-processing used ONNX shape inference alone", stacklevel=2)
    return f"onnx only: {why}"


class _Batches:
    """onnxruntime.quantization's CalibrationDataReader protocol over preprocessed batches."""

    def __init__(self, input_name: str, batch: np.ndarray) -> None:
        self.input_name = input_name
        self.batch = batch
        self._it: Iterator[dict[str, np.ndarray]] = self._iter()

    def _iter(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self.batch)):  # one photo per batch: the export's dynamic batch dim
            yield {self.input_name: self.batch[i : i + 1]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._iter()


def _agreement(fp32: Path, int8: Path, input_name: str, batch: np.ndarray) -> dict[str, Any]:
    """int8 vs fp32 on `batch`: top-1 agreement and the largest softmax probability change."""
    from supercharge.runners.ort_runner import create_session, session_options

    def logits(path: Path) -> np.ndarray:
        session = create_session(path, [("CPUExecutionProvider", {})], session_options())
        return session.run(None, {input_name: batch})[0]

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    ref, got = logits(fp32), logits(int8)
    same = ref.argmax(axis=1) == got.argmax(axis=1)
    return {
        "images": len(batch),
        "top1_agreement": float(same.mean()),
        "top1_same": [bool(s) for s in same],
        "max_prob_diff": float(np.abs(softmax(ref) - softmax(got)).max()),
    }


def quantized_model(
    model: ModelBundle | ModelRef,
    cache: ArtifactCache,
    calibration: Calibration = None,
    settings: QuantSettings = QuantSettings(),
) -> Artifact:
    """The static int8 QDQ model of `model`'s fp32 export, built once and reused.

    calibration: a folder of photos, a list of image files, or None for fixtures/calibration.
    The artifact's "model.onnx" has the fp32 export's input and output names and dynamic batch.
    """
    import onnxruntime as ort
    import PIL

    warn_if_qdq_fusions_are_unreliable()
    onnx_artifact = export_onnx(model, cache)
    paths = calibration_paths(calibration)
    data_config = _data_config(model, onnx_artifact)
    input_name = onnx_artifact.manifest.get("input_name", INPUT_NAME)
    inputs = {
        "model_onnx": onnx_artifact.manifest["key"],
        "settings": asdict(settings),
        "calibration": {
            "images": [p.name for p in paths],
            "digest": calibration_digest(paths),
        },
        "data_config": data_config,
        "onnxruntime": ort.__version__,
        # the calibration batch is timm's transform of the photos: Pillow decodes and resizes
        "pillow": PIL.__version__,
        "revision": QUANT_REVISION,
    }

    def build(out_dir: Path) -> dict[str, Any]:
        from onnxruntime import quantization as q

        from supercharge.images import load_image
        from supercharge.preprocess.reference import TimmPreprocess

        batch = TimmPreprocess(data_config)([load_image(p) for p in paths])
        source = onnx_artifact.file(MODEL_FILE).resolve()
        external = onnx_artifact.file(DATA_FILE).exists()
        out = out_dir / MODEL_FILE
        with tempfile.TemporaryDirectory(prefix="supercharge-quant-") as work:
            prepared, shapes = source, None
            if settings.pre_process:
                prepared = Path(work).resolve() / MODEL_FILE
                shapes = _pre_process(source, prepared, external, model.name)
            try:
                q.quantize_static(
                    str(prepared),
                    str(out),
                    _Batches(input_name, batch),
                    quant_format=getattr(q.QuantFormat, settings.quant_format),
                    activation_type=getattr(q.QuantType, settings.activation_type),
                    weight_type=getattr(q.QuantType, settings.weight_type),
                    per_channel=settings.per_channel,
                    reduce_range=settings.reduce_range,
                    op_types_to_quantize=settings.op_types(),
                    calibrate_method=getattr(q.CalibrationMethod, settings.calibrate_method),
                    use_external_data_format=external,
                    extra_options=(
                        # ops of these types quantise their inputs, not their output; an
                        # inner one's output is still quantised as its consumer's input
                        {
                            "OpTypesToExcludeOutputQuantization": output_op_types(
                                prepared, settings.op_types()
                            )
                        }
                        if settings.float_outputs
                        else {}
                    ),
                )
            except (ValueError, KeyError, IndexError, AssertionError, RuntimeError) as exc:
                # onnxruntime.quantization's own limits (e.g. "Quantization parameter shared
                # mode is not supported for weight yet"): the model, not a supercharge bug
                raise SuperchargeError(
                    f"onnxruntime {ort.__version__} cannot quantise {model.name} to int8 "
                    f"({type(exc).__name__}: {first_line(exc)}): leave int8 out (supercharge "
                    "export --skip int8; pytest --precisions fp32) or report it upstream"
                ) from None
        return {
            "input_name": input_name,
            "output_name": onnx_artifact.manifest.get("output_name", OUTPUT_NAME),
            "input_size": onnx_artifact.manifest.get("input_size"),
            "data_config": data_config,
            "source_onnx": onnx_artifact.manifest["key"],
            "shape_inference": shapes,
            "check": _agreement(source, out, input_name, batch),
        }

    return cache.get_or_build(
        ArtifactSpec(kind=KIND, name=f"{model.name}-int8", inputs=inputs), build
    )
