"""``scal3r-1b`` built on the meta device has exactly the official state_dict (names, order,
shapes, dtypes) listed in test/data/scal3r_state_dict.tsv."""

import torch
from helpers import DATA

from scal3r_ros.model import Scal3R

TSV = DATA / "scal3r_state_dict.tsv"
N_KEYS = 1451
N_PARAMS = 1_266_142_756


def _manifest():
    rows = []
    for line in TSV.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype))
    return rows


def test_manifest_file_is_complete():
    rows = _manifest()
    assert len(rows) == N_KEYS
    total = 0
    for _, shape, _ in rows:
        n = 1
        for s in shape:
            n *= s
        total += n
    assert total == N_PARAMS


def test_scal3r_1b_state_dict_matches_official_manifest():
    with torch.device("meta"):
        model = Scal3R("scal3r-1b")
    sd = model.state_dict()
    rows = _manifest()
    expected = {k: (s, d) for k, s, d in rows}
    got = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()}
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    assert not missing, f"missing keys (first 10): {missing[:10]}"
    assert not extra, f"unexpected keys (first 10): {extra[:10]}"
    bad = [(k, expected[k], got[k]) for k in expected if expected[k] != got[k]]
    assert not bad, f"shape/dtype mismatches (first 10): {bad[:10]}"
    assert list(got) == [k for k, _, _ in rows], "key order differs from the official model"
    assert sum(v.numel() for v in sd.values()) == N_PARAMS
    # non-persistent buffers are not part of the checkpoint
    assert not any("_resnet_" in k for k in sd)
