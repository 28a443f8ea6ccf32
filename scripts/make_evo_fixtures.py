#!/usr/bin/env python3
"""Compute reference APE/RPE numbers with evo, for test/tools/test_evaluate.py.

evo (GPL-3.0) is not a dependency of this project and none of its code is copied: this
script runs evo's own Python API in a separate virtual environment and stores the numbers
it produces, so the tests compare ``scal3r_evaluate`` against evo without importing it.

    python3 -m venv /tmp/evovenv && /tmp/evovenv/bin/pip install evo==1.38.1
    /tmp/evovenv/bin/python scripts/make_evo_fixtures.py

Inputs (shipped, see test/data/kitti00_SOURCE.md): the first 1201 poses of KITTI 00's
ground truth, an ORB-SLAM estimate and times.txt. Writes

- test/data/kitti00_orb_tum_subset.txt: the ORB estimate as a TUM file with 40 poses
  left out and stamps = times.txt + jitter (+-4 ms, fixed seed), for the stamp
  association case (written by this script with numpy/scipy, not by evo);
- test/data/evo_expected.json: evo's APE (every alignment) and RPE (frames and metres,
  consecutive and all pairs, pairs on the estimate -- evo's default -- and on the
  reference, ``pairs_from_reference``) statistics, with evo's version and the inputs'
  SHA-256 as provenance.

Only numpy, scipy and evo are needed (the project itself is not imported).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "test" / "data"
GT = DATA / "kitti00_gt_first1201.txt"
ORB = DATA / "kitti00_orb_first1201.txt"
TIMES = DATA / "kitti00_times_first1201.txt"
TUM_SUBSET = DATA / "kitti00_orb_tum_subset.txt"
OUT = DATA / "evo_expected.json"

STATS = ("rmse", "mean", "median", "std", "min", "max")
# (align, delta, unit, all_pairs, pairs_from_reference)
RPE_CASES = [
    ("sim3", 1, "frames", False, False),
    ("sim3", 10, "frames", False, False),
    ("sim3", 10, "frames", True, False),
    ("none", 1, "frames", False, False),
    ("sim3", 10.0, "m", False, False),
    ("sim3", 10.0, "m", False, True),
    ("sim3", 100.0, "m", False, False),
    ("sim3", 100.0, "m", False, True),
    ("sim3", 200.0, "m", False, False),
    ("sim3", 200.0, "m", False, True),
    ("sim3", 50.0, "m", True, False),
    ("sim3", 50.0, "m", True, True),
    ("se3", 100.0, "m", False, False),
    ("scale", 100.0, "m", False, False),
    ("none", 100.0, "m", False, False),
    ("none", 100.0, "m", False, True),
]
TUM_RPE_CASES = [
    ("sim3", 1, "frames", False, False),
    ("sim3", 100.0, "m", False, False),
    ("sim3", 100.0, "m", False, True),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_tum_subset(seed: int = 7, n_drop: int = 40, jitter_s: float = 0.004) -> None:
    """ORB poses at times.txt stamps (+ jitter, a few left out) as a TUM file."""
    rows = np.loadtxt(ORB)
    t = np.loadtxt(TIMES)
    rng = np.random.default_rng(seed)
    drop = rng.choice(np.arange(1, len(rows) - 1), size=n_drop, replace=False)
    keep = np.setdiff1d(np.arange(len(rows)), drop)
    stamps = t[keep] + rng.uniform(-jitter_s, jitter_s, size=len(keep))
    M = rows[keep].reshape(-1, 3, 4)
    q = Rotation.from_matrix(M[:, :, :3]).as_quat()  # x y z w
    lines = [
        f"{s:.6f} {p[0]:.9f} {p[1]:.9f} {p[2]:.9f} {qq[0]:.9f} {qq[1]:.9f} {qq[2]:.9f} {qq[3]:.9f}"
        for s, p, qq in zip(stamps, M[:, :, 3], q, strict=True)
    ]
    header = (
        f"# ORB estimate of KITTI 00 (first 1201 poses), {n_drop} poses left out, "
        f"stamps = times.txt + U(-{jitter_s}, {jitter_s}) s, seed {seed}\n"
    )
    TUM_SUBSET.write_text(header + "\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep-tum", action="store_true", help="do not rewrite the TUM subset")
    args = p.parse_args()
    try:
        import evo
        from evo.core import metrics, sync
        from evo.core.trajectory import PoseTrajectory3D
        from evo.tools import file_interface
    except ImportError:
        print("needs evo: run with a venv that has it (see the docstring)", file=sys.stderr)
        return 2
    if not args.keep_tum:
        write_tum_subset()

    def stats(m) -> dict:
        return {k: float(m.get_statistic(getattr(metrics.StatisticsType, k))) for k in STATS}

    def aligned(ref, est, align: str):
        est = copy.deepcopy(est)
        if align == "sim3":
            est.align(ref, correct_scale=True)
        elif align == "se3":
            est.align(ref)
        elif align == "scale":
            est.align(ref, correct_only_scale=True)
        return est

    def ape(ref, est, align: str) -> dict:
        e = aligned(ref, est, align)
        out = {}
        for name, rel in (
            ("translation_m", metrics.PoseRelation.translation_part),
            ("rotation_deg", metrics.PoseRelation.rotation_angle_deg),
        ):
            m = metrics.APE(rel)
            m.process_data((ref, e))
            out[name] = stats(m)
        return dict(align=align, n_poses=int(ref.num_poses), **out)

    def rpe(ref, est, align, delta, unit, all_pairs, from_ref) -> dict:
        e = aligned(ref, est, align)
        u = metrics.Unit.frames if unit == "frames" else metrics.Unit.meters
        out = dict(
            align=align, delta=delta, unit=unit, all_pairs=all_pairs, pairs_from_reference=from_ref
        )
        for name, rel in (
            ("translation_m", metrics.PoseRelation.translation_part),
            ("rotation_deg", metrics.PoseRelation.rotation_angle_deg),
        ):
            m = metrics.RPE(
                rel, delta, u, rel_delta_tol=0.1, all_pairs=all_pairs, pairs_from_reference=from_ref
            )
            m.process_data((ref, e))
            out[name] = stats(m)
            out["n_pairs"] = len(m.error)
            out["delta_ids"] = [int(j) for j in m.delta_ids]  # second index of each pair
        if all_pairs:  # long and implied by the statistics; keep a checksum only
            out["delta_ids_sum"] = int(sum(out.pop("delta_ids")))
        return out

    ref = file_interface.read_kitti_poses_file(str(GT))
    est = file_interface.read_kitti_poses_file(str(ORB))
    kitti = dict(
        ground_truth=GT.name,
        estimate=ORB.name,
        matched_by="index",
        ape=[ape(ref, est, a) for a in ("sim3", "se3", "scale", "none")],
        rpe=[rpe(ref, est, *c) for c in RPE_CASES],
    )

    # TUM estimate against the KITTI ground truth with times.txt as its stamps
    ref_t = PoseTrajectory3D(poses_se3=list(ref.poses_se3), timestamps=np.loadtxt(TIMES))
    est_t = file_interface.read_tum_trajectory_file(str(TUM_SUBSET))
    ref_s, est_s = sync.associate_trajectories(ref_t, est_t, max_diff=0.01)
    tum = dict(
        ground_truth=GT.name,
        ground_truth_times=TIMES.name,
        estimate=TUM_SUBSET.name,
        matched_by="stamps, max_diff 0.01 s",
        n_matched=int(est_s.num_poses),
        ape=[ape(ref_s, est_s, "sim3")],
        rpe=[rpe(ref_s, est_s, *c) for c in TUM_RPE_CASES],
    )

    doc = dict(
        provenance=dict(
            generator="scripts/make_evo_fixtures.py",
            evo_version=str(evo.__version__),
            numpy_version=np.__version__,
            python=sys.version.split()[0],
            created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            inputs={f.name: sha256(f) for f in (GT, ORB, TIMES, TUM_SUBSET)},
            notes=(
                "evo.core.metrics.APE/RPE on evo.tools.file_interface readings; the estimate "
                "aligned first with PosePath3D.align (sim3: correct_scale, se3: rigid, scale: "
                "correct_only_scale, none: as read), as evo_ape/evo_rpe -as/-a/-s/(none). "
                "RPE rel_delta_tol 0.1. delta_ids: evo's RPE.delta_ids (the second index of "
                "each pair; consecutive pairs start at 0)."
            ),
        ),
        kitti00=kitti,
        kitti00_tum_subset=tum,
    )
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes) and {TUM_SUBSET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
