"""ONNX export of a ModelBundle into the artifact cache, checked against PyTorch before it is kept.

torch.onnx.export(dynamo=True) with a dynamic batch dimension (the legacy exporter fails on
attention models with torch 2.14), onnx.checker on the saved file, external data for models above
2 GB, then one batch through ONNX Runtime CPU compared with PyTorch by relative error. A model that
does not reproduce PyTorch is never cached.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from supercharge.cache import Artifact, ArtifactCache, ArtifactSpec
from supercharge.errors import ExportCheckError, first_line, out_of_memory
from supercharge.models import ModelBundle, ModelRef, load_bundle

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class ExportOptions:
    opset: int = 20
    dynamic_batch: bool = True
    check_batch: int = 2  # > 1 so the dynamic batch dimension is exercised by the check
    check_tolerance: float = 1e-3  # max |ort - torch| / max |torch|
    external_data: bool | None = None  # None: weights go to model.onnx.data only above 2 GB

    def __post_init__(self) -> None:
        if self.opset < 18:
            raise ValueError(
                f"opset {self.opset} is too old: use 18 or newer (the preprocessing graphs)"
            )


def versions() -> dict[str, str]:
    """Versions of everything that can change an exported graph."""
    out = {}
    for dist in ("torch", "timm", "onnx", "onnxscript"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def onnx_spec(ref: ModelRef, options: ExportOptions = ExportOptions()) -> ArtifactSpec:
    return ArtifactSpec(
        kind="onnx-model",
        name=ref.name,
        inputs={
            "model": ref.name,
            "weights_digest": ref.weights.digest,
            "versions": versions(),
            "options": asdict(options),
        },
    )


def export_onnx(
    model: ModelBundle | ModelRef, cache: ArtifactCache, options: ExportOptions = ExportOptions()
) -> Artifact:
    """The checked ONNX export, built on first use and reused afterwards.

    Given a ModelRef, the model is created only when the artifact has to be built.
    """
    ref = model.ref if isinstance(model, ModelBundle) else model

    def build(out_dir: Path) -> dict:
        bundle = model if isinstance(model, ModelBundle) else load_bundle(ref)
        path = out_dir / MODEL_FILE
        _export(bundle, path, options)
        error = check_against_torch(bundle, path, options.check_batch)
        if not error <= options.check_tolerance:
            raise ExportCheckError(
                f"ONNX export of {bundle.name} does not match PyTorch: relative error {error:.2e} "
                f"> {options.check_tolerance:.0e} on a batch of {options.check_batch}; "
                "report it with the model name and versions"
            )
        return {
            "check": {"relative_error": error, "batch": options.check_batch},
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "input_size": list(bundle.input_size),
            "data_config": bundle.data_config,
            "weights_source": bundle.weights_source,
        }

    return cache.get_or_build(onnx_spec(ref, options), build)


def _export(bundle: ModelBundle, path: Path, options: ExportOptions) -> None:
    import onnx

    example = torch.randn(options.check_batch, *bundle.input_size)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if options.dynamic_batch else None

    def export() -> torch.onnx.ONNXProgram:
        with torch.inference_mode(False), torch.no_grad():
            return torch.onnx.export(
                bundle.model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic,
                opset_version=options.opset,
                verbose=False,
            )

    fused = [m for m in bundle.model.modules() if getattr(m, "fused_attn", False) is True]
    try:
        try:
            program = export()
        except Exception as exc:
            # torch.onnx translates only 4-D scaled_dot_product_attention (hiera's is 5-D):
            # timm's own unfused attention (the same math) exports
            if not fused or "scaled_dot_product_attention" not in str(exc):
                raise
            for module in fused:
                module.fused_attn = False
            try:
                program = export()
            finally:
                for module in fused:
                    module.fused_attn = True
    except Exception as exc:
        if out_of_memory(exc):
            raise  # the machine's limit, not torch.onnx's: reported as such by the caller
        raise ExportCheckError(
            f"torch.onnx cannot export {bundle.name} ({_export_reason(exc)}): report it to "
            "PyTorch with the model name and versions; the torch-cpu backend still runs it"
        ) from None
    assert program is not None
    program.save(path, external_data=options.external_data)
    onnx.checker.check_model(str(path), full_check=True)


def _export_reason(exc: BaseException) -> str:
    """The innermost cause torch.onnx summarises ("<class 'X'>: why"), else the first line."""
    causes = [line for line in str(exc).splitlines() if line.startswith("<class '")]
    if causes:
        kind, _, why = causes[0][len("<class '") :].partition("'>: ")
        return f"{kind.rsplit('.', 1)[-1]}: {why.strip()}"[:200]
    return f"{type(exc).__name__}: {first_line(exc)}"[:200]


@contextlib.contextmanager
def working_dir(path: Path) -> Iterator[None]:
    """chdir to `path` for the block: onnx's in-memory checker and ONNX Runtime's quantization
    tools look for a model's external data files (model.onnx.data) relative to the working
    directory. Process-wide, as those tools are: not for concurrent threads."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def check_against_torch(bundle: ModelBundle, path: Path, batch: int, seed: int = 0) -> float:
    """Max abs difference between ORT CPU and PyTorch logits, relative to PyTorch's max abs."""
    import onnxruntime as ort

    from supercharge.runners.torch_runner import strict_fp32

    strict_fp32()  # the check's reference is fp32, whatever precision the process asked for
    x = torch.randn(batch, *bundle.input_size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref = bundle.model(x).float().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    if got.shape != ref.shape:
        raise ExportCheckError(
            f"ONNX export of {bundle.name} returns shape {got.shape}, PyTorch {ref.shape}: "
            "report it with the model name and versions"
        )
    if not np.isfinite(ref).all():
        raise ExportCheckError(
            f"{bundle.name} itself returns NaN or inf on a random batch (weights "
            f"{bundle.weights_source}): check the weights file"
        )
    scale = float(np.abs(ref).max()) or 1.0
    return float(np.abs(got - ref).max() / scale)
