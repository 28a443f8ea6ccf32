"""Checkpoint loading: strict Scal3R files, wrappers/prefixes, VGGT renaming, every failure mode
raising CheckpointError, and the download path (mocked; never the network or the real file)."""

import hashlib
import json
import os
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch

from scal3r_ros.model import CheckpointError, Scal3R, checkpoint, load_checkpoint, load_scal3r
from scal3r_ros.model.checkpoint import (
    DEFAULT_FILENAME,
    DEFAULT_REPO_ID,
    VERIFIED_CACHE_FILE,
    VGGT_KEY_MAP,
    _records_checked,
    checksum_sidecar,
    read_state_dict,
    resolve_checkpoint,
    verify_checksum,
)


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(3)
    return {k: v.clone() for k, v in Scal3R("tiny").state_dict().items()}


@pytest.fixture
def ckpt(tmp_path, reference):
    path = tmp_path / "scal3r.pt"
    torch.save(reference, path)
    return path


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SCAL3R_ROS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SCAL3R_CHECKPOINT", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("SCAL3R_ROS_OFFLINE", raising=False)
    # never reach the real hub: a module that fails loudly unless a test replaces it
    fake = types.ModuleType("huggingface_hub")

    def _no_network(**kw):
        raise AssertionError("network access attempted in tests")

    fake.hf_hub_download = _no_network
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)


def _fresh():
    torch.manual_seed(99)
    return Scal3R("tiny")


def _assert_loaded(model, reference, skip=()):
    sd = model.state_dict()
    for k, v in reference.items():
        if k not in skip:
            assert torch.equal(sd[k], v), k


def test_plain_state_dict_loads_strictly(ckpt, reference):
    m = _fresh()
    rep = load_checkpoint(m, ckpt)
    assert rep.format == "scal3r" and rep.loaded == len(reference) and not rep.cast
    _assert_loaded(m, reference)


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module", "sampler"])
def test_wrapped_and_prefixed(tmp_path, reference, wrap):
    path = tmp_path / "wrapped.pt"
    inner = {f"module.{k}": v for k, v in reference.items()}
    torch.save({wrap: inner, "epoch": 3, "note": "x"}, path)
    m = _fresh()
    load_checkpoint(m, path)
    _assert_loaded(m, reference)


def test_half_precision_file_is_cast(tmp_path, reference):
    path = tmp_path / "half.pt"
    torch.save({k: v.to(torch.bfloat16) for k, v in reference.items()}, path)
    m = _fresh()
    rep = load_checkpoint(m, path)
    assert len(rep.cast) == len(reference)
    assert all(p.dtype == torch.float32 for p in m.parameters())
    with pytest.raises(CheckpointError, match="dtype"):
        load_checkpoint(_fresh(), path, strict_dtype=True)


def test_safetensors(tmp_path, reference):
    st = pytest.importorskip("safetensors.torch")
    path = tmp_path / "model.safetensors"
    st.save_file({k: v.contiguous() for k, v in reference.items()}, str(path))
    m = _fresh()
    load_checkpoint(m, path)
    _assert_loaded(m, reference)


def test_load_scal3r_meta_assign(ckpt, reference):
    m, rep = load_scal3r(ckpt, "tiny")
    assert rep.format == "scal3r" and not m.training
    _assert_loaded(m, reference)
    assert not any(t.is_meta for t in list(m.parameters()) + list(m.buffers()))
    with torch.inference_mode():
        out = m(torch.rand(1, 2, 3, 28, 42))
    assert torch.isfinite(out.depth).all()


# ----------------------------------------------------------------------------- VGGT
def _vggt_state(reference):
    out = {}
    inv = {v: k for k, v in VGGT_KEY_MAP.items()}
    for k, v in reference.items():
        if ".ttt." in k:
            continue
        for new, old in inv.items():
            if k.startswith(new):
                out[old + k[len(new) :]] = v
    out["track_head.feature_extractor.norm.weight"] = torch.ones(4)
    return out


