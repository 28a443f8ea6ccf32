"""Shared test helpers: build a synthetic drive, run frames through an engine, load a
``.pt`` file of test/data. Plain functions (``from helpers import make_drive``), so module
level code and module-scoped fixtures can use them too; ``test/conftest.py`` builds its
``drive`` fixture from ``make_drive``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from scal3r_ros.mapping.engine import MappingEngine
from scal3r_ros.mapping.events import Frame, MapUpdate
from scal3r_ros.mapping.sim.synthetic import SyntheticConfig, SyntheticDrive


def make_drive(n_frames: int, **config) -> SyntheticDrive:
    """A synthetic drive of ``n_frames`` frames; other ``SyntheticConfig`` fields by name."""
    return SyntheticDrive(SyntheticConfig(n_frames=n_frames, **config))


def push_and_collect(
    engine: MappingEngine,
    frames: SyntheticDrive | Iterable[Frame],
    flush: bool = True,
    on_push: Callable[[list[MapUpdate]], None] | None = None,
) -> list[MapUpdate]:
    """Push ``frames`` (a whole drive, or any frames) in order and return every event, then
    the flush's (``flush``). ``on_push`` sees each push's events as they come."""
    if isinstance(frames, SyntheticDrive):
        frames = map(frames.frame, range(frames.n_frames))
    events: list[MapUpdate] = []
    for frame in frames:
        pushed = engine.push(frame)
        if on_push is not None:
            on_push(pushed)
        events += pushed
    if flush:
        events += engine.flush()
    return events


DATA = Path(__file__).parent / "data"


def load_pt(name: str) -> Any:
    """A ``.pt`` file of test/data, tensors only (``weights_only``), on the CPU."""
    import torch

    return torch.load(DATA / name, map_location="cpu", weights_only=True)
