"""Loop closure: place recognition, loop-chunk windows, loop constraint, verification.

What the official release (https://github.com/zju3dv/Scal3R) does and how this module maps it
onto a stream:

- Retrieval. Official: SALAD descriptors (extra downloaded weights) or, as fallback,
  64x64 grey thumbnails (zero-mean, unit-norm, threshold 0.92); inner product, top-5
  neighbours, similarity > threshold, |i - j| > 10, sort by similarity, NMS radius 25,
  pairs (later, earlier). Here: the thumbnail fallback as-is, a descriptor pooled from
  the network's own DINO patch tokens (no extra weights; its threshold is NOT
  calibrated on real data), and an oracle descriptor from ground-truth positions for
  tests. Online, a frame is compared only with frames at least ``min_gap + 1`` older
  (the offline official search also sees future frames), and NMS decisions are
  delayed by ``nms_delay`` frames so a better match arriving shortly after can still
  win, as in the offline sort-then-suppress.
- Loop chunk: 2 x ``half_window`` frames around each end, clamped inside the regular
  chunk containing it (last chunk whose start <= frame), later ++ earlier; skipped if
  both ends lie in one chunk or both windows overlap an accepted loop for that pair.
- Constraint: align the loop chunk to chunk A (later) and to chunk B (earlier);
  ``T(A -> B) = T(L -> B) @ T(L -> A)^-1`` (official ``combine_transform``).
- Verification (not in the official code): both alignments must be trustworthy, and
  the edge must agree with the current pose-graph estimate within a drift budget that
  grows with the path length between the chunks. A true loop with accumulated drift
  passes; a place-recognition false positive whose loop chunk overlays two different
  places fails.

``LoopClosure`` wires these pieces to the engine as its ``LoopClosureHook``, through the
engine's public methods only, in two parts: the network part (retrieval, planning, loop
chunks inferred) runs in the engine's network phase right after the window's own
inference, so the GCS sums see ``infer(k), loop(k), infer(k+1)`` whether or not window k
is placed on another thread meanwhile; the verification part (alignment to the placed
chunks, checks, loop edges) runs when window k is placed.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from scal3r_ros.mapping.alignment import (
    AlignmentConfig,
    align_points,
    gather_overlap,
    unproject_depth,
)
from scal3r_ros.mapping.backends.protocol import ChunkPrediction
from scal3r_ros.mapping.events import LoopClosureUpdate
from scal3r_ros.mapping.sim3 import Sim3
from scal3r_ros.mapping.tensors import as_tensor, full_precision, to_numpy
from scal3r_ros.mapping.windowing import ChunkSpec

if TYPE_CHECKING:
    from scal3r_ros.mapping.engine import MappingEngine

# ----------------------------------------------------------------------------- descriptors


def thumbnail_descriptor(rgb: np.ndarray | torch.Tensor, size: int = 64) -> np.ndarray:
    """Official fallback: grey ``size`` x ``size`` thumbnail, zero-mean, unit-norm.

    rgb: (H, W, 3) uint8 (or (H, W) grey). Area resampling as cv2.INTER_AREA (exact for
    integer factors). Returns (size*size,) float32.
    """
    return thumbnail_descriptors(as_tensor(rgb)[None], size)[0]


def thumbnail_descriptors(images: np.ndarray | torch.Tensor, size: int = 64) -> np.ndarray:
    """`thumbnail_descriptor` of each image of an (S, H, W, 3) (or (S, H, W) grey) batch,
    computed in torch on the images' device -> host (S, size*size) float32."""
    x = as_tensor(images)
    if x.ndim == 4:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32, device=x.device)
        with full_precision(x.device):
            grey = x[..., :3].float() @ w
    else:
        grey = x.float()
    small = F.adaptive_avg_pool2d(grey[:, None], (size, size)).reshape(len(grey), -1) / 255.0
    small = small - small.mean(1, keepdim=True)
    return to_numpy(small / (torch.linalg.vector_norm(small, dim=1, keepdim=True) + 1e-8))


def pool_patch_tokens(tokens: np.ndarray | torch.Tensor, method: str = "gem", p: float = 3.0):
    """Global descriptor from the backbone's patch tokens, no extra weights.

    tokens: (N, C) or (h, w, C) patch tokens of one frame (e.g. the DINO patch tokens the
    network computes anyway; drop camera/register tokens first). ``gem`` is a signed
    generalised mean, ``sign(y)|y|^(1/p)`` with ``y = mean(sign(x)|x|^p)`` (DINO tokens are
    signed; this stresses strong activations and stays continuous around zero),
    ``mean`` is plain average pooling. Returns an L2-normalised (C,) float32 array; the
    detector's ``center`` option removes the component common to all frames.
    """
    x = torch.as_tensor(tokens).detach().float().reshape(-1, torch.as_tensor(tokens).shape[-1])
    if method == "mean":
        d = x.mean(0)
    elif method == "gem":
        y = (torch.sign(x) * x.abs().pow(p)).mean(0)
        d = torch.sign(y) * y.abs().pow(1.0 / p)
    else:
        raise ValueError(f"unknown pooling {method!r}")
    d = d / (d.norm() + 1e-8)
    return d.cpu().numpy().astype(np.float32)


