"""The oracle maps only its own drive: another drive's images are an error, not a map.

Issue 13: the README's three-terminal recipe started the camera with 200 frames while
config/synthetic.yaml gave the node's oracle 300, and the node silently mapped the wrong
ground truth (127 m, no loop, ATE 2.3 m). The camera now reads the drive from the same
file (test/tools/test_synthetic_camera.py); here: any mismatch left is reported.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import make_drive, push_and_collect
from PIL import Image

from scal3r_ros.mapping.backends.oracle import DriveMismatch, OracleBackend, OracleConfig
from scal3r_ros.mapping.backends.protocol import ChunkInput
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.events import ChunkFailed, Frame
from scal3r_ros.mapping.sim.synthetic import SyntheticConfig, SyntheticDrive

N = 24  # 16/8 windows: two


def run(oracle_drive: SyntheticDrive, frames: list[Frame]) -> tuple[MappingEngine, list]:
    eng = MappingEngine(
        EngineConfig.low_latency(loop_closure=False),
        OracleBackend(oracle_drive, OracleConfig(seed=1)),
    )
    events = push_and_collect(eng, frames)
    return eng, events


@pytest.mark.parametrize(
    ("camera", "what"),
    [
        (SyntheticConfig(n_frames=200), "300 frames, 1.15 laps"),  # the recipe
        (SyntheticConfig(n_frames=300, seed=1), "seed 0"),
        (SyntheticConfig(n_frames=300, extra_laps=0.5), "1.15 laps"),
    ],
)
def test_images_of_another_drive_are_reported_not_mapped(camera, what):
    node_drive = make_drive(n_frames=300)
    cam = SyntheticDrive(camera)
    eng, events = run(node_drive, [cam.frame(i) for i in range(N)])
    failed = [e for e in events if isinstance(e, ChunkFailed)]
    assert failed and all("DriveMismatch" in e.error and what in e.error for e in failed)
    assert "oracle_frames" in failed[0].error  # says how to fix it
    assert len(eng.poses()[0]) == 0 and len(eng.map) == 0


def test_frames_beyond_the_drive_are_reported():
    drive = make_drive(n_frames=20)
    oracle = OracleBackend(drive)
    longer = make_drive(n_frames=40)  # same clock, more frames
    stamps = np.array([longer.stamp_ns(i) for i in (18, 19, 20)])
    chunk = ChunkInput(0, np.arange(3), stamps, np.zeros((3, 48, 160, 3), np.uint8))
    with pytest.raises(DriveMismatch, match=r"frame 20 of the oracle's drive.*frames 0\.\.19"):
        oracle.infer(chunk, None)


def test_images_of_another_size_are_reported():
    drive = make_drive(n_frames=N)
    small = make_drive(n_frames=N, width=80, height=24)
    _, events = run(drive, [small.frame(i) for i in range(N)])
    failed = [e for e in events if isinstance(e, ChunkFailed)]
    assert failed and "images are 80x24" in failed[0].error and "160x48" in failed[0].error


def test_the_drive_itself_maps_also_through_jpeg():
    """Transport may be lossy (a CompressedImage topic): the drive's own frames pass."""
    drive = make_drive(n_frames=N)

    def jpeg(frame: Frame) -> Frame:
        buf = io.BytesIO()
        Image.fromarray(frame.image).save(buf, format="JPEG", quality=75)
        frame.image = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        return frame

    eng, events = run(drive, [jpeg(drive.frame(i)) for i in range(N)])
    assert not [e for e in events if isinstance(e, ChunkFailed)]
    assert eng.poses()[0].tolist() == list(range(N))
