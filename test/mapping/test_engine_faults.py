"""Backend failures (e.g. CUDA out of memory) leave the engine and its map consistent."""

import numpy as np
import pytest
import torch
from helpers import make_drive, push_and_collect

from scal3r_ros.mapping.backends.oracle import OracleBackend, OracleConfig
from scal3r_ros.mapping.engine import EngineConfig, MappingEngine
from scal3r_ros.mapping.events import AlignmentReport, ChunkFailed
from scal3r_ros.mapping.trajectory import ate_sim3


def run(drive, fail_times: int):
    """Window 3 fails ``fail_times`` times (simulated CUDA OOM) before it works."""
    failures = {"left": fail_times}

    def corrupt(chunk, pred):
        if chunk.chunk_id == 3 and failures["left"] > 0:
            failures["left"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return pred

    eng = MappingEngine(
        EngineConfig.low_latency(), OracleBackend(drive, OracleConfig(corrupt=corrupt))
    )
    events = push_and_collect(eng, drive)
    return eng, events


def test_a_transient_failure_is_retried_and_the_map_stays_whole():
    drive = make_drive(n_frames=64)
    eng, events = run(drive, fail_times=1)
    failed = [e for e in events if isinstance(e, ChunkFailed)]
    assert len(failed) == 1 and failed[0].will_retry and "out of memory" in failed[0].error
    assert all(e.ok for e in events if isinstance(e, AlignmentReport))
    ids, _, c2w = eng.poses()
    assert len(ids) == 64
    assert ate_sim3(c2w, drive.gt_poses()[ids])[0] < 1e-3 * drive.path_length()


def test_a_persistent_failure_skips_the_window_and_reports_the_gap():
    drive = make_drive(n_frames=64)
    eng, events = run(drive, fail_times=10)
    failed = [e for e in events if isinstance(e, ChunkFailed)]
    assert [e.attempt for e in failed] == [1, 2, 3] and not failed[-1].will_retry
    gap = [e for e in events if isinstance(e, AlignmentReport) and not e.ok]
    assert len(gap) == 1 and gap[0].reason == "no_overlap"
    assert eng.n_chunks >= 6  # later windows still mapped


@pytest.mark.parametrize("mode", ["causal"])
def test_failed_window_does_not_touch_the_gcs_state(mode):
    from scal3r_ros.mapping.backends.protocol import ChunkInput
    from scal3r_ros.mapping.backends.scal3r import Scal3RBackend, Scal3RBackendConfig

    backend = Scal3RBackend.from_config("tiny", Scal3RBackendConfig(device="cpu", max_size=56))
    state = backend.new_gcs_state(mode)
    rng = np.random.default_rng(0)
    imgs = np.stack(
        [backend.prepare(rng.integers(0, 255, (20, 60, 3), np.uint8), None)[0] for _ in range(3)]
    )
    chunk = ChunkInput(0, np.arange(3), np.arange(3), imgs)
    backend.infer(chunk, state)
    before = {k: [t.clone() for t in g] for k, g in state.sums.items()}
    count = state.count
    heads = backend.model.cam_decoder.forward

    def boom(*a, **k):
        raise torch.OutOfMemoryError("simulated")

    backend.model.cam_decoder.forward = boom  # fails after every GCM layer has synced
    with pytest.raises(torch.OutOfMemoryError):
        backend.infer(chunk, state)
    backend.model.cam_decoder.forward = heads
    assert state.count == count
    for k, g in state.sums.items():
        for a, b in zip(g, before[k], strict=True):
            assert torch.equal(a, b)
    backend.infer(chunk, state)
    assert state.count == count + 1
