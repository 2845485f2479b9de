"""Where backups are stored: an S3-compatible object store or a directory (e.g. a PVC).

Both keep one guarantee the catalogue (`manifest`) builds on: an object is visible (listed, readable) only once it
is complete. S3 gets it from multipart uploads, which create the object only on CompleteMultipartUpload (an
aborted or abandoned upload never shows as an object); a directory from writing a hidden temporary file, syncing
it and renaming it into place. Uploads stream: at most `PARTS_IN_FLIGHT` + 1 parts (`PART_SIZE`) are held in
memory, nothing is written to local disk.

Keys are relative to the store's prefix, ``/``-separated, without empty, ``.`` or ``..`` segments.
"""

from __future__ import annotations

import logging
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..crd.backup import BackupStorageSpec

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

PART_SIZE = 16 * 1024 * 1024
"""Bytes of one multipart part (S3 asks for at least 5 MiB but for the last; 10,000 parts at most: 160 GiB)."""
PARTS_IN_FLIGHT = 4
"""Parts sent at once: one part at a time left the upload waiting on each request's round trip and the store's
write while the dump and the compression stood still (0.34 of the dump tool's rate, against 0.5 for a directory)."""
READ_CHUNK = 1024 * 1024
S3_ERRORS = (BotoCoreError, ClientError)
Progress = Callable[[int], None]
"""Told the bytes stored so far, after each part."""


class StorageError(RuntimeError):
    """The store refused or failed an operation; the message is one readable line."""


def check_key(key: str) -> str:
    """``key`` unchanged if it is a relative ``/``-separated key with no empty, ``.`` or ``..`` segment (so a
    filesystem store never leaves its directory), else ValueError."""
    parts = key.split("/")
    if not key or any(part in ("", ".", "..") for part in parts) or any(part.startswith(".") for part in parts):
        raise ValueError(f"not a storage key: {key!r}")
    return key


