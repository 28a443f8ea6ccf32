"""Similarity transforms Sim(3) = (s, R, t), acting as x -> s * R @ x + t.

One small immutable type used by alignment, the pose graph, the map store and the
trajectory, so that every layer composes transforms the same way. Poses are
camera-to-world 4x4 matrices (OpenCV camera axes) throughout the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def as_rotation(R: np.ndarray) -> np.ndarray:
    """Project a near-rotation onto SO(3) (SVD), keeping det = +1."""
    U, _, Vt = np.linalg.svd(R)
    D = np.eye(3)
    D[2, 2] = np.sign(np.linalg.det(U @ Vt))
    return U @ D @ Vt


@dataclass(frozen=True)
class Sim3:
    """x -> s * R @ x + t. ``s > 0``, ``R`` in SO(3), ``t`` in R^3 (float64)."""

    s: float = 1.0
    R: np.ndarray = None  # type: ignore[assignment]
    t: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        R = np.eye(3) if self.R is None else np.asarray(self.R, dtype=np.float64).reshape(3, 3)
        t = np.zeros(3) if self.t is None else np.asarray(self.t, dtype=np.float64).reshape(3)
        if not (np.isfinite(self.s) and self.s > 0):
            raise ValueError(f"Sim3 scale must be finite and > 0, got {self.s}")
        object.__setattr__(self, "s", float(self.s))
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "t", t)

    @staticmethod
    def identity() -> Sim3:
        return Sim3()

    @staticmethod
    def from_matrix(T: np.ndarray) -> Sim3:
        """From a 4x4 matrix [[sR, t], [0, 1]]."""
        T = np.asarray(T, dtype=np.float64)
        sR = T[:3, :3]
        s = float(np.cbrt(np.linalg.det(sR)))
        return Sim3(s, as_rotation(sR / s), T[:3, 3])

    def matrix(self) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3] = self.s * self.R
        T[:3, 3] = self.t
        return T

    def inverse(self) -> Sim3:
        Rt = self.R.T
        return Sim3(1.0 / self.s, Rt, -(Rt @ self.t) / self.s)

    def __matmul__(self, other: Sim3) -> Sim3:
        """Composition: (self @ other)(x) = self(other(x))."""
        return Sim3(self.s * other.s, self.R @ other.R, self.s * (self.R @ other.t) + self.t)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform points of shape (..., 3)."""
        pts = np.asarray(points)
        out = self.s * (pts @ self.R.T.astype(pts.dtype, copy=False)) + self.t.astype(
            pts.dtype, copy=False
        )
        return out.astype(pts.dtype, copy=False)

    def apply_pose(self, c2w: np.ndarray) -> np.ndarray:
        """Map a camera-to-world pose (4x4, rigid) into the target frame, staying rigid.

        The camera centre moves with the full similarity; the orientation only rotates.
        """
        c2w = np.asarray(c2w, dtype=np.float64)
        out = np.eye(4)
        out[:3, :3] = self.R @ c2w[:3, :3]
        out[:3, 3] = self.s * (self.R @ c2w[:3, 3]) + self.t
        return out


def umeyama(
    src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None, with_scale: bool = True
) -> Sim3:
    """Weighted least-squares Sim(3) with dst ~ s R src + t (Umeyama 1991).

    src, dst: (N, 3); weights: (N,) non-negative. Raises ValueError when the problem is
    degenerate (fewer than 3 weighted points or zero spread).
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 3)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 3)
    if src.shape != dst.shape:
        raise ValueError(f"umeyama: shape mismatch {src.shape} vs {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if len(w) != len(src) or np.count_nonzero(w > 0) < 3:
        raise ValueError("umeyama: need at least 3 points with positive weight")
    w = w / w.sum()
    mu_s = w @ src
    mu_d = w @ dst
    xs = src - mu_s
    xd = dst - mu_d
    var_s = float(w @ np.einsum("ij,ij->i", xs, xs))
    if var_s <= 1e-18:
        raise ValueError("umeyama: source points have no spread")
    cov = (xd * w[:, None]).T @ xs
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    s = float(np.trace(np.diag(D) @ S) / var_s) if with_scale else 1.0
    if not s > 0:
        raise ValueError("umeyama: non-positive scale (degenerate correspondences)")
    t = mu_d - s * (R @ mu_s)
    return Sim3(s, R, t)
