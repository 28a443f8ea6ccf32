"""One rule for chunk/overlap and one way to build the engine, shared by node, offline, bench."""

from __future__ import annotations

import pytest

from scal3r_ros.mapping.backends.factory import BackendSpec, build_engine, make_backend
from scal3r_ros.mapping.config import MapSection, OracleSection, WindowSection
from scal3r_ros.mapping.engine import EngineConfig
from scal3r_ros.mapping.loop_closure import LoopClosure
from scal3r_ros.mapping.windowing import WindowConfig, window_problem


@pytest.mark.parametrize("chunk, overlap", [(4, 0), (4, 4), (4, 5), (4, -1)])
def test_window_rule_refuses_what_the_node_refuses(chunk, overlap):
    """The engine places each window on the frames it shares with the previous one: an
    overlap of 0 is refused by the engine's config as by the node's parameters (the bare
    schedule, WindowConfig, follows the official chunk list for any overlap >= 0)."""
    assert window_problem(chunk, overlap) is not None
    with pytest.raises(ValueError, match="chunk_size > overlap >="):
        EngineConfig(window=WindowConfig(chunk, overlap))
    with pytest.raises(ValueError, match="chunk_size > overlap >="):
        EngineConfig.from_sections(WindowSection(chunk_size=chunk, overlap=overlap))


def test_bare_schedule_allows_overlap_0_as_the_official_list():
    assert WindowConfig(4, 0).stride == 4


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


def test_engine_config_from_sections_defaults_are_the_engine_defaults():
    """Offline and bench pass only a window section: the map and spill settings they get
    must be the engine's own defaults, as before they were built from the tree."""
    assert EngineConfig.from_sections(WindowSection()) == EngineConfig()


def test_engine_config_from_sections_maps_every_leaf():
    window = WindowSection(chunk_size=8, overlap=3, gcs_mode="off", loop_closure=False)
    map_section = MapSection(voxel_size=0.5, confidence_ratio=1.5, max_points=5000, max_spill_mb=3)
    cfg = EngineConfig.from_sections(window, map_section, frame_clouds=True)
    assert (cfg.window.chunk_size, cfg.window.overlap, cfg.gcs_mode) == (8, 3, "off")
    assert not cfg.loop_closure and cfg.frame_clouds
    assert (cfg.map.voxel_size, cfg.map.conf_ratio, cfg.map.max_points) == (0.5, 1.5, 5000)
    assert cfg.frames.max_spill_bytes == 3 << 20
