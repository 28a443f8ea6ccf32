"""Loading Scal3R (and VGGT-1B) checkpoints, safely and with one clear error type.

Formats
-------
* **Scal3R** (``scal3r.pt`` from Hugging Face ``xbillowy/Scal3R``): a plain pickled
  ``Scal3R.state_dict()`` (the official loader does ``torch.load(...)`` then
  ``load_state_dict(strict=True)``): 1451 tensors with the prefixes ``agg_regator.``,
  ``cam_decoder.``, ``xyz_decoder.``, ``dpt_decoder.``. Loaded strictly.
* **VGGT-1B** (``facebook/VGGT-1B`` ``model.pt`` / ``model.safetensors``): same sub-module
  structure under other names. Renamed ``aggregator.`` -> ``agg_regator.``,
  ``camera_head.`` -> ``cam_decoder.``, ``point_head.`` -> ``xyz_decoder.``,
  ``depth_head.`` -> ``dpt_decoder.``; ``track_head.*`` is dropped; the GCM tensors
  (``agg_regator.global_blocks.{i}.ttt.*``), which VGGT lacks, keep the model's initialisation.
  Note that the official init (zero ``proj`` weight and bias except a gate bias of 0.1) does *not*
  make the GCM residual zero: it adds ``0.1 * LayerNorm(o)``. Pass ``zero_gcm=True`` to zero the
  GCM output projections instead, which makes the GCM layers exact no-ops so the network computes
  VGGT-1B's trunk. VGGT weights are a structural template, not a substitute for the fine-tuned
  Scal3R weights.

Both may be wrapped in a dict (``{"state_dict": ...}``, ``{"model": ...}``, ``{"module": ...}``,
``{"sampler": ...}``, ...) and/or carry a common key prefix (``module.``, ``model.``,
``sampler.``, ``_orig_mod.``); both are unwrapped. ``.safetensors`` files are read with
safetensors when it is installed.

Safety: ``torch.load(weights_only=True, mmap=True)`` (falls back to ``mmap=False`` for legacy
non-zip files); no arbitrary unpickling, and a refused file's message says what it holds
(torch's advice to retry with ``weights_only=False`` is never passed on). Before a file is
memory-mapped, every tensor's storage record is checked against the size the pickle gives it
(torch's mmap loader does not: a shortened record would read other records' bytes as weights).

Checksum: with ``sha256=`` (node parameter ``checkpoint_sha256``) or a ``<checkpoint>.sha256``
file beside it (``sha256sum`` format), the file's SHA-256 must match before it is read; a
verified file version (path, size, mtime, inode) is remembered in
``<cache>/verified_sha256.json`` so a 5 GB file is hashed once, not at every start.

Errors: every failure — missing file, unreadable/truncated/corrupt file, not a state dict,
missing/unexpected keys, shape mismatches, non-floating dtypes (or any dtype difference with
``strict_dtype=True``) — raises :class:`CheckpointError` naming the file and the first
mismatches. Floating tensors of another precision (fp16/bf16/fp64) are cast to the model's dtype.

Download: with ``path=None`` the checkpoint is looked up at ``$SCAL3R_CHECKPOINT`` or
``<cache>/scal3r.pt`` (``<cache>`` = ``$SCAL3R_ROS_CACHE`` or ``~/.cache/scal3r_ros``). If it is
absent and downloading is allowed (``huggingface_hub`` importable, ``download`` not False, neither
``HF_HUB_OFFLINE`` nor ``SCAL3R_ROS_OFFLINE`` set), it is fetched from ``xbillowy/Scal3R`` into
``<cache>``; otherwise the error says exactly where to put the file.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import pickle
import re
import shlex
import struct
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "CheckpointError",
    "DEFAULT_FILENAME",
    "DEFAULT_REPO_ID",
    "LoadReport",
    "VERIFIED_CACHE_FILE",
    "VGGT_KEY_MAP",
    "checksum_sidecar",
    "convert_vggt_state_dict",
    "default_cache_dir",
    "default_checkpoint_path",
    "detect_format",
    "expected_sha256",
    "load_checkpoint",
    "load_scal3r",
    "read_state_dict",
    "resolve_checkpoint",
    "verify_checksum",
]

DEFAULT_REPO_ID = "xbillowy/Scal3R"
DEFAULT_FILENAME = "scal3r.pt"
SCAL3R_ROOTS = ("agg_regator.", "cam_decoder.", "xyz_decoder.", "dpt_decoder.")
VGGT_KEY_MAP = {
    "aggregator.": "agg_regator.",
    "camera_head.": "cam_decoder.",
    "point_head.": "xyz_decoder.",
    "depth_head.": "dpt_decoder.",
}
VGGT_DROPPED = ("track_head.",)
_WRAPPER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "sampler",
    "net",
    "network",
    "weights",
    "params",
    "ema",
)
_PREFIXES = ("module.", "model.", "sampler.", "_orig_mod.", "net.", "network.")
_MAX_LISTED = 5


class CheckpointError(RuntimeError):
    """Any failure to find, read or match a checkpoint (message names the file)."""


@dataclass
class LoadReport:
    path: Path
    format: str  # "scal3r" or "vggt"
    loaded: int  # tensors copied into the model
    left_at_init: list[str] = field(default_factory=list)  # model keys not in the file (VGGT)
    dropped: list[str] = field(default_factory=list)  # file keys not used (VGGT track head)
    cast: list[str] = field(default_factory=list)  # keys converted to the model dtype
    sha256: str | None = None  # the verified digest (None: no checksum was given)


# ---------------------------------------------------------------------------- locating the file
def default_cache_dir() -> Path:
    env = os.environ.get("SCAL3R_ROS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "scal3r_ros"


def default_checkpoint_path(cache_dir: str | Path | None = None) -> Path:
    env = os.environ.get("SCAL3R_CHECKPOINT")
    if env and cache_dir is None:
        return Path(env).expanduser()
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / DEFAULT_FILENAME


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "SCAL3R_ROS_OFFLINE")
    )


def _where_to_put(target: Path, repo_id: str, filename: str) -> str:
    """How to get the checkpoint to exactly ``target``: ``hf download --local-dir D``
    writes ``D/<filename>``, so another name needs a rename after it."""
    q = shlex.quote
    get = f"hf download {repo_id} {filename} --repo-type model --local-dir {q(str(target.parent))}"
    if target.name != filename:
        get += f" && mv {q(str(target.parent / filename))} {q(str(target))}"
    url = f"https://huggingface.co/{repo_id}/resolve/main/{filename}"
    return (
        f"Put the file at {target} (or pass its path, or set SCAL3R_CHECKPOINT). To get it: "
        f"`{get}` or `curl -L -o {q(str(target))} {url}`"
    )


def resolve_checkpoint(
    path: str | Path | None = None,
    *,
    download: bool | None = None,
    cache_dir: str | Path | None = None,
    repo_id: str = DEFAULT_REPO_ID,
    filename: str = DEFAULT_FILENAME,
) -> Path:
    """Return an existing checkpoint path, downloading to the cache when allowed.

    An explicit ``path`` is never replaced by a download; only the default location is
    (``download=None``: download when possible, ``False``: never, ``True``: required).
    """
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        if p.exists():
            raise CheckpointError(f"{p}: not a regular file")
        raise CheckpointError(
            f"{p}: checkpoint file not found. " + _where_to_put(p, repo_id, filename)
        )

    target = default_checkpoint_path(cache_dir)
    if target.is_file():
        return target
    reason = None
    if download is False:
        reason = "downloading is disabled"
    elif _offline():
        reason = "offline mode (HF_HUB_OFFLINE / SCAL3R_ROS_OFFLINE) is set"
    else:
        try:
            import huggingface_hub
        except ImportError:
            reason = "huggingface_hub is not installed"
        else:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                got = Path(
                    huggingface_hub.hf_hub_download(
                        repo_id=repo_id, filename=filename, local_dir=str(target.parent)
                    )
                )
                if got != target and got.is_file() and not target.exists():
                    try:
                        target.symlink_to(got)
                    except OSError:
                        return got
                return target if target.is_file() else got
            except Exception as e:  # network, auth, disk ...
                reason = f"download from {repo_id} failed ({type(e).__name__}: {e})"
    raise CheckpointError(
        f"{target}: Scal3R checkpoint not found and not downloaded: {reason}. "
        + _where_to_put(target, repo_id, filename)
    )


# ---------------------------------------------------------------------------- checksum
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
VERIFIED_CACHE_FILE = "verified_sha256.json"
_VERIFIED_MAX = 32  # entries kept in the cache file (one per checkpoint file version)
_verified_here: dict[tuple, str] = {}  # this process: file version -> verified digest


def checksum_sidecar(path: str | Path) -> Path:
    """``<checkpoint>.sha256`` beside the checkpoint (``sha256sum`` format)."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def expected_sha256(path: str | Path, sha256: str | None = None) -> tuple[str, str] | None:
    """The SHA-256 the checkpoint must have and where it was given: ``sha256`` when set,
    else the ``<checkpoint>.sha256`` file beside it; None when neither exists.

    The side file is what ``sha256sum scal3r.pt > scal3r.pt.sha256`` writes: one line
    ``<64 hex digits>  <name>``; with several lines the one naming the checkpoint is used.
    """
    path = Path(path)
    if sha256 is not None and sha256.strip():
        digest = sha256.strip().lower()
        if not _SHA256.fullmatch(digest):
            raise CheckpointError(
                f"{path}: checkpoint SHA-256 {sha256!r} is not a SHA-256 digest (64 hex digits)"
            )
        return digest, "the given checksum"
    side = checksum_sidecar(path)
    if not side.is_file():
        return None
    try:
        text = side.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{side}: cannot read the checksum file: {e}") from None
    lines = []
    for line in text.splitlines():
        parts = line.strip().split(maxsplit=1)
        if not parts or parts[0].startswith("#"):
            continue
        if not _SHA256.fullmatch(parts[0]):
            raise CheckpointError(
                f"{side}: not in sha256sum format (expected '<64 hex digits>  {path.name}', "
                f"got {line.strip()[:80]!r})"
            )
        name = parts[1].strip().lstrip("*") if len(parts) > 1 else ""
        lines.append((parts[0].lower(), name))
    if len(lines) == 1:  # the side file belongs to its checkpoint by its own name
        return lines[0][0], str(side)
    named = {d for d, n in lines if Path(n).name == path.name}
    if len(named) != 1:
        raise CheckpointError(
            f"{side}: {'no line' if not named else 'several different lines'} for "
            f"{path.name} (sha256sum format: '<64 hex digits>  {path.name}')"
        )
    return named.pop(), str(side)


