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


class TimmPreprocess:
    """RGB PIL images -> float32 NCHW batch through timm's own transform (the reference)."""

    name = "timm"

    def __init__(self, data_config: Mapping[str, Any]) -> None:
        import torch

        from supercharge.preprocess.spec import PreprocessSpec

        self._torch = torch
        self.transform = timm_transform(data_config)
        self._spec = PreprocessSpec.from_data_config(data_config)

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        try:
            return self._torch.stack([self.transform(im) for im in images]).numpy()
        except ValueError:  # PIL refuses a 0 px side: say which image size, as the other paths do
            for im in images:
                self._spec.resized_size(im.height, im.width)
            raise


def timm_batch(images: Sequence[Image.Image], data_config: Mapping[str, Any]) -> np.ndarray:
    """One-shot convenience around TimmPreprocess."""
    return TimmPreprocess(data_config)(images)
