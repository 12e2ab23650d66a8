"""Object-store backends of the storage layer: ``s3://`` and ``gs://`` over pyarrow's
filesystems (pyarrow is already the project's Parquet library; benchmarks/README.md
has the measured comparison that chose it).

Configuration comes from the environment, as each service's own clients read it:

- ``s3://``: credentials by the AWS chain (``AWS_ACCESS_KEY_ID`` and
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, the shared credentials file, web identity,
  container or instance roles); ``AWS_REGION``/``AWS_DEFAULT_REGION``;
  ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for an S3-compatible server.
- ``gs://``: Google's application default credentials (``GOOGLE_APPLICATION_CREDENTIALS``,
  gcloud's file, the metadata server); ``STORAGE_EMULATOR_HOST`` for an emulator
  (anonymous, as Google's clients do there).
- ``VLCURATE_STORE_RETRY_SECONDS`` (default 60): how long a request is retried before
  the store counts as unreachable.

Commits: a written object appears whole or not at all. :meth:`open_write` uploads
only when its block ends without an error, in one upload that the store makes visible
when complete, so a failed or killed writer leaves nothing. There is no rename: a
version is built under its final prefix and is complete exactly when its manifest
exists (see ``vlcurate.pipelines.build``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import IO, Callable, Iterator

import pyarrow.fs as pafs

from vlcurate.io import storage
from vlcurate.io.storage import Backend, FileInfo

_SPOOL_BYTES = 64 << 20  # larger files spill to a temporary file


def _retry_seconds() -> float:
    return float(os.environ.get("VLCURATE_STORE_RETRY_SECONDS", "60"))


def _s3_credentials_problem() -> str | None:
    """Why the AWS chain cannot find credentials, judged from the environment alone
    (None: it may; an instance role is only known by asking the metadata service,
    which ``AWS_EC2_METADATA_DISABLED=true`` turns off)."""
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and not env.get("AWS_SECRET_ACCESS_KEY"):
        return "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"
    shared = Path(env.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")).expanduser()
    sources = (env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_PROFILE"), shared.is_file(),
               Path(env.get("AWS_CONFIG_FILE", "~/.aws/config")).expanduser().is_file(),
               env.get("AWS_WEB_IDENTITY_TOKEN_FILE"), env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
               env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"))
    if not any(sources) and env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        return ("no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE "
                "or a credentials file)")
    return None


def _gcs_credentials_problem() -> str | None:
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return None
    named = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if named and not Path(named).expanduser().is_file():
        return f"GOOGLE_APPLICATION_CREDENTIALS names {named}, which is not a file"
    return None


def _s3_filesystem() -> pafs.FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    options = {"endpoint_override": endpoint} if endpoint else {}
    if region:
        options["region"] = region
    attempts = max(1, int(_retry_seconds() // 10) + 1)
    return pafs.S3FileSystem(connect_timeout=min(10.0, _retry_seconds()), request_timeout=60.0,
                             retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
                             check_directory_existence_before_creation=False, **options)


def _gcs_filesystem() -> pafs.FileSystem:
    limit = timedelta(seconds=_retry_seconds())
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        scheme, _, host = emulator.rpartition("://")
        return pafs.GcsFileSystem(anonymous=True, scheme=scheme or "http", endpoint_override=host,
                                  retry_time_limit=limit)
    return pafs.GcsFileSystem(retry_time_limit=limit)


class ObjectStoreBackend(Backend):
    """A bucket store reached through a pyarrow filesystem. Directories are prefixes:
    one exists while an object lies below it."""

    def __init__(self, scheme: str, make_fs: Callable[[], pafs.FileSystem],
                 credentials_problem: Callable[[], str | None]):
        self.scheme, self._make_fs, self._credentials_problem = scheme, make_fs, credentials_problem
        self._fs: pafs.FileSystem | None = None

    @property
    def fs(self) -> pafs.FileSystem:
        if self._fs is None:  # made on first use: a worker builds its own client
            self._fs = self._make_fs()
        return self._fs

    def _key(self, loc: str) -> str:
        prefix = f"{self.scheme}://"
        if not loc.lower().startswith(prefix):
            raise ValueError(f"{loc}: not a {prefix} location")
        return loc[len(prefix):].rstrip("/")

    def _info(self, loc: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self._key(loc))

    def open_read(self, loc: str) -> IO[bytes]:
        # Random access (Parquet footers, tar members) without downloading first.
        return self.fs.open_input_file(self._key(loc))

    @contextlib.contextmanager
    def open_write(self, loc: str) -> Iterator[IO[bytes]]:
        # Spooled here first: pyarrow completes an upload whenever its stream is closed,
        # also by the garbage collector after an error, so the upload starts only once
        # the block has ended well. A writer killed during the upload leaves an
        # unfinished multipart upload (S3) or resumable session (GCS): no object.
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as buffer:
            yield buffer
            buffer.seek(0)
            with self.fs.open_output_stream(self._key(loc), compression=None, metadata={}) as out:
                shutil.copyfileobj(buffer, out, 8 << 20)

    def exists(self, loc: str) -> bool:
        return self._info(loc).type != pafs.FileType.NotFound

    def is_dir(self, loc: str) -> bool:
        return self._info(loc).type == pafs.FileType.Directory

    def size(self, loc: str) -> int:
        info = self._info(loc)
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"{loc}: no such object")
        return info.size

    def list_files(self, loc: str) -> list[FileInfo]:
        key = self._key(loc)
        if self._info(loc).type != pafs.FileType.Directory:
            return []
        found = self.fs.get_file_info(pafs.FileSelector(key, recursive=True, allow_not_found=True))
        return sorted((FileInfo(f.path[len(key) + 1:], f.size) for f in found if f.type == pafs.FileType.File),
                      key=lambda f: f.path)

    def delete(self, loc: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self._key(loc))

    def delete_tree(self, loc: str) -> None:
        key = self._key(loc)
        if "/" not in key:
            raise ValueError(f"{loc}: refusing to delete a whole bucket")
        try:
            self.fs.delete_dir(key)
        except OSError:  # GCS says "No such directory" as a plain OSError, S3 as FileNotFoundError
            if self.fs.get_file_info(key).type != pafs.FileType.NotFound:
                raise

    def move_tree(self, src: str, dst: str) -> None:
        # Copies then deletes: not atomic, so version commits never use it (a version is
        # built in place and its manifest is the commit).
        for f in self.list_files(src):
            self.fs.copy_file(self._key(storage.join(src, f.path)), self._key(storage.join(dst, f.path)))
        self.delete_tree(src)

    def write_problem(self, loc: str) -> str | None:
        problem = self._credentials_problem()
        if problem:
            return problem
        bucket = self._key(loc).split("/", 1)[0]
        try:
            info = self.fs.get_file_info(bucket)
        except OSError as e:
            text = _one_line(e)
            if any(mark in text for mark in ("ACCESS_DENIED", "AccessDenied", "403", "401", "Forbidden")):
                return f"access refused: check the credentials ({text})"
            return f"cannot reach the store ({text})"
        if info.type == pafs.FileType.NotFound:
            return f"bucket {self.scheme}://{bucket} does not exist"
        return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


def register() -> None:
    """(Re)register both backends: clients are made again on next use, from the
    environment as it is then."""
    storage.register_backend("s3", lambda: ObjectStoreBackend("s3", _s3_filesystem, _s3_credentials_problem))
    storage.register_backend("gs", lambda: ObjectStoreBackend("gs", _gcs_filesystem, _gcs_credentials_problem))


register()
