"""The review page of a scoring run, opened in a real headless Chromium: it renders without errors, every image
loads, its flagged count is the table's, it lists every flagged image (as ``worklist.csv`` does) and each link
opens its full-size image, and its drift section flags a run built to drift and only that one.

Chromium comes from Debian's `chromium` package: installed here when absent, the tests skip with the reason only
where it cannot be installed.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinray.config import load_config
from skinray.data.synth import generate
from skinray.decision import drift
from skinray.inference.predictor import ImagePredictor
from skinray.io import storage
from skinray.model import artifact
from skinray.query import run_query
from skinray.scoring import worklist
from skinray.scoring.run import score

from conftest import run_cli

pytestmark = pytest.mark.slow
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _find_browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


@pytest.fixture(scope="module")
def chromium() -> str:
    found = _find_browser()
    if found:
        return found
    apt = shutil.which("apt-get")
    why = "no apt-get"
    if apt and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in ([apt, "install", "-y", "-q", "chromium"], [apt, "update", "-q"],
                        [apt, "install", "-y", "-q", "chromium"]):
            proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
            found = _find_browser()
            if found:
                return found
            why = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["unknown"]
    elif apt:
        why = "not root: cannot apt-get install chromium"
    pytest.skip(f"headless Chromium is not available and could not be installed: {why}")


def _render(browser: str, page: str, shot: str) -> tuple[str, str]:
    """(the DOM after the page's own checks ran, Chromium's stderr), and a screenshot."""
    base = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--hide-scrollbars", "--virtual-time-budget=8000", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*base, "--dump-dom", f"file://{page}"], capture_output=True, text=True, timeout=180)
    pic = subprocess.run([*base, "--window-size=1280,2600", f"--screenshot={shot}", f"file://{page}"],
                         capture_output=True, text=True, timeout=180)
    return dom.stdout, dom.stderr + pic.stderr


def _republish(model_dir: str, root, meta, files: dict | None = None) -> str:
    """A copy of the session's model at ``root/model`` with ``meta`` (and extra JSON ``files``)."""
    staged = root / "staged"
    shutil.copytree(model_dir, staged, ignore=shutil.ignore_patterns("_ray", artifact.META_FILE))
    for name, value in (files or {}).items():
        storage.write_json(str(staged / name), value)
    artifact.write(str(staged), str(root / "model"), meta)
    return str(root / "model")


@pytest.fixture(scope="module")
def reference_model(model_dir, tmp_path_factory):
    """The session's model with a validation reference measured on images from the synthetic generator."""
    root = tmp_path_factory.mktemp("ref-model")
    images = root / "ref-images"
    generate(str(images), 300, image_size=64, schema="isic", seed=11)
    files = sorted(str(p) for p in (images / "images").iterdir())
    result, _ = ImagePredictor(model_dir).score_uris(files)
    reference = drift.profile(result[result["error"].isna()])
    return _republish(model_dir, root, artifact.ModelArtifact.open(model_dir).meta,
                      {artifact.REFERENCE_FILE: reference})


@pytest.fixture(scope="module")
def two_nights(reference_model, ray_session, tmp_path_factory):
    """Night 1: new images from the same generator. Night 2: the same kind of images with a colour cast."""
    root = tmp_path_factory.mktemp("nights")
    generate(str(root / "night1"), 240, image_size=64, schema="isic", seed=12)
    generate(str(root / "night2"), 240, image_size=64, schema="isic", seed=13)
    for path in (root / "night2" / "images").iterdir():
        arr = np.asarray(Image.open(path).convert("RGB"), np.float32)
        arr[..., 1:] *= 0.55  # a reddish camera
        Image.fromarray(arr.astype(np.uint8)).save(path, "JPEG", quality=90)
    out = str(root / "out")
    runs = {}
    for night, date in (("night1", "2026-11-24"), ("night2", "2026-11-25")):
        runs[night] = score(load_config(overrides={
            "score.model": reference_model, "score.input": str(root / night / "images"), "score.out": out,
            "score.date": date, "score.explain_top_k": 6, "score.top_k": 12}))
    return out, runs


