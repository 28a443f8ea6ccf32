"""Relocalisation: find where new windows are in a loaded session's map (issue 17).

After ``MappingEngine.load_session`` the new windows form a chain of their own (own gauge,
held by its own prior). Each new window goes through the loop-closure recipe against the
loaded keyframes instead of against its own past:

1. Retrieval (network phase): every frame of the window queries the keyframes'
   descriptors (`Keyframes.query`, the loop detector's descriptors and threshold); the
   best keyframes with stored geometry are kept.
2. Network (network phase): the window's frames around the best query plus the retrieved
   keyframes' JPEGs (brought to the working resolution by ``Backend.prepare``, their
   stamps kept: the oracle looks ground truth up by stamp) go through the backend as one
   loop chunk.
3. Verification (placement phase): the prediction's keyframe frames are aligned, pixel by
   pixel, to the keyframes' stored points in the loaded map (one Sim(3) per keyframe), its
   query frames to the new window's own points; each keyframe gives a hypothesis ``H``
   (new chain -> loaded map). A hypothesis needs a good fit (inlier ratio, RMSE relative to
   the scene's spread); hypotheses must agree with each other (2+ keyframes of the window,
   or the previous window's); the window's points moved by ``H`` must land on the loaded
   map's points of the matched chunks (overlap ratio); a loaded metric scale, when the new
   chain's own is known, must match. Then the engine ties the chain to the map.

A map of another place fails the fits or the agreement: each keyframe then "sees" a
different place than the map holds, and independent keyframes put the query elsewhere.

After the fix the same matching keeps running every ``track_interval`` windows: in
``mapping`` mode a verified match becomes a loop edge to the loaded chunk, in
``localisation`` mode it re-places the newest window (drift reset).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from scal3r_ros.mapping.alignment import (
    AlignmentConfig,
    AlignmentResult,
    align_points,
    unproject_depth,
)
from scal3r_ros.mapping.backends.protocol import ChunkInput, ChunkPrediction
from scal3r_ros.mapping.events import RelocalisationUpdate
from scal3r_ros.mapping.loop_closure import (
    alignment_problem,
    point_overlap_ratio,
    rotation_angle_deg,
    thumbnail_descriptor,
)
from scal3r_ros.mapping.sim3 import Sim3
from scal3r_ros.mapping.tensors import as_tensor, to_numpy
from scal3r_ros.mapping.windowing import reference_order

if TYPE_CHECKING:
    from scal3r_ros.mapping.engine import MappingEngine
    from scal3r_ros.mapping.placement import WindowPoints
    from scal3r_ros.mapping.session.data import SessionData

RELOCALISING = "relocalising"
LOCALISED = "localised"
RELOC_CHUNK_BASE = 2_000_000  # relocalisation chunks' ids (loop chunks: 1_000_000 + n)


@dataclass
class RelocalisationConfig:
    """Retrieval, network input and acceptance rules. The fit thresholds are stricter than
    loop closure's: a loop is also checked against the graph's estimate, a first fix has
    nothing to be checked against."""

    top_k: int = 3  # keyframes per attempt
    query_frames: int = 8  # window frames around the best query in the network input
    similarity_threshold: float | None = None  # None: the loop detector's (0.7 without)
    min_keyframe_gap: int = 3  # retrieved keyframes at least this many frames apart
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    min_points: int = 200
    min_inlier_ratio: float = 0.7
    max_rmse_rel: float = 0.05  # rmse / RMS spread of the target points
    # hypotheses (new chain -> map) agree when they move the window's points alike
    agree_dist_rel: float = 0.05  # x RMS spread of the window's points in the map
    agree_rot_deg: float = 3.0
    agree_log_scale: float = 0.05
    min_votes: int = 2  # agreeing keyframes, this window and the previous one together
    overlap_radius_rel: float = 0.03  # x RMS spread of the window's points in the map
    min_overlap_ratio: float = 0.6
    conf_ratio: float = 0.75  # points compared: confidence > this x the mean (as the map)
    max_log_scale_error: float = float(np.log(1.25))  # vs the loaded metric scale
    # after the fix, mapping mode: match every n-th window (0: never). 1 keeps the pipelined
    # worker's results the serial ones: with n > 1 which window is tried right after the
    # fix depends on whether the fix was placed before the next window's network phase
    track_interval: int = 1
    localisation_track_interval: int = 1  # the same in localisation mode (no loops there)
    # a tracked match must land this near where the window already is (drift since the
    # last match): x the RMS spread of the window's points, degrees, |log scale|
    track_dist_rel: float = 1.0
    track_rot_deg: float = 15.0
    track_log_scale: float = 0.3


@dataclass
class RelocWork:
    """A window's relocalisation between its network phase and its verification: the
    query and keyframe ids and the loop chunk's prediction (time order: queries, then
    keyframes), or why there is none."""

    query_ids: np.ndarray
    keyframe_ids: np.ndarray
    similarity: float
    pred: ChunkPrediction | None
    reason: str = ""


@dataclass
class Match:
    """A verified window: ``chunk_pose`` the window's chunk -> loaded map Sim(3), tied to
    ``matched_chunk`` (a loaded chunk), ``hypothesis`` new chain -> map."""

    chunk_pose: Sim3
    hypothesis: Sim3
    matched_chunk: int
    inlier_ratio: float
    rmse: float


@dataclass
class _Vote:
    keyframe: int
    chunk: int
    hypothesis: Sim3  # new chain -> map
    fit: AlignmentResult


class Relocaliser:
    """The matching state of one loaded session (see module doc); the engine calls `infer`
    in the network phase and `verify` in the placement phase of each new window."""

    def __init__(
        self, engine: MappingEngine, data: SessionData, config: RelocalisationConfig
    ) -> None:
        self.config = config
        self.keyframes = engine.keyframes
        self.loaded_frames = int(data.n_frames)
        self.loaded_chunks = set(data.chunk_spans)
        self.metres_per_unit = data.scale.metres_per_unit
        lc = engine.loop_closure
        det = getattr(getattr(lc, "detector", None), "config", None)
        self.threshold = (
            config.similarity_threshold
            if config.similarity_threshold is not None
            else (det.similarity_threshold if det is not None else 0.7)
        )
        self.descriptor_fn = getattr(getattr(lc, "config", None), "descriptor_fn", None)
        self.state = RELOCALISING
        self.tracks_only = engine.session_mode == "localisation"
        self.windows_tried = 0
        self.frames_tried = 0
        self.last = RelocalisationUpdate(-1, RELOCALISING, 0, 0, reason="no window yet")
        self._previous_votes: list[_Vote] = []
        self._n_chunks = 0
        self._windows_since = 0  # windows since the fix (tracking interval)
        self._sample = np.zeros((0, 3))  # the newest window's points (chunk coordinates)

    @property
    def localised(self) -> bool:
        return self.state == LOCALISED

    # ------------------------------------------------------------ network phase
    def wants(self) -> bool:
        """Match this window: always before the fix, every ``track_interval`` after."""
        if not self.localised:
            return True
        n = (
            self.config.localisation_track_interval
            if self.tracks_only
            else self.config.track_interval
        )
        return n > 0 and (self._windows_since + 1) % n == 0

    def infer(
        self, engine: MappingEngine, frame_ids: np.ndarray, descriptors: np.ndarray | None
    ) -> RelocWork:
        """Retrieval and the loop chunk's inference for a window (time order)."""
        ids = np.asarray(frame_ids, np.int64)
        none = np.zeros(0, np.int64)
        kf = self.keyframes
        best: dict[int, float] = {}
        best_query, best_sim = -1, -np.inf
        for k, f in enumerate(ids.tolist()):
            d = self._descriptor(engine, f, None if descriptors is None else descriptors[k])
            for kid, sim in kf.query(d, top_k=self.config.top_k * 3):
                if sim > self.threshold and kf.has_geometry(kid):
                    best[kid] = max(best.get(kid, -np.inf), sim)
                    if sim > best_sim:
                        best_query, best_sim = k, sim
        chosen: list[int] = []
        for kid, _ in sorted(best.items(), key=lambda kv: -kv[1]):
            if all(abs(kid - c) >= self.config.min_keyframe_gap for c in chosen):
                chosen.append(kid)
            if len(chosen) == self.config.top_k:
                break
        if not chosen:
            if kf.points is None:  # every attempt would fail alike: say why
                why = "the session has no keyframe geometry (saved with loop_closure off)"
                return RelocWork(none, none, float("nan"), None, why)
            return RelocWork(none, none, float("nan"), None, "no candidate")
        n = min(self.config.query_frames, len(ids))
        start = int(np.clip(best_query - n // 2, 0, len(ids) - n))
        query = ids[start : start + n]
        keys = np.array(sorted(chosen), np.int64)
        try:
            inp = self._chunk_input(engine, query, keys)
        except (KeyError, ValueError) as exc:  # a frame deleted meanwhile, a size mismatch
            return RelocWork(query, keys, best_sim, None, f"input: {exc}")
        order = reference_order(len(inp.frame_ids))
        net = ChunkInput(
            inp.chunk_id,
            inp.frame_ids[list(order)],
            inp.stamps_ns[list(order)],
            inp.images[list(order)],
            None if inp.intrinsics is None else inp.intrinsics[list(order)],
            tuple(inp.camera_ids[k] for k in order),
            True,
        )
        try:
            pred = engine.infer(net).take(np.argsort(np.asarray(order)))
        except Exception as exc:  # the backend's failure: this attempt only
            return RelocWork(query, keys, best_sim, None, f"network: {type(exc).__name__}: {exc}")
        return RelocWork(query, keys, best_sim, pred)

    def _descriptor(self, engine: MappingEngine, frame: int, backend: np.ndarray | None):
        """The frame's descriptor as the keyframes' were made (loop detector's source)."""
        if self.descriptor_fn is not None:
            return self.descriptor_fn(frame)
        if backend is not None:
            return to_numpy(backend)
        return thumbnail_descriptor(engine.frame(frame).image)

    def _chunk_input(self, engine: MappingEngine, query: np.ndarray, keys: np.ndarray):
        """Query frames from the store, keyframes from their JPEGs through ``prepare``."""
        kf = self.keyframes
        stored = [engine.frame(int(f)) for f in query]
        images = [s.image for s in stored]
        Ks = [s.intrinsics for s in stored]
        stamps = [int(s.stamp_ns) for s in stored]
        cams = [s.camera_id for s in stored]
        for f in keys.tolist():
            k = kf.index(f)
            thumb = kf.thumbnail(f)
            cam = kf.camera_ids[k]
            info = engine.cameras.get(cam)
            K = None
            if info is not None and info.intrinsics is not None and info.image_size is not None:
                K = np.array(info.intrinsics, np.float64)
                K[0] *= thumb.shape[1] / info.image_size[1]
                K[1] *= thumb.shape[0] / info.image_size[0]
            img, Kp = engine.backend.prepare(thumb, K)
            if img.shape != images[0].shape:
                raise ValueError(f"keyframe {f} is {img.shape}, the window {images[0].shape}")
            images.append(np.ascontiguousarray(img))
            Ks.append(Kp)
            stamps.append(int(kf.stamps_ns[k]))
            cams.append(cam)
        self._n_chunks += 1
        return ChunkInput(
            RELOC_CHUNK_BASE + self._n_chunks,
            np.concatenate([query, keys]).astype(np.int64),
            np.array(stamps, np.int64),
            np.stack(images),
            None if any(K is None for K in Ks) else np.stack(Ks),  # type: ignore[arg-type]
            tuple(cams),
            True,
        )

    # ----------------------------------------------------------- placement phase
    def verify(
        self,
        engine: MappingEngine,
        w: WindowPoints,
        work: RelocWork | None,
        chain_pose: Sim3,
        chain_scale: float | None = None,
    ) -> tuple[RelocalisationUpdate | None, Match | None]:
        """Check the window's attempt. ``chain_pose``: the window's chunk in the new
        chain's current frame (the map once localised); ``chain_scale``: metres per chain
        unit when the new session measured it. Returns the event to emit (None after the
        fix) and the verified match, if any."""
        before = self.localised
        if not before:
            self.windows_tried += 1
            self.frames_tried = max(
                self.frames_tried, int(w.frame_ids[-1]) + 1 - self.loaded_frames
            )
        else:
            self._windows_since += 1
        match, why, votes = None, "", []
        if work is None:
            why = "not tried"
        elif work.pred is None:
            why = work.reason
        else:
            match, why, votes = self._check(engine, w, work, chain_pose, chain_scale)
        self._previous_votes = votes
        if before:  # tracking: the match must agree with where the window already is
            if match is not None and not self._near(match.chunk_pose, chain_pose, self._sample):
                match = None
            return None, match
        if match is not None:
            self.state = LOCALISED
            self._previous_votes = []
        upd = RelocalisationUpdate(
            int(w.chunk_id),
            self.state,
            self.windows_tried,
            self.frames_tried,
            -1 if match is None else match.matched_chunk,
            float("nan") if match is None else match.inlier_ratio,
            float("nan") if match is None else match.rmse,
            why,
        )
        self.last = upd
        return upd, match

    def _check(
        self,
        engine: MappingEngine,
        w: WindowPoints,
        work: RelocWork,
        chain_pose: Sim3,
        chain_scale: float | None,
    ) -> tuple[Match | None, str, list[_Vote]]:
        cfg = self.config
        pred = work.pred
        assert pred is not None
        s = max(1, engine.config.loop_geometry_stride)
        depth = as_tensor(pred.depth, dtype=torch.float32)
        pts = unproject_depth(depth, pred.intrinsics, pred.c2w)[:, ::s, ::s]
        conf = as_tensor(pred.depth_conf, depth.device, torch.float32)[:, ::s, ::s]
        d = depth[:, ::s, ::s]
        conf = _confident(torch.where(torch.isfinite(d) & (d > 0), conf, torch.nan), cfg)
        nq = len(work.query_ids)
        # the query frames against the window's own points: prediction -> chunk
        pos = {int(f): k for k, f in enumerate(w.frame_ids)}
        rows = [pos[int(f)] for f in work.query_ids]
        wp = w.points[rows][:, ::s, ::s]
        wc = torch.where(w.valid[rows][:, ::s, ::s], w.conf[rows][:, ::s, ::s], torch.nan)
        wc = _confident(wc, cfg)
        fit_q = align_points(pts[:nq], wp, conf[:nq], wc, cfg.alignment)
        if why := self._bad_fit(fit_q, "query"):
            return None, why, []
        T_chunk_pred = fit_q.sim3
        to_chain = chain_pose @ T_chunk_pred  # prediction -> new chain (or map)
        votes: list[_Vote] = []
        reasons: list[str] = []
        for j, f in enumerate(work.keyframe_ids.tolist()):
            k = self.keyframes.index(f)
            chunk = int(self.keyframes.chunk_ids[k])
            target, tconf = self.keyframes.points_in_map(f, engine.chunk_pose(chunk))
            if target.shape[:2] != tuple(pts.shape[1:3]):
                reasons.append("keyframe geometry size")
                continue
            tconf = _confident(torch.from_numpy(np.array(tconf, np.float32))[None], cfg)[0]
            fit = align_points(pts[nq + j], target, conf[nq + j], tconf, cfg.alignment)
            if why := self._bad_fit(fit, "keyframe"):
                reasons.append(why)
                continue
            votes.append(_Vote(f, chunk, fit.sim3 @ to_chain.inverse(), fit))
        if not votes:
            return None, reasons[0] if reasons else "no keyframe", []
        # sample of the window's points in the new chain: where hypotheses are compared
        sample, sc = to_numpy(wp.reshape(-1, 3)), to_numpy(wc.reshape(-1))
        sample = sample[np.isfinite(sample).all(1) & np.isfinite(sc)]  # (confident: no sky)
        sample = sample[:: max(1, len(sample) // 2000)].astype(np.float64)
        self._sample = sample  # (chunk coordinates: `verify` 's tracking test)
        sample = chain_pose.apply(sample)
        need = cfg.min_votes
        if self.localised:  # tracking: near where the window already is, one keyframe will do
            ident = Sim3.identity()
            votes = [v for v in votes if self._near(v.hypothesis, ident, sample)]
            if not votes:
                return None, "keyframes far from the tracked pose", []
            need = 1
        # the largest group of hypotheses that agree (this window's and the previous
        # tried window's): keyframes the network misplaced each put the window elsewhere
        best, agree, n_votes = votes[0], [votes[0]], 0
        for centre in votes:
            group = [v for v in votes if self._agree(v.hypothesis, centre.hypothesis, sample)]
            older = [
                v
                for v in self._previous_votes
                if self._agree(v.hypothesis, centre.hypothesis, sample)
            ]
            n = len({v.keyframe for v in group + older})
            if n > n_votes or (n == n_votes and len(group) > len(agree)):
                best, agree, n_votes = centre, group, n
        if n_votes < need:
            why = "keyframes disagree" if len(votes) > 1 else "one keyframe, waiting for another"
            return None, why, votes
        H = best.hypothesis
        if self.metres_per_unit is not None and chain_scale is not None:
            err = abs(np.log(H.s * self.metres_per_unit / chain_scale))
            if err > cfg.max_log_scale_error:
                return None, "scale differs from the loaded metric scale", votes
        moved = H.apply(sample)
        spread = _spread(moved)
        # the matched chunks and their loaded neighbours: what the window can see
        near = {v.chunk + d for v in agree for d in range(-2, 3)}
        chunks = sorted(near & self.loaded_chunks)
        ratio = point_overlap_ratio(
            moved,
            engine.loaded_map_points(chunks),
            Sim3.identity(),
            cfg.overlap_radius_rel * spread,
        )
        if ratio < cfg.min_overlap_ratio:
            return None, f"no overlap with the loaded map ({ratio:.2f})", votes
        G = H @ chain_pose
        fits = [v.fit for v in agree]
        return (
            Match(
                G,
                H,
                best.chunk,
                float(np.mean([f.inlier_ratio for f in fits])),
                float(np.mean([f.rmse for f in fits])),
            ),
            "",
            votes,
        )

    def _bad_fit(self, fit: AlignmentResult, name: str) -> str:
        c = self.config
        return alignment_problem(
            fit, name, c.min_points, c.min_inlier_ratio, c.max_rmse_rel, need_spread=True
        )

    def _agree(self, a: Sim3, b: Sim3, sample: np.ndarray) -> bool:
        """Two hypotheses move ``sample`` alike (the agreement budgets)."""
        c = self.config
        return _close(a, b, sample, c.agree_dist_rel, c.agree_rot_deg, c.agree_log_scale)

    def _near(self, a: Sim3, b: Sim3, sample: np.ndarray) -> bool:
        """A tracked match is near the current estimate (the tracking budgets)."""
        c = self.config
        return _close(a, b, sample, c.track_dist_rel, c.track_rot_deg, c.track_log_scale)


def _close(a: Sim3, b: Sim3, sample: np.ndarray, dist_rel: float, deg: float, log_s: float):
    """``a`` and ``b`` move ``sample`` within ``dist_rel`` x its RMS spread of each other
    (RMS), their rotations within ``deg`` and scales within ``log_s``."""
    if not len(sample):
        return False
    pa, pb = a.apply(sample), b.apply(sample)
    dist = float(np.sqrt(((pa - pb) ** 2).sum(1).mean()))
    return (
        dist <= dist_rel * _spread(pa)
        and rotation_angle_deg(a.R.T @ b.R) <= deg
        and abs(np.log(a.s / b.s)) <= log_s
    )


def _confident(conf: torch.Tensor, cfg: RelocalisationConfig) -> torch.Tensor:
    """(F, h, w) confidences, NaN below ``conf_ratio`` x each frame's mean (the points the
    map would keep: no sky, no blur), so fits and comparisons weigh the scene, not the
    horizon."""
    c = conf.float()
    finite = torch.isfinite(c)
    n = finite.sum((1, 2)).clamp_min(1)
    mean = torch.where(finite, c, 0.0).sum((1, 2)) / n
    return torch.where(finite & (c > cfg.conf_ratio * mean[:, None, None]), c, torch.nan)


def _spread(x: np.ndarray) -> float:
    """RMS distance of points to their centroid."""
    if not len(x):
        return 0.0
    return float(np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean()))