def _parts(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The bytes of ``chunks`` regrouped into blocks of ``size`` (the last one shorter, possibly empty when there
    were no bytes at all)."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    yield bytes(buffer)


class Store(ABC):
    """A place holding complete objects under keys."""

    @abstractmethod
    def upload(self, key: str, chunks: Iterable[bytes], progress: Progress | None = None) -> int:
        """Store the bytes of ``chunks`` under ``key`` and return their count. The object becomes visible only
        when ``chunks`` is exhausted and every byte is stored; if ``chunks`` or the store raises, nothing is
        visible under ``key`` (a previous object there stays) and the exception propagates."""

    def put(self, key: str, data: bytes) -> None:
        """Store a small object (e.g. a manifest) whole."""
        self.upload(key, [data])

    @abstractmethod
    def read(self, key: str) -> Iterator[bytes]:
        """The object's bytes in chunks; StorageError when it does not exist."""

    def get(self, key: str) -> bytes:
        return b"".join(self.read(key))

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """The keys of the complete objects starting with ``prefix``, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object (nothing happens when it does not exist)."""

    @abstractmethod
    def describe(self) -> str:
        """Where the objects are, for messages (never with credentials)."""


@dataclass(frozen=True)
class S3Settings:
    """An S3-compatible store, credentials resolved."""

    endpoint: str
    """``https://host:port`` (or ``http://`` for a store on loopback)."""
    bucket: str
    prefix: str = ""
    region: str = "us-east-1"
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    ca_file: str | None = None
    """PEM file of the CA the endpoint's certificate is verified with; None: the system's CAs."""
    connect_timeout: float = 5
    read_timeout: float = 30
    attempts: int = 3
    """Tries of each request (botocore's standard retry mode: throttling and transient errors)."""


class S3Store(Store):
    """Objects in a bucket of an S3-compatible store, under a prefix."""

    def __init__(
        self, settings: S3Settings, part_size: int = PART_SIZE, parts_in_flight: int = PARTS_IN_FLIGHT
    ) -> None:
        self.settings = settings
        self.part_size = part_size
        self.parts_in_flight = parts_in_flight
        self._prefix = settings.prefix.strip("/") + "/" if settings.prefix.strip("/") else ""
        self.client: S3Client = boto3.client(
            "s3",
            endpoint_url=settings.endpoint,
            region_name=settings.region,
            aws_access_key_id=settings.access_key_id or None,
            aws_secret_access_key=settings.secret_access_key or None,
            verify=settings.ca_file if settings.ca_file else True,
            config=Config(
                # Path-style addressing: self-hosted stores rarely resolve bucket names as host names.
                s3={"addressing_style": "path"},
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                retries={"max_attempts": settings.attempts, "mode": "standard"},
                # Checksums only when the operation requires them: not every S3-compatible store accepts the
                # trailing CRC32 checksums botocore sends by default since 1.36.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def describe(self) -> str:
        return f"s3 {self.settings.endpoint}/{self.settings.bucket}/{self._prefix}"

    def _key(self, key: str) -> str:
        return self._prefix + check_key(key)

    def upload(self, key: str, chunks: Iterable[bytes], progress: Progress | None = None) -> int:
        name = self._key(key)
        bucket = self.settings.bucket
        try:
            upload_id = self.client.create_multipart_upload(Bucket=bucket, Key=name)["UploadId"]
        except S3_ERRORS as exc:
            raise StorageError(f"{self.describe()}: cannot start the upload of {key}: {exc}") from exc
        parts: list[CompletedPartTypeDef] = []
        stored = 0
        sending: dict[Future[CompletedPartTypeDef], int] = {}

        def send(number: int, part: bytes) -> CompletedPartTypeDef:
            answer = self.client.upload_part(Bucket=bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=part)
            return {"ETag": answer["ETag"], "PartNumber": number}

        def collect(when: str) -> None:
            nonlocal stored
            done, _ = wait(sending, return_when=when)
            for future in done:
                parts.append(future.result())
                stored += sending.pop(future)
                if progress is not None:
                    progress(stored)

        pool = ThreadPoolExecutor(self.parts_in_flight, thread_name_prefix="s3-upload")
        try:
            for number, part in enumerate(_parts(chunks, self.part_size), start=1):
                if not part and number > 1:
                    break
                if len(sending) >= self.parts_in_flight:
                    collect(FIRST_COMPLETED)
                sending[pool.submit(send, number, part)] = len(part)
            collect(ALL_COMPLETED)
            parts.sort(key=lambda p: p["PartNumber"])
            self.client.complete_multipart_upload(
                Bucket=bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except S3_ERRORS as exc:
            self._abandon(pool, name, upload_id)
            raise StorageError(f"{self.describe()}: upload of {key} failed: {exc}") from exc
        except BaseException:
            self._abandon(pool, name, upload_id)
            raise
        pool.shutdown()
        return stored

    def _abandon(self, pool: ThreadPoolExecutor, name: str, upload_id: str) -> None:
        """Abort the upload once no part is being sent any more (a part sent after the abort would linger)."""
        pool.shutdown(cancel_futures=True)
        self._abort(name, upload_id)

    def _abort(self, name: str, upload_id: str) -> None:
        """Free the parts of an abandoned upload; when the store is unreachable they stay (invisible) until its
        lifecycle rules remove incomplete uploads."""
        try:
            self.client.abort_multipart_upload(Bucket=self.settings.bucket, Key=name, UploadId=upload_id)
        except S3_ERRORS as exc:
            log.warning("%s: could not abort the upload of %s: %s", self.describe(), name, exc)

    def read(self, key: str) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.settings.bucket, Key=self._key(key))["Body"]
        except S3_ERRORS as exc:
            raise StorageError(f"{self.describe()}: cannot read {key}: {exc}") from exc
        with body:
            yield from body.iter_chunks(READ_CHUNK)

    def list(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.settings.bucket, Prefix=self._prefix + prefix
            )
            for page in pages:
                keys += [item["Key"][len(self._prefix) :] for item in page.get("Contents", [])]
        except S3_ERRORS as exc:
            raise StorageError(f"{self.describe()}: cannot list {prefix!r}: {exc}") from exc
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.settings.bucket, Key=self._key(key))
        except S3_ERRORS as exc:
            raise StorageError(f"{self.describe()}: cannot delete {key}: {exc}") from exc


class FilesystemStore(Store):
    """Objects as files under a directory (created when missing). Files and directories whose name starts with a
    dot are not objects: uploads in progress live there."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"directory {self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def upload(self, key: str, chunks: Iterable[bytes], progress: Progress | None = None) -> int:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
        stored = 0
        try:
            with partial.open("wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    stored += len(chunk)
                    if progress is not None:
                        progress(stored)
                out.flush()
                os.fsync(out.fileno())
            # The rename is what makes the object visible: after the data is on disk, and synced itself.
            partial.replace(path)
            _fsync_directory(path.parent)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return stored

    def read(self, key: str) -> Iterator[bytes]:
        try:
            file = self._path(key).open("rb")
        except OSError as exc:
            raise StorageError(f"{self.describe()}: cannot read {key}: {exc}") from exc
        with file:
            while chunk := file.read(READ_CHUNK):
                yield chunk

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        keys = []
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            relative = Path(folder).relative_to(self.root)
            for name in files:
                key = (relative / name).as_posix().removeprefix("./")
                if not name.startswith(".") and key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_store(
    spec: BackupStorageSpec,
    *,
    access_key_id: str = "",
    secret_access_key: str = "",
    ca_file: str | None = None,
) -> Store:
    """The store a storage spec names, with the credentials and CA file its Secrets hold."""
    if spec.s3 is not None:
        return S3Store(
            S3Settings(
                endpoint=spec.s3.endpoint,
                bucket=spec.s3.bucket,
                prefix=spec.s3.prefix,
                region=spec.s3.region,
                access_key_id=access_key_id,
                secret_access_key=secret_access_key,
                ca_file=ca_file,
            )
        )
    if spec.filesystem is not None:
        return FilesystemStore(Path(spec.filesystem.path))
    raise ValueError("the storage spec names neither s3 nor filesystem")