class OracleDescriptor:
    """Descriptor from ground truth, for tests: random Fourier features of a place vector.

    Inner products approximate ``exp(-|a - b|^2 / (2 length_scale^2))`` (up to ~1/sqrt(dim)
    noise), so similarity > 0.7 means "within ~0.85 length_scale". The place vector is
    whatever should define "same place", e.g. the camera centre, optionally with the
    heading (x weight) appended.
    """

    def __init__(self, in_dim: int = 3, length_scale: float = 2.0, dim: int = 512, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.W = rng.normal(0.0, 1.0 / length_scale, size=(dim, in_dim))
        self.b = rng.uniform(0.0, 2 * np.pi, size=dim)

    def __call__(self, place: np.ndarray) -> np.ndarray:
        z = np.cos(self.W @ np.asarray(place, dtype=np.float64).reshape(-1) + self.b)
        return (z / (np.linalg.norm(z) + 1e-12)).astype(np.float32)


# ------------------------------------------------------------------------------- retrieval


@dataclass(frozen=True)
class LoopCandidate:
    """A retrieved pair, official order: ``later`` > ``earlier`` (frame indices)."""

    later: int
    earlier: int
    similarity: float


@dataclass
class LoopDetectorConfig:
    """Retrieval rules (official defaults for SALAD-like descriptors)."""

    similarity_threshold: float = 0.7
    top_k: int = 5
    min_gap: int = 10  # accept only |i - j| > min_gap
    use_nms: bool = True
    nms_radius: int = 25
    nms_delay: int | None = None  # frames to wait before finalising; None = nms_radius
    center: bool = False  # subtract the running mean descriptor (pooled backbone tokens)
    capacity: int = 2000  # descriptors kept (thumbnails: 16 KB each); older ones thinned
    db_stride: int = 1  # store every n-th frame (queries still run on every frame)

    @staticmethod
    def thumbnail() -> LoopDetectorConfig:
        """The official fallback: 64x64 grey thumbnails, threshold 0.92."""
        return LoopDetectorConfig(similarity_threshold=0.92)

    @staticmethod
    def backbone() -> LoopDetectorConfig:
        """Pooled backbone tokens. Threshold is a guess (not calibrated on real data)."""
        return LoopDetectorConfig(similarity_threshold=0.7, center=True)


@dataclass
class DescriptorDatabase:
    """A detector's stored descriptors (`LoopDetector.database`): the keyframes of a saved
    session. ``descriptors`` as stored: unit length unless the detector centres them
    (``normalised`` says which); ``sum``/``count``: the running sum and number of every
    descriptor added, which centring subtracts the mean of."""

    frame_ids: np.ndarray  # (K,) int64 ascending
    descriptors: np.ndarray  # (K, D) float32
    normalised: bool
    sum: np.ndarray | None  # (D,) float64
    count: int


def _suppresses(acc: LoopCandidate, x: int, r: int) -> bool:
    """Official NMS: an accepted pair (i < j) suppresses frames near each end."""
    i, j = acc.earlier, acc.later
    return (i - r <= x < min(i + r + 1, j)) or (max(i + 1, j - r) <= x <= j + r)


class LoopDetector:
    """Online loop retrieval over a bounded descriptor database (numpy inner product).

    Call :meth:`add` for every frame in order; it returns the candidates finalised so far
    (already NMS-filtered, (later, earlier), by decreasing similarity within a call).
    :meth:`flush` at end of stream finalises what is pending. :meth:`inject` lets a test
    or an external source propose a candidate through the same NMS.
    """

    def __init__(self, config: LoopDetectorConfig | None = None) -> None:
        self.config = config or LoopDetectorConfig()
        self.reset()

    def reset(self) -> None:
        self._desc: np.ndarray | None = None  # (capacity, D)
        self._ids = np.zeros(0, dtype=np.int64)
        self._n = 0
        self._sum: np.ndarray | None = None
        self._count = 0
        self._last = -1
        self.pending: list[LoopCandidate] = []
        self.accepted: list[LoopCandidate] = []
        self._acc_ends = np.zeros((0, 2), np.int64)  # (earlier, later) of ``accepted``

    def __len__(self) -> int:
        return self._n

    @property
    def frame_ids(self) -> np.ndarray:
        return self._ids[: self._n].copy()

    # -- database
    def database(self) -> DescriptorDatabase | None:
        """The stored descriptors (copies); None when nothing is stored."""
        if self._desc is None or self._n == 0:
            return None
        return DescriptorDatabase(
            self._ids[: self._n].copy(),
            self._desc[: self._n].copy(),
            not self.config.center,
            None if self._sum is None else self._sum.copy(),
            self._count,
        )

    def restore_database(self, db: DescriptorDatabase, last_frame: int) -> None:
        """Start over from a saved database: its frames are the retrievable past (thinned
        as `add` would when over ``capacity``), frames after ``last_frame`` come next.
        Pending and accepted candidates start empty."""
        c = self.config
        self.reset()
        ids = np.asarray(db.frame_ids, np.int64)
        d = np.asarray(db.descriptors, np.float32).reshape(len(ids), -1)
        if len(ids) > 1 and not (np.diff(ids) > 0).all():
            raise ValueError("descriptor database frame ids must increase")
        if not c.center and not db.normalised:
            d = self._normalise(d).astype(np.float32)
        while len(ids) >= c.capacity:  # the thinning of `_insert`, until one slot is free
            half = len(ids) // 2
            keep = np.r_[np.arange(0, half, 2), np.arange(half, len(ids))]
            ids, d = ids[keep], d[keep]
        self._desc = np.zeros((c.capacity, d.shape[1]), np.float32)
        self._ids = np.zeros(c.capacity, np.int64)
        self._n = len(ids)
        self._desc[: self._n], self._ids[: self._n] = d, ids
        self._sum = None if db.sum is None else np.asarray(db.sum, np.float64).copy()
        self._count = int(db.count)
        self._last = int(last_frame)

    def _insert(self, frame: int, d: np.ndarray) -> np.ndarray | None:
        """Store a descriptor; returns the kept slot indices when the store was thinned."""
        c = self.config
        if self._desc is None:
            # float32: queries read the store in place (no conversion per query)
            self._desc = np.zeros((c.capacity, d.size), np.float32)
            self._ids = np.zeros(c.capacity, np.int64)
        keep = None
        if self._n == c.capacity:
            # thin the older half (keep every second), so the whole past stays covered
            half = self._n // 2
            keep = np.r_[np.arange(0, half, 2), np.arange(half, self._n)]
            m = len(keep)
            self._desc[:m] = self._desc[keep]
            self._ids[:m] = self._ids[keep]
            self._n = m
        # without centring the normalisation never changes: store normalised once
        self._desc[self._n] = d if c.center else self._normalise(d)
        self._ids[self._n] = frame
        self._n += 1
        return keep

    def _normalise(self, x: np.ndarray) -> np.ndarray:
        if self.config.center and self._sum is not None and self._count > 1:
            x = x - (self._sum / self._count).astype(np.float32)
        n = np.linalg.norm(x, axis=-1, keepdims=True)
        return x / np.maximum(n, 1e-12)

    def query(self, frame: int, descriptor: np.ndarray) -> list[LoopCandidate]:
        """Candidates for ``frame`` among stored frames older than ``min_gap``, unfiltered
        by NMS: top-k by inner product, similarity above the threshold."""
        return self._candidates(frame, self._eligible(frame), descriptor, None)

    def _eligible(self, frame: int) -> int:
        """Stored slots ``[0, k)`` are old enough for ``frame`` (ids increase)."""
        if self._n == 0 or self._desc is None:
            return 0
        return int(np.searchsorted(self._ids[: self._n], frame - self.config.min_gap))

    def _candidates(
        self, frame: int, k_end: int, descriptor: np.ndarray, sims: np.ndarray | None
    ) -> list[LoopCandidate]:
        """Top-k over slots ``[0, k_end)``; ``sims``: their similarities when known."""
        c = self.config
        if k_end == 0:
            return []
        if sims is None:
            q = self._normalise(np.asarray(descriptor, np.float32).reshape(-1))
            db = self._desc[:k_end]
            if c.center:  # centred per block: no full-size copy of the store per query
                blocks = np.array_split(db, max(1, k_end // 256))
                sims = np.concatenate([self._normalise(b) @ q for b in blocks])
            else:
                sims = db @ q
        sims = sims[:k_end]
        k = min(c.top_k, sims.size)
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top])]
        return [
            LoopCandidate(int(frame), int(self._ids[t]), float(sims[t]))
            for t in top
            if sims[t] > c.similarity_threshold
        ]

    def add(self, frame: int, descriptor: np.ndarray) -> list[LoopCandidate]:
        """Insert a frame's descriptor, propose its candidates, return finalised loops."""
        return self.add_many([frame], np.asarray(descriptor, np.float32).reshape(1, -1))

    def add_many(self, frames: Sequence[int], descriptors: np.ndarray) -> list[LoopCandidate]:
        """`add` for each frame in turn (same candidates), with one matrix product for the
        batch: a window's new frames cost one pass over the store, not one each.

        Without centring the stored descriptors never change, so every batch frame's
        similarity to every slot is computed up front (store x batch, plus batch x batch
        for slots the batch itself fills) and the sequential rules (eligibility by
        ``min_gap``, thinning, NMS after each frame) run on those numbers.
        """
        c = self.config
        Q = np.asarray(descriptors, np.float32).reshape(len(frames), -1)
        if self._desc is not None and Q.shape[1] != self._desc.shape[1]:
            raise ValueError(f"descriptor size {Q.shape[1]} != {self._desc.shape[1]}")
        S = None  # (capacity, B): similarity of slot i to batch frame j
        if not c.center and len(Q):
            Qn = self._normalise(Q)
            S = np.zeros((c.capacity, len(Q)), np.float32)
            if self._n:
                S[: self._n] = self._desc[: self._n] @ Qn.T
        out: list[LoopCandidate] = []
        for j, frame in enumerate(int(f) for f in frames):
            if frame <= self._last:
                raise ValueError(f"frame indices must increase ({frame} after {self._last})")
            self._last = frame
            d = Q[j]
            sims = None if S is None else S[:, j]
            self.pending.extend(self._candidates(frame, self._eligible(frame), d, sims))
            self._sum = d.astype(np.float64) if self._sum is None else self._sum + d
            self._count += 1
            if frame % max(1, c.db_stride) == 0:
                keep = self._insert(frame, d)
                if S is not None:
                    if keep is not None:
                        S[: len(keep)] = S[keep]
                    S[self._n - 1] = Qn @ Qn[j]
            out += self._finalise(frame)
        return out

    def inject(self, later: int, earlier: int, similarity: float = 1.0) -> None:
        """Propose a candidate from outside (tests, oracle); it goes through NMS."""
        if later <= earlier:
            later, earlier = earlier, later
        self.pending.append(LoopCandidate(int(later), int(earlier), float(similarity)))

    def flush(self) -> list[LoopCandidate]:
        """End of stream: finalise every pending candidate."""
        return self._finalise(None)

    def _finalise(self, current: int | None) -> list[LoopCandidate]:
        c = self.config
        if not self.pending:
            return []
        cands = sorted(set(self.pending), key=lambda x: -x.similarity)
        if not c.use_nms or c.nms_radius <= 0:
            self.pending = []
            for cand in cands:
                self._accept(cand)
            return cands
        delay = c.nms_radius if c.nms_delay is None else c.nms_delay
        r = c.nms_radius
        out: list[LoopCandidate] = []
        keep: list[LoopCandidate] = []
        tentative: list[LoopCandidate] = []

        def hit(group: list[LoopCandidate], x: LoopCandidate) -> bool:
            return any(_suppresses(a, x.later, r) or _suppresses(a, x.earlier, r) for a in group)

        for cand in cands:
            if self._suppressed_by_accepted(cand, r):
                continue  # dropped for good
            if hit(tentative, cand):
                keep.append(cand)  # a better, not yet final, candidate may suppress it
                continue
            if current is None or cand.later <= current - delay:
                self._accept(cand)
                out.append(cand)
            else:
                tentative.append(cand)
                keep.append(cand)
        self.pending = keep
        return out

    def _accept(self, cand: LoopCandidate) -> None:
        self.accepted.append(cand)
        self._acc_ends = np.vstack([self._acc_ends, [[cand.earlier, cand.later]]])

    def _suppressed_by_accepted(self, x: LoopCandidate, r: int) -> bool:
        """`_suppresses` against every accepted pair at once (their number grows with
        the drive; this runs for each pending candidate after every frame)."""
        i, j = self._acc_ends[:, 0], self._acc_ends[:, 1]
        for v in (x.later, x.earlier):
            near_i = (i - r <= v) & (v < np.minimum(i + r + 1, j))
            near_j = (np.maximum(i + 1, j - r) <= v) & (v <= j + r)
            if (near_i | near_j).any():
                return True
        return False


