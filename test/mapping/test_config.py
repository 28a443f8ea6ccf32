"""One rule for chunk/overlap and one way to build the engine, shared by node, offline, bench."""

from __future__ import annotations

import pytest

from scal3r_ros.mapping.backends import BackendSpec, build_engine, make_backend
from scal3r_ros.mapping.config import OracleSection
from scal3r_ros.mapping.engine import EngineConfig
from scal3r_ros.mapping.loop_closure import LoopClosure
from scal3r_ros.mapping.windowing import WindowConfig, window_problem


@pytest.mark.parametrize("chunk, overlap", [(4, 0), (4, 4), (4, 5), (4, -1)])
def test_window_rule_refuses_what_the_node_refuses(chunk, overlap):
    """The engine places each window on the frames it shares with the previous one: an
    overlap of 0 is refused by the engine's WindowConfig as by the node's parameters."""
    assert window_problem(chunk, overlap) is not None
    with pytest.raises(ValueError, match="chunk_size > overlap >= 1"):
        WindowConfig(chunk, overlap)


def test_window_rule_accepts_official_and_low_latency():
    assert window_problem(60, 30) is None and window_problem(2, 1) is None
    assert WindowConfig.low_latency().stride == 8


@pytest.mark.parametrize("enabled", [True, False])
def test_build_engine_adds_loop_closure_as_configured(enabled):
    spec = BackendSpec(kind="oracle", oracle=OracleSection(oracle_frames=8), loop_closure=enabled)
    built = make_backend(spec)
    config = EngineConfig(window=WindowConfig(4, 2), loop_closure=enabled)
    engine = build_engine(config, built.backend)
    assert isinstance(engine.loop_closure, LoopClosure) is enabled
    shared = build_engine(config, built.backend, built.loop_closure)
    assert shared.loop_closure is built.loop_closure
