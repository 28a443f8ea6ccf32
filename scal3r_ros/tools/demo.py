"""`scal3r_demo`: the whole ROS path on the built-in synthetic drive, in a few minutes.

Three processes talk over DDS, as on a robot: the synthetic camera publishes images,
the mapping node maps them, and this process watches the node's status and path, asks
it to save the map and trajectory, stops it, and evaluates the trajectory against the
drive's ground truth (ATE after Sim(3) alignment, plots).

With the official checkpoint present the node runs the Scal3R network; without it, the
demo says so and uses the oracle backend (ground-truth geometry, a random gauge per
window), so everything but the network still runs for real.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from scal3r_ros.mapping.synthetic import SyntheticConfig, SyntheticDrive
from scal3r_ros.mapping.trajectory import write_poses
from scal3r_ros.ros.frames import camera_mount, rigid_inverse
from scal3r_ros.tools.evaluate import EvalConfig, evaluate_files, format_table
from scal3r_ros.tools.processes import spawn_module as _spawn
from scal3r_ros.tools.processes import stop_process as _stop

NODE = "/scal3r_mapping"


def _checkpoint_present(path: str | None) -> Path | None:
    from scal3r_ros.model.checkpoint import default_checkpoint_path

    p = Path(path).expanduser() if path else default_checkpoint_path()
    return p if p.is_file() else None


def run_demo(out: Path, frames: int, rate: float, backend: str, checkpoint: str | None,
             timeout: float) -> dict:  # fmt: skip
    import rclpy
    from nav_msgs.msg import Path as PathMsg
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from scal3r_ros_msgs.msg import MappingStatus
    from scal3r_ros_msgs.srv import SaveMap

    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "demo", ignore_errors=True)  # no stale files from an earlier run
    drive = SyntheticDrive(SyntheticConfig(n_frames=frames))
    # the node's trajectory is base_link's (camera mounted at base_link, looking along x);
    # express the drive's ground-truth camera poses the same way
    gt_base = drive.gt_poses() @ rigid_inverse(camera_mount())
    stamps = np.array([drive.stamp_ns(i) for i in range(frames)], dtype=np.int64)
    write_poses(out / "ground_truth_tum.txt", stamps, gt_base, "tum")
    node_args = ["scal3r_ros.ros.node", "--config", "synthetic", "--ros-args",
                 "-p", f"backend:={backend}", "-p", f"oracle_frames:={frames}",
                 "-p", f"output_dir:={out}", "-p", "save_on_shutdown:=false"]  # fmt: skip
    if checkpoint:
        node_args += ["-p", f"checkpoint:={checkpoint}"]
    node = _spawn(node_args, out / "node.log")
    context = rclpy.Context()
    rclpy.init(context=context)
    watcher = rclpy.create_node("scal3r_demo", context=context)
    status: list[MappingStatus] = []
    path: list[PathMsg] = []
    watcher.create_subscription(MappingStatus, f"{NODE}/status", status.append, 10)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)  # fmt: skip
    watcher.create_subscription(PathMsg, f"{NODE}/path", path.append, latched)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(watcher)
    camera = None
    t0 = time.monotonic()

    def spin_until(cond, limit: float, what: str) -> None:
        deadline = time.monotonic() + limit
        while not cond():
            executor.spin_once(timeout_sec=0.1)
            if node.poll() is not None:
                raise RuntimeError(f"the node exited while {what}; see {out / 'node.log'}:\n"
                                   + (out / "node.log").read_text()[-2000:])  # fmt: skip
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out {what}; see {out / 'node.log'}")

    try:
        spin_until(lambda: status, 120, "waiting for the node to start")
        print(f"[demo] node up: backend {status[-1].backend} on {status[-1].device}", flush=True)
        camera = _spawn(["scal3r_ros.tools.synthetic_camera", "--frames", str(frames),
                         "--rate", str(rate), "--reliable"], out / "camera.log")  # fmt: skip
        last_print = 0.0

        progress = {"n": -1, "since": time.monotonic()}

        def mapped() -> bool:
            nonlocal last_print
            st = status[-1]
            if time.monotonic() - last_print > 5:
                last_print = time.monotonic()
                print(f"[demo] frames {st.frames_processed}/{frames}, chunks "
                      f"{st.chunks_processed}, map points {st.map_points}, loops "
                      f"{st.loop_closures}", flush=True)  # fmt: skip
            n = st.frames_processed + st.frames_dropped
            if n != progress["n"]:
                progress.update(n=n, since=time.monotonic())
            if camera.poll() is None or st.queue_length:
                return False
            # everything accounted for, or nothing more arriving (frames lost on the way)
            return n >= frames or time.monotonic() - progress["since"] > 10.0

        spin_until(mapped, timeout, "mapping the drive")
        client = watcher.create_client(SaveMap, f"{NODE}/save_map")
        client.wait_for_service(timeout_sec=30)
        future = client.call_async(SaveMap.Request(name="demo", save_map=True,
                                                   save_trajectory=True))  # fmt: skip
        spin_until(future.done, 120, "saving the map")
        saved = future.result()
        if not saved.success:
            raise RuntimeError(f"save failed: {saved.message}")
        spin_until(lambda: bool(path), 10, "waiting for the path")
        final = status[-1]
    finally:
        if camera is not None:
            _stop(camera)
        code = _stop(node)
        executor.shutdown()
        watcher.destroy_node()
        rclpy.shutdown(context=context)
    wall = time.monotonic() - t0
    result_dir = out / "demo"
    evaluation = evaluate_files(
        result_dir / "trajectory_tum.txt",
        out / "ground_truth_tum.txt",
        result_dir,
        EvalConfig(kitti_lengths=(25.0, 50.0, 100.0), label=f"scal3r_ros ({final.backend})"),
    )
    print(format_table(evaluation), flush=True)
    summary = {
        "ate_rmse_m": evaluation["ate"]["translation_m"]["rmse"],
        "path_length_m": evaluation["path_length_m"],
        "matched_poses": evaluation["n_poses"],
    }
    summary.update(
        backend=final.backend, device=final.device, frames=frames,
        frames_received=int(final.frames_received),
        frames_processed=int(final.frames_processed), frames_dropped=int(final.frames_dropped),
        chunks=int(final.chunks_processed), loop_closures=int(final.loop_closures),
        map_points=int(final.map_points), node_exit_code=code, wall_time_s=round(wall, 1),
    )  # fmt: skip
    (result_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["files"] = sorted(str(p) for p in result_dir.iterdir())
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="output", help="output directory (default ./output)")
    parser.add_argument("--frames", type=int, default=300, help="frames of the synthetic drive")
    parser.add_argument("--rate", type=float, default=20.0, help="camera rate [frames/s]")
    parser.add_argument("--checkpoint", default=None, help="scal3r.pt (default: the cache)")
    parser.add_argument("--backend", choices=("auto", "scal3r", "tiny", "oracle"),
                        default="auto", help="auto: scal3r if the checkpoint exists, "
                        "else oracle")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for mapping")
    args = parser.parse_args(argv)

    backend = args.backend
    if backend == "auto":
        ckpt = _checkpoint_present(args.checkpoint)
        if ckpt is not None:
            backend = "scal3r"
            print(f"[demo] using the Scal3R network with {ckpt}", flush=True)
        else:
            backend = "oracle"
            print("[demo] no Scal3R checkpoint found (see README, 'The Scal3R checkpoint'): "
                  "running the ORACLE backend instead -- ground-truth geometry with a random "
                  "gauge per window -- so the whole ROS path (camera -> DDS -> node -> /tf, "
                  "clouds, services) runs for real, without the network.", flush=True)  # fmt: skip
    out = Path(args.out).resolve()
    try:
        summary = run_demo(out, args.frames, args.rate, backend, args.checkpoint, args.timeout)
    except (RuntimeError, TimeoutError) as exc:
        print(f"[demo] failed: {exc}", file=sys.stderr)
        return 1
    print(f"[demo] {summary['frames_processed']} frames, {summary['chunks']} windows, "
          f"{summary['loop_closures']} loop closures, {summary['map_points']} map points, "
          f"{summary['wall_time_s']} s")  # fmt: skip
    print(
        f"[demo] ATE (Sim(3)-aligned) {summary['ate_rmse_m']:.4f} m over a "
        f"{summary['path_length_m']:.0f} m drive ({summary['backend']} backend)"
    )
    print(f"[demo] results in {out / 'demo'} (open trajectory.png / errors.png for plots):")
    for f in summary["files"]:
        print(f"         {f}")
    return 0 if summary["node_exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