# --------------------------------------------------------------------------- loop windows


@dataclass(frozen=True)
class LoopWindow:
    """Frames of one loop chunk: ``window_a`` (around ``later``, in chunk ``chunk_a``)
    then ``window_b`` (around ``earlier``, in chunk ``chunk_b``); windows half-open."""

    later: int
    earlier: int
    chunk_a: int
    chunk_b: int
    window_a: tuple[int, int]
    window_b: tuple[int, int]

    @property
    def frames(self) -> list[int]:
        return list(range(*self.window_a)) + list(range(*self.window_b))


def clamp_window(start: int, end: int, target: int, half: int) -> tuple[int, int]:
    """Official ``create_loop_block``: 2*half frames around ``target`` inside [start, end)."""
    n = 2 * half
    if target - half < start:
        return start, min(end, start + n)
    if target + half > end:
        return max(start, end - n), end
    return target - half, target + half


class LoopWindowPlanner:
    """Turns candidates into loop-chunk frame windows, with the official skip rules."""

    def __init__(self, half_window: int = 10) -> None:
        self.half_window = half_window
        self._accepted: dict[tuple[int, int], list[tuple[tuple[int, int], tuple[int, int]]]] = {}

    def reset(self) -> None:
        self._accepted.clear()

    @staticmethod
    def locate(chunks: Mapping[int, tuple[int, int]], frame: int) -> int | None:
        """Chunk containing ``frame``: the last chunk whose start <= frame (official
        bisect), if the frame is inside it. ``chunks``: id -> (start, end) half-open."""
        items = sorted(chunks.items(), key=lambda kv: kv[1][0])
        starts = [se[0] for _, se in items]
        pos = bisect.bisect_right(starts, frame) - 1
        if pos < 0:
            return None
        cid, (s, e) = items[pos]
        return cid if s <= frame < e else None

    def plan(
        self, cand: LoopCandidate, chunks: Mapping[int, tuple[int, int]] | Sequence[tuple[int, int]]
    ) -> tuple[LoopWindow | None, str]:
        """Window for a candidate, or (None, reason) when the official rules skip it."""
        if not isinstance(chunks, Mapping):
            chunks = dict(enumerate(chunks))
        ca = self.locate(chunks, cand.later)
        cb = self.locate(chunks, cand.earlier)
        if ca is None or cb is None:
            return None, "frame_not_in_any_chunk"
        if ca == cb:
            return None, "same_chunk"
        wa = clamp_window(*chunks[ca], cand.later, self.half_window)
        wb = clamp_window(*chunks[cb], cand.earlier, self.half_window)
        key = (min(ca, cb), max(ca, cb))
        windows = (wa, wb) if key[0] == ca else (wb, wa)

        def ov(x: tuple[int, int], y: tuple[int, int]) -> bool:
            return max(x[0], y[0]) < min(x[1], y[1])

        prev = self._accepted.setdefault(key, [])
        if any(ov(windows[0], p[0]) and ov(windows[1], p[1]) for p in prev):
            return None, "overlaps_existing_loop"
        prev.append(windows)
        return LoopWindow(cand.later, cand.earlier, ca, cb, wa, wb), ""


