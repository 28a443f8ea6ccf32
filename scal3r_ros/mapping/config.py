"""Field metadata for configuration dataclasses, readable without ROS.

A field declared as ``field(default=60, metadata=param("frames per window", int_range=(2,
512)))`` carries its description, range and whether it can change while running; the node
generates its ROS parameter descriptors, its ``--help`` and the checks of docs and YAML files
from that metadata, so no second table has to be kept in step.
"""

from __future__ import annotations

import math
from dataclasses import Field
from typing import Any

_KEY = "scal3r_param"


def param(
    description: str,
    *,
    section: str,
    int_range: tuple[int, int] | None = None,
    float_range: tuple[float, float] | None = None,
    dynamic: bool = False,
) -> dict[str, Any]:
    """Metadata for one parameter: its description, the section it belongs to (backend,
    window, map, input, frames, output, planner, oracle), an inclusive range, and whether
    the node applies changes while running (``dynamic``) or needs a restart."""
    return {
        _KEY: {
            "description": description,
            "section": section,
            "int_range": int_range,
            "float_range": float_range,
            "dynamic": dynamic,
        }
    }


def param_info(f: Field) -> dict[str, Any]:
    """The ``param`` metadata of a dataclass field (KeyError when it has none)."""
    return f.metadata[_KEY]


def range_problem(name: str, value: object, info: dict[str, Any]) -> str | None:
    """What is wrong with one value on its own: a float (or a float in a list) that is not
    finite, or a number outside the field's range."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in items):
        return f"{name} must be finite, got {value}"
    bounds = info.get("int_range") or info.get("float_range")
    if bounds and isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = bounds
        if not lo <= value <= hi:
            return f"{name} must be in [{lo}, {hi}], got {value}"
    return None