def test_vggt_renaming_leaves_gcm_at_init(tmp_path, reference):
    path = tmp_path / "model.pt"
    vggt = _vggt_state(reference)
    assert not any(k.startswith("agg_regator.") for k in vggt)
    torch.save(vggt, path)
    m = _fresh()
    init = {k: v.clone() for k, v in m.state_dict().items() if ".ttt." in k}
    rep = load_checkpoint(m, path)
    assert rep.format == "vggt"
    assert sorted(rep.left_at_init) == sorted(init) and len(init) == 2 * 12
    assert rep.dropped == ["track_head.feature_extractor.norm.weight"]
    sd = m.state_dict()
    for k, v in init.items():
        assert torch.equal(sd[k], v)
    _assert_loaded(m, reference, skip=set(init))
    m2, rep2 = load_scal3r(path, "tiny", zero_gcm=True)
    assert rep2.format == "vggt"
    assert all(
        torch.count_nonzero(m2.agg_regator.gcm(j).proj.bias) == 0 for j in (1, 3)
    )  # GCM residual is exactly zero: the trunk is VGGT's
    st = m2.agg_regator.prepare(torch.rand(1, 2, 3, 28, 42))
    m2.agg_regator.forward_layer(st, 0)
    m2.agg_regator.forward_layer(st, 1)
    before = st.tokens.clone()
    g = m2.agg_regator.gcm_gradient(st, 1)
    m2.agg_regator.gcm_apply(st, 1, m2.agg_regator.gcm_update(1, g))
    assert torch.equal(st.tokens, before)


def test_vggt_missing_non_gcm_key_fails(tmp_path, reference):
    vggt = _vggt_state(reference)
    vggt.pop("camera_head.trunk_norm.weight")
    path = tmp_path / "model.pt"
    torch.save(vggt, path)
    with pytest.raises(CheckpointError, match="cam_decoder.trunk_norm.weight"):
        load_checkpoint(_fresh(), path)


# ----------------------------------------------------------------------------- failures
def test_missing_file_names_where_to_put_it(tmp_path):
    p = tmp_path / "nope" / "scal3r.pt"
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(_fresh(), p)
    assert str(p) in str(e.value) and "hf download" in str(e.value)


def test_truncated_file(tmp_path, ckpt):
    data = ckpt.read_bytes()
    for n in (0, 10, len(data) // 2, len(data) - 100):
        bad = tmp_path / f"trunc{n}.pt"
        bad.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match=str(bad.name)):
            load_checkpoint(_fresh(), bad)


def test_corrupt_file(tmp_path, ckpt):
    data = bytearray(ckpt.read_bytes())
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(_fresh(), garbage)
    # flip bytes in the middle of the zip (central directory intact)
    mid = len(data) // 3
    data[mid : mid + 64] = bytes(64)
    flipped = tmp_path / "flipped.pt"
    flipped.write_bytes(bytes(data))
    try:
        rep = load_checkpoint(_fresh(), flipped)
    except CheckpointError as e:
        assert "flipped.pt" in str(e)
    else:  # the zeroed bytes fell inside tensor data: still a well-formed file
        assert rep.format == "scal3r"


def test_unsafe_pickle_is_rejected(tmp_path):
    path = tmp_path / "evil.pt"

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"agg_regator.camera_token": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(_fresh(), path)


class _Opaque:  # a pickled non-tensor object (module-level, so torch.save can pickle it)
    pass


