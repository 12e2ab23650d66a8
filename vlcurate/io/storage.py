"""The storage layer: every byte a build reads or writes goes through here.

A *location* is a string: a local path (``datasets/demo/v1/samples/00000.tar``) or a
URL whose scheme names a backend (``gs://bucket/x``, ``s3://bucket/x``). The module
functions below pick the backend from the location, so code above ``io`` never opens,
lists, renames or deletes version files itself:

    from vlcurate.io import storage
    with storage.open_write(storage.join(root, "manifest.json")) as f:
        f.write(body)

Commit rules, the same on every backend:

- a file is visible only when whole: :func:`open_write` commits when its block ends
  without an error (local disk: a temporary name in the same directory, fsync, rename;
  an object store: one PUT, which appears whole or not at all) and leaves nothing
  behind otherwise;
- a marker (a shard's stats file, a version's manifest) is written after the files it
  vouches for, and a reader trusts only what a marker vouches for.

Backends register by scheme (:func:`register_backend`); the local one is built in.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import shutil
import stat
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

TMP_MARK = ".tmp-"
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


@dataclass(frozen=True)
class FileInfo:
    """One file found by :func:`list_files`: its location relative to the listed one."""

    path: str  # relative, '/'-separated
    size: int


class Backend(ABC):
    """One kind of storage. Locations passed in are full (scheme included)."""

    @abstractmethod
    def open_read(self, loc: str) -> IO[bytes]: ...

    @abstractmethod
    def open_write(self, loc: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """A writable binary file that becomes visible at ``loc`` only when the block
        ends without an error."""

    @abstractmethod
    def exists(self, loc: str) -> bool: ...

    @abstractmethod
    def is_dir(self, loc: str) -> bool: ...

    @abstractmethod
    def size(self, loc: str) -> int: ...

    @abstractmethod
    def list_files(self, loc: str) -> list[FileInfo]:
        """Every file below ``loc`` (recursively), sorted by relative path; [] if none."""

    @abstractmethod
    def delete(self, loc: str) -> None:
        """Remove one file (no error if it is already gone)."""

    @abstractmethod
    def delete_tree(self, loc: str) -> None:
        """Remove ``loc`` and everything below it (no error if absent)."""

    def move_tree(self, src: str, dst: str) -> None:
        """Make ``src``'s files appear under ``dst``. Atomic on local disk (a rename);
        elsewhere a copy then a delete, which callers make safe with a marker."""
        raise NotImplementedError(f"{type(self).__name__} cannot move {src}")

    def make_read_only(self, loc: str) -> None:
        """Protect a committed file from edits, where the backend can."""

    def write_problem(self, loc: str) -> str | None:
        """Why a file cannot be written at ``loc`` (None: it can), found without
        writing it."""
        return None

    def delete_empty_dir(self, loc: str) -> None:
        """Remove a directory if it is empty (a no-op where directories are not real)."""

    def local_path(self, loc: str) -> Path | None:
        """A path on this machine for ``loc``, for libraries that only take paths; None
        where the location is remote (the caller then reads through a file object)."""
        return None


class LocalBackend(Backend):
    """Local disk (or any mounted filesystem): atomic renames, read-only commits."""

    def open_read(self, loc: str) -> IO[bytes]:
        return open(loc, "rb")

    @contextlib.contextmanager
    def open_write(self, loc: str) -> Iterator[IO[bytes]]:
        final = Path(loc)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())  # durable before it becomes visible
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()

    def exists(self, loc: str) -> bool:
        return os.path.exists(loc)

    def is_dir(self, loc: str) -> bool:
        return os.path.isdir(loc)

    def size(self, loc: str) -> int:
        return os.stat(loc).st_size

    def list_files(self, loc: str) -> list[FileInfo]:
        found = []
        for dirpath, _, names in os.walk(loc):
            for name in names:
                full = os.path.join(dirpath, name)
                try:
                    size = os.stat(full).st_size
                except FileNotFoundError:  # renamed or removed since the walk (a commit in flight)
                    continue
                found.append(FileInfo(Path(os.path.relpath(full, loc)).as_posix(), size))
        return sorted(found, key=lambda f: f.path)

    def delete(self, loc: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(loc)

    def delete_tree(self, loc: str) -> None:
        shutil.rmtree(loc, ignore_errors=True)

    def move_tree(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def make_read_only(self, loc: str) -> None:
        mode = os.stat(loc).st_mode
        os.chmod(loc, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))

    def local_path(self, loc: str) -> Path | None:
        return Path(loc)

    def write_problem(self, loc: str) -> str | None:
        # Creating and removing an empty file in the nearest existing directory is the
        # only test that also holds for root and for /proc.
        out = Path(loc)
        if out.is_dir():
            return "is a directory"
        existing = next(p for p in out.parents if p.exists())
        if not existing.is_dir():
            return f"{existing} is not a directory"
        try:
            import tempfile

            with tempfile.NamedTemporaryFile(dir=existing, prefix=".vlcurate-", suffix=".probe"):
                pass
        except OSError as e:
            return f"cannot write in {existing} ({e.strerror or e})"
        return None

    def delete_empty_dir(self, loc: str) -> None:
        with contextlib.suppress(OSError):  # not empty, or gone: leave it
            os.rmdir(loc)


_BACKENDS: dict[str, Callable[[], Backend]] = {}
_INSTANCES: dict[str, Backend] = {}
_LOCAL = LocalBackend()


def register_backend(scheme: str, factory: Callable[[], Backend]) -> None:
    """Make ``scheme://`` locations use the backend ``factory()`` builds (once per process)."""
    _BACKENDS[scheme.lower()] = factory
    _INSTANCES.pop(scheme.lower(), None)


