"""Disk spill of past frames and loop geometry: one folder per process, bounded in bytes.

Why: the engine keeps recent frames and chunk geometry in RAM and spills older ones to
disk (loop closure reads them back). Each process used to make its own ``scal3r_*``
temporary folders; a process killed with SIGKILL left them behind (12-70 MB each,
never removed), and the spill grew without bound (~1.45 MB per frame).

Layout: ``<parent>/scal3r_ros-<uid>/<host>.<pid>.<start>/<kind>-XXXXXX/``, where
``<parent>`` is the configured spill folder or ``$TMPDIR``, and ``<start>`` the process's
start time (Linux ``/proc/<pid>/stat``; 0 elsewhere). The first spill store of a process
creates its folder and removes every sibling folder of the same host whose process is
gone: no such pid (``os.kill(pid, 0)``), or a pid now used by a process that started at
another time (pid reuse). Folders of other hosts (a ``/tmp`` shared between containers)
are left alone. The process's folder is removed at a normal exit; stores also remove
their own folders on reset.

Bound: the stores of one engine share a :class:`SpillBudget`; past its byte cap the
oldest entry (by age: frame id, or a chunk's first frame id) of any store is deleted,
except entries a store protects (frames a window still to run needs).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import stat
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "SpillBudget",
    "SpillStore",
    "process_spill_dir",
    "process_start_time",
    "remove_stale_spill_dirs",
    "spill_root",
]

_TAG = re.compile(r"^(?P<host>.+)\.(?P<pid>\d+)\.(?P<start>\d+)$")
_process_dirs: dict[tuple[int, str], Path] = {}  # (pid, parent) -> this process's folder


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and ')'; starttime is field 22
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"


def _tag(pid: int) -> str:
    return f"{_host()}.{pid}.{process_start_time(pid) or 0}"


def _running(pid: int, start: int) -> bool:
    """Whether the process that made a folder tagged ``pid``/``start`` still runs."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return True  # cannot tell: keep its folder
    now = process_start_time(pid)
    return start == 0 or now is None or now == start


def spill_root(parent: str | os.PathLike | None = None) -> Path:
    """``<parent or $TMPDIR>/scal3r_ros-<uid>``: created private (0700) when missing.

    Raises OSError when the path exists but is not a private folder of this user (a
    symlink, another owner, writable by others): its contents are never trusted."""
    base = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    uid = os.getuid() if hasattr(os, "getuid") else 0
    root = base / f"scal3r_ros-{uid}"
    base.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(root)
    if (
        not stat.S_ISDIR(st.st_mode)
        or (hasattr(os, "getuid") and st.st_uid != uid)
        or (st.st_mode & 0o022)
    ):
        raise OSError(f"{root} is not a private folder of this user; not used for spills")
    return root


def remove_stale_spill_dirs(root: Path) -> list[Path]:
    """Remove the spill folders in ``root`` whose process is gone; returns them."""
    host, removed = _host(), []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        m = _TAG.match(entry.name)
        if m is None or m["host"] != host or not entry.is_dir(follow_symlinks=False):
            continue
        pid, start = int(m["pid"]), int(m["start"])
        if pid == os.getpid() and start == (process_start_time(pid) or 0):
            continue
        if not _running(pid, start):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def _remove_at_exit(path: Path, pid: int) -> None:
    if os.getpid() == pid:  # not in a forked child that inherited the handler
        shutil.rmtree(path, ignore_errors=True)


def process_spill_dir(parent: str | os.PathLike | None = None) -> Path:
    """This process's spill folder under ``parent`` (see module doc), made once per
    process; making it first removes the folders of processes that are gone."""
    pid = os.getpid()
    key = (pid, str(parent))
    d = _process_dirs.get(key)
    if d is not None and d.is_dir():
        return d
    try:
        root = spill_root(parent)
    except OSError:  # an unusable shared root: a private folder of our own instead
        base = str(parent) if parent is not None else None
        d = Path(tempfile.mkdtemp(prefix=f"scal3r_ros-{_tag(pid)}-", dir=base))
    else:
        remove_stale_spill_dirs(root)
        d = root / _tag(pid)
        d.mkdir(mode=0o700, exist_ok=True)
    _process_dirs[key] = d
    atexit.register(_remove_at_exit, d, pid)
    return d


