"""Known intrinsics end to end, across processes: the synthetic camera publishes CameraInfo
beside its images, the node (oracle backend whose predicted focal length is 20 % long)
unprojects with it -- the map lies on the drive's surfaces, so the CameraInfo's pixel
convention is converted right all the way -- and says so in ~/status, /diagnostics and its
log."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_drive
from node_harness import NODE, Recorder, mapping_run, oracle_node_args

from scal3r_ros.mapping.sim3 import umeyama
from scal3r_ros.ros.conversions import cloud_to_array

pytestmark = pytest.mark.ros
N_FRAMES = 40


def test_status_reports_the_camera_info_intrinsics_and_the_focal_ratio(tmp_path):
    rec = Recorder("intrinsics_tester")
    args = oracle_node_args(
        tmp_path / "maps",
        chunk_size=8,
        overlap=4,
        status_period=0.2,
        oracle_frames=N_FRAMES,
        oracle_focal_error=1.2,
        intrinsics="camera_info",
        camera_info_topics=["/camera/camera_info"],
        save_on_shutdown=False,
    )
    try:
        with mapping_run(rec, args, tmp_path, ["--frames", str(N_FRAMES), "--rate", "40"]) as node:

            def done() -> bool:
                st = rec.last(f"{NODE}/status")
                return (
                    st is not None
                    and st.frames_processed >= N_FRAMES - 4
                    and st.chunks_processed >= 8
                )

            log = tmp_path / "node.log"
            assert rec.spin_until(done, 120, [node]), "no stream:\n" + log.read_text()
            st = rec.last(f"{NODE}/status")
            assert st.intrinsics_source == "camera_info"
            assert st.focal_ratio == pytest.approx(1.2, rel=1e-5)
            assert rec.spin_until(
                lambda: any(
                    kv.key == "focal_ratio" and kv.value == "1.2000"
                    for d in rec.msgs["/diagnostics"]
                    for kv in d.status[0].values
                ),
                30,
                [node],
            )
            assert rec.spin_until(
                lambda: (p := rec.last(f"{NODE}/path")) is not None and len(p.poses) >= 36,
                30,
                [node],
            )
            assert rec.spin_until(lambda: rec.last(f"{NODE}/map") is not None, 30, [node])
        assert "predicted / known focal length 1.200" in log.read_text()
        # the map against the drive's surfaces, map -> world by the path (camera centres)
        path = rec.last(f"{NODE}/path")
        drive = make_drive(n_frames=N_FRAMES)
        ids = [
            drive.index_of_stamp(p.header.stamp.sec * 10**9 + p.header.stamp.nanosec)
            for p in path.poses
        ]
        est = np.array(
            [[p.pose.position.x, p.pose.position.y, p.pose.position.z] for p in path.poses]
        )
        sim = umeyama(est, drive.gt_poses()[ids, :3, 3])
        m = cloud_to_array(rec.last(f"{NODE}/map"))
        xyz = np.stack([m["x"], m["y"], m["z"]], 1).astype(np.float64)
        d = drive.surface_distance(sim.apply(xyz))
        assert len(d) > 10_000 and np.median(d) < 0.01, (np.median(d), d.mean())
    finally:
        rec.close()
