"""ONNX Runtime on the CUDA execution provider: device-resident IOBinding, strict fp32.

Inputs are bound in device memory (a host batch is copied to the GPU once in place(); a cupy
batch is bound by its address, IOBinding.bind_input with buffer_ptr, without a copy) and outputs
stay on the device until to_host(), so run_placed() times the model alone. TF32 is off
(`use_tf32=0`): fp32 here is the fp32 reference, like the torch runner's. `cuda_graph=True` sets
`enable_cuda_graph=1` and feeds the session from fixed-address cupy buffers, one captured graph
per input shape (ORT run option `gpu_graph_id`, from 1: 0 is ORT's reserved default); every node
must then run on the CUDA EP.

Option names follow ONNX Runtime's CUDA EP documentation (device_id, use_tf32,
enable_cuda_graph, cudnn_conv_algo_search, do_copy_in_default_stream).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from supercharge.errors import SuperchargeError
from supercharge.runners.ort_runner import OrtRunner, Providers

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def cuda_provider_options(
    device_id: int = 0,
    *,
    tf32: bool = False,
    cuda_graph: bool = False,
    conv_algo_search: str = "EXHAUSTIVE",
) -> dict[str, str]:
    """CUDA EP options: TF32 off unless asked, cuDNN's exhaustive conv search (done in the
    warm-up, never timed), the copy stream shared with compute, CUDA graphs on request."""
    return {
        "device_id": str(device_id),
        "use_tf32": "1" if tf32 else "0",
        "enable_cuda_graph": "1" if cuda_graph else "0",
        "cudnn_conv_algo_search": conv_algo_search,
        "do_copy_in_default_stream": "1",
    }


def cuda_providers(device_id: int = 0, *, cuda_graph: bool = False) -> Providers:
    """The ort-cuda provider list: the CUDA EP first (asserted after session creation), the
    CPU EP after it for the few nodes CUDA has no kernel for (reported in node_placement)."""
    return [
        (CUDA_PROVIDER, cuda_provider_options(device_id, cuda_graph=cuda_graph)),
        (CPU_PROVIDER, {}),
    ]


class OrtCudaRunner(OrtRunner):
    provider = CUDA_PROVIDER

    def __init__(
        self,
        model_path: Path,
        *,
        precision: str = "fp32",
        device_id: int = 0,
        io_binding: bool | None = None,
        cuda_graph: bool = False,
        batch_sizes: Sequence[int] = (1,),
        threads: int | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        if precision != "fp32":
            raise SuperchargeError(
                f"ort-cuda runs fp32 only, not {precision!r}: use ort-trt for fp16 or torch-cuda "
                "for fp16/bf16 autocast"
            )
        super().__init__(
            model_path,
            backend="ort-cuda",
            precision=precision,
            device="cuda",
            device_id=device_id,
            io_binding=io_binding,
            cuda_graph=cuda_graph,
            batch_sizes=batch_sizes,
            threads=threads,
            input_shape=input_shape,
        )

    def providers(self) -> Providers:
        return cuda_providers(self.device_id, cuda_graph=self.cuda_graph)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["provider_options"] = dict(self.providers()[0][1])
        return info