# ---------------------------------------------------------------- constraint and verification


def loop_edge(T_a_loop: Sim3, T_b_loop: Sim3) -> Sim3:
    """Loop constraint ``T(A -> B)`` from the loop chunk's alignments to chunk A (later)
    and chunk B (earlier): s = sB/sA, R = RB RA^T, t = tB - s R tA (official)."""
    return T_b_loop @ T_a_loop.inverse()


class AlignmentLike(Protocol):
    """What verification reads from ``alignment.AlignmentResult`` (sim3: src -> dst)."""

    sim3: Sim3
    n_points: int
    inlier_ratio: float
    rmse: float
    ok: bool
    reason: str


@dataclass
class LoopVerifierConfig:
    """Thresholds of geometric verification. Drift budgets are deliberately generous:
    they must let a true loop with accumulated drift through."""

    min_inlier_ratio: float = 0.5
    max_rmse_rel: float = 0.1  # rmse / RMS spread of the target points (when known)
    min_points: int = 100
    # optional: |log s| of each loop-chunk->chunk fit (chunks are network-normalised, so
    # ~0 with the real network; off by default because the oracle uses random scales)
    max_abs_log_scale_to_chunk: float | None = None
    # agreement with the current graph estimate
    trans_budget_path: float = 0.3  # x path length between the chunks (map units)
    trans_budget_chunk: float = 0.5  # + this x chunk A's scale (one chunk's extent)
    max_rot_deg: float = 45.0
    max_abs_log_scale: float = float(np.log(2.5))
    # optional point-overlap test (same place => the two point sets interpenetrate)
    overlap_radius_rel: float = 0.05  # x RMS spread of chunk B's points
    min_overlap_ratio: float = 0.3
    max_overlap_points: int = 4000


