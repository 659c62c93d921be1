"""URIs (local path, ``file://``, ``s3://``) → pyarrow filesystems and boto3 clients; atomic writes.

Every stage reads and writes URIs through this module, so the same code runs against a laptop folder, AWS S3 or
an S3-compatible endpoint (MinIO, moto) named by ``endpoint_url`` or ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import shutil
import uuid
from functools import lru_cache
from typing import Any, Iterable
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from skinray import SkinrayError


class StorageConfig(BaseModel):
    """Where S3 lives; credentials always come from the standard AWS chain and are never stored here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str | None = None  # e.g. http://127.0.0.1:9000; default: $AWS_ENDPOINT_URL, else AWS
    region: str | None = None  # default: $AWS_REGION / $AWS_DEFAULT_REGION, else us-east-1

    def resolved_endpoint(self) -> str | None:
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")

    def resolved_region(self) -> str:
        return self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


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


@lru_cache(maxsize=8)
def _s3(endpoint: str | None, region: str) -> pafs.S3FileSystem:
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
        return _s3(storage.resolved_endpoint(), storage.resolved_region()), uri[len("s3://") :]
    return pafs.LocalFileSystem(), uri


@lru_cache(maxsize=8)
def _boto3(endpoint: str | None, region: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=region)


def boto3_client(storage: StorageConfig | None = None) -> Any:
    """A boto3 S3 client with the same endpoint and region as :func:`filesystem` (thread-safe, cached)."""
    storage = storage or StorageConfig()
    return _boto3(storage.resolved_endpoint(), storage.resolved_region())


def _wrap(uri: str, exc: Exception) -> SkinrayError:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return SkinrayError(f"cannot access {uri}: {msg}")


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


def read_bytes(uri: str, storage: StorageConfig | None = None) -> bytes:
    fs, path = filesystem(uri, storage)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as exc:
        raise SkinrayError(f"not found: {uri}") from exc
    except OSError as exc:
        raise _wrap(uri, exc) from exc


def write_bytes(uri: str, data: bytes, storage: StorageConfig | None = None) -> None:
    """Write a whole object atomically: a temp file renamed locally, one PUT on S3."""
    storage = storage or StorageConfig()
    fs, path = filesystem(uri, storage)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:  # a single PUT (not multipart): atomic, and accepted by every S3-compatible server
            bucket, _, key = path.partition("/")
            boto3_client(storage).put_object(Bucket=bucket, Key=key, Body=data)
    except OSError as exc:
        raise _wrap(uri, exc) from exc
    except Exception as exc:
        if type(exc).__module__.startswith(("botocore", "boto3")):
            raise _wrap(uri, exc) from exc
        raise


def read_text(uri: str, storage: StorageConfig | None = None) -> str:
    return read_bytes(uri, storage).decode("utf-8")


def write_text(uri: str, text: str, storage: StorageConfig | None = None) -> None:
    write_bytes(uri, text.encode("utf-8"), storage)


def read_json(uri: str, storage: StorageConfig | None = None) -> Any:
    return json.loads(read_text(uri, storage))


def write_json(uri: str, obj: Any, storage: StorageConfig | None = None) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", storage)


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
    """Remove a file or a whole directory/prefix; missing is fine."""
    fs, path = filesystem(uri, storage)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(path)
    except OSError as exc:
        raise _wrap(uri, exc) from exc


def publish_dir(staging: str, final: str, storage: StorageConfig | None = None) -> None:
    """Move a finished directory into place.

    Locally this is one ``rename`` (atomic). S3 has no rename: objects are copied, then the staging prefix is
    deleted; readers that need all-or-nothing on S3 go through the run's ``_SUCCESS`` marker (see ``score``).
    """
    fs, src = filesystem(staging, storage)
    _, dst = filesystem(final, storage)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if os.path.exists(dst):
                shutil.rmtree(dst)
            os.replace(src, dst)
        else:
            for info in fs.get_file_info(pafs.FileSelector(src, recursive=True)):
                if info.type == pafs.FileType.File:
                    fs.copy_file(info.path, dst + info.path[len(src) :])
            fs.delete_dir(src)
    except OSError as exc:
        raise _wrap(final, exc) from exc


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
    """Copy a local directory to ``uri`` (any scheme)."""
    fs, path = filesystem(uri, storage)
    if isinstance(fs, pafs.LocalFileSystem) and os.path.abspath(local_dir) == path:
        return
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            fs.create_dir(path, recursive=True)  # copy_files does not create a missing local destination
        pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    except OSError as exc:
        raise _wrap(uri, exc) from exc
