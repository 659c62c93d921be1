"""A pyarrow filesystem for code that is not ours (Ray Train's checkpoints) on S3: one PUT per file, no folders.

pyarrow's own S3 filesystem uploads every file, even an empty one, as a multipart upload and creates a zero-byte
marker object for each "directory"; those markers break ``aws s3 cp --recursive``-style downloads. Handed out by
:func:`filesystem_for_libraries`.
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from skinray.io import storage
from skinray.io.storage import StorageConfig


class SinglePutS3(pafs.FileSystemHandler):
    """pyarrow's S3 filesystem, except that files are written with one PUT and folders are not objects.

    For what other libraries write through a pyarrow filesystem (Ray Train's checkpoints): pyarrow uploads every
    file, even an empty one, as a multipart upload and creates a zero-byte marker object for each "directory".
    A single PUT is atomic, accepted by every S3-compatible server, and leaves no markers. Picklable: the
    filesystem travels to Ray Train's controller and workers.
    """

    def __init__(self, endpoint: str | None, region: str) -> None:
        self.endpoint, self.region = endpoint, region

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return SinglePutS3, (self.endpoint, self.region)

    @property
    def fs(self) -> pafs.S3FileSystem:
        return storage.s3_filesystem(self.endpoint, self.region)

    def get_type_name(self) -> str:
        return "skinray-s3"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        pass  # S3 has no folders: a key's prefix exists as soon as the key does

    def delete_dir(self, path: str) -> None:
        storage.delete("s3://" + path, StorageConfig(endpoint_url=self.endpoint, region=self.region))

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.delete_dir(path)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete a whole bucket")

    def delete_file(self, path: str) -> None:
        storage.delete("s3://" + path, StorageConfig(endpoint_url=self.endpoint, region=self.region))

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path: str) -> Any:
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        return pa.PythonFile(PutOnClose("s3://" + path, StorageConfig(endpoint_url=self.endpoint,
                                                                        region=self.region)), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        raise OSError("appending is not supported on S3")


class PutOnClose(io.BytesIO):
    def __init__(self, uri: str, storage_cfg: StorageConfig) -> None:
        super().__init__()
        self.uri, self.storage = uri, storage_cfg

    def close(self) -> None:
        if not self.closed:
            storage.write_bytes(self.uri, self.getvalue(), self.storage)
        super().close()


def filesystem_for_libraries(uri: str, cfg: StorageConfig | None = None) -> tuple[pafs.FileSystem, str]:
    """:func:`filesystem` for code that is not ours (Ray Train): on S3, single PUTs and no marker objects."""
    cfg = cfg or StorageConfig()
    uri = storage.normalize(uri)
    if not storage.is_s3(uri):
        return storage.filesystem(uri, cfg)
    handler = SinglePutS3(cfg.resolved_endpoint(), cfg.region_for(storage.bucket_of(uri)))
    return pafs.PyFileSystem(handler), uri[len("s3://"):]