def _file_version(path: Path) -> tuple[str, dict[str, int]]:
    st = path.stat()
    version = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "dev": st.st_dev}
    return str(path.resolve()), version


def _read_verified(cache: Path) -> dict:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_verified(cache: Path, entries: dict) -> None:
    """Best effort, atomic (temp file + rename): a read-only cache only costs a rehash."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{cache.name}.", dir=cache.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entries, f, indent=1)
            os.replace(tmp, cache)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass


def verify_checksum(
    path: str | Path, sha256: str | None = None, *, cache_dir: str | Path | None = None
) -> str | None:
    """Check the checkpoint's SHA-256 (see :func:`expected_sha256`); returns the verified
    digest, or None when no checksum is given. Raises :class:`CheckpointError` on a
    mismatch.

    Hashing 5 GB takes tens of seconds, so a file is hashed once per version: a verified
    (resolved path, size, mtime_ns, inode, device) is remembered in
    ``<cache>/verified_sha256.json`` (``<cache>``: ``cache_dir``, ``$SCAL3R_ROS_CACHE`` or
    ``~/.cache/scal3r_ros``) and in memory; rewriting or touching the file rehashes it.
    This guards against truncated or swapped downloads, not against someone who can
    write both the checkpoint and the user's cache.
    """
    path = Path(path)
    expected = expected_sha256(path, sha256)
    if expected is None:
        return None
    digest, source = expected
    real, version = _file_version(path)
    here = (real, *version.values())
    if _verified_here.get(here) == digest:
        return digest
    cache = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / (
        VERIFIED_CACHE_FILE
    )
    entries = _read_verified(cache)
    if entries.get(real) == {**version, "sha256": digest}:
        _verified_here[here] = digest
        return digest
    try:
        with open(path, "rb") as f:
            got = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise CheckpointError(
            f"{path}: cannot read the checkpoint to check its SHA-256: {e}"
        ) from None
    if got != digest:
        raise CheckpointError(
            f"{path}: SHA-256 mismatch: the file's is {got}, {source} says {digest}. The file "
            f"is incomplete, corrupt or another checkpoint: download it again (or fix the "
            f"checksum)"
        )
    _verified_here[here] = digest
    entries.pop(real, None)
    entries[real] = {**version, "sha256": digest}
    while len(entries) > _VERIFIED_MAX:  # oldest first (insertion order)
        entries.pop(next(iter(entries)))
    _write_verified(cache, entries)
    return digest


# ---------------------------------------------------------------------------- reading
def _first(items, n: int = _MAX_LISTED) -> str:
    items = list(items)
    s = ", ".join(items[:n])
    return s + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _torch_load(path: Path) -> tuple[object, bool]:
    """``(object, memory-mapped?)``."""
    if _records_checked(path):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True), True
        except RuntimeError as e:
            # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(e) and "zipfile" not in str(e).lower():
                raise
    # torch's copying reader checks every record's size itself
    return torch.load(path, map_location="cpu", weights_only=True), False


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MADV_DONTNEED = 4  # Linux


def _release_pages(t: Tensor) -> None:
    """Drop the resident pages of a memory-mapped checkpoint tensor once it has been copied.

    Why: pages of a file mapping that were read count in the process RSS until the whole
    mapping goes, i.e. after the last tensor of the file; streaming a 5 GB checkpoint to a GPU
    would otherwise hold all of it. The mapping is private and never written, so dropping its
    pages loses nothing (a later read fetches them from the file again). Only whole pages
    inside the tensor's bytes are dropped. Best effort: a no-op off Linux.
    """
    if not sys.platform.startswith("linux") or t.device.type != "cpu":
        return
    storage = t.untyped_storage()
    start = -(-storage.data_ptr() // _PAGE) * _PAGE
    end = (storage.data_ptr() + storage.nbytes()) // _PAGE * _PAGE
    if end > start:
        _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return _LIBC


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length


@dataclass(frozen=True)
class _StorageRef:
    key: str
    nbytes: int
    itemsize: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple

    def nbytes_needed(self) -> int:
        """Bytes of the storage up to this tensor's last element (0 when empty)."""
        if not all(d > 0 for d in self.size):
            return 0
        last = self.offset + sum((d - 1) * st for d, st in zip(self.size, self.stride, strict=True))
        return (last + 1) * self.storage.itemsize


