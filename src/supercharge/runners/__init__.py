"""Backends as peers behind one small interface (see base.Runner), resolved by name."""

from supercharge.runners.base import BACKENDS, Runner, create_runner

__all__ = ["BACKENDS", "Runner", "create_runner"]
