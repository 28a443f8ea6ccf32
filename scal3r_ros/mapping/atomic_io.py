"""Crash-safe, symlink-safe writing of everything the project saves.

Why: a kill during a save must leave the previous file (or save folder) intact, and a
save must never write outside the folder it was asked for, whatever someone else does to
the tree below that folder meanwhile (issue 16: a symlink planted at a temp name, or a
folder swapped for a symlink between the check and the write, put files outside).

The rule, for every file: it is written to a fresh temporary name in its final folder,
created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` relative to a descriptor of that folder
(so a planted name is refused, never followed), flushed and fsynced, renamed over the
final name (``rename`` replaces a symlink there rather than following it), and the
folder is fsynced. Two entry points:

- `atomic_write`: one file at a path (the writers' default for a plain path).
- `SaveFolder`: one save's set of files in a folder confined to a root (the node's
  ``output_dir``); see its docstring for why a whole folder is swapped in.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import stat
from collections.abc import Collection, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_RENAME_EXCHANGE = 2  # linux/fs.h


class UnsafePathError(ValueError):
    """A save path that is absolute, escapes its root or runs through a symbolic link."""


def relative_parts(name: str) -> tuple[str, ...]:
    """The components of a plain relative folder name; raises UnsafePathError for an
    absolute name, ``..``, empty or ``.`` components (nothing is resolved here: the
    file system is checked when writing, on the thread that writes)."""
    if not name or name.startswith(("/", "\\")) or "\0" in name:
        raise UnsafePathError(f"refused: {name!r} must be a plain relative name")
    parts = PurePosixPath(name).parts
    if not parts or any(p in ("", ".", "..") for p in name.split("/")):
        raise UnsafePathError(f"refused: {name!r} must be a relative name without '..'")
    return parts


def _open_dir_nofollow(name: str, dir_fd: int, create: bool) -> int:
    """Descriptor of the folder ``name`` inside ``dir_fd``; never follows a symlink."""
    for attempt in range(2):
        try:
            return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
        except FileNotFoundError:
            if not create or attempt:
                raise
            with contextlib.suppress(FileExistsError):  # made meanwhile: opened next
                os.mkdir(name, 0o777, dir_fd=dir_fd)  # mkdirat never follows a link
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            try:
                link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
            except OSError:
                link = False
            what = "a symbolic link" if link else "not a folder"
            raise UnsafePathError(f"refused: {name!r} is {what}") from None
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _atomic_in(dir_fd: int, name: str) -> Iterator[BinaryIO]:
    """Write ``name`` inside ``dir_fd`` through a fresh temp file, fsync, rename, fsync.
    Temp files of ``name`` left by killed processes are removed first."""
    stale = re.compile(rf"\.{re.escape(name)}\.(\d+)-[0-9a-f]{{8}}\.tmp")
    for entry in os.listdir(dir_fd):
        m = stale.fullmatch(entry)
        if m and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(entry, dir_fd=dir_fd)
    tmp = f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, _NEW_FILE_FLAGS, 0o666, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` only once completely written and on disk.

    Missing parent folders are created; the parent path is the caller's (symlinks in it
    are followed as for any path), but the temp file is created fresh and never
    followed, and the final name is replaced, not written through. An exception in the
    ``with`` body leaves the old file untouched and no temp file behind.
    """
    path = Path(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(parent, _DIR_FLAGS)
    try:
        with _atomic_in(dir_fd, path.name) as f:
            yield f
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def binary_output(dest: str | Path | BinaryIO) -> Iterator[BinaryIO]:
    """``dest`` as a binary file: an open file as it is (its owner makes it atomic, e.g.
    `SaveFolder.open`), a path through `atomic_write`."""
    if hasattr(dest, "write"):
        yield dest  # type: ignore[misc]
        return
    with atomic_write(dest) as f:  # type: ignore[arg-type]
        yield f


def _renameat2_exchange(dir_fd: int, a: str, b: str) -> bool:
    """Atomically swap the names ``a`` and ``b`` (Linux renameat2 RENAME_EXCHANGE);
    False where the system or file system does not offer it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(dir_fd, os.fsencode(a), dir_fd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


def _remove_flat_dir(parent_fd: int, name: str, depth: int = 1) -> None:
    """Remove a folder of plain files (a staging or replaced save folder) relative to
    ``parent_fd``, never following links; best effort (what cannot go stays). Folders
    inside it (a save's ``session/``) go too, ``depth`` levels down."""
    try:
        fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
    except OSError:
        return
    try:
        for entry in os.listdir(fd):
            try:
                os.unlink(entry, dir_fd=fd)  # a link is removed, not followed
            except IsADirectoryError:
                if depth > 0:
                    _remove_flat_dir(fd, entry, depth - 1)
            except OSError:
                pass
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(name, dir_fd=parent_fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SaveFolder:
    """One save's files, written into ``root/name`` as a whole or not at all.

    Confinement: ``root`` (the node's ``output_dir``; symlinks in its own path are the
    operator's choice and followed) is opened once; every component of ``name`` is
    opened from there with ``O_NOFOLLOW`` (created when missing) and everything after
    happens relative to those descriptors. A symlinked component is refused, and
    swapping a folder for a symlink after the walk changes nothing: the save keeps
    writing into the folder it holds open. Run this on the thread that writes.

    Consistency -- why a new folder renamed into place rather than a manifest written
    last: the files are read by tools that know nothing of a manifest (map_server, evo,
    CloudCompare), so the folder they open must itself hold one save's files. Files go
    into a fresh hidden staging folder ``.NAME.saving-PID-TOKEN`` beside the target, each
    fsynced; `commit` then swaps it with an existing ``NAME`` in one atomic step
    (``renameat2(RENAME_EXCHANGE)``), or, where the file system lacks that, renames the
    old folder aside and the new one in (a kill between the two renames leaves the old
    save complete under ``.NAME.old-PID-TOKEN``; the next save of ``NAME`` puts it back
    first). A kill at any other moment leaves either the old save or the new one. An
    existing ``NAME`` is replaced only if it holds nothing but ``replaceable`` names
    (files of earlier saves), so no file of the user's is ever removed.
    """

    def __init__(
        self, root: str | Path, name: str, replaceable: Collection[str] | None = None
    ) -> None:
        parts = relative_parts(name)
        self.root = Path(root)
        self.path = self.root.joinpath(*parts)
        self.name = parts[-1]
        self._replaceable = None if replaceable is None else frozenset(replaceable)
        self._files: list[str] = []
        self._parent = -1
        self._stage = -1
        self._stage_name = ""
        self._done = False
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts[:-1]:
                sub = _open_dir_nofollow(part, fd, create=True)
                os.close(fd)
                fd = sub
            self._parent = fd
            self._recover_stale()
            self._stage_name = f".{self.name}.saving-{os.getpid()}-{secrets.token_hex(4)}"
            os.mkdir(self._stage_name, 0o777, dir_fd=fd)
            self._stage = _open_dir_nofollow(self._stage_name, fd, create=False)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ writing
    @contextlib.contextmanager
    def open(self, filename: str) -> Iterator[BinaryIO]:
        """A new file ``filename`` in the staging folder (created, never followed)."""
        if self._done:
            raise RuntimeError("SaveFolder already committed or closed")
        if not filename or "/" in filename or filename in (".", ".."):
            raise UnsafePathError(f"refused: {filename!r} is not a plain file name")
        fd = os.open(filename, _NEW_FILE_FLAGS, 0o666, dir_fd=self._stage)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        self._files.append(filename)

    def write_bytes(self, filename: str, data: bytes) -> None:
        with self.open(filename) as f:
            f.write(data)

    @property
    def staging_path(self) -> Path:
        """The hidden staging folder (beside the target) that `commit` swaps in: a writer
        of a whole sub-folder of the save (the node's ``session/``, itself written
        atomically) writes there; it goes and comes with the save."""
        if self._done:
            raise RuntimeError("SaveFolder already committed or closed")
        return self.path.parent / self._stage_name

    # ------------------------------------------------------------ finishing
    def commit(self) -> list[Path]:
        """Put the staged folder in place of ``root/name``; the saved files' paths."""
        if self._done:
            raise RuntimeError("SaveFolder already committed or closed")
        os.fsync(self._stage)
        parent, name, stage = self._parent, self.name, self._stage_name
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is None:
            os.rename(stage, name, src_dir_fd=parent, dst_dir_fd=parent)
        else:
            self._check_replaceable(st)
            if _renameat2_exchange(parent, stage, name):
                old = stage  # the staging name now holds the old save
            else:
                old = f".{name}.old-{os.getpid()}-{secrets.token_hex(4)}"
                os.rename(name, old, src_dir_fd=parent, dst_dir_fd=parent)
                os.rename(stage, name, src_dir_fd=parent, dst_dir_fd=parent)
            os.fsync(parent)
            _remove_flat_dir(parent, old)
        os.fsync(parent)
        self._done = True
        files = [self.path / f for f in self._files]
        self.close()
        return files

    def close(self) -> None:
        """Abandon an uncommitted save (its staging folder is removed); release fds."""
        if self._stage >= 0:
            os.close(self._stage)
            self._stage = -1
        if self._parent >= 0:
            if not self._done and self._stage_name:
                _remove_flat_dir(self._parent, self._stage_name)
            os.close(self._parent)
            self._parent = -1
        self._done = True

    def __enter__(self) -> SaveFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ internals
    def _check_replaceable(self, st: os.stat_result) -> None:
        where = self.path
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePathError(f"refused: {where} is a symbolic link")
        if not stat.S_ISDIR(st.st_mode):
            raise FileExistsError(f"refused: {where} exists and is not a folder")
        if self._replaceable is None:
            return
        fd = _open_dir_nofollow(self.name, self._parent, create=False)
        try:
            foreign = sorted(
                n
                for n in os.listdir(fd)
                if n not in self._replaceable and not _TEMP_NAME.fullmatch(n)
            )
        finally:
            os.close(fd)
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise FileExistsError(
                f"refused: {where} holds files that are not from a save ({shown}); "
                "a save replaces its whole folder: choose another name"
            )

    def _recover_stale(self) -> None:
        """Leftovers of a save of the same name killed by a dead process: staging folders
        are removed; an old save renamed aside is put back if ``name`` is missing (the
        kill came between the two renames of `commit`), removed otherwise."""
        pattern = re.compile(rf"\.{re.escape(self.name)}\.(saving|old)-(\d+)-[0-9a-f]+")
        for entry in os.listdir(self._parent):
            m = pattern.fullmatch(entry)
            if not m or _pid_alive(int(m.group(2))):
                continue
            if m.group(1) == "old":
                try:
                    os.stat(self.name, dir_fd=self._parent, follow_symlinks=False)
                except FileNotFoundError:
                    os.rename(entry, self.name, src_dir_fd=self._parent, dst_dir_fd=self._parent)
                    continue
            _remove_flat_dir(self._parent, entry)


# temp names of `_atomic_in` and of earlier versions' writers (".map.ply.tmp")
_TEMP_NAME = re.compile(r"\..+\.tmp")
