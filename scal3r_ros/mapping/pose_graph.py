"""Sim(3) pose graph over chunks, solved with GTSAM (Levenberg-Marquardt or iSAM2).

Nodes are chunk ids; a node's value ``G_k`` is the chunk -> map similarity (the
chunk's reference frame and scale expressed in the map). An edge ``(src, dst, T)``
states ``G_src = G_dst @ T``, i.e. ``T`` maps ``src``-chunk coordinates into
``dst``-chunk coordinates. This is the official convention: a sequential edge is the
alignment ``T(b+1 -> b)`` (``G_{b+1} = G_b @ T``) and a loop edge is the composed
constraint ``T(A -> B)`` from chunk A (later) to chunk B (earlier).

The official optimiser (VGGT-Long) is a hand-written LM on the Lie algebra with
unweighted residuals; here GTSAM's ``BetweenFactorSimilarity3`` does the same job with
diagonal sigmas, and loop edges get a robust kernel (Huber or Cauchy) so that a wrong
loop that slipped through verification does limited damage.

gtsam's ``Similarity3(R, t, s)`` acts as ``x -> s (R x + t)`` (its matrix is
``[[R, t], [0, 1/s]]``), while the project's ``Sim3(s, R, t)`` acts as
``x -> s R x + t``; so ``t_gtsam = t / s``. ``to_gtsam``/``from_gtsam`` are the only
places that know this (tested in test/mapping/test_pose_graph.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import gtsam
import numpy as np

from scal3r_ros.mapping.sim3 import Sim3

SEQUENTIAL = "sequential"
LOOP = "loop"


def to_gtsam(T: Sim3) -> gtsam.Similarity3:
    """Project Sim3 (x -> sRx + t) to gtsam.Similarity3 (x -> s(Rx + t'))."""
    return gtsam.Similarity3(gtsam.Rot3(T.R), np.asarray(T.t, dtype=np.float64) / T.s, T.s)


def from_gtsam(g: gtsam.Similarity3) -> Sim3:
    """Inverse of :func:`to_gtsam`."""
    s = float(g.scale())
    # C order (Eigen's is column-major): the same pose then gives the same bits in every
    # product whether it came from the solver or from a saved session
    R = np.ascontiguousarray(g.rotation().matrix(), dtype=np.float64)
    return Sim3(s, R, s * np.asarray(g.translation()))


@dataclass
class PoseGraphConfig:
    """Noise and solver settings. Sigmas are in chunk units (rad, chunk length, log-scale).

    The official optimiser weights every edge equally; the same default sigmas for
    sequential and loop edges reproduce that, the robust kernel on loop edges is extra.
    """

    seq_sigma_rot: float = 0.01
    seq_sigma_trans: float = 0.02
    seq_sigma_log_scale: float = 0.01
    loop_sigma_rot: float = 0.01
    loop_sigma_trans: float = 0.02
    loop_sigma_log_scale: float = 0.01
    # Robust kernel on loop edges: "cauchy", "geman_mcclure", "huber" or "none". Its width
    # (in sigmas) is loop_robust_k * sqrt(hops), hops = chunks between the loop's ends: the
    # longer the path, the more drift a true loop must be allowed to correct.
    loop_robust: str = "cauchy"
    loop_robust_k: float = 3.0
    prior_sigma: float = 1e-6
    solver: str = "lm"  # "lm" (batch Levenberg-Marquardt, warm-started) or "isam2"
    max_iterations: int = 100
    relative_error_tol: float = 1e-7
    absolute_error_tol: float = 1e-9


@dataclass
class Edge:
    src: int
    dst: int
    T_dst_src: Sim3
    kind: str
    info: dict = field(default_factory=dict)
    # the factor's noise as built (tangent order, 7): what a saved graph needs to rebuild it
    sigmas: np.ndarray | None = None
    kernel: str = "none"  # robust kernel (loop edges; ``_KERNELS`` name or "none")
    robust_k: float | None = None  # its width in sigmas


@dataclass
class RelativeMotion:
    """An odometry factor's inputs (``Sim3PoseGraph.add_relative_motion``), kept so a saved
    graph can be rebuilt."""

    node_a: int
    c2w_a: np.ndarray  # (4, 4) chunk coordinates
    node_b: int
    c2w_b: np.ndarray
    motion: np.ndarray  # (4, 4) metres, camera a's axes
    sigmas: np.ndarray  # (6,)
    frame: str
    robust_k: float | None


@dataclass
class ExternalFrame:
    """An external frame variable (``Sim3PoseGraph.add_frame``): its estimate and its prior
    (mean, sigmas; None: no prior)."""

    name: str
    estimate: Sim3
    prior_mean: Sim3
    prior_sigmas: np.ndarray | None


@dataclass
class PositionPrior:
    """A position of a point fixed in a chunk measured in an external frame (a GNSS fix of a
    camera centre in ENU): ``F(G_node(point_chunk)) ~ position`` with per-axis ``sigmas``."""

    node: int
    point_chunk: np.ndarray  # (3,) chunk coordinates
    position: np.ndarray  # (3,) in the external frame
    sigmas: np.ndarray  # (3,) frame units
    robust_k: float | None  # Huber width in sigmas; None: plain Gaussian
    frame: str  # the external frame's name (``Sim3PoseGraph.add_frame``)


@dataclass
class PoseGraphState:
    """Everything needed to rebuild a graph (`Sim3PoseGraph.state` / `restore`): nodes in
    insertion order with their estimates, the anchors (nodes held by a prior at a value),
    the edges with their noise, external frames, position priors and motions."""

    nodes: list[int]
    estimates: dict[int, Sim3]
    anchors: list[tuple[int, Sim3]]
    edges: list[Edge]
    frames: list[ExternalFrame]
    position_priors: list[PositionPrior]
    motions: list[RelativeMotion]


_KERNELS = {
    "huber": gtsam.noiseModel.mEstimator.Huber,
    "cauchy": gtsam.noiseModel.mEstimator.Cauchy,
    "geman_mcclure": gtsam.noiseModel.mEstimator.GemanMcClure,
}


def _sigmas(rot: float, trans: float, log_scale: float) -> np.ndarray:
    # gtsam Similarity3 tangent order: (omega[3], u[3], lambda)
    return np.array([rot] * 3 + [trans] * 3 + [log_scale], dtype=np.float64)


def position_prior_factor(
    frame_key: int,
    node_key: int,
    point_chunk: np.ndarray,
    position: np.ndarray,
    noise: gtsam.noiseModel.Base,
) -> gtsam.CustomFactor:
    """The factor ``F(G(point_chunk)) - position`` between an external frame's Sim(3) ``F``
    (``frame_key``) and a chunk's ``G`` (``node_key``), with analytic Jacobians
    (`Sim3PoseGraph.add_position_prior`)."""
    p = np.asarray(point_chunk, dtype=np.float64).reshape(3)
    z = np.asarray(position, dtype=np.float64).reshape(3)

    def error(factor: gtsam.CustomFactor, values: gtsam.Values, H: list | None) -> np.ndarray:
        F = values.atSimilarity3(factor.keys()[0])
        G = values.atSimilarity3(factor.keys()[1])
        if H is None:
            return F.transformFrom(G.transformFrom(p)) - z
        JG = np.zeros((3, 7), order="F")
        JF = np.zeros((3, 7), order="F")
        Jq = np.zeros((3, 3), order="F")
        q = G.transformFrom(p, JG)
        e = F.transformFrom(q, JF, Jq) - z
        H[0] = JF
        H[1] = Jq @ JG
        return e

    return gtsam.CustomFactor(noise, [int(frame_key), int(node_key)], error)


class Sim3PoseGraph:
    """Incremental chunk pose graph; the first node added is held fixed by a prior.

    Add nodes/edges as chunks arrive, call :meth:`optimize` after a loop edge (without
    loops the chain is already exactly consistent, so optimisation changes nothing).
    """

    def __init__(self, config: PoseGraphConfig | None = None) -> None:
        self.config = config or PoseGraphConfig()
        if self.config.solver not in ("lm", "isam2"):
            raise ValueError(f"unknown solver {self.config.solver!r}")
        if self.config.loop_robust not in _KERNELS and self.config.loop_robust != "none":
            raise ValueError(f"unknown robust kernel {self.config.loop_robust!r}")
        c = self.config
        self._seq_noise = gtsam.noiseModel.Diagonal.Sigmas(
            _sigmas(c.seq_sigma_rot, c.seq_sigma_trans, c.seq_sigma_log_scale)
        )
        self._loop_base = gtsam.noiseModel.Diagonal.Sigmas(
            _sigmas(c.loop_sigma_rot, c.loop_sigma_trans, c.loop_sigma_log_scale)
        )
        self._prior_noise = gtsam.noiseModel.Isotropic.Sigma(7, c.prior_sigma)
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        self._graph = gtsam.NonlinearFactorGraph()
        self._values: dict[int, Sim3] = {}
        self._order: list[int] = []
        self.edges: list[Edge] = []
        self.position_priors: list[PositionPrior] = []
        self.motions: list[tuple[int, int, str]] = []  # relative-motion factors (a, b, frame)
        self._motion_records: list[RelativeMotion] = []
        self._frames: dict[str, int] = {}  # external frame name -> gtsam key
        self._frame_values: dict[str, Sim3] = {}
        self._frame_priors: dict[str, tuple[Sim3, np.ndarray | None]] = {}
        self._anchor: int | None = None
        self._anchors: list[tuple[int, Sim3]] = []  # nodes held by a prior, at that value
        self._anchor_factors: dict[int, int] = {}  # anchored node -> its prior's index
        self._new_segment = False
        self._isam: gtsam.ISAM2 | None = None
        self._pending_graph = gtsam.NonlinearFactorGraph()
        self._pending_values = gtsam.Values()
        self.last_optimize_s: float = 0.0
        self.last_iterations: int = 0

    @property
    def nodes(self) -> list[int]:
        """Node ids in insertion order."""
        return list(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, node: int) -> bool:
        return node in self._values

    @property
    def num_loops(self) -> int:
        return sum(e.kind == LOOP for e in self.edges)

    def estimate(self, node: int) -> Sim3:
        return self._values[node]

    def estimates(self) -> dict[int, Sim3]:
        return dict(self._values)

    # --------------------------------------------------------------- building
    def add_node(self, node: int, initial: Sim3) -> None:
        """Add a chunk with its current chunk -> map estimate. The first node is fixed, and
        so is the first one after `start_segment`."""
        node = int(node)
        if node in self._values:
            raise ValueError(f"node {node} already in the graph")
        self._values[node] = initial
        self._order.append(node)
        self._pending_values.insert(node, to_gtsam(initial))
        if self._anchor is None or self._new_segment:
            if self._anchor is None:
                self._anchor = node
            self._new_segment = False
            self._anchors.append((node, initial))
            self._anchor_factors[node] = int(self._graph.size())
            self._add_factor(
                gtsam.PriorFactorSimilarity3(node, to_gtsam(initial), self._prior_noise)
            )

    def start_segment(self) -> None:
        """The next node starts a chain with no edge to the nodes so far (windows mapped
        after a loaded session, before anything ties them to it): it is held by a prior at
        its initial value like the first node, so the graph stays solvable by any solver."""
        self._new_segment = True

    @property
    def anchors(self) -> list[int]:
        """Nodes held by a prior (the first node, and each segment's first node)."""
        return [n for n, _ in self._anchors]

    def release_anchor(self, node: int) -> None:
        """Remove the prior that holds ``node`` (a segment's first node, once an edge ties
        its chain to the rest: relocalisation). The graph's first anchor fixes its gauge and
        cannot be released. The next `optimize` solves the graph without the prior."""
        node = int(node)
        if node not in self._anchor_factors:
            raise KeyError(f"node {node} is not held by a prior")
        if node == self._anchor:
            raise ValueError(f"node {node} is the graph's first anchor: it fixes the gauge")
        index = self._anchor_factors.pop(node)
        self._anchors = [(n, v) for n, v in self._anchors if n != node]
        graph = gtsam.NonlinearFactorGraph()
        for i in range(self._graph.size()):
            if i != index:
                graph.add(self._graph.at(i))
        self._graph = graph
        self._anchor_factors = {n: i - (i > index) for n, i in self._anchor_factors.items()}
        self._rebuild_solver()

    def set_estimates(self, poses: dict[int, Sim3]) -> None:
        """New current estimates (the next solve starts from them): a chain moved as a
        whole into another frame before the edge that ties it there is optimised."""
        for n, g in poses.items():
            if int(n) not in self._values:
                raise KeyError(f"node {n} not in the graph")
            self._values[int(n)] = g
        self._rebuild_solver()

    def _rebuild_solver(self) -> None:
        """iSAM2 holds its own copy of factors and values: start it again from the whole
        graph at the current estimates (batch LM reads them anyway)."""
        self._isam = None
        self._pending_graph = gtsam.NonlinearFactorGraph()
        for i in range(self._graph.size()):
            self._pending_graph.add(self._graph.at(i))
        self._pending_values = self._initial_values()

    def add_edge(
        self,
        src: int,
        dst: int,
        T_dst_src: Sim3,
        kind: str = SEQUENTIAL,
        robust_k: float | None = None,
        sigma_scale: float = 1.0,
        **info: object,
    ) -> int:
        """Constraint ``G_src = G_dst @ T_dst_src``; returns the edge index.

        ``robust_k`` overrides the loop kernel width (sigmas) for this edge;
        ``sigma_scale`` > 1 weakens the edge (e.g. a poorly conditioned alignment).
        """
        src, dst = int(src), int(dst)
        if src == dst:
            raise ValueError("self-edge")
        for n in (src, dst):
            if n not in self._values:
                raise KeyError(f"node {n} not in the graph")
        if kind not in (SEQUENTIAL, LOOP):
            raise ValueError(f"unknown edge kind {kind!r}")
        c = self.config
        if kind == LOOP:
            noise, robust_k = self._loop_noise_model(src, dst, robust_k, sigma_scale)
            info["robust_k"] = robust_k
        elif sigma_scale != 1.0:
            sig = _sigmas(c.seq_sigma_rot, c.seq_sigma_trans, c.seq_sigma_log_scale)
            noise = gtsam.noiseModel.Diagonal.Sigmas(sig * sigma_scale)
        else:
            noise = self._seq_noise
        info["sigma_scale"] = sigma_scale
        sig = _sigmas(c.loop_sigma_rot, c.loop_sigma_trans, c.loop_sigma_log_scale)
        if kind == SEQUENTIAL:
            sig = _sigmas(c.seq_sigma_rot, c.seq_sigma_trans, c.seq_sigma_log_scale)
        kernel = c.loop_robust if kind == LOOP and robust_k is not None else "none"
        # BetweenFactor(k1, k2, m) measures X_k1^-1 X_k2 = G_dst^-1 G_src = T_dst_src
        self._add_factor(gtsam.BetweenFactorSimilarity3(dst, src, to_gtsam(T_dst_src), noise))
        k = robust_k if kernel != "none" else None
        edge = Edge(src, dst, T_dst_src, kind, dict(info), sig * sigma_scale, kernel, k)
        self.edges.append(edge)
        return len(self.edges) - 1

    def add_sequential(
        self, prev: int, new: int, T_prev_new: Sim3, sigma_scale: float = 1.0
    ) -> Sim3:
        """Add chunk ``new`` aligned to ``prev`` (``T_prev_new`` = alignment new -> prev).

        The new node's initial value chains on the *current* (possibly loop-corrected)
        estimate of ``prev``; returns it.
        """
        initial = self._values[prev] @ T_prev_new
        self.add_node(new, initial)
        self.add_edge(new, prev, T_prev_new, SEQUENTIAL, sigma_scale=sigma_scale)
        return initial

    def add_loop(
        self,
        later: int,
        earlier: int,
        T_earlier_later: Sim3,
        robust_k: float | None = None,
        **info: object,
    ) -> int:
        """Loop edge from chunk ``later`` (A) to chunk ``earlier`` (B): ``G_A = G_B @ T``."""
        return self.add_edge(later, earlier, T_earlier_later, LOOP, robust_k, **info)

    def add_frame(self, name: str, initial: Sim3, prior_sigmas: np.ndarray | None = None) -> None:
        """An external frame as a variable: ``initial`` maps map coordinates into it (e.g.
        ``map -> enu``); ``prior_sigmas`` (7, tangent order) keeps it weakly determined
        while few measurements tie it to the chunks (None: no prior)."""
        if name in self._frames:
            raise ValueError(f"frame {name!r} already in the graph")
        key = gtsam.symbol("f", len(self._frames))
        self._frames[name] = key
        self._frame_values[name] = initial
        sig = None if prior_sigmas is None else np.array(prior_sigmas, np.float64).reshape(7)
        self._frame_priors[name] = (initial, sig)
        self._pending_values.insert(key, to_gtsam(initial))
        if prior_sigmas is not None:
            noise = gtsam.noiseModel.Diagonal.Sigmas(np.asarray(prior_sigmas, np.float64))
            self._add_factor(gtsam.PriorFactorSimilarity3(key, to_gtsam(initial), noise))

    def has_frame(self, name: str) -> bool:
        return name in self._frames

    def frame(self, name: str) -> Sim3:
        """Current estimate of an external frame (map -> frame)."""
        return self._frame_values[name]

    def add_position_prior(
        self,
        node: int,
        point_chunk: np.ndarray,
        position: np.ndarray,
        sigmas: float | np.ndarray,
        frame: str,
        robust_k: float | None = 2.0,
    ) -> int:
        """A position measured in an external ``frame`` (GNSS in ENU) of a point of chunk
        ``node`` (its camera centre): the factor ``F(G_node(point_chunk)) - position``,
        ``F`` = the frame's map -> frame Sim(3), whitened by ``sigmas`` (frame units, metres
        for ENU), under a Huber kernel ``robust_k`` sigmas wide so a jump (multipath) is
        down-weighted instead of bending the trajectory. Returns the prior's index."""
        node = int(node)
        if node not in self._values:
            raise KeyError(f"node {node} not in the graph")
        if frame not in self._frames:
            raise KeyError(f"frame {frame!r} not in the graph (add_frame first)")
        p = np.asarray(point_chunk, dtype=np.float64).reshape(3)
        z = np.asarray(position, dtype=np.float64).reshape(3)
        sig = np.broadcast_to(np.asarray(sigmas, dtype=np.float64), (3,)).copy()
        if not (np.isfinite(p).all() and np.isfinite(z).all() and (sig > 0).all()):
            raise ValueError("position prior needs finite points and positive sigmas")
        noise: gtsam.noiseModel.Base = gtsam.noiseModel.Diagonal.Sigmas(sig)
        if robust_k is not None:
            noise = gtsam.noiseModel.Robust.Create(
                gtsam.noiseModel.mEstimator.Huber.Create(float(robust_k)), noise
            )

        self._add_factor(position_prior_factor(self._frames[frame], node, p, z, noise))
        self.position_priors.append(PositionPrior(node, p, z, sig, robust_k, frame))
        return len(self.position_priors) - 1

    def add_relative_motion(
        self,
        node_a: int,
        c2w_a: np.ndarray,
        node_b: int,
        c2w_b: np.ndarray,
        motion_ab: np.ndarray,
        sigmas: np.ndarray,
        frame: str,
        robust_k: float | None = 3.0,
    ) -> int:
        """A metric rigid motion measured between two cameras (wheel or visual-inertial
        odometry): camera ``c2w_a`` of chunk ``node_a`` to camera ``c2w_b`` of chunk
        ``node_b`` (4x4, chunk coordinates) moved by ``motion_ab`` (4x4 rigid, metres, in
        camera a's axes). Only the scale of ``frame`` enters (metres per map unit), so
        odometry and GNSS share one metric scale. ``sigmas``: (6,) rotation [rad] then
        translation [m]; Huber kernel ``robust_k`` sigmas wide. Returns the factor's index."""
        for n in (node_a, node_b):
            if int(n) not in self._values:
                raise KeyError(f"node {n} not in the graph")
        if frame not in self._frames:
            raise KeyError(f"frame {frame!r} not in the graph (add_frame first)")
        Ca, Cb = (gtsam.Pose3(np.asarray(c, np.float64)) for c in (c2w_a, c2w_b))
        meas = gtsam.Pose3(np.asarray(motion_ab, np.float64))
        sig = np.asarray(sigmas, dtype=np.float64).reshape(6)
        if not ((sig > 0).all() and np.isfinite(motion_ab).all()):
            raise ValueError("relative motion needs a finite motion and positive sigmas")
        noise: gtsam.noiseModel.Base = gtsam.noiseModel.Diagonal.Sigmas(sig)
        if robust_k is not None:
            noise = gtsam.noiseModel.Robust.Create(
                gtsam.noiseModel.mEstimator.Huber.Create(float(robust_k)), noise
            )

        def predicted(F: gtsam.Similarity3, Ga: gtsam.Similarity3, Gb: gtsam.Similarity3):
            A, B = Ga.transformFrom(Ca), Gb.transformFrom(Cb)  # scale-normalised camera poses
            ca = Ga.transformFrom(Ca.translation())
            cb = Gb.transformFrom(Cb.translation())
            t = F.scale() * (A.rotation().unrotate(cb - ca))
            return gtsam.Pose3(A.rotation().between(B.rotation()), t)

        def err(F, Ga, Gb) -> np.ndarray:
            return gtsam.Pose3.Logmap(meas.between(predicted(F, Ga, Gb)))

        def error(factor: gtsam.CustomFactor, values: gtsam.Values, H: list | None) -> np.ndarray:
            x = [values.atSimilarity3(k) for k in factor.keys()]
            e = err(*x)
            if H is not None:  # central differences on the manifold (7 dof per key)
                for i in range(3):
                    J = np.zeros((6, 7))
                    for d in range(7):
                        step = np.zeros(7)
                        step[d] = 1e-6
                        xp, xm = list(x), list(x)
                        xp[i], xm[i] = x[i].retract(step), x[i].retract(-step)
                        J[:, d] = (err(*xp) - err(*xm)) / 2e-6
                    H[i] = J
            return e

        keys = [self._frames[frame], int(node_a), int(node_b)]
        self._add_factor(gtsam.CustomFactor(noise, keys, error))
        self.motions.append((int(node_a), int(node_b), frame))
        self._motion_records.append(
            RelativeMotion(
                int(node_a),
                np.array(c2w_a, np.float64),
                int(node_b),
                np.array(c2w_b, np.float64),
                np.array(motion_ab, np.float64),
                sig.copy(),
                frame,
                robust_k,
            )
        )
        return len(self.motions) - 1

    # ------------------------------------------------------------ save / load
    def state(self) -> PoseGraphState:
        """The graph as plain data (a saved session); `restore` rebuilds the same factors."""
        frames = [
            ExternalFrame(name, self._frame_values[name], *self._frame_priors[name])
            for name in self._frames
        ]
        return PoseGraphState(
            list(self._order),
            dict(self._values),
            list(self._anchors),
            list(self.edges),
            frames,
            list(self.position_priors),
            list(self._motion_records),
        )

    def restore(self, state: PoseGraphState) -> None:
        """Replace the graph by ``state`` (from `state`, possibly another process): the same
        nodes at their estimates, anchors, edges (their saved noise and kernel, whatever
        this graph's config says), external frames, priors and motions."""
        self.reset()
        anchors = dict(state.anchors)
        for n in state.nodes:
            n = int(n)
            if n in self._values:
                raise ValueError(f"node {n} twice in the saved graph")
            self._values[n] = state.estimates[n]
            self._order.append(n)
            self._pending_values.insert(n, to_gtsam(state.estimates[n]))
        for n, value in state.anchors:
            if n not in self._values:
                raise KeyError(f"anchor {n} is not a node")
            self._anchors.append((int(n), value))
            self._anchor_factors[int(n)] = int(self._graph.size())
            self._add_factor(
                gtsam.PriorFactorSimilarity3(int(n), to_gtsam(value), self._prior_noise)
            )
        self._anchor = int(state.anchors[0][0]) if anchors else None
        for e in state.edges:
            self._restore_edge(e)
        for f in state.frames:
            self.add_frame(f.name, f.prior_mean, f.prior_sigmas)
            self._frame_values[f.name] = f.estimate
            self._pending_values.update(self._frames[f.name], to_gtsam(f.estimate))
        for p in state.position_priors:
            self.add_position_prior(
                p.node, p.point_chunk, p.position, p.sigmas, p.frame, p.robust_k
            )
        for m in state.motions:
            self.add_relative_motion(
                m.node_a, m.c2w_a, m.node_b, m.c2w_b, m.motion, m.sigmas, m.frame, m.robust_k
            )

    def _restore_edge(self, e: Edge) -> None:
        for n in (e.src, e.dst):
            if n not in self._values:
                raise KeyError(f"edge {e.src} -> {e.dst}: node {n} not in the graph")
        if e.kind not in (SEQUENTIAL, LOOP):
            raise ValueError(f"unknown edge kind {e.kind!r}")
        if e.sigmas is None:
            raise ValueError(f"edge {e.src} -> {e.dst} has no noise")
        noise: gtsam.noiseModel.Base = gtsam.noiseModel.Diagonal.Sigmas(
            np.asarray(e.sigmas, np.float64)
        )
        if e.kernel != "none":
            if e.kernel not in _KERNELS or e.robust_k is None:
                raise ValueError(f"edge {e.src} -> {e.dst}: bad robust kernel {e.kernel!r}")
            noise = gtsam.noiseModel.Robust.Create(
                _KERNELS[e.kernel].Create(float(e.robust_k)), noise
            )
        self._add_factor(gtsam.BetweenFactorSimilarity3(e.dst, e.src, to_gtsam(e.T_dst_src), noise))
        self.edges.append(e)

    def position_residual(self, index: int) -> np.ndarray:
        """Residual ``F(G(point)) - position`` of a position prior at the estimate."""
        pp = self.position_priors[index]
        q = self._values[pp.node].apply(pp.point_chunk[None])
        return self._frame_values[pp.frame].apply(q)[0] - pp.position

    def hops(self, a: int, b: int) -> int:
        """Number of chunks between two nodes in insertion order."""
        return abs(self._order.index(a) - self._order.index(b))

    def _loop_noise_model(
        self, src: int, dst: int, robust_k: float | None, sigma_scale: float = 1.0
    ) -> tuple[gtsam.noiseModel.Base, float | None]:
        c = self.config
        base = self._loop_base
        if sigma_scale != 1.0:
            sig = _sigmas(c.loop_sigma_rot, c.loop_sigma_trans, c.loop_sigma_log_scale)
            base = gtsam.noiseModel.Diagonal.Sigmas(sig * sigma_scale)
        if c.loop_robust == "none":
            return base, None
        if robust_k is None:
            robust_k = c.loop_robust_k * float(np.sqrt(max(1, self.hops(src, dst))))
        est = _KERNELS[c.loop_robust].Create(float(robust_k))
        return gtsam.noiseModel.Robust.Create(est, base), float(robust_k)

    def _add_factor(self, factor: gtsam.NonlinearFactor) -> None:
        self._graph.add(factor)
        self._pending_graph.add(factor)

    # ------------------------------------------------------------- queries
    def predict_relative(self, src: int, dst: int) -> Sim3:
        """Current estimate of ``T_dst_src = G_dst^-1 @ G_src``."""
        return self._values[dst].inverse() @ self._values[src]

    def path_length(self, a: int, b: int) -> float:
        """Map-frame distance travelled by chunk origins between nodes ``a`` and ``b``
        (along insertion order), a yardstick for how much drift a loop may have to absorb."""
        ia, ib = sorted((self._order.index(a), self._order.index(b)))
        pts = np.array([self._values[n].t for n in self._order[ia : ib + 1]])
        if len(pts) < 2:
            return 0.0
        return float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())

    def edge_error(self, index: int, values: dict[int, Sim3] | None = None) -> np.ndarray:
        """Tangent-space error (omega, u, lambda) of an edge at the given/current values."""
        vals = self._values if values is None else values
        e = self.edges[index]
        pred = to_gtsam(vals[e.dst].inverse() @ vals[e.src])
        return np.asarray(gtsam.Similarity3.Logmap(to_gtsam(e.T_dst_src).inverse().compose(pred)))

    def whitened_edge_error(self, index: int) -> float:
        """Norm of the edge error in sigmas (before the robust kernel)."""
        c = self.config
        kind = self.edges[index].kind
        scale = float(self.edges[index].info.get("sigma_scale", 1.0))  # type: ignore[arg-type]
        sig = scale * (
            _sigmas(c.loop_sigma_rot, c.loop_sigma_trans, c.loop_sigma_log_scale)
            if kind == LOOP
            else _sigmas(c.seq_sigma_rot, c.seq_sigma_trans, c.seq_sigma_log_scale)
        )
        return float(np.linalg.norm(self.edge_error(index) / sig))

    # ---------------------------------------------------------- optimisation
    def optimize(self) -> dict[int, Sim3]:
        """Solve and return every node's chunk -> map Sim3 (also kept as the estimate)."""
        t0 = time.perf_counter()
        if not self._order:
            self.last_optimize_s = 0.0
            return {}
        if self.config.solver == "isam2":
            result = self._optimize_isam2()
        else:
            result = self._optimize_lm()
        self._values = {n: from_gtsam(result.atSimilarity3(n)) for n in self._order}
        self._frame_values = {
            name: from_gtsam(result.atSimilarity3(key)) for name, key in self._frames.items()
        }
        self.last_optimize_s = time.perf_counter() - t0
        return dict(self._values)

    def _initial_values(self) -> gtsam.Values:
        v = gtsam.Values()
        for n in self._order:
            v.insert(n, to_gtsam(self._values[n]))
        for name, key in self._frames.items():
            v.insert(key, to_gtsam(self._frame_values[name]))
        return v

    def _optimize_lm(self) -> gtsam.Values:
        c = self.config
        params = gtsam.LevenbergMarquardtParams()
        params.setMaxIterations(c.max_iterations)
        params.setRelativeErrorTol(c.relative_error_tol)
        params.setAbsoluteErrorTol(c.absolute_error_tol)
        opt = gtsam.LevenbergMarquardtOptimizer(self._graph, self._initial_values(), params)
        result = opt.optimize()
        self.last_iterations = int(opt.iterations())
        self._pending_graph = gtsam.NonlinearFactorGraph()
        self._pending_values = gtsam.Values()
        return result

    def _optimize_isam2(self) -> gtsam.Values:
        if self._isam is None:
            params = gtsam.ISAM2Params()
            params.setRelinearizeThreshold(1e-3)
            params.relinearizeSkip = 1
            self._isam = gtsam.ISAM2(params)
        self._isam.update(self._pending_graph, self._pending_values)
        # a few extra iterations let a new loop's correction propagate fully
        for _ in range(3):
            self._isam.update()
        self.last_iterations = 4
        self._pending_graph = gtsam.NonlinearFactorGraph()
        self._pending_values = gtsam.Values()
        return self._isam.calculateEstimate()
