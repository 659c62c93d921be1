"""The clinician's worklist (skinray.scoring.worklist) and its table on the review page, without a browser: every flagged
image and only those, in logit order, with its diagnosis readout; links that find the image from the page's
folder; s3:// shown as text; thousands of rows without thumbnails. tests/render/test_review_page.py opens real pages."""

from __future__ import annotations

import json
import os
import re
import urllib.parse

import pandas as pd

from skinray.config import StorageConfig
from skinray.render import review_page
from skinray.scoring import worklist
from skinray.scoring.record import RunRecord


def _scored() -> pd.DataFrame:
    return pd.DataFrame({
        "input_row": [0, 1, 2, 3, 4, 5],
        "isic_id": ["ISIC_b", "ISIC_a", "ISIC_c", "ISIC_d", "ISIC_e", "ISIC_f"],
        "logit_malignant": [1.5, 1.5, 2.5, -1.0, 3.0, 0.2],
        "prob_malignant": [0.82, 0.82, 0.92, 0.27, 0.95, 0.55],
        "confidence": [0.82, 0.82, 0.92, 0.73, 0.95, 0.55],
        "predicted": ["malignant", "malignant", "malignant", "benign", "out_of_distribution", "malignant"],
        "dx_pred": ["mel", "bcc", "nv", "nv", "mel", None],
        # JSON text as scoring writes it, the table's map read back as pairs, a model without diagnoses
        "dx_probs": [json.dumps({"mel": 0.61, "nv": 0.39}), [("bcc", 0.7), ("nv", 0.3)],
                     [("mel", 0.2), ("nv", 0.8)], None, None, None],
        "image_uri": ["/data/b.jpg", "/data/a.jpg", "s3://bucket/c.jpg", "/data/d.jpg", "/data/e.jpg",
                      "/data/f.jpg"]})


def test_the_worklist_is_every_malignant_call_by_logit_ties_by_id(tmp_path):
    rows = worklist.write(str(tmp_path), _scored(), StorageConfig())
    read = pd.read_csv(tmp_path / worklist.FILE)
    assert list(read.columns) == worklist.COLUMNS
    # benign and out-of-distribution are not in it; the tie at 1.5 goes by image id, not input order
    assert read["isic_id"].tolist() == ["ISIC_c", "ISIC_a", "ISIC_b", "ISIC_f"] == rows["isic_id"].tolist()
    assert read["rank"].tolist() == [1, 2, 3, 4]
    assert read["dx_pred"].fillna("").tolist() == ["nv", "bcc", "mel", ""]
    assert read["dx_pred_prob"].tolist()[:3] == [0.8, 0.7, 0.61] and pd.isna(read["dx_pred_prob"][3])
    assert read["image_uri"].tolist()[0] == "s3://bucket/c.jpg"


def test_a_run_that_flags_nothing_still_writes_the_header(tmp_path):
    scored = _scored().assign(predicted="benign")
    assert worklist.write(str(tmp_path), scored, StorageConfig()).empty
    assert (tmp_path / worklist.FILE).read_text().strip() == ",".join(worklist.COLUMNS)


def test_links_find_the_image_from_the_page_folder(tmp_path):
    image = tmp_path / "night #1 (50% off)" / "ISIC 1.jpg"
    folder = tmp_path / "out" / "runs" / "r1"
    href = worklist.link(str(image), str(folder))
    assert not href.startswith(("/", "file:")) and " " not in href and "#" not in href  # relative, encoded
    assert os.path.normpath(os.path.join(folder, urllib.parse.unquote(href))) == str(image)
    assert worklist.link(str(image), "s3://bucket/out/runs/r1") == image.as_uri()  # a page kept on S3
    assert worklist.link("s3://bucket/images/ISIC_1.jpg", str(folder)) is None  # no browser opens s3://


def _page(flags: list[review_page.Flag], cards: list[review_page.Lesion] | None = None) -> str:
    return review_page.run_page(review_page.RunPage(
        run=RunRecord(run_id="r", scored_date="2026-11-25", status="succeeded", input="/in", model="/m", model_id="m",
                      threshold=0.5), flagged_count=len(flags), flagged=cards or [], borderline=[], failures={},
        drift={"reference": False}, trend=[], worklist=flags))


def test_the_page_lists_every_flagged_image_and_shows_s3_uris_as_text():
    flags = [review_page.Flag(1, "ISIC_1", 0.93, "mel", 0.61, "s3://bucket/night/ISIC_1.jpg", None),
             review_page.Flag(2, "ISIC_2", 0.71, None, None, "/data/ISIC_2.jpg", "../../data/ISIC_2.jpg")]
    cards = [review_page.Lesion(f.isic_id, "data:image/jpeg;base64,", None, f.prob, "malignant", uri=f.uri,
                                href=f.href) for f in flags]
    html = _page(flags, cards)
    card_html = html.split('<section id="flagged">')[1].split("</section>")[0]
    assert '<code class="uri">s3://bucket/night/ISIC_1.jpg</code>' in card_html
    assert '<a href="../../data/ISIC_2.jpg">full size</a>' in card_html
    assert 'id="worklist" data-count="2"' in html and "all 2 flagged images" in html
    assert '<code class="uri">s3://bucket/night/ISIC_1.jpg</code>' in html and 'href="s3:' not in html
    assert '<a href="../../data/ISIC_2.jpg">ISIC_2.jpg</a>' in html and "mel (0.61)" in html
    assert "s3:// image is shown as its URI" in html.split("<footer")[1]  # the footer says why
    # the intended use comes first, before the numbers
    assert html.index('id="intended-use"') < html.index('id="summary"')
    assert "triage support for a clinician" in html and "not a diagnosis" in html


def test_thousands_of_flagged_images_are_rows_of_text_not_thumbnails():
    n = 4038
    flags = [review_page.Flag(i + 1, f"ISIC_{i:07d}", 0.9, "mel", 0.5, f"/data/nightly/images/ISIC_{i:07d}.jpg",
                              f"../../../data/nightly/images/ISIC_{i:07d}.jpg") for i in range(n)]
    html = _page(flags)
    section = html.split('<section id="worklist"')[1].split("</section>")[0]
    assert re.findall(r'<td class="mono">(ISIC_\d+)</td>', section) == [f.isic_id for f in flags]
    assert "data:image" not in section and len(html) < 1_500_000
