"""User-facing errors: each renders as one line that names the input and says what to do.

The CLI turns them into exit status 2; the pytest layer turns them into a failed setup with the
same line. Anything else escaping is a bug in supercharge, not bad input.
"""

from __future__ import annotations


class SuperchargeError(Exception):
    """Bad input or an unmet precondition, with a one-line message for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class UnknownModelError(SuperchargeError):
    """The model name is not in timm's registry."""


class WeightsUnavailableError(SuperchargeError):
    """Pretrained weights were asked for but none can be had without a download."""


class WeightsMismatchError(SuperchargeError):
    """A weights file does not fit the model (missing/unexpected keys or wrong shapes)."""


class ImageReadError(SuperchargeError):
    """An input image is missing, empty, not an image or truncated."""


class ExportCheckError(SuperchargeError):
    """The exported ONNX model does not reproduce PyTorch's output."""


class ArtifactError(SuperchargeError):
    """The artifact cache cannot be used (unwritable directory, bad manifest)."""


# How each runtime says an allocation failed: numpy raises MemoryError; ONNX Runtime, torch
# (CPU and CUDA) and cupy raise RuntimeError subclasses with these words.
_OUT_OF_MEMORY = ("Failed to allocate memory", "not enough memory", "out of memory", "OutOfMemory")


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an allocation failure (a batch too large for the machine), not a bug."""
    if isinstance(exc, MemoryError):
        return True
    text = f"{type(exc).__name__} {exc}"
    return isinstance(exc, RuntimeError) and any(words in text for words in _OUT_OF_MEMORY)


def memory_error(what: str, exc: BaseException, advice: str) -> SuperchargeError:
    """The one line for an allocation failure while `what` (names the batch) ran."""
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    return SuperchargeError(f"{what} does not fit in this machine's memory ({detail}): {advice}")
