"""URIs (local path, ``file://``, ``s3://``) → pyarrow filesystems and boto3 clients; atomic writes.

Every stage reads and writes URIs through this module, so the same code runs against a laptop folder, AWS S3 or
an S3-compatible endpoint (MinIO, moto) named by ``endpoint_url`` or ``AWS_ENDPOINT_URL``. The region is resolved
per bucket (pyarrow's resolution on AWS, the bucket's own answer on other endpoints) unless ``storage.region``
names one, so buckets in several regions work side by side. Objects are written with single PUTs and deleted with
boto3, so no zero-byte "directory" marker objects are ever created.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import posixpath
import shutil
import uuid
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Iterable, Iterator
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from skinray import SkinrayError, TemporaryError


class StorageConfig(BaseModel):
    """Where S3 lives; credentials always come from the standard AWS chain and are never stored here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str | None = None  # e.g. http://127.0.0.1:9000; default: $AWS_ENDPOINT_URL, else AWS
    region: str | None = None  # default: each bucket's own region, else $AWS_REGION / $AWS_DEFAULT_REGION
    read_attempts: int = Field(4, ge=1, le=20)  # tries of an image read that fails for a passing reason
    retry_base_seconds: float = Field(0.5, ge=0, le=60)  # backoff before the second try, doubled after each

    def resolved_endpoint(self) -> str | None:
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")

    def default_region(self) -> str:
        return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"

    def region_for(self, bucket: str) -> str:
        """``storage.region`` when set, else the bucket's own region, else the environment's default."""
        if self.region:
            return self.region
        return _bucket_region(bucket, self.resolved_endpoint(), self.default_region())


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(uri: str, *parts: str) -> str:
    if is_s3(uri) or uri.startswith("file://"):
        return posixpath.join(uri, *parts)
    return os.path.join(uri, *parts)


def normalize(uri: str) -> str:
    """A canonical spelling: ``file://`` stripped, local paths absolute, no trailing slash."""
    if uri.startswith("file://"):
        uri = urlparse(uri).path
    if is_s3(uri):
        return uri.rstrip("/")
    return os.path.abspath(os.path.expanduser(uri))


@lru_cache(maxsize=64)
def _bucket_region(bucket: str, endpoint: str | None, fallback: str) -> str:
    """Where a bucket lives: pyarrow asks AWS; another endpoint is asked through HeadBucket's region header."""
    if not endpoint:
        try:
            return pafs.resolve_s3_region(bucket)
        except (OSError, ValueError):
            return fallback
    try:
        response = _boto3(endpoint, fallback).head_bucket(Bucket=bucket)
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    except Exception as exc:  # 301/403 answers carry the header too
        headers = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}
    return headers.get("x-amz-bucket-region") or fallback


def bucket_of(uri: str) -> str:
    return normalize(uri)[len("s3://"):].split("/", 1)[0]


@lru_cache(maxsize=16)
def s3_filesystem(endpoint: str | None, region: str) -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem for one endpoint and region (cached: one per bucket region, not per call)."""
    kwargs: dict[str, Any] = {"region": region}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str, storage: StorageConfig | None = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and in-filesystem path for ``uri`` (what Ray Data's ``filesystem=`` takes)."""
    storage = storage or StorageConfig()
    uri = normalize(uri)
    if is_s3(uri):
        fs = s3_filesystem(storage.resolved_endpoint(), storage.region_for(bucket_of(uri)))
        return fs, uri[len("s3://") :]
    return pafs.LocalFileSystem(), uri


@lru_cache(maxsize=16)
def _boto3(endpoint: str | None, region: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=region)


def boto3_client(storage: StorageConfig | None = None, bucket: str | None = None) -> Any:
    """A boto3 S3 client with the same endpoint and region as :func:`filesystem` (thread-safe, cached)."""
    storage = storage or StorageConfig()
    region = storage.region_for(bucket) if bucket else (storage.region or storage.default_region())
    return _boto3(storage.resolved_endpoint(), region)


