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


# How the runtimes say an allocation failed, beside numpy's and cupy's MemoryError: ONNX Runtime
# raises its own Exception subclasses (not RuntimeError), torch RuntimeErrors (OutOfMemoryError
# on CUDA). Checked against real failures in tests/test_errors.py.
_OUT_OF_MEMORY = (
    "Failed to allocate memory",  # ONNX Runtime's arena
    "can't allocate memory",  # torch's CPU allocator
    "not enough memory",
    "out of memory",  # CUDA, through torch or ONNX Runtime
)
_RUNTIMES = ("onnxruntime", "torch")


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an allocation failure (a batch too large for the machine), not a bug."""
    if isinstance(exc, MemoryError):
        return True
    from_runtime = isinstance(exc, RuntimeError) or type(exc).__module__.split(".")[0] in _RUNTIMES
    return from_runtime and any(words in str(exc) for words in _OUT_OF_MEMORY)


def memory_error(what: str, exc: BaseException, advice: str) -> SuperchargeError:
    """The one line for an allocation failure while `what` (names the batch) ran: the failure's
    own words from where it says what it could not allocate (ORT's start with a source path)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    found = [text.find(words) for words in _OUT_OF_MEMORY if words in text]
    detail = text[min(found) :] if found else text
    return SuperchargeError(
        f"{what} does not fit in this machine's memory ({detail[:120]}): {advice}"
    )


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type's name if it has none), for a
    one-line error that quotes a library's multi-line one."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
