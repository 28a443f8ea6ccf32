"""Deterministic payloads shared by the cross-process DDS tests and their publisher."""

import numpy as np

IMAGE_W, IMAGE_H = 1242, 375
CLOUD_POINTS = 200_000


def image(seq: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + seq)
    return rng.integers(0, 256, size=(IMAGE_H, IMAGE_W, 3), dtype=np.uint8)


def cloud(seq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2000 + seq)
    xyz = rng.uniform(-50, 50, size=(CLOUD_POINTS, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(CLOUD_POINTS, 3), dtype=np.uint8)
    conf = rng.uniform(0, 10, size=CLOUD_POINTS).astype(np.float32)
    return xyz, rgb, conf


def status_fields(seq: int) -> dict:
    return {
        "state": 2,
        "state_text": f"mapping {seq}",
        "frames_received": 1_000_000_007 + seq,
        "frames_processed": 999 + seq,
        "frames_dropped": 3,
        "chunks_processed": 33,
        "loop_closures": 2,
        "queue_length": 4,
        "queue_capacity": 64,
        "latency_ms": 812.5,
        "chunk_time_ms": 250.25,
        "fps": 31.5,
        "map_points": 2**40 + 5,
        "gpu_memory_mb": 9123.5,
        "host_rss_mb": 2048.0,
        "device": "cuda:0 (test)",
        "backend": "oracle",
        "gcs_mode": "causal",
        "scale_source": "camera_height",
        "scale": 1.6500000000000001,
        "scale_confidence": 0.75,
        "last_error": "ünïcode ok",
    }