def delta_storage_options(uri: str, storage: StorageConfig | None = None) -> dict[str, str]:
    """What ``deltalake`` needs to reach ``uri``: endpoint, region and the credentials of the boto3 chain.

    Credentials are resolved by boto3 (environment, profile, instance profile, IRSA) at the moment of use and
    passed on; they are never written anywhere.
    """
    storage = storage or StorageConfig()
    if not is_s3(normalize(uri)):
        return {}
    options = {"AWS_REGION": storage.region_for(bucket_of(uri))}
    endpoint = storage.resolved_endpoint()
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint if "://" in endpoint else f"https://{endpoint}"
        if options["AWS_ENDPOINT_URL"].startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    import boto3

    creds = boto3.Session().get_credentials()
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        options.update(AWS_ACCESS_KEY_ID=frozen.access_key, AWS_SECRET_ACCESS_KEY=frozen.secret_key)
        if frozen.token:
            options["AWS_SESSION_TOKEN"] = frozen.token
    return options


# What S3 (through pyarrow's AWS SDK or boto3) and the network say when a retry may succeed: throttling, 5xx,
# dropped or refused connections, timeouts. Anything else (access denied, no such key, bad request) is final.
TRANSIENT_MARKERS = ("slow_down", "slowdown", "throttl", "too many requests", "service_unavailable",
                     "serviceunavailable", "internal_failure", "internalerror", "request_timeout", "requesttimeout",
                     "network_connection", "connection reset", "connection refused", "connection aborted",
                     "couldn't connect", "could not connect", "timed out", "timeout", "broken pipe",
                     "response code: 500", "response code: 502", "response code: 503", "response code: 504",
                     "response code: 429", "curlcode", "temporarily unavailable", "endpointconnectionerror")


def is_transient(exc: BaseException) -> bool:
    """Whether a storage failure may pass on its own (retry it) rather than be final (record it)."""
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    text = f"{type(exc).__name__} {exc}".lower()
    return any(marker in text for marker in TRANSIENT_MARKERS)


def _wrap(uri: str, exc: Exception) -> SkinrayError:
    """One line naming the URI; a passing failure (storage unavailable) as :class:`TemporaryError` (exit 75)."""
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if is_transient(exc):
        return TemporaryError(f"cannot reach {uri} now: {msg} (retry later)")
    return SkinrayError(f"cannot access {uri}: {msg}")


@contextmanager
def _errors(uri: str) -> Iterator[None]:
    """Storage failures (pyarrow's OSError, boto3's ClientError) as one line naming the URI."""
    try:
        yield
    except OSError as exc:
        raise _wrap(uri, exc) from exc
    except Exception as exc:
        if type(exc).__module__.startswith(("botocore", "boto3")):
            raise _wrap(uri, exc) from exc
        raise


def exists(uri: str, storage: StorageConfig | None = None) -> bool:
    fs, path = filesystem(uri, storage)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as exc:
        raise _wrap(uri, exc) from exc


def is_dir(uri: str, storage: StorageConfig | None = None) -> bool:
    fs, path = filesystem(uri, storage)
    try:
        return fs.get_file_info(path).type == pafs.FileType.Directory
    except OSError as exc:
        raise _wrap(uri, exc) from exc


def read_bytes(uri: str, storage: StorageConfig | None = None, max_bytes: int | None = None) -> bytes:
    """The whole object; with ``max_bytes``, larger objects are refused before (and without) reading them."""
    fs, path = filesystem(uri, storage)
    try:
        if max_bytes is not None:
            size = fs.get_file_info(path).size
            if size is not None and size > max_bytes:
                raise SkinrayError(f"{uri} is {size:,} bytes, more than the {max_bytes:,} bytes allowed")
        with fs.open_input_stream(path) as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except FileNotFoundError as exc:
        raise SkinrayError(f"not found: {uri}") from exc
    except OSError as exc:
        raise _wrap(uri, exc) from exc
    if max_bytes is not None and len(data) > max_bytes:
        raise SkinrayError(f"{uri} is more than the {max_bytes:,} bytes allowed")
    return data


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bytes(uri: str, data: bytes, storage: StorageConfig | None = None) -> None:
    """Write a whole object atomically: a temp file renamed locally, one PUT on S3."""
    storage = storage or StorageConfig()
    fs, path = filesystem(uri, storage)
    with _errors(uri):
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:  # a single PUT (not multipart): atomic, and accepted by every S3-compatible server
            bucket, _, key = path.partition("/")
            boto3_client(storage, bucket).put_object(Bucket=bucket, Key=key, Body=data)