@dataclass
class LoopVerdict:
    ok: bool
    reason: str
    edge: Sim3 | None
    metrics: dict[str, float] = field(default_factory=dict)


def alignment_problem(
    res: AlignmentLike,
    name: str,
    min_points: int,
    min_inlier_ratio: float,
    max_rmse_rel: float,
    need_spread: bool = False,
) -> str:
    """Why a fit is not trustworthy ("" when it is): failed, too few points, too few
    inliers, or an RMSE beyond ``max_rmse_rel`` x the target points' RMS spread (a fit
    without a known spread passes that check unless ``need_spread``). Loop verification
    and relocalisation judge their fits by it."""
    if not res.ok:
        return f"{name}_alignment_failed:{res.reason}"
    if res.n_points < min_points:
        return f"{name}_too_few_points"
    if res.inlier_ratio < min_inlier_ratio:
        return f"{name}_low_inlier_ratio:{res.inlier_ratio:.2f}"
    spread = getattr(res, "extras", {}).get("spread_dst") if hasattr(res, "extras") else None
    if (need_spread and not spread) or (spread and res.rmse > max_rmse_rel * spread):
        return f"{name}_high_rmse:{res.rmse:.3g}"
    return ""


def _check_alignment(res: AlignmentLike, cfg: LoopVerifierConfig, name: str) -> str:
    why = alignment_problem(res, name, cfg.min_points, cfg.min_inlier_ratio, cfg.max_rmse_rel)
    if why:
        return why
    if cfg.max_abs_log_scale_to_chunk is not None:
        if abs(np.log(res.sim3.s)) > cfg.max_abs_log_scale_to_chunk:
            return f"{name}_implausible_scale"
    return ""


