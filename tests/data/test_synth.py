"""Synthetic data: determinism, schemas, planted corrupt/missing rows, lesion grouping, class signal, validation."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from skinray import SkinrayError
from skinray.data import synth, synth_render

SIZE = 64
HEIGHT = 48  # 4:3


def _rows(root) -> list[dict[str, str]]:
    with open(os.path.join(root, "metadata.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _decodes(path: str) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:
        return False


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    ranks = scores.argsort().argsort() + 1
    n1, n0 = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


@pytest.fixture(scope="module")
def isic(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("isic"))
    summary = synth.generate(root, 120, image_size=SIZE, seed=11, corrupt=4, missing=3, malignant_fraction=0.25)
    return root, summary


@pytest.fixture(autouse=True)
def _strict_pil(monkeypatch):
    # Another module may relax this globally; truncated JPEGs must count as broken here.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)


def test_render_lesion_shape_and_field_of_view():
    rng = np.random.default_rng(0)
    imgs = [np.asarray(synth_render.render_lesion(rng, bool(i % 2), 96), dtype=np.float32) for i in range(12)]
    assert all(a.shape == (72, 96, 3) and a.dtype == np.float32 for a in imgs)
    assert synth_render.render_lesion(rng, True, 64).mode == "RGB"
    corners = np.mean([a[:3, :3].mean() for a in imgs])
    centre_ring = np.mean([a[30:42, 10:20].mean() for a in imgs])  # skin left of the lesion
    assert corners < 0.75 * centre_ring  # dark dermoscope surround (some fields of view reach the corners)


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    kw = dict(image_size=SIZE, corrupt=2, missing=2, schema="ham10000")
    a, b, c = (str(tmp_path / x) for x in "abc")
    sa = synth.generate(a, 40, seed=5, **kw)
    sb = synth.generate(b, 40, seed=5, **kw)
    sc = synth.generate(c, 40, seed=6, **kw)
    read = lambda root, rel: Path(root, rel).read_bytes()  # noqa: E731
    assert read(a, "metadata.csv") == read(b, "metadata.csv")
    assert sorted(os.listdir(os.path.join(a, "images"))) == sorted(os.listdir(os.path.join(b, "images")))
    for name in os.listdir(os.path.join(a, "images")):
        assert read(a, f"images/{name}") == read(b, f"images/{name}")
    assert {k: v for k, v in sa.items() if k != "paths"} == {k: v for k, v in sb.items() if k != "paths"}
    assert read(a, "metadata.csv") != read(c, "metadata.csv")
    good = next(r["image_id"] for r in _rows(a) if r["image_id"] not in sa["corrupt_ids"] + sa["missing_ids"]
                and r["image_id"] not in sc["corrupt_ids"] + sc["missing_ids"])  # fmt: skip
    assert read(a, f"images/{good}.jpg") != read(c, f"images/{good}.jpg")


def test_isic_schema_and_counts(isic):
    root, s = isic
    rows = _rows(root)
    assert tuple(rows[0]) == synth.ISIC_COLUMNS
    assert len(rows) == s["n"] == 120
    ids = [r["isic_id"] for r in rows]
    assert len(set(ids)) == 120 and all(i.startswith("SYN_") for i in ids)
    assert "ISIC_" not in Path(root, "metadata.csv").read_text()
    assert s["malignant"] == sum(r["benign_malignant"] == "malignant" for r in rows)
    assert s["benign"] == 120 - s["malignant"]
    assert s["lesions"] == len({r["lesion_id"] for r in rows})
    assert {r["benign_malignant"] for r in rows} == {"benign", "malignant"}
    benign_dx, malignant_dx = ({d for d, _ in t} for t in (synth.ISIC_BENIGN, synth.ISIC_MALIGNANT))
    for r in rows:
        assert r["diagnosis"] in (malignant_dx if r["benign_malignant"] == "malignant" else benign_dx)
        assert r["age_approx"] == "" or int(r["age_approx"]) % 5 == 0
        assert r["sex"] in {"male", "female", ""}
        assert r["anatom_site_general"] in {site for site, _ in synth.ISIC_SITES} | {""}
    files = os.listdir(os.path.join(root, "images"))
    assert len(files) == 120 - s["missing"] and all(f.endswith(".jpg") for f in files)
    assert s["paths"]["metadata"] == os.path.join(root, "metadata.csv")


def test_ham_schema(tmp_path):
    s = synth.generate(str(tmp_path), 40, image_size=SIZE, schema="ham10000", seed=2)
    rows = _rows(tmp_path)
    assert tuple(rows[0]) == synth.HAM_COLUMNS
    assert len(rows) == 40 and s["id_column"] == "image_id"
    malignant_dx = {d for d, _ in synth.HAM_MALIGNANT}
    assert {d for d, _ in synth.HAM_BENIGN} == {"nv", "bkl", "df", "vasc"} and malignant_dx == {"mel", "bcc", "akiec"}
    assert s["malignant"] == sum(r["dx"] in malignant_dx for r in rows)
    sites = {site for site, _ in synth.HAM_SITES} | {""}
    for r in rows:
        assert r["image_id"].startswith("SYN_") and os.path.exists(tmp_path / "images" / f"{r['image_id']}.jpg")
        assert r["age"] == "" or float(r["age"]) == int(float(r["age"])) and "." in r["age"]
        assert r["sex"] in {"male", "female", "unknown"} and r["localization"] in sites
        assert r["dx_type"] in {"histo", "follow_up", "consensus", "confocal"}
    with Image.open(tmp_path / "images" / f"{rows[0]['image_id']}.jpg") as im:
        assert im.size == (SIZE, HEIGHT) and im.format == "JPEG"


def test_corrupt_and_missing_are_planted(isic):
    root, s = isic
    corrupt, missing = set(s["corrupt_ids"]), set(s["missing_ids"])
    assert len(corrupt) == s["corrupt"] == 4 and len(missing) == s["missing"] == 3
    assert not corrupt & missing
    assert set(s["corrupt_kinds"].values()) == set(synth.CORRUPT_KINDS)  # 4 corrupt rows: one of each kind
    for r in _rows(root):
        path = os.path.join(root, "images", f"{r['isic_id']}.jpg")
        if r["isic_id"] in missing:
            assert not os.path.exists(path)
        elif r["isic_id"] in corrupt:
            assert os.path.exists(path) and not _decodes(path)
        else:
            assert _decodes(path)


def test_missing_wins_over_stale_file(tmp_path):
    synth.generate(str(tmp_path), 10, image_size=SIZE, seed=3)
    s = synth.generate(str(tmp_path), 10, image_size=SIZE, seed=3, missing=2)
    assert all(not os.path.exists(tmp_path / "images" / f"{i}.jpg") for i in s["missing_ids"])


def test_malignant_fraction_and_lesion_groups(isic):
    root, s = isic
    assert abs(s["malignant"] - 0.25 * 120) <= 2
    rows = _rows(root)
    by_lesion: dict[str, list[int]] = {}
    for k, r in enumerate(rows):
        by_lesion.setdefault(r["lesion_id"], []).append(k)
    sizes = [len(v) for v in by_lesion.values()]
    assert 1.1 < 120 / len(by_lesion) < 1.8 and max(sizes) >= 2
    for idx in by_lesion.values():
        assert idx == list(range(idx[0], idx[-1] + 1))  # consecutive
        shared = {tuple(v for c, v in rows[k].items() if c != "isic_id") for k in idx}
        assert len(shared) == 1  # label and metadata identical within a lesion
    multi = next(idx for idx in by_lesion.values() if len(idx) >= 2 and not
                 {rows[k]["isic_id"] for k in idx} & set(s["corrupt_ids"] + s["missing_ids"]))  # fmt: skip
    a, b = (Path(root, "images", rows[k]["isic_id"] + ".jpg").read_bytes() for k in multi[:2])
    assert a != b  # same lesion, a different photograph


def test_missing_metadata_cells():
    rows = [synth._lesion_meta(np.random.default_rng([0, j]), "isic", j % 2 == 0) for j in range(2000)]
    assert 0.015 < np.mean([r["age_approx"] == "" for r in rows]) < 0.05
    assert 0.03 < np.mean([r["anatom_site_general"] == "" for r in rows]) < 0.075


def test_classes_differ_but_overlap():
    rng = np.random.default_rng(123)
    labels = np.array([i % 2 == 0 for i in range(120)])
    feats = []
    for m in labels:
        a = np.asarray(synth_render.render_lesion(rng, bool(m), SIZE), dtype=np.float32)
        lum = a[HEIGHT // 4 : 3 * HEIGHT // 4, SIZE // 4 : 3 * SIZE // 4].mean(-1)
        feats.append((lum < 0.8 * np.percentile(lum, 95)).mean())  # dark (lesion) share of the centre
    feats = np.array(feats)
    assert feats[labels].mean() > feats[~labels].mean()
    assert 0.65 < _auc(feats, labels) < 0.97  # a signal, not a giveaway
    assert feats[labels].min() < feats[~labels].max()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=0), "n must be"),
        (dict(n=2.5), "n must be"),
        (dict(malignant_fraction=0.0), "malignant_fraction"),
        (dict(malignant_fraction=1.0), "malignant_fraction"),
        (dict(corrupt=5, missing=5), "less than n"),
        (dict(corrupt=-1), "corrupt and missing"),
        (dict(schema="isic2020"), "unknown schema"),
        (dict(image_size=16), "image_size"),
        (dict(images_per_lesion=0.5), "images_per_lesion"),
        (dict(seed=-1), "seed"),
    ],
)
def test_validation(tmp_path, kwargs, match):
    args = dict(n=10, image_size=SIZE) | kwargs
    with pytest.raises(SkinrayError, match=match):
        synth.generate(str(tmp_path / "out"), **args)
    assert not (tmp_path / "out").exists()


def test_s3_round_trip(monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    from skinray.io import storage

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(k, "testing")
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        cfg = storage.StorageConfig(endpoint_url=f"http://{host}:{port}")
        boto3.client("s3", endpoint_url=cfg.endpoint_url, region_name="us-east-1").create_bucket(Bucket="synth")
        s = synth.generate("s3://synth/data", 12, image_size=SIZE, seed=1, missing=1, storage=cfg)
        files = storage.list_files("s3://synth/data/images", cfg)
        assert len(files) == 11 and s["paths"]["metadata"] == "s3://synth/data/metadata.csv"
        assert storage.read_text(s["paths"]["metadata"], cfg).count("\n") == 13
    finally:
        server.stop()
