"""Where images live, and the guarantee that nothing escapes the folder it was given.

* ids and every manifest column used by ``manifest.image_template`` are checked before they become a path;
* a local image is read only if its real path (symlinks resolved) stays inside its root;
* an image folder is walked without following links out of it or around a loop, every file listed once, and
  what the walk leaves out (``_``/``.`` names, other file types, links) is counted, never silently dropped.
"""

from __future__ import annotations

import os
import posixpath
import string
from dataclasses import dataclass, field
from functools import lru_cache

import pyarrow.fs as pafs

from skinray import SkinrayError
from skinray.io import storage
from skinray.io.storage import StorageConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def unsafe_id(value: str) -> bool:
    """A value that would address a file outside the image root once put into a path template."""
    return (
        value in {".", ".."}
        or "/" in value
        or "\\" in value
        or "\x00" in value
        or ".." in value.split(".")
        or value.startswith("~")
    )


@lru_cache(maxsize=32)
def template_fields(template: str) -> tuple[str, ...]:
    """The column names a template such as ``{images}/{lesion_id}/{isic_id}.jpg`` reads."""
    try:
        return tuple(name for _, name, _, _ in string.Formatter().parse(template) if name is not None)
    except ValueError as exc:
        raise SkinrayError(f"image template {template!r} is not a valid template: {exc}") from exc


def unsafe_ref(ref: str) -> bool:
    """A relative image path (``image_uri`` column) that climbs out of the image root."""
    return ".." in ref.replace("\\", "/").split("/") or "\x00" in ref


def is_absolute(ref: str) -> bool:
    return ref.startswith(("s3://", "file://", "/"))


def resolve_image_uri(row_id: str, ref: str | None, images_root: str | None, template: str,
                      columns: dict[str, str]) -> tuple[str | None, str | None]:
    """(where one row's image lives, the folder it must stay inside) — or a ``SkinrayError`` for the whole run
    when the template cannot work at all. Callers check ids and template columns first (:func:`unsafe_columns`).

    An absolute ``image_uri`` is taken as given (the manifest names its files); a relative one and the template
    are placed under ``images_root`` and must stay inside it.
    """
    if ref:
        if is_absolute(ref) or images_root is None:
            return ref, None
        return storage.join(images_root, ref), images_root
    if images_root is None:
        raise SkinrayError("the manifest has no image_uri column: pass --images with the folder of the images")
    root = images_root.rstrip("/")
    try:
        return template.format(**{**columns, "images": root, "isic_id": row_id}), images_root
    except (KeyError, IndexError) as exc:
        raise SkinrayError(f"image template {template!r} names an unknown column {exc}") from exc


def unsafe_columns(template: str, columns: dict[str, str]) -> bool:
    """True when a column the template uses holds a value that would leave the image root."""
    return any(unsafe_id(str(columns.get(name, ""))) for name in template_fields(template)
               if name not in ("images", "isic_id"))


def inside(root: str, path: str) -> bool:
    """Whether the local ``path`` really (symlinks resolved) lies inside ``root``."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


@dataclass
class Listing:
    """The image files of a folder, each once, and counts of what the walk left out and why."""

    files: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    stamps: dict[str, str] = field(default_factory=dict)  # file → "size:mtime": its bytes changed when this did

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def list_images(uri: str, storage_cfg: StorageConfig | None = None, suffixes: tuple[str, ...] = IMAGE_SUFFIXES
                ) -> Listing:
    """Every image under ``uri`` (recursive), sorted, once.

    Left out and counted: names starting with ``_`` or ``.`` (``hidden``), other file types
    (``not_image_suffix``), links leaving the folder (``link_outside_root``), links to a folder or file already
    listed (``duplicate_link``, which is also how a link loop ends), an image name on something that is not a
    regular file (``not_a_file``: a FIFO, a socket, a device — reading one would block or never end).
    """
    uri = storage.normalize(uri)
    if storage.is_s3(uri):
        return _list_s3(uri, storage_cfg, suffixes)
    out = Listing()
    real_root = os.path.realpath(uri)
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: dict[str, str] = {}  # real path → listed path

    def walk(folder: str) -> None:
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen_dirs:
            out.skip("duplicate_link")
            return
        seen_dirs.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            out.skip("unreadable_folder")
            return
        for entry in entries:
            if entry.name.startswith((".", "_")):
                out.skip("hidden")
                continue
            if entry.is_symlink():
                if not inside(real_root, entry.path):
                    if entry.name.lower().endswith(suffixes):
                        out.files.append(entry.path)  # listed, so its row says why it is refused
                    else:
                        out.skip("link_outside_root")
                    continue
            if entry.is_dir(follow_symlinks=True):
                walk(entry.path)
            elif entry.is_file(follow_symlinks=True) or entry.is_symlink():
                if not entry.name.lower().endswith(suffixes):
                    out.skip("not_image_suffix")
                    continue
                real = os.path.realpath(entry.path)
                if real in seen_files and inside(real_root, entry.path):
                    out.skip("duplicate_link")
                    continue
                seen_files[real] = entry.path
                out.files.append(entry.path)
                out.stamps[entry.path] = _local_stamp(entry.path)
            elif entry.name.lower().endswith(suffixes):
                out.skip("not_a_file")
            else:
                out.skip("not_image_suffix")

    if not os.path.isdir(uri):
        raise SkinrayError(f"not a folder: {uri}")
    walk(uri)
    out.files.sort()
    return out


def _list_s3(uri: str, storage_cfg: StorageConfig | None, suffixes: tuple[str, ...]) -> Listing:
    fs, path = storage.filesystem(uri, storage_cfg)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise SkinrayError(f"cannot list {uri}: {str(exc).splitlines()[0]}") from exc
    out = Listing()
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(path):].lstrip("/")
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            out.skip("hidden")
        elif not info.path.lower().endswith(suffixes):
            out.skip("not_image_suffix")
        else:
            out.files.append("s3://" + info.path)
            out.stamps["s3://" + info.path] = _stamp(info)
    out.files.sort()
    return out


def _stamp(info: pafs.FileInfo) -> str:
    mtime = info.mtime_ns if info.mtime_ns is not None else ""
    return f"{info.size}:{mtime}"


def _local_stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return ""  # a dangling link: its row says why it cannot be read
    return f"{st.st_size}:{st.st_mtime_ns}"


def stamps(uris: list[str], storage_cfg: StorageConfig | None = None) -> dict[str, str]:
    """``size:mtime`` of each file, from one listing per folder (a manifest's images), not a request per file;
    a file the listing does not show gets none (its read will say why)."""
    folders: dict[str, list[str]] = {}
    for uri in uris:
        folders.setdefault(posixpath.dirname(uri), []).append(uri)
    found: dict[str, str] = {}
    for folder, members in folders.items():
        if not storage.is_s3(folder):
            found.update({u: _local_stamp(u) for u in members})
            continue
        fs, path = storage.filesystem(folder, storage_cfg)
        try:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
        except OSError as exc:
            raise storage._wrap(folder, exc) from exc
        listed = {"s3://" + i.path: _stamp(i) for i in infos if i.type == pafs.FileType.File}
        found.update({u: listed[u] for u in members if u in listed})
    return found


def stem(uri: str) -> str:
    return posixpath.splitext(posixpath.basename(uri))[0]
