"""Backends as peers behind one small interface (see base.Runner), resolved by name."""

from supercharge.runners.base import BACKENDS, BackendUnavailableError, Runner, create_runner
from supercharge.runners.ort_runner import ProviderError

__all__ = ["BACKENDS", "BackendUnavailableError", "ProviderError", "Runner", "create_runner"]