def read_text(uri: str, storage: StorageConfig | None = None) -> str:
    return read_bytes(uri, storage).decode("utf-8")


def write_text(uri: str, text: str, storage: StorageConfig | None = None) -> None:
    write_bytes(uri, text.encode("utf-8"), storage)


def read_json(uri: str, storage: StorageConfig | None = None) -> Any:
    return json.loads(read_text(uri, storage))


def _finite(obj: Any) -> Any:
    """NaN and infinities → null: what strict JSON readers (and pydantic) accept."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_text(obj: Any) -> str:
    """Strict JSON (no NaN), indented: how skinray writes every JSON file."""
    return json.dumps(_finite(obj), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n"


def write_json(uri: str, obj: Any, storage: StorageConfig | None = None) -> None:
    write_text(uri, json_text(obj), storage)


def write_parquet(table: pa.Table, uri: str, storage: StorageConfig | None = None) -> None:
    """One Parquet file, atomically (readers see the old file or the whole new one)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_bytes(uri, buf.getvalue(), storage)


def read_parquet(uri: str, storage: StorageConfig | None = None) -> pa.Table:
    fs, path = filesystem(uri, storage)
    try:
        return pq.read_table(path, filesystem=fs)
    except FileNotFoundError as exc:
        raise SkinrayError(f"not found: {uri}") from exc
    except OSError as exc:
        raise _wrap(uri, exc) from exc


def list_files(uri: str, storage: StorageConfig | None = None, suffixes: Iterable[str] | None = None) -> list[str]:
    """Every file under ``uri`` (recursive), as URIs in the same scheme, sorted; hidden/underscore parts skipped."""
    fs, path = filesystem(uri, storage)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise _wrap(uri, exc) from exc
    wanted = tuple(s.lower() for s in suffixes) if suffixes else None
    prefix = "s3://" if is_s3(normalize(uri)) else ""
    out = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(path) :].lstrip("/")
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        if wanted and not info.path.lower().endswith(wanted):
            continue
        out.append(prefix + info.path)
    return sorted(out)


def delete(uri: str, storage: StorageConfig | None = None) -> None:
    """Remove a file or a whole directory/prefix; missing is fine.

    On S3 this lists and deletes the keys with boto3: pyarrow's S3 deletes leave zero-byte marker objects behind
    to keep the parent "directory" alive, which break recursive downloads and confuse other readers.
    """
    fs, path = filesystem(uri, storage)
    with _errors(uri):
        if isinstance(fs, pafs.LocalFileSystem):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)
            return
        bucket, _, key = path.partition("/")
        client = boto3_client(storage, bucket)
        keys = [key] if key else []
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=key.rstrip("/") + "/"):
            keys += [o["Key"] for o in page.get("Contents", [])]
        for i in range(0, len(keys), 1000):
            client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]],
                                                         "Quiet": True})


def local_copy(uri: str, dest_dir: str, storage: StorageConfig | None = None) -> str:
    """A local path holding ``uri`` (a file or directory): itself when local, else a download into ``dest_dir``."""
    uri_n = normalize(uri)
    if not is_s3(uri_n):
        if not os.path.exists(uri_n):
            raise SkinrayError(f"not found: {uri}")
        return uri_n
    fs, path = filesystem(uri_n, storage)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise SkinrayError(f"not found: {uri}")
    target = os.path.join(dest_dir, posixpath.basename(path))
    os.makedirs(dest_dir, exist_ok=True)
    pafs.copy_files(path, target, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return target


def upload_dir(local_dir: str, uri: str, storage: StorageConfig | None = None) -> None:
    """Copy a local directory to ``uri`` (any scheme), one object per file (no directory markers on S3)."""
    dest = normalize(uri)
    if not is_s3(dest) and os.path.abspath(local_dir) == dest:
        return
    for root, _dirs, files in os.walk(local_dir):
        for name in files:
            src = os.path.join(root, name)
            rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
            with open(src, "rb") as f:
                write_bytes(join(dest, *rel.split("/")), f.read(), storage)