@pytest.fixture(scope="module")
def many_flagged(model_dir, ray_session, tmp_path_factory):
    """A run that flags far more images than the page has cards: the session's model with its threshold moved to
    the 30th percentile of these images' probabilities, on a folder whose name needs escaping in a link."""
    root = tmp_path_factory.mktemp("many")
    generate(str(root / "gen"), 60, image_size=64, schema="isic", seed=14)
    folder = root / "night #3 (50% off)"
    shutil.move(str(root / "gen" / "images"), folder)
    files = sorted(str(p) for p in folder.iterdir())
    result, _ = ImagePredictor(model_dir).score_uris(files)
    low = float(np.quantile(result["prob_malignant"].dropna(), 0.3))
    meta = artifact.ModelArtifact.open(model_dir).meta
    model = _republish(model_dir, root, meta.model_copy(update={
        "threshold": meta.threshold.model_copy(update={"threshold": low})}))
    out = str(root / "out")
    run = score(load_config(overrides={
        "score.model": model, "score.input": str(folder), "score.out": out,
        "score.date": "2026-11-26", "score.explain_top_k": 4, "score.top_k": 4}))
    assert run.flagged > 4 * 5, f"{run.flagged} flagged: the low threshold should flag most of the 60 images"
    return out, run


def _check_page(browser: str, out: str, run: dict, tmp_path) -> str:
    page = os.path.join(out, "runs", run.run_id, "report.html")
    assert os.path.getsize(page) < 5_000_000  # self-contained, thumbnails only
    text = open(page).read()
    assert not re.search(r"""(src|href)=["']https?://""", text), "no CDN, no internet"
    dom, log = _render(browser, page, str(tmp_path / f"{run.run_id}.png"))
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-checked="yes"' in body, body
    loaded, total = map(int, re.search(r'data-images="(\d+)/(\d+)"', body).groups())
    assert total > 0 and loaded == total, body  # every image decoded
    assert 'data-errors="0"' in body and "Uncaught" not in log, log[-2000:]
    shown = int(re.search(r'id="flagged-count">(\d+)<', dom).group(1))
    table = run_query(out, f"SELECT count(*) AS n FROM scores WHERE run_id = '{run.run_id}' "
                           "AND predicted = 'malignant'")["n"][0]
    assert shown == table == run.flagged
    assert '<section id="borderline">' in dom and '<section id="health">' in dom
    for reason, n in run.failed_by_reason.items():  # every failing image is named under its reason
        assert f"<b>{reason}</b> ({n})" in dom
    with Image.open(tmp_path / f"{run.run_id}.png") as shot:
        assert shot.size == (1280, 2600) and len(set(shot.convert("L").getdata())) > 50  # drawn, not blank
    assert dom.index('id="intended-use"') < dom.index('id="summary"') and "not a diagnosis" in dom
    _check_worklist(out, run, dom)
    _check_links(browser, page, dom, tmp_path)
    return dom


def _check_worklist(out: str, run, dom: str) -> None:
    """worklist.csv and the page's table: every flagged image of the run, in the table's logit order."""
    rows = pd.read_csv(os.path.join(out, "runs", run.run_id, worklist.FILE))
    assert len(rows) == run.record["flagged"] == run.flagged and run.record["worklist"] == worklist.FILE
    expected = run_query(out, f"SELECT isic_id, image_uri FROM scores WHERE run_id = '{run.run_id}' AND "
                              "predicted = 'malignant' ORDER BY logit_malignant DESC, isic_id")
    assert rows["isic_id"].tolist() == expected["isic_id"].tolist()
    assert rows["image_uri"].tolist() == expected["image_uri"].tolist()
    assert rows["logit_malignant"].is_monotonic_decreasing and rows["rank"].tolist() == list(range(1, len(rows) + 1))
    section = dom.split('<section id="worklist"')[1].split("</section>")[0]
    assert re.findall(r'<td class="mono">([^<]*)</td>', section) == rows["isic_id"].tolist()


def _check_links(browser: str, page: str, dom: str, tmp_path) -> None:
    """Every link on the page opens its full-size image: a probe page beside it (so each link resolves as from the
    page) loads every target as an image in Chromium."""
    hrefs = [html.unescape(h) for h in re.findall(r'<a [^>]*href="([^"]*)"', dom)]
    assert hrefs and not [h for h in hrefs if h.startswith(("/", "file:", "s3:"))]  # local images: relative links
    probe = os.path.join(os.path.dirname(page), "links-probe.html")
    from skinray.render.review_page import CHECK_SCRIPT

    with open(probe, "w") as f:
        f.write(f"<!doctype html><html><head><script>{CHECK_SCRIPT}</script></head><body>"
                + "".join(f'<img src="{html.escape(h)}" alt="">' for h in hrefs) + "</body></html>")
    try:
        probed, _ = _render(browser, probe, str(tmp_path / "links-probe.png"))
    finally:
        os.remove(probe)
    body = re.search(r"<body([^>]*)>", probed).group(1)
    assert f'data-images="{len(hrefs)}/{len(hrefs)}"' in body, body