class _Opaque:
    """Stands for every object of the pickle other than tensors and dicts; runs no code."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __call__(self, *args, **kwargs) -> _Opaque:
        return _Opaque()

    def __setstate__(self, state) -> None:
        pass

    def __setitem__(self, key, value) -> None:
        pass

    def append(self, value) -> None:
        pass

    def extend(self, values) -> None:
        pass


class _Dict(dict):
    """``collections.OrderedDict`` of the pickle (a state dict carries ``_metadata``)."""

    def __setstate__(self, state) -> None:
        pass


def _tensor_ref(storage, offset, size, stride, *rest) -> _TensorRef | _Opaque:
    try:
        t = _TensorRef(storage, int(offset), tuple(map(int, size)), tuple(map(int, stride)))
    except (TypeError, ValueError):
        return _Opaque()  # torch's loader refuses it with its own message
    ok = isinstance(storage, _StorageRef) and len(t.size) == len(t.stride)
    return t if ok else _Opaque()


class _StorageScan(pickle.Unpickler):
    """Reads a checkpoint's ``data.pkl`` for its storages only: which record each tensor
    uses and how many bytes the pickle says that record holds. ``find_class`` hands out
    nothing but inert stand-ins, so no code from the file can run."""

    def __init__(self, file) -> None:
        super().__init__(file)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return _Dict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _tensor_ref
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, *rest: data
        if module == "torch" and name.endswith("Storage") and name.isidentifier():
            return ("storage_type", name)
        return _Opaque

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, stype, key, _location, numel = pid
        if not (isinstance(stype, tuple) and stype[0] == "storage_type"):
            raise pickle.UnpicklingError(f"unexpected storage type {stype!r:.80}")
        if stype[1] == "UntypedStorage":
            itemsize = 1
        else:
            with warnings.catch_warnings():  # TypedStorage deprecation
                warnings.simplefilter("ignore")
                itemsize = getattr(torch, stype[1]).dtype.itemsize
        ref = _StorageRef(str(key), int(numel) * itemsize, itemsize)
        self.storages[ref.key] = ref
        return ref


def _named_refs(obj, prefix: str = ""):
    """``(dotted name, _TensorRef)`` for every tensor in the scanned pickle."""
    if isinstance(obj, _TensorRef):
        yield prefix or "<top level>", obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _named_refs(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _named_refs(v, f"{prefix}.{i}" if prefix else str(i))


def _records_checked(path: Path) -> bool:
    """Check every tensor's storage record before the file is memory-mapped.

    Why: ``torch.load(mmap=True)`` slices each storage out of the mapped file at its
    record's offset with the size the pickle asks for, without looking at the record's
    size; a shortened record then reads the next records' bytes as weights (a file with
    253 of 343 tensors garbage "loaded"). Here the pickle is scanned for its storages
    (:class:`_StorageScan`: no data, no code) and compared with the zip's entries: each
    storage's record must exist, be stored uncompressed, lie inside the file and hold
    exactly the bytes the pickle gives it, and each tensor must fit in its storage.
    Raises :class:`CheckpointError` naming the first bad tensors.

    Returns False when the records cannot be checked this way (not a zip file, a
    compressed record, a pickle the scan does not understand): the caller then reads
    the file with torch's copying loader, which checks the sizes itself.
    """
    if not zipfile.is_zipfile(path):
        return False
    size = path.stat().st_size
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        infos = {i.filename: i for i in zf.infolist()}
        pkl = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            return False
        prefix = pkl[0][: -len("data.pkl")]
        try:
            scan = _StorageScan(zf.open(pkl[0]))
            obj = scan.load()
        except Exception:  # torch's own loader reports a bad pickle in its words
            return False
        bad: list[str] = []
        users: dict[str, list[str]] = {}
        for name, t in _named_refs(obj):
            users.setdefault(t.storage.key, []).append(name)
            if t.nbytes_needed() > t.storage.nbytes:
                bad.append(f"{name}: extends past its storage ({t.storage.nbytes} bytes)")
        for key, ref in scan.storages.items():
            who = ", ".join(users.get(key, [])[:2]) or f"storage {key}"
            info = infos.get(f"{prefix}data/{key}")
            if info is None:
                bad.append(f"{who}: record data/{key} is missing")
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                return False
            if info.file_size != ref.nbytes:
                bad.append(
                    f"{who}: record data/{key} holds {info.file_size} bytes, "
                    f"the tensor needs {ref.nbytes}"
                )
                continue
            f.seek(info.header_offset)
            head = f.read(_LOCAL_HEADER.size)
            sig, n_name, n_extra = (
                _LOCAL_HEADER.unpack(head) if len(head) == _LOCAL_HEADER.size else (b"", 0, 0)
            )
            start = info.header_offset + _LOCAL_HEADER.size + n_name + n_extra
            if sig != b"PK\x03\x04" or start + info.file_size > size:
                bad.append(f"{who}: record data/{key} lies past the file's end (truncated)")
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} tensor(s) do not match their records (shortened or corrupt "
            f"file; download it again): {_first(bad)}"
        )
    return True


def _unwrap(obj, path: Path) -> dict[str, Tensor]:
    for _ in range(4):
        if not isinstance(obj, Mapping):
            raise CheckpointError(
                f"{path}: not a state dict (top-level object is {type(obj).__name__})"
            )
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            break
        inner = next(
            (obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping) and obj[k]), None
        )
        if inner is None:
            tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
            if tensors and len(tensors) >= len(obj) // 2:
                obj = tensors
                break
            raise CheckpointError(
                f"{path}: no state dict found (top-level keys: {_first(map(str, obj.keys()))})"
            )
        obj = inner
    if not obj:
        raise CheckpointError(f"{path}: empty state dict")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not named tensors: {_first(bad)}")
    return dict(obj)


def _strip_prefixes(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    roots = SCAL3R_ROOTS + tuple(VGGT_KEY_MAP) + VGGT_DROPPED
    for _ in range(3):
        if any(k.startswith(roots) for k in sd):
            break
        pref = next((p for p in _PREFIXES if all(k.startswith(p) for k in sd)), None)
        if pref is None:
            break
        sd = {k[len(pref) :]: v for k, v in sd.items()}
    return sd


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file safely -> flat ``{name: tensor}`` (wrappers/prefixes removed)."""
    return _read_state_dict(path)[0]


