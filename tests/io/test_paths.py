"""skinray.io.paths: ids and template columns are checked, links never lead out of a folder, every file once."""

import os

import pytest

from skinray import SkinrayError
from skinray.io import paths


@pytest.mark.parametrize("value, unsafe", [
    ("ISIC_1", False), ("a.b", False), ("../etc/passwd", True), ("..", True), ("a/b", True), ("a\\b", True),
    ("~root", True), ("a\x00b", True),
])
def test_unsafe_ids(value, unsafe):
    assert paths.unsafe_id(value) is unsafe


def test_image_uri_resolution():
    t = "{images}/{isic_id}.jpg"
    assert paths.resolve_image_uri("a", None, "s3://b/img", t, {}) == ("s3://b/img/a.jpg", "s3://b/img")
    assert paths.resolve_image_uri("a", "sub/a.png", "/data", t, {}) == ("/data/sub/a.png", "/data")
    assert paths.resolve_image_uri("a", "s3://x/y.jpg", "/data", "", {}) == ("s3://x/y.jpg", None)
    assert paths.resolve_image_uri("a", None, "/d", "{images}/{site}/{isic_id}.jpg", {"site": "s"})[0] == "/d/s/a.jpg"
    with pytest.raises(SkinrayError, match="--images"):
        paths.resolve_image_uri("a", None, None, t, {})
    with pytest.raises(SkinrayError, match="unknown column"):
        paths.resolve_image_uri("a", None, "/d", "{images}/{nope}.jpg", {})


def test_template_columns_are_checked_like_ids():
    t = "{images}/{lesion_id}/{isic_id}.jpg"
    assert paths.template_fields(t) == ("images", "lesion_id", "isic_id")
    assert not paths.unsafe_columns(t, {"lesion_id": "HAM_1"})
    assert paths.unsafe_columns(t, {"lesion_id": "../data/images"})
    assert paths.unsafe_columns(t, {"lesion_id": ".."})
    with pytest.raises(SkinrayError, match="not a valid template"):
        paths.template_fields("{images}/{isic_id")


def test_inside_resolves_symlinks(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "x.jpg").write_bytes(b"x")
    (root / "link.jpg").symlink_to(outside / "x.jpg")
    (root / "a.jpg").write_bytes(b"a")
    assert paths.inside(str(root), str(root / "a.jpg"))
    assert not paths.inside(str(root), str(root / "link.jpg"))
    assert not paths.inside(str(root), str(root / ".." / "outside" / "x.jpg"))
    assert not paths.inside(str(root), str(tmp_path / "rootother" / "a.jpg"))  # a prefix is not a parent


def test_listing_counts_what_it_leaves_out_and_survives_loops(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret.jpg").write_bytes(b"s")
    for name in ("a.jpg", "sub/b.PNG", "_skip.jpg", ".hidden.jpg", "notes.txt"):
        (root / name).write_bytes(b"1")
    (root / "_staging").mkdir()
    (root / "_staging" / "c.jpg").write_bytes(b"1")
    (root / "sub" / "loop").symlink_to(root)  # a link loop
    (root / "alias.jpg").symlink_to(root / "a.jpg")  # the same file under a second name
    (root / "escape.jpg").symlink_to(tmp_path / "elsewhere" / "secret.jpg")  # a file link out of the folder
    (root / "outdir").symlink_to(tmp_path / "elsewhere")  # a folder link out of the folder
    listing = paths.list_images(str(root))
    names = [os.path.relpath(f, root) for f in listing.files]
    assert names == ["a.jpg", "escape.jpg", "sub/b.PNG"]  # escape.jpg is listed so its row can say why it fails
    assert listing.skipped == {"hidden": 3, "not_image_suffix": 1, "duplicate_link": 2, "link_outside_root": 1}


def test_listing_stamps_each_file_and_counts_what_is_not_a_regular_file(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"1234")
    os.mkfifo(tmp_path / "pipe.jpg")  # reading it would block the run: counted, never a row
    listing = paths.list_images(str(tmp_path))
    assert [os.path.basename(f) for f in listing.files] == ["a.jpg"]
    assert listing.skipped == {"not_a_file": 1}
    size, mtime = listing.stamps[str(tmp_path / "a.jpg")].split(":")
    assert size == "4" and int(mtime) > 0
    assert paths.stamps([str(tmp_path / "a.jpg"), str(tmp_path / "gone.jpg")]) == {
        str(tmp_path / "a.jpg"): listing.stamps[str(tmp_path / "a.jpg")], str(tmp_path / "gone.jpg"): ""}
