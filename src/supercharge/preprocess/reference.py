"""The reference: timm's eval transform (PIL), built from the model's resolved data config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image


def timm_transform(data_config: Mapping[str, Any]) -> Any:
    """timm.data.create_transform(**config, is_training=False): nothing typed by hand."""
    from timm.data import create_transform

    return create_transform(**data_config, is_training=False)


def timm_batch(images: Sequence[Image.Image], data_config: Mapping[str, Any]) -> np.ndarray:
    """Float32 NCHW batch from RGB PIL images via timm's own transform."""
    import torch

    transform = timm_transform(data_config)
    return torch.stack([transform(im) for im in images]).numpy()