def _write_bad(kind: str, path: Path) -> None:
    if kind == "garbage":
        path.write_bytes(b"definitely not a checkpoint" * 100)
    elif kind == "zip_header":
        path.write_bytes(b"PK\x03\x04trunc")
    elif kind == "object":
        torch.save({"agg_regator.camera_token": _Opaque()}, path)
    elif kind == "numpy":
        import numpy as np

        torch.save({"agg_regator.camera_token": np.zeros(3)}, path)
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["garbage", "zip_header", "object", "numpy"])
def test_read_errors_never_advise_unsafe_loading(tmp_path, kind):
    """torch's refusal suggests weights_only=False or allow-listing the class: both would
    run code from an unknown file, so the message says what the file holds instead."""
    path = tmp_path / f"{kind}.pt"
    _write_bad(kind, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(_fresh(), path)
    msg = str(e.value)
    assert str(path) in msg
    for advice in ("weights_only", "safe_globals", "trust", "\x1b["):
        assert advice not in msg, msg
    assert e.value.__cause__ is None and e.value.__suppress_context__  # not in tracebacks
    if kind in ("object", "numpy"):
        assert "pickled Python objects" in msg and "download scal3r.pt again" in msg
    else:
        assert "corrupt" in msg


@pytest.mark.parametrize("name", ["scal3r.pt", "path.pt", "with space/my model.pt"])
def test_download_hint_makes_exactly_the_requested_file(tmp_path, monkeypatch, name):
    """Run the hint's command with a stand-in `hf` that does what `hf download --local-dir D`
    does (writes D/<filename>): the file must end up where the checkpoint was asked for."""
    import re
    import subprocess

    target = tmp_path / "ckpt" / name
    with pytest.raises(CheckpointError) as e:
        resolve_checkpoint(target)
    command = re.search(r"`(hf download [^`]*)`", str(e.value)).group(1)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "hf"
    fake.write_text(
        "#!/bin/sh\n"
        '[ "$1" = download ] || exit 3\n'
        'file="$3"; dir=.\n'
        'while [ $# -gt 0 ]; do [ "$1" = --local-dir ] && dir="$2"; shift; done\n'
        'mkdir -p "$dir" && echo weights > "$dir/$file"\n'
    )
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    subprocess.run(["sh", "-c", command], check=True, env=env, cwd=tmp_path)
    assert target.is_file() and resolve_checkpoint(target) == target


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_checkpoint(_fresh(), path)
    empty = tmp_path / "empty.pt"
    torch.save({}, empty)
    with pytest.raises(CheckpointError, match="empty.pt"):
        load_checkpoint(_fresh(), empty)


def test_wrong_keys(tmp_path, reference):
    sd = dict(reference)
    sd.pop("agg_regator.camera_token")
    sd["agg_regator.extra.weight"] = torch.zeros(3)
    path = tmp_path / "keys.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(_fresh(), path)
    msg = str(e.value)
    assert (
        "keys.pt" in msg and "agg_regator.camera_token" in msg and "agg_regator.extra.weight" in msg
    )


def test_unknown_layout(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="unknown checkpoint layout"):
        load_checkpoint(_fresh(), path)


def test_wrong_shape(tmp_path, reference):
    sd = dict(reference)
    sd["agg_regator.register_token"] = torch.zeros(1, 2, 3, 32)
    path = tmp_path / "shape.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"agg_regator.register_token: file \(1, 2, 3, 32\)"):
        load_checkpoint(_fresh(), path)


def test_wrong_dtype(tmp_path, reference):
    sd = dict(reference)
    sd["cam_decoder.embed_pose.weight"] = sd["cam_decoder.embed_pose.weight"].to(torch.int32)
    path = tmp_path / "dtype.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="cam_decoder.embed_pose.weight: file torch.int32"):
        load_checkpoint(_fresh(), path)


def test_scal3r_1b_checkpoint_does_not_fit_tiny(tmp_path, reference):
    # a model/ckpt size mismatch is reported, not a torch traceback
    sd = {k: torch.zeros(1) for k in reference}
    path = tmp_path / "mismatch.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(_fresh(), path)


# ----------------------------------------------------------------------------- download
def test_default_location_used(tmp_path, reference):
    target = tmp_path / "cache" / DEFAULT_FILENAME
    target.parent.mkdir(parents=True)
    torch.save(reference, target)
    assert resolve_checkpoint() == target
    load_checkpoint(_fresh())


def test_env_checkpoint_path(monkeypatch, ckpt):
    monkeypatch.setenv("SCAL3R_CHECKPOINT", str(ckpt))
    assert resolve_checkpoint() == ckpt


def test_download_when_absent(monkeypatch, tmp_path, reference):
    calls = []

    def fake_download(repo_id, filename, local_dir, **kw):
        calls.append((repo_id, filename))
        out = Path(local_dir) / filename
        torch.save(reference, out)
        return str(out)

    sys.modules["huggingface_hub"].hf_hub_download = fake_download
    m = _fresh()
    rep = load_checkpoint(m)
    assert calls == [(DEFAULT_REPO_ID, DEFAULT_FILENAME)]
    assert rep.path == tmp_path / "cache" / DEFAULT_FILENAME
    _assert_loaded(m, reference)


@pytest.mark.parametrize("mode", ["offline_env", "no_hub", "disabled", "hub_fails"])
def test_no_download_says_where_to_put_file(monkeypatch, tmp_path, mode):
    if mode == "offline_env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    elif mode == "no_hub":
        monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    elif mode == "hub_fails":

        def boom(**kw):
            raise OSError("network unreachable")

        sys.modules["huggingface_hub"].hf_hub_download = boom
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(_fresh(), download=(mode != "disabled") and None)
    msg = str(e.value)
    target = tmp_path / "cache" / DEFAULT_FILENAME
    assert str(target) in msg and DEFAULT_REPO_ID in msg and "hf download" in msg
    if mode == "hub_fails":
        assert "network unreachable" in msg


def test_explicit_missing_path_never_downloads(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "x.pt")
    with pytest.raises(CheckpointError):
        resolve_checkpoint(tmp_path / "x.pt", download=True)


# ----------------------------------------------------------------------------- record sizes
def _rewrite_zip(
    src: Path,
    dst: Path,
    *,
    shorten: str | None = None,
    drop: str | None = None,
    compression: int = zipfile.ZIP_STORED,
) -> None:
    """Copy a torch zip checkpoint entry by entry (a consistent central directory), with
    one storage record (``data/<key>``) cut to half its bytes or left out."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith(f"/data/{drop}"):
                continue
            if info.filename.endswith(f"/data/{shorten}"):
                data = data[: len(data) // 2]
            info.compress_type = compression
            zout.writestr(info, data)


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_shortened_record_is_refused_naming_the_tensor(tmp_path, ckpt, reference, which):
    """torch.load(mmap=True) slices storages out of the mapped file with the pickle's sizes
    and does not look at the records' sizes: a shortened record loaded as other records'
    bytes (343 tensors "loaded", most garbage). The loader must refuse it."""
    names = list(reference)
    name = {"first": names[0], "middle": names[len(names) // 2], "last": names[-1]}[which]
    key = str(names.index(name))  # torch.save numbers storages in first-use order
    bad = tmp_path / "short.pt"
    _rewrite_zip(ckpt, bad, shorten=key)
    with zipfile.ZipFile(bad) as zf:  # the fixture is what we mean it to be
        sizes = {i.filename.rsplit("/", 1)[1]: i.file_size for i in zf.infolist()}
    assert sizes[key] == reference[name].untyped_storage().nbytes() // 2
    for load in (lambda: load_checkpoint(_fresh(), bad), lambda: load_scal3r(bad, "tiny")):
        with pytest.raises(CheckpointError) as e:
            load()
        msg = str(e.value)
        assert str(bad) in msg and name in msg and f"record data/{key} holds" in msg, msg


def test_missing_record_is_refused(tmp_path, ckpt, reference):
    bad = tmp_path / "missing.pt"
    _rewrite_zip(ckpt, bad, drop="5")
    with pytest.raises(CheckpointError, match=f"{list(reference)[5]}: record data/5 is missing"):
        load_checkpoint(_fresh(), bad)


def test_good_files_load_memory_mapped_and_copied(tmp_path, ckpt, reference):
    """A good file passes the record check and is memory-mapped; files the check cannot
    read (compressed records, the legacy format) go through torch's copying reader,
    which checks record sizes itself."""
    assert _records_checked(ckpt)
    m = _fresh()
    load_checkpoint(m, ckpt)
    _assert_loaded(m, reference)

    rezipped = tmp_path / "rezipped.pt"  # same content, consistent zip, unaligned records
    _rewrite_zip(ckpt, rezipped)
    assert _records_checked(rezipped)
    m = _fresh()
    load_checkpoint(m, rezipped)
    _assert_loaded(m, reference)

    deflated = tmp_path / "deflated.pt"
    _rewrite_zip(ckpt, deflated, compression=zipfile.ZIP_DEFLATED)
    assert not _records_checked(deflated)  # cannot be memory-mapped
    m = _fresh()
    load_checkpoint(m, deflated)
    _assert_loaded(m, reference)
    short = tmp_path / "deflated_short.pt"
    _rewrite_zip(ckpt, short, shorten="3", compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match="deflated_short.pt"):
        load_checkpoint(_fresh(), short)

    legacy = tmp_path / "legacy.pt"
    torch.save(reference, legacy, _use_new_zipfile_serialization=False)
    assert not _records_checked(legacy)
    m = _fresh()
    load_checkpoint(m, legacy)
    _assert_loaded(m, reference)


def test_views_sharing_a_storage_are_checked(tmp_path):
    """Tensors that are views of one storage (offset, strides) must fit inside it."""
    base = torch.arange(100, dtype=torch.float32)
    sd = {"a": base[10:30], "b": base.view(10, 10)[:, 2], "c": torch.ones(3)}
    path = tmp_path / "views.pt"
    torch.save(sd, path)
    assert _records_checked(path)
    out = read_state_dict(path)
    assert torch.equal(out["a"], base[10:30]) and torch.equal(out["b"], base.view(10, 10)[:, 2])
    bad = tmp_path / "views_short.pt"
    _rewrite_zip(path, bad, shorten="0")
    with pytest.raises(CheckpointError, match=r"a, b: record data/0 holds 200 bytes"):
        read_state_dict(bad)


# ----------------------------------------------------------------------------- checksum
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def hashing(monkeypatch):
    """Counts full-file hashes; forgets what this process verified (as a new start)."""
    calls = []
    real = hashlib.file_digest

    def counting(f, name):
        calls.append(name)
        return real(f, name)

    monkeypatch.setattr(hashlib, "file_digest", counting)
    monkeypatch.setattr(checkpoint, "_verified_here", {})
    return calls


def test_sidecar_checksum_verified_once_per_file_version(tmp_path, ckpt, reference, hashing):
    digest = _sha256(ckpt)
    checksum_sidecar(ckpt).write_text(f"{digest}  {ckpt.name}\n")
    m = _fresh()
    rep = load_checkpoint(m, ckpt)
    assert rep.sha256 == digest and len(hashing) == 1
    _assert_loaded(m, reference)
    cache = tmp_path / "cache" / VERIFIED_CACHE_FILE
    assert json.loads(cache.read_text())[str(ckpt.resolve())]["sha256"] == digest
    # a new process (memory cleared): the cache file spares the rehash
    checkpoint._verified_here.clear()
    load_scal3r(ckpt, "tiny")
    assert len(hashing) == 1
    # another version of the file (new mtime) is hashed again
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    checkpoint._verified_here.clear()
    assert verify_checksum(ckpt) == digest and len(hashing) == 2


def test_checksum_mismatch_is_refused(tmp_path, ckpt, hashing):
    wrong = "0" * 64
    checksum_sidecar(ckpt).write_text(f"{wrong} *{ckpt.name}\n")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(_fresh(), ckpt)
    msg = str(e.value)
    assert "SHA-256 mismatch" in msg and wrong in msg and _sha256(ckpt) in msg
    assert str(checksum_sidecar(ckpt)) in msg and "download it again" in msg
    assert not (tmp_path / "cache" / VERIFIED_CACHE_FILE).exists()  # mismatches not cached
    # the explicit checksum is the authority over the side file
    assert load_checkpoint(_fresh(), ckpt, sha256=_sha256(ckpt).upper()).sha256 == _sha256(ckpt)
    checksum_sidecar(ckpt).unlink()
    with pytest.raises(CheckpointError, match="the given checksum says 0000"):
        load_scal3r(ckpt, "tiny", sha256=wrong)
    with pytest.raises(CheckpointError, match="not a SHA-256 digest"):
        load_checkpoint(_fresh(), ckpt, sha256="abc")


def test_a_file_changed_after_verification_is_rehashed_and_refused(ckpt, hashing):
    checksum_sidecar(ckpt).write_text(f"{_sha256(ckpt)}  {ckpt.name}\n")
    assert verify_checksum(ckpt) is not None
    data = bytearray(ckpt.read_bytes())
    data[-200] ^= 0xFF
    ckpt.write_bytes(bytes(data))  # same size, new mtime
    checkpoint._verified_here.clear()
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        verify_checksum(ckpt)


@pytest.mark.parametrize(
    "text,ok",
    [
        ("{d}\n", True),  # bare digest
        ("{z}  other.pt\n{d}  scal3r.pt\n", True),  # a sha256sum listing: our line
        ("{d}  renamed.pt\n", True),  # one line: the side file is ours by its name
        ("{z}  other.pt\n{z}  more.pt\n", "no line for scal3r.pt"),
        ("not a digest  scal3r.pt\n", "sha256sum format"),
    ],
)
def test_sidecar_formats(ckpt, text, ok, hashing):
    checksum_sidecar(ckpt).write_text(text.format(d=_sha256(ckpt), z="0" * 64))
    if ok is True:
        assert verify_checksum(ckpt) == _sha256(ckpt)
    else:
        with pytest.raises(CheckpointError, match=ok):
            verify_checksum(ckpt)


def test_no_checksum_no_hashing(ckpt, hashing):
    assert load_checkpoint(_fresh(), ckpt).sha256 is None and not hashing


def test_backend_spec_passes_the_checksum(ckpt, hashing):
    """The node's `checkpoint_sha256` reaches the loader through BackendSpec: a wrong
    digest stops the start before the file is read (the node exits 2 with this)."""
    from scal3r_ros.mapping.backends.factory import BackendSpec, make_backend

    spec = BackendSpec(
        kind="scal3r",
        checkpoint=str(ckpt),
        checkpoint_sha256="f" * 64,
        device="cpu",
        loop_closure=False,
    )
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        make_backend(spec)
    assert hashing == ["sha256"]
