"""The suite's settings in pyproject.toml ([tool.supercharge]): finding the file and reading it.

Accuracy tolerances (tolerances) and speedup floors (floors) both live there, so a project keeps
its promises next to its dependencies, reviewed in the same pull requests.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from supercharge.errors import SuperchargeError


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml at or above `start` (default: the working directory)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def read_toml(path: Path, what: str) -> dict[str, Any] | None:
    """The parsed file; None (with a warning) on Python 3.10 without tomli. `what` names the
    settings wanted, for the messages."""
    try:
        import tomllib  # Python >= 3.11
    except ImportError:
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            warnings.warn(
                f"cannot read {path} (Python < 3.11 without tomli): using the built-in {what}",
                stacklevel=3,
            )
            return None
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, ValueError) as exc:
        raise SuperchargeError(
            f"cannot read {what} from {path}: {exc}: give a pyproject.toml (TOML) holding them"
        ) from None


def tool_table(data: dict[str, Any], name: str) -> Any:
    """[tool.supercharge.<name>] of a parsed pyproject.toml, or None. A `tool` or
    `tool.supercharge` that is not a table is an error, not an AttributeError."""
    node: Any = data
    for key in ("tool", "supercharge"):
        node = node.get(key, {})
        if not isinstance(node, dict):
            raise SuperchargeError(
                f"pyproject.toml: `{key}` is not a table ({type(node).__name__}): "
                f"make it [tool.supercharge.{name}]"
            )
    return node.get(name)


def load_table(pyproject: Path | str | None, name: str, what: str) -> tuple[Any, Path | None]:
    """([tool.supercharge.<name>] or None, the file it came from) from `pyproject` (default: the
    nearest pyproject.toml above the working directory). A named file that does not exist is an
    error; no file, an unreadable TOML library or no such table give None."""
    path = Path(pyproject) if pyproject is not None else find_pyproject()
    if path is None or not path.is_file():
        if pyproject is not None:
            raise SuperchargeError(
                f"{what} file {pyproject} does not exist: give the path of a pyproject.toml"
            )
        return None, None
    data = read_toml(path, what)
    return (None if data is None else tool_table(data, name)), path