def rotation_angle_deg(R: np.ndarray) -> float:
    c = (np.trace(R) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def point_overlap_ratio(
    points_a: np.ndarray, points_b: np.ndarray, T_b_a: Sim3, radius: float, max_points: int = 4000
) -> float:
    """Fraction of chunk-A points that land within ``radius`` of a chunk-B point after
    ``T_b_a``. Both (N, 3) in their chunk frames; subsampled deterministically."""
    from scipy.spatial import cKDTree

    a = np.asarray(points_a, np.float64).reshape(-1, 3)
    b = np.asarray(points_b, np.float64).reshape(-1, 3)
    a, b = a[np.isfinite(a).all(1)], b[np.isfinite(b).all(1)]
    if len(a) == 0 or len(b) == 0:
        return 0.0
    if len(a) > max_points:
        a = a[np.linspace(0, len(a) - 1, max_points).astype(int)]
    if len(b) > 4 * max_points:
        b = b[np.linspace(0, len(b) - 1, 4 * max_points).astype(int)]
    d, _ = cKDTree(b).query(T_b_a.apply(a), k=1)
    return float(np.mean(d < radius))


class LoopVerifier:
    """Geometric verification of one loop constraint before it enters the pose graph."""

    def __init__(self, config: LoopVerifierConfig | None = None) -> None:
        self.config = config or LoopVerifierConfig()

    def verify(
        self,
        align_a: AlignmentLike,
        align_b: AlignmentLike,
        G_a: Sim3 | None = None,
        G_b: Sim3 | None = None,
        path_length: float | None = None,
        points_a: np.ndarray | None = None,
        points_b: np.ndarray | None = None,
    ) -> LoopVerdict:
        """``align_a``/``align_b``: loop chunk -> chunk A (later) / chunk B (earlier).
        ``G_a``/``G_b``: current chunk -> map estimates (skip the graph test if None);
        ``path_length``: map distance travelled from B to A. ``points_a``/``points_b``:
        optional points of the loop frames in chunk A's / B's frame for the overlap test.
        """
        cfg = self.config
        for res, name in ((align_a, "a"), (align_b, "b")):
            why = _check_alignment(res, cfg, name)
            if why:
                return LoopVerdict(False, why, None)
        edge = loop_edge(align_a.sim3, align_b.sim3)
        m: dict[str, float] = {"inlier_a": align_a.inlier_ratio, "inlier_b": align_b.inlier_ratio}
        if G_a is not None and G_b is not None:
            # where the loop says chunk A is, vs where the graph has it
            G_a_loop = G_b @ edge
            d_t = float(np.linalg.norm(G_a_loop.t - G_a.t))
            budget = cfg.trans_budget_path * float(path_length or 0.0)
            budget += cfg.trans_budget_chunk * G_a.s
            d_r = rotation_angle_deg(G_a.R.T @ G_a_loop.R)
            d_s = abs(float(np.log(G_a_loop.s / G_a.s)))
            m.update(trans_err=d_t, trans_budget=budget, rot_err_deg=d_r, log_scale_err=d_s)
            if d_t > budget:
                return LoopVerdict(False, "inconsistent_translation", edge, m)
            if d_r > cfg.max_rot_deg:
                return LoopVerdict(False, "inconsistent_rotation", edge, m)
            if d_s > cfg.max_abs_log_scale:
                return LoopVerdict(False, "inconsistent_scale", edge, m)
        if points_a is not None and points_b is not None:
            pb = np.asarray(points_b, np.float64).reshape(-1, 3)
            pb = pb[np.isfinite(pb).all(1)]
            spread = float(np.sqrt(((pb - pb.mean(0)) ** 2).sum(1).mean())) if len(pb) else 0.0
            ratio = point_overlap_ratio(
                points_a, pb, edge, cfg.overlap_radius_rel * spread, cfg.max_overlap_points
            )
            m["overlap_ratio"] = ratio
            if ratio < cfg.min_overlap_ratio:
                return LoopVerdict(False, "no_point_overlap", edge, m)
        return LoopVerdict(True, "", edge, m)


# ------------------------------------------------------------------------ engine hook


@dataclass
class LoopClosureConfig:
    """How the loop-closure pieces are put together for the engine."""

    half_window: int = 10  # official loop_size 20 = 2 x 10
    detector: LoopDetectorConfig | None = None  # None: its defaults
    verifier: LoopVerifierConfig | None = None  # None: its defaults
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    # frame id -> descriptor; None: the backend's per-frame descriptors
    descriptor_fn: Callable[[int], np.ndarray] | None = None


@dataclass
class LoopWork:
    """A window's loop closure between its network part and its verification part: every
    finalised candidate in order, with its loop window and the loop chunk's prediction
    (time order), or the reason the planning rules skipped it (reported at verification,
    so the ``rejected`` list reads the same on one thread or two)."""

    steps: list[tuple[LoopCandidate, LoopWindow | None, str, ChunkPrediction | None]] = field(
        default_factory=list
    )


class LoopClosure:
    """The engine's ``LoopClosureHook``: retrieval, loop windows, verification.

    After each window's inference (`infer_loops`): add its frames' descriptors to the
    detector; for every finalised candidate whose two ends lie in different windows
    through the network, build the loop chunk (two windows) and run it through the
    backend (with the GCS state: loop chunks join the sums, as official). When the window
    is placed (`verify_loops`): align each loop chunk to both chunks on their shared
    frames, verify, and add the loop edge ``T(A -> B)`` to the engine's pose graph.
    """

    def __init__(self, config: LoopClosureConfig | None = None) -> None:
        self.config = cfg = config or LoopClosureConfig()
        self.detector = LoopDetector(cfg.detector)
        self.planner = LoopWindowPlanner(cfg.half_window)
        self.verifier = LoopVerifier(cfg.verifier)
        self.reset()

    def reset(self) -> None:
        self.detector.reset()
        self.planner.reset()
        self._last_frame = -1
        self._n_loops = 0
        self.rejected: list[tuple[int, int, str]] = []
        self.accepted: list[tuple[int, int]] = []

    def inject(self, later: int, earlier: int, similarity: float = 1.0) -> None:
        """Propose a candidate directly (tests: a wrong loop must be rejected)."""
        self.detector.inject(later, earlier, similarity)

    def keyframe_descriptors(self) -> DescriptorDatabase | None:
        """The retrieval database (a saved session's keyframes and their descriptors)."""
        return self.detector.database()

    def restore_keyframes(self, db: DescriptorDatabase, last_frame: int) -> None:
        """Retrieval starts from a loaded session's keyframes; new frames come after
        ``last_frame``. Loops to them are proposed as usual (the planner needs the loaded
        windows' spans, the verification their images and geometry)."""
        self.reset()
        self.detector.restore_database(db, last_frame)
        self._last_frame = int(last_frame)

    def infer_loops(
        self,
        engine: MappingEngine,
        chunk_id: int,
        frame_ids: np.ndarray,
        descriptors: Any | None,
    ) -> LoopWork:
        """Network part for one window: its new frames' descriptors (``descriptor_fn``,
        else the backend's ``descriptors`` in time order, else thumbnails) into the
        detector, then `_infer_candidates` on what it finalises."""
        new, descs = [], []
        for k, f in enumerate(frame_ids):
            f = int(f)
            if f <= self._last_frame:
                continue
            if self.config.descriptor_fn is not None:
                descs.append(self.config.descriptor_fn(f))
            elif descriptors is not None:
                descs.append(to_numpy(descriptors[k]))
            else:
                descs.append(thumbnail_descriptor(engine.frame(f).image))
            new.append(f)
            self._last_frame = f
        if not new:
            return LoopWork()
        return self._infer_candidates(engine, self.detector.add_many(new, np.stack(descs)))

    def infer_pending_loops(self, engine: MappingEngine) -> LoopWork:
        """Network part at the end of the stream: the candidates still pending."""
        return self._infer_candidates(engine, self.detector.flush())

    def verify_loops(self, engine: MappingEngine, work: LoopWork | None) -> list[LoopClosureUpdate]:
        """Verification part: each inferred loop chunk aligned to its two chunks and checked,
        in candidate order; skipped candidates recorded as rejected."""
        out: list[LoopClosureUpdate] = []
        for cand, win, why, pred in work.steps if work is not None else ():
            if win is not None and not (
                engine.has_chunk_geometry(win.chunk_a) and engine.has_chunk_geometry(win.chunk_b)
            ):  # deleted by the disk cap since, or its window failed to be placed
                win, why = None, "evicted"
            if win is None or pred is None:
                self.rejected.append((cand.later, cand.earlier, why))
                continue
            upd = self._verify(engine, win, pred)
            if upd is not None:
                out.append(upd)
        return out

    def _infer_candidates(self, engine: MappingEngine, cands: list[LoopCandidate]) -> LoopWork:
        """Plan each candidate against the windows through the network and infer its loop
        chunk (joining the GCS sums), unless the rules skip it or what it needs is gone."""
        work = LoopWork()
        chunks = engine.window_spans()
        for cand in cands:
            win, why = self.planner.plan(cand, chunks)
            if win is not None and not (
                all(engine.has_frame(f) for f in win.frames)
                and engine.will_have_geometry(win.chunk_a)
                and engine.will_have_geometry(win.chunk_b)
            ):  # the disk cap deleted what the loop chunk needs
                win, why = None, "evicted"
            pred = None
            if win is not None:
                self._n_loops += 1
                spec = ChunkSpec(1_000_000 + self._n_loops, tuple(win.frames), True)
                try:
                    inp = engine.chunk_input(spec.frame_ids, spec.chunk_id, spec.is_loop)
                except KeyError:  # a frame deleted by the disk cap since the test above
                    win, why = None, "evicted"
                else:  # through the network with the GCS state, back to time order
                    pred = engine.infer(inp).take(np.argsort(np.asarray(spec.network_order)))
            work.steps.append((cand, win, why, pred))
        return work

    def _verify(
        self, engine: MappingEngine, win: LoopWindow, pred: ChunkPrediction
    ) -> LoopClosureUpdate | None:
        cfg = self.config
        s = max(1, engine.config.loop_geometry_stride)
        # on the prediction's device; the stored chunk geometry (host, subsampled) goes there
        depth = as_tensor(pred.depth, dtype=torch.float32)
        pts = unproject_depth(depth, pred.intrinsics, pred.c2w)[:, ::s, ::s]
        conf = as_tensor(pred.depth_conf, depth.device, torch.float32)[:, ::s, ::s]
        depth = depth[:, ::s, ::s]
        valid = torch.isfinite(depth) & (depth > 0)
        pos = {f: k for k, f in enumerate(win.frames)}
        results: list[Any] = []
        for cid in (win.chunk_a, win.chunk_b):
            g = engine.chunk_geometry(cid)
            gpos = {int(f): k for k, f in enumerate(g.frame_ids)}
            shared = [f for f in win.frames if f in gpos]
            ia, ib = [gpos[f] for f in shared], [pos[f] for f in shared]
            a, b, ca, cb = gather_overlap(
                g.points[ia], pts[ib], g.conf[ia], conf[ib], g.valid[ia], valid[ib]
            )
            results.append(align_points(b, a, cb, ca, cfg.alignment))
        verdict = self.verifier.verify(
            results[0],
            results[1],
            engine.chunk_pose(win.chunk_a),
            engine.chunk_pose(win.chunk_b),
            engine.path_length(win.chunk_b, win.chunk_a),
        )
        if not verdict.ok:
            self.rejected.append((win.later, win.earlier, verdict.reason))
            return None
        engine.add_loop_constraint(win.chunk_a, win.chunk_b, verdict.edge)
        self.accepted.append((win.later, win.earlier))
        return LoopClosureUpdate(
            win.chunk_a,
            win.chunk_b,
            verdict.edge.matrix(),
            (win.later, win.earlier),
            dict(verdict.metrics),
        )