class SpillBudget:
    """A byte cap shared by spill stores; ``None`` means unbounded."""

    def __init__(self, max_bytes: int | None) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"spill cap must be >= 0 bytes or None, got {max_bytes}")
        self.max_bytes = max_bytes
        self.stores: list[SpillStore] = []
        self.evicted = 0  # entries deleted to stay under the cap

    @property
    def used(self) -> int:
        return sum(s.nbytes for s in self.stores)

    def enforce(self) -> None:
        """Delete the oldest evictable entries until the stores fit the cap (protected
        entries stay even when the cap cannot be met)."""
        if self.max_bytes is None:
            return
        used = self.used
        while used > self.max_bytes:
            candidates = [(s.oldest_evictable(), s) for s in self.stores]
            candidates = [(age, s) for age, s in candidates if age is not None]
            if not candidates:
                return
            _, store = min(candidates, key=lambda c: c[0])
            used -= store.evict_oldest()
            self.evicted += 1


class SpillStore:
    """Files keyed by an int in a private folder of this process's spill folder, oldest
    first. ``protect(key)`` True keeps an entry from eviction; ``on_evict(key)`` tells
    the owner an entry is gone."""

    def __init__(
        self,
        kind: str,
        parent: str | os.PathLike | None = None,
        budget: SpillBudget | None = None,
        protect: Callable[[int], bool] | None = None,
        on_evict: Callable[[int], None] | None = None,
    ) -> None:
        self.kind = kind
        self.parent = parent
        self.budget = budget
        self.protect = protect
        self.on_evict = on_evict
        self.nbytes = 0
        self._entries: OrderedDict[int, tuple[int, int, Path]] = OrderedDict()  # age, size
        self._dir: Path | None = None
        if budget is not None:
            budget.stores.append(self)

    def __contains__(self, key: int) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: int, age: int, suffix: str, write: Callable[[Path], None]) -> Path:
        """Write an entry with ``write(path)``; then enforce the budget."""
        self.discard(key)
        path = self._folder() / f"{key}{suffix}"
        try:
            write(path)
            size = path.stat().st_size
        except BaseException:  # disk full, ...: leave no partial file behind
            path.unlink(missing_ok=True)
            raise
        self._entries[key] = (age, size, path)
        self.nbytes += size
        if self.budget is not None:
            self.budget.enforce()
        return path

    def path(self, key: int) -> Path | None:
        e = self._entries.get(key)
        return None if e is None else e[2]

    def discard(self, key: int) -> int:
        """Delete an entry (no eviction callback); returns the bytes freed."""
        e = self._entries.pop(key, None)
        if e is None:
            return 0
        e[2].unlink(missing_ok=True)
        self.nbytes -= e[1]
        return e[1]

    def oldest_evictable(self) -> int | None:
        """Age of the oldest entry if it may be evicted (older entries go first, and a
        protected one protects the newer ones behind it)."""
        if not self._entries:
            return None
        key, (age, _, _) = next(iter(self._entries.items()))
        if self.protect is not None and self.protect(key):
            return None
        return age

    def evict_oldest(self) -> int:
        key = next(iter(self._entries))
        freed = self.discard(key)
        if self.on_evict is not None:
            self.on_evict(key)
        return freed

    def clear(self) -> None:
        """Forget every entry and remove the store's folder."""
        self._entries.clear()
        self.nbytes = 0
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _folder(self) -> Path:
        if self._dir is None or not self._dir.is_dir():
            base = process_spill_dir(self.parent)
            self._dir = Path(tempfile.mkdtemp(prefix=f"{self.kind}-", dir=base))
        return self._dir
