"""Object stores: the local filesystem (embedded mode) and S3/MinIO (production).

Both speak the same small interface, so every caller (DICOM ingest, workers, pages)
is indifferent to where bytes live. Keys are derived from DICOM UIDs by the callers,
so writing the same object twice is harmless.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol
from urllib.parse import quote, urlencode

from storage.errors import Invalid, NotFound, Unavailable

CHUNK = 1024 * 1024


class ObjectNotFound(NotFound):
    pass


class StoreUnavailable(Unavailable):
    pass


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes | BinaryIO, length: int | None = None,
            content_type: str = "application/octet-stream") -> None: ...
    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes: ...
    def stream(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]: ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str = "") -> Iterator[str]: ...
    def url(self, key: str, expires: timedelta, filename: str | None = None) -> str: ...
    def check(self) -> None: ...


def validate_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise Invalid(f"invalid object key: {key!r}")
    return key


def _as_bytes(data: bytes | BinaryIO) -> bytes:
    return data if isinstance(data, (bytes, bytearray, memoryview)) else data.read()


# --- filesystem -----------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback and the RFC 6266/5987 UTF-8 name; CR, LF, quotes
    and path separators never reach the header."""
    cleaned = "".join(ch for ch in filename if ch >= " " and ch not in '"\\/\x7f').strip() or "download"
    fallback = "".join(ch if ch.isascii() else "_" for ch in cleaned)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(cleaned, safe='')}"


def url_signature(secret: str, key: str, expires_at: int, filename: str = "") -> str:
    """Everything the link's answer depends on is signed: the key, the expiry and the
    download name (an unsigned name would be reflected into Content-Disposition)."""
    message = f"{key}\n{expires_at}\n{filename}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def check_url_signature(secret: str, key: str, expires_at: int, signature: str, filename: str = "") -> str:
    """"ok" for an untampered, unexpired link made by FilesystemStore.url; else "invalid" or "expired"."""
    if not hmac.compare_digest(url_signature(secret, key, expires_at, filename), signature):
        return "invalid"
    return "expired" if expires_at < time.time() else "ok"


class FilesystemStore:
    """Objects as files under root. Writes are atomic and durable: temp file, fsync, rename, fsync dir."""

    def __init__(self, root: Path, *, public_base: str, secret: str):
        self.root = Path(root)
        self.public_base = public_base.rstrip("/")
        self.secret = secret

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put(self, key, data, length=None, content_type="application/octet-stream") -> None:
        path = self._path(key)
        try:
            self._make_dirs_durably(path.parent)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as out:
                    if isinstance(data, (bytes, bytearray, memoryview)):
                        out.write(data)
                    else:
                        while chunk := data.read(CHUNK):
                            out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            _fsync_dir(path.parent)
        except OSError as exc:
            raise StoreUnavailable(f"object store write failed: {exc.strerror or exc}") from exc

    def _make_dirs_durably(self, directory: Path) -> None:
        """Create missing folders and fsync each new folder's parent, so the new entry
        survives a power cut (a rename into a folder is only durable if the folder is)."""
        if directory.is_dir():
            return
        missing = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for folder in reversed(missing):
            folder.mkdir(exist_ok=True)
            _fsync_dir(folder.parent)

    def get(self, key, offset=0, length=None) -> bytes:
        return b"".join(self.stream(key, offset, length))

    def stream(self, key, offset=0, length=None) -> Iterator[bytes]:
        path = self._path(key)
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"object {key} not found") from None
        except OSError as exc:
            raise StoreUnavailable(f"object store read failed: {exc}") from exc
        return self._chunks(handle, offset, length)

    @staticmethod
    def _chunks(handle, offset, length) -> Iterator[bytes]:
        with handle:
            handle.seek(offset)
            remaining = length
            while remaining is None or remaining > 0:
                chunk = handle.read(CHUNK if remaining is None else min(CHUNK, remaining))
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def size(self, key) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise ObjectNotFound(f"object {key} not found") from None

    def exists(self, key) -> bool:
        return self._path(key).is_file()

    def delete(self, key) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix="") -> Iterator[str]:
        if not self.root.exists():
            return
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key

    def url(self, key, expires, filename=None) -> str:
        expires_at = int(time.time() + expires.total_seconds())
        query = {"expires": expires_at,
                 "signature": url_signature(self.secret, validate_key(key), expires_at, filename or "")}
        if filename:
            query["filename"] = filename
        return f"{self.public_base}/objects/{quote(key)}?{urlencode(query)}"

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".health"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StoreUnavailable(f"object store directory not writable: {exc}") from exc


