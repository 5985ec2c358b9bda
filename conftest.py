"""Thin pytest layer: every option and fixture lives in the library's plugin module."""

pytest_plugins = ["supercharge.pytest_plugin"]