def test_the_page_check_counts_script_errors_and_broken_images(chromium, tmp_path):
    """The check the other tests rely on can fail: an error, a console.error and a broken image are all seen."""
    from skinray.render.review_page import CHECK_SCRIPT

    page = tmp_path / "broken.html"
    page.write_text(f"<!doctype html><html><head><script>{CHECK_SCRIPT}</script></head><body>"
                    '<img src="data:image/png;base64,AAAA" alt="broken"><script>console.error("boom");'
                    "undefined_function();</script></body></html>")
    dom, _ = _render(chromium, str(page), str(tmp_path / "broken.png"))
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-checked="yes"' in body and 'data-images="0/1"' in body and 'data-errors="3"' in body, body  # the image's error event counts too


def test_review_pages_render_and_flag_only_the_drifted_night(chromium, two_nights, tmp_path):
    out, runs = two_nights
    calm = _check_page(chromium, out, runs["night1"], tmp_path)
    cast = _check_page(chromium, out, runs["night2"], tmp_path)
    assert 'data-drift="stable"' in calm and not runs["night1"].record["drift"]["drifted"]
    assert '<section id="metrics">' not in calm  # a folder of images has no labels: no metrics to show
    assert 'data-drift="drifted"' in cast and runs["night2"].record["drift"]["drifted"]
    assert {"mean_green", "mean_blue"} <= set(runs["night2"].record["drift"]["flagged"])
    assert "mean_red" not in runs["night1"].record["drift"]["flagged"]
    # both nights on the second page's trend, the drifted one marked
    assert cast.count("<circle") >= 2 and 'fill="#c0262d"' in cast
    assert runs["night1"].record["saliency_seconds_per_image"] > 0
    assert "Grad-CAM" in calm and calm.count('alt="saliency of') >= 1


def test_every_flagged_image_is_on_the_worklist_and_the_page_beyond_the_cards(chromium, many_flagged, tmp_path):
    out, run = many_flagged
    dom = _check_page(chromium, out, run, tmp_path)  # worklist.csv, the table and every link, as for any run
    cards = dom.split('<section id="flagged">')[1].split("</section>")[0]
    assert cards.count('<div class="lesion') == 4 < run.flagged  # thumbnails only for the first cards
    assert f'<section id="worklist" data-count="{run.flagged}">' in dom
    assert "%20%233%20%2850%25%20off%29/" in dom  # the folder's name, escaped in each link


def test_report_command_writes_the_page_again(two_nights, tmp_path):
    out, runs = two_nights
    page = os.path.join(out, "runs", runs["night1"].run_id, "report.html")
    written = open(os.path.join(out, "runs", runs["night1"].run_id, worklist.FILE)).read()
    os.remove(page)
    os.remove(os.path.join(out, "runs", runs["night1"].run_id, worklist.FILE))
    proc = run_cli("report", out, "--date", "2026-11-24")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == page and os.path.exists(page)
    # the worklist again, from the table (where the diagnoses' probabilities are a map, not JSON text)
    assert open(os.path.join(out, "runs", runs["night1"].run_id, worklist.FILE)).read() == written
    missing = run_cli("report", out, "--date", "2026-01-01")
    assert missing.returncode == 2 and "no committed run for 2026-01-01" in missing.stderr


def test_counts_read_as_words_not_dicts():
    from skinray.render.review_page import counts

    assert counts({"probing": 64, "per_image": 9951}) == "per_image 9,951 · probing 64"
    assert counts({"6f47627983c833db287b0d387cce2b4d": 10015}) == "6f47627983c8… 10,015"
    assert counts({}) == counts(None) == "n/a"


def test_a_run_with_many_images_unlike_the_training_images_says_so_in_its_health():
    from skinray.render.review_page import Lesion, RunPage, run_page
    from skinray.scoring.record import RunRecord
    from skinray.scoring.report import health

    many = {"guard": True, "flagged": 40, "scored": 100, "share": 0.4, "expected_share": 0.05, "high": True}

    def page(ood: dict, **extra) -> str:
        run = RunRecord(run_id="r", scored_date="2026-11-25", status="succeeded", input="/in", model="/m",
                        model_id="m", threshold=0.5, out_of_distribution=ood)
        return run_page(RunPage(run=run, flagged_count=0, flagged=[], borderline=[], failures={},
                                drift={"reference": False}, trend=[], health=health(run, "t", "g"), **extra))

    html = page(many, outside=[Lesion("x1", "data:image/jpeg;base64,", None, 0.2, "out_of_distribution")],
                outside_count=40, guard_text="Mahalanobis distance ...")
    assert 'id="out-of-distribution" data-count="40"' in html and "FAR MORE THAN EXPECTED" in html
    assert "40 of 100 scored images flagged" in html and "x1" in html
    calm = page({**many, "flagged": 5, "share": 0.05, "high": False}, guard_text="g")
    assert "FAR MORE" not in calm and "(none)" in calm
