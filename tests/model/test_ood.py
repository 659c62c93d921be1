"""The out-of-distribution guard: fitted with the model, one engine call, flagged images set apart everywhere."""

import io
import os
import shutil
import tempfile

import duckdb
import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from PIL import Image, ImageDraw

from skinray import SkinrayError
from skinray.config import load_config
from skinray.model import artifact, ood
from skinray.query import preset_sql, run_query
from skinray.scoring import record as records, runs
from skinray.scoring.run import score

DATE = "2026-12-07"


def test_statistics_score_distance_to_the_nearer_class_and_refuse_a_foreign_file():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (200, 6)), rng.normal(4, 1, (200, 6))])
    y = np.r_[np.zeros(200, int), np.ones(200, int)]
    stats, guard = ood.fit(x, y, rng.normal(0, 1, (100, 6)), "features", "held-out rows")
    near, far = stats.score(np.zeros((1, 6))), stats.score(np.full((1, 6), 20.0))
    assert near[0] < guard.threshold < far[0]
    assert abs(guard.validation_flagged - 0.05) <= 0.02 and guard.dims == 6
    again = ood.Stats.from_bytes(stats.to_bytes(), 6)
    np.testing.assert_allclose(again.score(x[:5]), stats.score(x[:5]), rtol=1e-5)
    with pytest.raises(SkinrayError, match="not \\(2, 7\\)"):
        ood.Stats.from_bytes(stats.to_bytes(), 7)
    with pytest.raises(SkinrayError, match="cannot be read"):
        ood.Stats.from_bytes(b"not an npz", 6)
    frame = pd.DataFrame({"out_of_distribution": [True] * 6 + [False] * 14})
    s = ood.summary(frame, guard)
    assert s["flagged"] == 6 and s["high"] is True and ood.summary(frame, None) == {"guard": False}


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _not_lesions(rng: np.random.Generator) -> list[bytes]:
    """Photographs (crops of scikit-learn's sample images), rendered documents and solid colours."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    out = []
    for i in range(10):
        p = photos[i % 2]
        w, h = p.size
        s = int(rng.integers(120, min(w, h)))
        x0, y0 = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
        out.append(_jpeg(p.crop((x0, y0, x0 + s, y0 + s))))
    for i in range(6):
        img = Image.new("RGB", (320, 240), (246, 246, 240))
        d = ImageDraw.Draw(img)
        for line in range(9):
            d.text((10, 8 + 25 * line), f"Laboratory report {i}, line {line}: {line * 3.7:.1f} mmol/l", fill=(0, 0, 0))
        out.append(_jpeg(img))
    out += [_jpeg(Image.new("RGB", (120, 120), c)) for c in ((0, 0, 0), (255, 255, 255), (30, 140, 250))]
    return out


@pytest.fixture(scope="module")
def mixed_folder(labelled_set, tmp_path_factory):
    """Held-out synthetic lesions (never trained on) beside images that are not dermoscopy."""
    root = tmp_path_factory.mktemp("mixed")
    lesions = sorted(os.listdir(labelled_set["images"]))[:40]
    for name in lesions:
        shutil.copy(os.path.join(labelled_set["images"], name), root / name)
    others = _not_lesions(np.random.default_rng(0))
    for i, data in enumerate(others):
        (root / f"other-{i:02d}.jpg").write_bytes(data)
    return {"root": str(root), "lesions": {os.path.splitext(n)[0] for n in lesions},
            "others": {f"other-{i:02d}" for i in range(len(others))}}


def _without_guard(model_dir: str, out: str) -> str:
    """The same network as a model trained before the guard: no ``ood`` section, no statistics file."""
    art = artifact.ModelArtifact.open(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        for name in art.meta.files:
            if name != ood.FILE:
                shutil.copyfile(os.path.join(art.local_dir, name), os.path.join(tmp, name))
        meta = art.meta.model_copy(update={"ood": None, "outputs": art.meta.outputs.model_copy(
            update={"features": None})})
        artifact.write(tmp, out, meta)
    return out


@pytest.mark.slow
def test_non_lesions_are_flagged_set_apart_and_counted(model_dir, mixed_folder, ray_session, tmp_path):
    art = artifact.ModelArtifact.open(model_dir)
    guard = art.meta.ood
    assert guard is not None and ood.FILE in art.meta.files and art.meta.outputs.features == guard.output
    assert art.meta.onnx.parity_max_abs_diff < artifact.ONNX_PARITY_LIMIT  # the features output included
    out = str(tmp_path / "nightly")
    cfg = load_config(overrides={"score.model": model_dir, "score.input": mixed_folder["root"], "score.out": out,
                                 "score.date": DATE, "score.batch_size": 8})
    record = score(cfg)
    rows = DeltaTable(os.path.join(out, "scores")).to_pyarrow_table().to_pandas()  # any engine reads the columns
    rows["stem"] = rows["image_uri"].map(lambda u: os.path.splitext(os.path.basename(u))[0])
    flagged = rows.set_index("stem")["out_of_distribution"]
    lesion_rate = flagged[list(mixed_folder["lesions"])].mean()
    other_rate = flagged[list(mixed_folder["others"])].mean()
    # a 32-pixel network trained from scratch on 63 images, its threshold from 7 validation images: over three runs
    # it flagged 0.05-0.075 of the held-out lesions against 0.26-0.76 of the others (a real model: bench/RESULTS.md)
    assert other_rate >= 2 * lesion_rate and other_rate >= 0.2, (lesion_rate, other_rate)
    outside = rows[rows["out_of_distribution"]]
    assert (outside["predicted"] == "out_of_distribution").all() and outside["prob_malignant"].notna().all()
    assert (rows.loc[~rows["out_of_distribution"], "predicted"].isin(["benign", "malignant"])).all()
    assert ((rows["ood_score"] > guard.threshold) == rows["out_of_distribution"]).all()
    o = records.read(out, record.run_id).out_of_distribution
    assert o["guard"] and o["flagged"] == len(outside) == record.out_of_distribution["flagged"]
    assert record.flagged == int((rows["predicted"] == "malignant").sum())  # never counted as malignant or benign
    daily = run_query(out, preset_sql("daily_counts"))
    assert int(daily["out_of_distribution"].iloc[0]) == len(outside)
    assert int(daily["benign"].iloc[0]) == int((rows["predicted"] == "benign").sum())
    folder = runs.run_dir(out, record.run_id)
    listed = pd.read_csv(os.path.join(folder, "out_of_distribution.csv"))
    assert len(listed) == len(outside) and listed["ood_score"].is_monotonic_decreasing
    page = open(os.path.join(folder, "report.html")).read()
    assert f'id="out-of-distribution" data-count="{len(outside)}"' in page
    assert "Not like the training images: review the image" in page
    # plain SQL over the table's data files (DuckDB, outside skinray's query code) sees the columns too
    got = duckdb.sql("SELECT count(*) FILTER (WHERE out_of_distribution) "
                     f"FROM read_parquet('{out}/scores/**/*.parquet')").fetchall()[0][0]
    assert got == len(outside)

    # a model trained before the guard scores as before: no flags, empty columns, the page says the guard is absent
    old = _without_guard(model_dir, str(tmp_path / "old-model"))
    out2 = str(tmp_path / "nightly-old")
    score(load_config(overrides={"score.model": old, "score.input": mixed_folder["root"], "score.out": out2,
                                 "score.date": DATE, "score.batch_size": 8}))
    rows2 = DeltaTable(os.path.join(out2, "scores")).to_pyarrow_table().to_pandas()
    assert rows2["ood_score"].isna().all() and rows2["out_of_distribution"].isna().all()
    assert rows2["predicted"].isin(["benign", "malignant"]).all()
    page2 = open(os.path.join(runs.run_dir(out2, rows2["run_id"].iloc[0]), "report.html")).read()
    assert "trained before the out-of-distribution guard" in page2