def _read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], bool]:
    """:func:`read_state_dict` and whether its tensors are mapped from the file."""
    path = Path(path)
    mapped = False
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError as e:
                raise CheckpointError(
                    f"{path}: reading .safetensors needs the safetensors package"
                ) from e
            obj = load_file(str(path), device="cpu")
        else:
            obj, mapped = _torch_load(path)
    except CheckpointError:
        raise
    except (
        RuntimeError,
        OSError,
        EOFError,
        ValueError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        KeyError,
        AttributeError,
        TypeError,
        ImportError,
    ) as e:
        raise CheckpointError(f"{path}: {_read_failure(e)}") from None
    except Exception as e:  # e.g. safetensors' SafetensorError
        raise CheckpointError(f"{path}: {_read_failure(e)}") from None
    return _strip_prefixes(_unwrap(obj, path)), mapped


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
_PICKLE_DETAIL = re.compile(r"WeightsUnpickler error:\s*(.*?)\s*(?:\n\n|$)", re.S)


def _read_failure(e: BaseException) -> str:
    """Why a checkpoint could not be read, in our words.

    torch's own message for a file its safe loader refuses advises re-running with
    ``weights_only=False`` or allow-listing the offending class; both would execute code
    from an unknown file, so that advice is never passed on: only what the file holds.
    """
    text = _ANSI.sub("", str(e)).strip()
    if "weights_only" in text or "WeightsUnpickler" in text:
        unsafe = _UNSAFE_GLOBAL.search(text)
        if unsafe:
            return (
                f"cannot read checkpoint: it holds pickled Python objects ({unsafe.group(1)}), "
                "not only tensors, and is refused because loading those could run code from "
                "the file. A Scal3R checkpoint is a plain state dict of tensors: download "
                f"{DEFAULT_FILENAME} again from {DEFAULT_REPO_ID}"
            )
        detail = _PICKLE_DETAIL.search(text)
        why = detail.group(1).splitlines()[0] if detail and detail.group(1) else ""
        why = why.split(" Please ")[0].strip()  # drop any allow-listing advice
        return (
            "cannot read checkpoint: not a PyTorch checkpoint, or truncated or corrupt "
            f"(unpickling stopped{': ' + why if why else ''})"
        )
    first = text.splitlines()[0] if text else ""
    if len(first) > 160:  # e.g. miniz's paragraph: its first sentence says it
        first = first.split(". ")[0] + "."
    return f"cannot read checkpoint (truncated or corrupt?): {type(e).__name__}: {first}"