def scheme(loc: str | os.PathLike) -> str | None:
    m = _SCHEME.match(os.fspath(loc))
    return m.group(1).lower() if m else None


def is_remote(loc: str | os.PathLike) -> bool:
    return scheme(loc) not in (None, "file")


def backend_for(loc: str | os.PathLike) -> Backend:
    s = scheme(loc)
    if s in (None, "file"):
        return _LOCAL
    if s not in _INSTANCES:
        if s not in _BACKENDS:
            raise ValueError(f"{os.fspath(loc)}: no storage backend for {s}:// (known: local paths"
                             f"{''.join(', ' + k + '://' for k in sorted(_BACKENDS))})")
        _INSTANCES[s] = _BACKENDS[s]()
    return _INSTANCES[s]


def _loc(loc: str | os.PathLike) -> str:
    text = os.fspath(loc)
    return text[len("file://"):] if text.startswith("file://") else text


# ---- the API: locations in, bytes and file objects out ----------------------------

def join(loc: str | os.PathLike, *parts: str) -> str:
    """``loc`` joined with ``parts`` by '/', keeping a URL's scheme intact."""
    base = os.fspath(loc)
    return posixpath.join(base, *parts) if scheme(base) else os.path.join(base, *parts)


def parent(loc: str | os.PathLike) -> str:
    base = os.fspath(loc).rstrip("/")
    return posixpath.dirname(base) if scheme(base) else os.path.dirname(base)


def basename(loc: str | os.PathLike) -> str:
    return posixpath.basename(os.fspath(loc).rstrip("/"))


def open_read(loc: str | os.PathLike) -> IO[bytes]:
    return backend_for(loc).open_read(_loc(loc))


def open_write(loc: str | os.PathLike) -> contextlib.AbstractContextManager[IO[bytes]]:
    """Write a file that is visible only when whole (see the module's commit rules)."""
    return backend_for(loc).open_write(_loc(loc))


def read_bytes(loc: str | os.PathLike) -> bytes:
    with open_read(loc) as f:
        return f.read()


def write_bytes(loc: str | os.PathLike, data: bytes) -> None:
    with open_write(loc) as f:
        f.write(data)


def exists(loc: str | os.PathLike) -> bool:
    return backend_for(loc).exists(_loc(loc))


def is_dir(loc: str | os.PathLike) -> bool:
    return backend_for(loc).is_dir(_loc(loc))


def size(loc: str | os.PathLike) -> int:
    return backend_for(loc).size(_loc(loc))


def list_files(loc: str | os.PathLike) -> list[FileInfo]:
    return backend_for(loc).list_files(_loc(loc))


def delete(loc: str | os.PathLike) -> None:
    backend_for(loc).delete(_loc(loc))


def delete_tree(loc: str | os.PathLike) -> None:
    backend_for(loc).delete_tree(_loc(loc))


def move_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    if backend_for(src) is not backend_for(dst):
        raise ValueError(f"cannot move {os.fspath(src)} to another storage ({os.fspath(dst)})")
    backend_for(src).move_tree(_loc(src), _loc(dst))


def make_read_only(loc: str | os.PathLike) -> None:
    backend_for(loc).make_read_only(_loc(loc))


def write_problem(loc: str | os.PathLike) -> str | None:
    """Why a file cannot be written at ``loc`` (None: it can), found without writing it."""
    return backend_for(loc).write_problem(_loc(loc))


def delete_empty_dir(loc: str | os.PathLike) -> None:
    backend_for(loc).delete_empty_dir(_loc(loc))


def local_path(loc: str | os.PathLike) -> Path | None:
    return backend_for(loc).local_path(_loc(loc))


_LOCAL_COPIES: dict[str, Path] = {}


def local_copy(loc: str | os.PathLike) -> Path:
    """A path on this machine holding ``loc`` (a file, or a directory's files), for
    libraries that only open paths (model loaders). Local locations are returned as
    they are; a remote one is copied once per process into a temporary directory."""
    local = local_path(loc)
    if local is not None:
        return local
    key = os.fspath(loc)
    if key not in _LOCAL_COPIES:
        import tempfile

        target = Path(tempfile.mkdtemp(prefix="vlcurate-copy-")) / basename(key)
        files = [] if exists(key) and not is_dir(key) else list_files(key)
        for f in files or [FileInfo("", size(key))]:
            dest = target / f.path if f.path else target
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(read_bytes(join(key, f.path) if f.path else key))
        _LOCAL_COPIES[key] = target
    return _LOCAL_COPIES[key]


def is_tmp(loc: str | os.PathLike) -> bool:
    """A temporary file of an unfinished local write (never committed, never read)."""
    return TMP_MARK in basename(loc)


def sha256(loc: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open_read(loc) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through it, so a
    writer can record a file's sha256 and size without reading the file back."""

    def __init__(self, raw: IO[bytes]):
        self.raw, self.bytes = raw, 0
        self._sha = hashlib.sha256()

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._sha.update(view)
        self.bytes += len(view)
        return self.raw.write(view)

    def tell(self) -> int:
        return self.bytes

    def flush(self) -> None:
        self.raw.flush()

    @property
    def closed(self) -> bool:
        return self.raw.closed

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def close(self) -> None:  # the storage layer closes the underlying file on commit
        pass

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()