# --- S3 / MinIO -------------------------------------------------------------------------


class S3Store:
    """S3 through the minio SDK. Presigned URLs are made for the public endpoint: the host
    a browser reaches is part of the signature, and it is not the one the server uses."""

    def __init__(self, *, endpoint: str, access_key: str, secret_key: str, bucket: str,
                 region: str, secure: bool = False, public_endpoint: str = ""):
        import urllib3
        from minio import Minio

        # Fail fast when the store is down: DICOM ingest must answer "out of resources"
        # within the association timeout rather than retry for minutes.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=3, read=60),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
            maxsize=32,
        )
        self.bucket = bucket
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key,
                            secure=secure, region=region, http_client=http)
        public = public_endpoint or endpoint
        public_secure = secure
        if "://" in public:
            scheme, public = public.split("://", 1)
            public_secure = scheme == "https"
        self.signer = Minio(public.rstrip("/"), access_key=access_key, secret_key=secret_key,
                            secure=public_secure, region=region)

    def _call(self, fn, *args, **kwargs):
        from minio.error import S3Error

        try:
            return fn(*args, **kwargs)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                raise ObjectNotFound(f"object {kwargs.get('object_name', '')} not found") from None
            raise StoreUnavailable(f"object store error: {exc.code}") from exc
        except (OSError, Exception) as exc:  # urllib3 errors: store unreachable
            if isinstance(exc, (ObjectNotFound, StoreUnavailable)):
                raise
            raise StoreUnavailable(f"object store unreachable: {type(exc).__name__}") from exc

    def ensure_bucket(self) -> None:
        if not self._call(self.client.bucket_exists, bucket_name=self.bucket):
            self._call(self.client.make_bucket, bucket_name=self.bucket)

    def put(self, key, data, length=None, content_type="application/octet-stream") -> None:
        if isinstance(data, (bytes, bytearray, memoryview)):
            length, data = len(data), io.BytesIO(data)
        self._call(self.client.put_object, bucket_name=self.bucket, object_name=validate_key(key),
                   data=data, length=length if length is not None else -1,
                   content_type=content_type, part_size=0 if length is not None else 16 * CHUNK)

    def get(self, key, offset=0, length=None) -> bytes:
        return b"".join(self.stream(key, offset, length))

    def stream(self, key, offset=0, length=None) -> Iterator[bytes]:
        response = self._call(self.client.get_object, bucket_name=self.bucket,
                              object_name=validate_key(key), offset=offset, length=length or 0)
        return self._chunks(response)

    @staticmethod
    def _chunks(response) -> Iterator[bytes]:
        try:
            yield from response.stream(CHUNK)
        finally:
            response.close()
            response.release_conn()

    def size(self, key) -> int:
        return self._call(self.client.stat_object, bucket_name=self.bucket, object_name=validate_key(key)).size

    def exists(self, key) -> bool:
        try:
            self.size(key)
            return True
        except ObjectNotFound:
            return False

    def delete(self, key) -> None:
        self._call(self.client.remove_object, bucket_name=self.bucket, object_name=validate_key(key))

    def list(self, prefix="") -> Iterator[str]:
        objects = self._call(self.client.list_objects, bucket_name=self.bucket, prefix=prefix or None, recursive=True)
        for obj in objects:
            yield obj.object_name

    def url(self, key, expires, filename=None) -> str:
        headers = {"response-content-disposition": f'attachment; filename="{filename}"'} if filename else None
        return self.signer.presigned_get_object(bucket_name=self.bucket, object_name=validate_key(key),
                                                expires=expires, response_headers=headers)

    def check(self) -> None:
        if not self._call(self.client.bucket_exists, bucket_name=self.bucket):
            raise StoreUnavailable(f"bucket {self.bucket} does not exist")


def make_store(settings) -> ObjectStore:
    """The object store the settings name."""
    if settings.object_store == "s3":
        if not settings.s3_endpoint:
            raise Invalid("LANCANG_S3_ENDPOINT is required when LANCANG_OBJECT_STORE=s3")
        return S3Store(
            endpoint=settings.s3_endpoint, access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(), bucket=settings.s3_bucket,
            region=settings.s3_region, secure=settings.s3_secure,
            public_endpoint=settings.s3_public_endpoint,
        )
    return FilesystemStore(settings.objects_dir, public_base=settings.effective_public_url,
                           secret=settings.effective_secret_key)