def detect_format(sd: Mapping[str, Tensor]) -> str:
    """``"scal3r"`` or ``"vggt"`` from the key prefixes (``"unknown"`` otherwise)."""
    if any(k.startswith(SCAL3R_ROOTS) for k in sd):
        return "scal3r"
    if any(k.startswith(tuple(VGGT_KEY_MAP)) for k in sd):
        return "vggt"
    return "unknown"


def convert_vggt_state_dict(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename VGGT-1B keys to Scal3R keys; returns ``(renamed, dropped_keys)``."""
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    for k, v in sd.items():
        for old, new in VGGT_KEY_MAP.items():
            if k.startswith(old):
                out[new + k[len(old) :]] = v
                break
        else:
            dropped.append(k)
    return out, dropped


# ---------------------------------------------------------------------------- matching
def _is_gcm_key(k: str) -> bool:
    return ".ttt." in k and k.startswith("agg_regator.global_blocks.")


def _check(
    path: Path,
    sd: dict[str, Tensor],
    expected: Mapping[str, Tensor],
    fmt: str,
    strict_dtype: bool,
    dropped: list[str],
    cast_now: bool = True,
) -> tuple[dict[str, Tensor], list[str], list[str]]:
    missing = [k for k in expected if k not in sd]
    left_at_init: list[str] = []
    if fmt == "vggt":
        left_at_init = [k for k in missing if _is_gcm_key(k)]
        missing = [k for k in missing if not _is_gcm_key(k)]
    unexpected = [k for k in sd if k not in expected]
    shapes, dtypes, cast = [], [], []
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if k not in expected:
            continue
        ref = expected[k]
        if tuple(v.shape) != tuple(ref.shape):
            shapes.append(f"{k}: file {tuple(v.shape)} vs model {tuple(ref.shape)}")
            continue
        if v.dtype != ref.dtype:
            if strict_dtype or not (v.is_floating_point() and ref.is_floating_point()):
                dtypes.append(f"{k}: file {v.dtype} vs model {ref.dtype}")
                continue
            cast.append(k)
            if cast_now:
                v = v.to(ref.dtype)
        out[k] = v
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_first(shapes)}")
    if dtypes:
        problems.append(f"{len(dtypes)} dtype mismatch(es): {_first(dtypes)}")
    if problems:
        raise CheckpointError(
            f"{path}: checkpoint ({fmt} format, {len(sd) + len(dropped)} tensors) does not match "
            f"the model ({len(expected)} tensors): " + "; ".join(problems)
        )
    return out, left_at_init, cast


def load_checkpoint(
    model: nn.Module,
    path: str | Path | None = None,
    *,
    format: str = "auto",
    download: bool | None = None,
    cache_dir: str | Path | None = None,
    strict_dtype: bool = False,
    assign: bool = False,
    zero_gcm: bool = False,
    sha256: str | None = None,
) -> LoadReport:
    """Load a Scal3R or VGGT-1B checkpoint into ``model`` (a :class:`Scal3R`).

    ``format``: ``"auto"`` (from the keys), ``"scal3r"`` or ``"vggt"``. Scal3R checkpoints must
    match exactly; VGGT ones may only lack the GCM tensors. ``assign=True`` adopts the file's
    tensors (cast to the model dtype) instead of copying (use with a meta-device model).
    ``zero_gcm=True`` (VGGT only) zeroes the GCM output projections of the layers left at init,
    making them no-ops. ``sha256`` (or a ``<checkpoint>.sha256`` beside the file) is
    checked first, see :func:`verify_checksum`.
    """
    path = resolve_checkpoint(path, download=download, cache_dir=cache_dir)
    digest = verify_checksum(path, sha256, cache_dir=cache_dir)
    sd = read_state_dict(path)
    fmt = detect_format(sd) if format == "auto" else format
    if fmt not in ("scal3r", "vggt"):
        raise CheckpointError(
            f"{path}: unknown checkpoint layout (keys start with neither Scal3R nor VGGT module "
            f"names; first keys: {_first(sd)})"
        )
    dropped: list[str] = []
    if fmt == "vggt":
        sd, dropped = convert_vggt_state_dict(sd)
    expected = model.state_dict(keep_vars=True)
    sd, left_at_init, cast = _check(path, sd, expected, fmt, strict_dtype, dropped)
    if left_at_init and any(expected[k].is_meta for k in left_at_init):
        raise CheckpointError(
            f"{path}: VGGT checkpoints leave the GCM layers at init; build the model on a real "
            f"device (not meta) before loading"
        )
    try:
        result = model.load_state_dict(sd, strict=(fmt == "scal3r"), assign=assign)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: load_state_dict failed: {e}") from e
    if fmt == "vggt" and (result.missing_keys != left_at_init or result.unexpected_keys):
        raise CheckpointError(f"{path}: unexpected key mismatch after conversion: {result}")
    if zero_gcm and left_at_init:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k in left_at_init:
                if ".ttt.proj." in k:
                    params[k].zero_()
    return LoadReport(
        path=path,
        format=fmt,
        loaded=len(sd),
        left_at_init=left_at_init,
        dropped=dropped,
        cast=cast,
        sha256=digest,
    )


def load_scal3r(
    path: str | Path | None = None,
    cfg="scal3r-1b",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    download: bool | None = None,
    cache_dir: str | Path | None = None,
    format: str = "auto",
    zero_gcm: bool = False,
    sha256: str | None = None,
    heads: Sequence[str] | None = None,
    autocast_dtype: torch.dtype | None = None,
):
    """Build :class:`Scal3R` for ``cfg`` and load a checkpoint into it; returns ``(model,
    report)`` with the model in eval mode on ``device``.

    ``heads`` (names from ``HEADS``; None: all) keeps only those heads: the others are neither
    read from the file nor built. ``autocast_dtype`` (e.g. ``torch.bfloat16``: the model will
    only run under that autocast) stores the trunk weights autocast casts anyway in that dtype
    (:meth:`Scal3R.hold_autocast_weights`).

    Scal3R checkpoints are built on the meta device (no random initialisation) and streamed
    onto ``device`` tensor by tensor from the memory-mapped file: each tensor is copied (and
    cast) on its own and its pages of the file are released after the copy, so host memory
    never holds a copy of the whole model when the device is a GPU (on the CPU, tensors that
    need no cast stay mapped from the file and are paged in when used). VGGT checkpoints need
    the GCM layers' random init, so that model is built on the CPU first.
    """
    from .scal3r import Scal3R, autocast_weight_names

    path = resolve_checkpoint(path, download=download, cache_dir=cache_dir)
    verify_checksum(path, sha256, cache_dir=cache_dir)  # before reading anything of it
    if format != "auto" and format != "scal3r":
        fmt = format
    else:
        sd, mapped = _read_state_dict(path)
        fmt = detect_format(sd) if format == "auto" else format
    if fmt != "scal3r":
        model = Scal3R(cfg)
        report = load_checkpoint(
            model, path, format=fmt, zero_gcm=zero_gcm, sha256=sha256, cache_dir=cache_dir
        )
        if heads is not None:
            model.drop_heads(heads)
        if autocast_dtype is not None:
            model.hold_autocast_weights(autocast_dtype)
        model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
        return model.eval(), report

    with torch.device("meta"):
        model = Scal3R(cfg)
    sd, _, cast = _check(
        path, sd, model.state_dict(keep_vars=True), "scal3r", False, [], cast_now=False
    )
    if heads is not None:
        model.drop_heads(heads)
    wanted = model.state_dict(keep_vars=True)
    low = set(autocast_weight_names(model)) if autocast_dtype is not None else set()
    dev = torch.device(device)
    on_device: dict[str, Tensor] = {}
    for name in list(sd):
        src = sd.pop(name)  # no reference is left behind: the mapping can go at the end
        if name not in wanted:
            continue
        target = autocast_dtype if name in low else (dtype or wanted[name].dtype)
        t = src.to(device=dev, dtype=target)
        if mapped and t.untyped_storage().data_ptr() != src.untyped_storage().data_ptr():
            _release_pages(src)
        on_device[name] = t
        del src, t
    try:
        model.load_state_dict(on_device, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: load_state_dict failed: {e}") from e
    del on_device
    model.agg_regator.reset_buffers(dev)
    if autocast_dtype is not None:
        model.hold_autocast_weights(autocast_dtype)  # records the dtype; nothing left to cast
    digest = verify_checksum(path, sha256, cache_dir=cache_dir)
    report = LoadReport(path=path, format="scal3r", loaded=len(wanted), cast=cast, sha256=digest)
    return model.eval(), report
