"""Build a backend (and its loop-closure component) from a few plain settings.

One place that knows how a name like "scal3r", "tiny" or "oracle" becomes a working
`Backend`, used by the node, the offline tool, the demo and the benchmark alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from scal3r_ros.mapping.config import BACKEND_KINDS, BackendSection, OracleSection

__all__ = ["BACKEND_KINDS", "BackendSpec", "build_engine", "make_backend", "make_loop_closure"]


@dataclass
class BackendSpec:
    kind: str = "scal3r"  # scal3r (official checkpoint) | tiny (random test net) | oracle
    checkpoint: str | None = None  # None: default location (~/.cache/scal3r_ros/scal3r.pt)
    checkpoint_sha256: str | None = None  # None: <checkpoint>.sha256 beside it, if any
    allow_download: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 autocast on CUDA) | float32 | bfloat16
    seed: int = 0  # random weights of the tiny network
    loop_closure: bool = True  # build the loop-closure component (thumbnail retrieval)
    point_head: bool = False  # keep the point head (engine use_point_head); off: not loaded
    oracle: OracleSection = field(default_factory=OracleSection)  # the oracle's drive

    @classmethod
    def from_sections(
        cls,
        backend: BackendSection,
        oracle: OracleSection,
        loop_closure: bool,
        seed: int = 0,
        point_head: bool = False,
    ) -> BackendSpec:
        """The spec of the config tree's backend and oracle sections (empty checkpoint
        strings mean the defaults, as the node's parameters say)."""
        return cls(
            kind=backend.backend,
            checkpoint=backend.checkpoint or None,
            checkpoint_sha256=backend.checkpoint_sha256 or None,
            allow_download=backend.allow_download,
            device=backend.device,
            dtype=backend.dtype,
            seed=seed,
            loop_closure=loop_closure,
            oracle=oracle,
            point_head=point_head,
        )


@dataclass
class BuiltBackend:
    backend: Any
    loop_closure: Any
    name: str
    device_name: str


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def use_bf16(dtype: str, device: torch.device) -> bool:
    """bf16 autocast for ``dtype`` (auto: on CUDA only, where it pays; fp32 elsewhere)."""
    if dtype not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"dtype must be auto, float32 or bfloat16, got {dtype!r}")
    return dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda")


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return str(dev)


def make_loop_closure(enabled: bool = True):
    """The loop-closure component every tool uses (thumbnail retrieval); None when off."""
    if not enabled:
        return None
    from scal3r_ros.mapping.loop_closure import LoopClosure, LoopClosureConfig, LoopDetectorConfig

    return LoopClosure(LoopClosureConfig(detector=LoopDetectorConfig.thumbnail()))


def build_engine(config, backend, loop_closure=None, sensor_fusion=None):
    """The mapping engine for ``config`` (an EngineConfig) on ``backend``, the one way the
    node, the offline tool and the bench wire it: ``loop_closure`` None builds the standard
    component when ``config.loop_closure`` is on; ``sensor_fusion`` (a ``SensorFusion``)
    adds the robot's odometry/GNSS factors."""
    from scal3r_ros.mapping.engine import MappingEngine

    if loop_closure is None:
        loop_closure = make_loop_closure(config.loop_closure)
    return MappingEngine(config, backend, loop_closure, sensor_fusion)


def make_backend(spec: BackendSpec) -> BuiltBackend:
    """Raises ValueError for bad settings and CheckpointError for a bad checkpoint."""
    if spec.kind not in BACKEND_KINDS:
        raise ValueError(f"backend must be one of {BACKEND_KINDS}, got {spec.kind!r}")
    loops = make_loop_closure(spec.loop_closure)
    if spec.kind == "oracle":
        from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
        from scal3r_ros.mapping.sim.synthetic import SyntheticConfig, SyntheticDrive

        o = spec.oracle
        drive = SyntheticDrive(
            SyntheticConfig(
                n_frames=o.oracle_frames,
                width=o.oracle_width,
                height=o.oracle_height,
                seed=o.oracle_seed,
                extra_laps=o.oracle_laps - 1.0,
            )
        )
        oracle = OracleConfig(
            seed=o.oracle_seed,
            depth_noise=o.oracle_depth_noise,
            drift_yaw_deg_per_frame=o.oracle_drift_deg,
            focal_error=o.oracle_focal_error,
            window_delays_s=tuple(o.oracle_window_delays),
        )
        return BuiltBackend(OracleBackend(drive, oracle), loops, "oracle", "cpu")

    from scal3r_ros.mapping.backends.scal3r import Scal3RBackend, Scal3RBackendConfig

    dev = resolve_device(spec.device)
    bf16 = use_bf16(spec.dtype, dev)
    # on a GPU, preprocess there too (bit-exact with the official CPU path); the model keeps
    # only the heads the engine reads and, under bf16 autocast, its trunk weights in bf16
    cfg = Scal3RBackendConfig(
        device=str(dev),
        autocast_bf16=bf16,
        preprocess="batch" if dev.type == "cuda" else "reference",
        point_head=spec.point_head,
        slim_model=True,
    )
    if spec.kind == "tiny":
        backend = Scal3RBackend.from_config("tiny", cfg, seed=spec.seed)
        return BuiltBackend(backend, loops, "tiny", _device_name(dev))
    from scal3r_ros.model.checkpoint import load_scal3r

    # streamed onto the device tensor by tensor from the memory-mapped file (no host copy)
    model, _report = load_scal3r(
        spec.checkpoint,
        "scal3r-1b",
        device=dev,
        download=spec.allow_download,
        sha256=spec.checkpoint_sha256,
        heads=cfg.heads,
        autocast_dtype=torch.bfloat16 if bf16 else None,
    )
    return BuiltBackend(Scal3RBackend(model, cfg), loops, "scal3r-1b", _device_name(dev))
