"""What a scoring run shows people, written into ``OUT/runs/<run_id>/`` (this module owns those files):

    report.html            the review page (skinray.render.review_page): flagged and borderline lesions with saliency,
                           run health, drift against the model's validation reference, the trend of recent runs,
                           and with labels the metrics and plots
    score_histogram.png    the score distribution
    top_suspicious.png/csv the most suspicious images, ordered by the calibrated logit (never tied by the output)
    worklist.csv           every flagged image, most suspicious first (skinray.scoring.worklist), linked from the page
    out_of_distribution.csv  every image the out-of-distribution guard flagged (no call made: not in the worklist)
    metrics.json, roc.png, pr.png, confusion.png, calibration.png   when the input carries labels (as evaluate)

``skinray report OUT --run-id R`` (or ``--date D``) writes the page again for a finished run, over the rows its
record names (:func:`skinray.scoring.record.night_rows`), the images read under the root the record keeps.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from skinray import SkinrayError
from skinray.config import SkinrayConfig
from skinray.data import images
from skinray.decision import metrics
from skinray.decision.operating_point import describe
from skinray.inference.predictor import OUT_OF_DISTRIBUTION
from skinray.io import storage
from skinray.model import ood
from skinray.model.artifact import MODEL_FILE, ModelArtifact
from skinray.model.views import Views, per_image
from skinray.render import plots, review_page
from skinray.render.review_page import counts, fmt
from skinray.runtime import TRAIN_EXTRA_INSTALL, installed
from skinray.scoring import record as records, table as scores_table, worklist
from skinray.scoring.record import RunRecord
from skinray.scoring.runs import run_dir

log = logging.getLogger("skinray.report")
PAGE = "report.html"
OUTSIDE_CSV = "out_of_distribution.csv"  # every image the guard flagged
BORDERLINE = 12
TREND_RUNS = 30


def top_suspicious(scored: pd.DataFrame, k: int) -> pd.DataFrame:
    return scored.sort_values(["logit_malignant", "input_row"], ascending=[False, True]).head(k)


def out_of_distribution(scored: pd.DataFrame) -> pd.DataFrame:
    """The images the guard flagged, least like the training images first."""
    if "out_of_distribution" not in scored:
        return scored.iloc[:0]
    flagged = scored[scored["out_of_distribution"].fillna(False).astype(bool)]
    return flagged.sort_values(["ood_score", "input_row"], ascending=[False, True])


def borderline(scored: pd.DataFrame, threshold: float, k: int, exclude: pd.Index) -> pd.DataFrame:
    """The ``k`` images closest to the threshold (on the logit scale), either side, not already shown."""
    cut = np.log(threshold / (1 - threshold)) if 0 < threshold < 1 else 0.0
    rest = scored.drop(index=exclude, errors="ignore")
    return rest.assign(_gap=(rest["logit_malignant"] - cut).abs()).sort_values(["_gap", "input_row"]).head(k)


def _ids(rows: pd.DataFrame) -> list[str]:
    """The ids of failed rows for the page; a row without one (``empty_id``) by its input row."""
    return [str(i) if isinstance(i, str) else f"(row {r})" for i, r in zip(rows["isic_id"], rows["input_row"])]


def write(out: str, df: pd.DataFrame, artifact: ModelArtifact | None, cfg: SkinrayConfig, run: RunRecord
          ) -> RunRecord:
    """Pictures, metrics (with labels), the lists and the review page of one run over its rows ``df``; returns the
    record with what the report adds to ``run.json``. Images are read under the record's roots."""
    st, folder = cfg.storage, run_dir(out, run.run_id)
    df = run.with_roots(df)
    scored = df[df["error"].isna()]
    work = worklist.write(folder, scored, st)
    pictures, report = _pictures(folder, scored, artifact, cfg, run.threshold)
    plots.publish(pictures, folder, st)
    run = run.reported(pngs=list(pictures), metrics=report, worklist=worklist.FILE)
    page, seconds = _run_page(out, df, artifact, cfg, run, pictures, work)
    storage.write_text(storage.join(folder, PAGE), review_page.run_page(page), st)
    return run.explained(seconds)


def _pictures(folder: str, scored: pd.DataFrame, artifact: ModelArtifact | None, cfg: SkinrayConfig,
              threshold: float) -> tuple[dict[str, bytes], dict[str, Any] | None]:
    """The run's pictures (PNG bytes by name, in the order ``run.json`` lists them) and, with labels of both
    classes, its metrics; writes ``metrics.json`` and the lists of the suspicious and the out-of-distribution
    images beside them."""
    if not len(scored):
        return {}, None
    st = cfg.storage
    prob = scored["prob_malignant"].to_numpy(float)
    labels = scored["label"] if "label" in scored and scored["label"].notna().all() else None
    y = None if labels is None else labels.to_numpy().astype(int)
    report: dict[str, Any] | None = None
    if y is not None and len(set(y.tolist())) == 2:
        report = metrics.full_report(y, prob, threshold, n_boot=cfg.metrics.bootstrap)
        storage.write_json(storage.join(folder, "metrics.json"), report, st)
        labelled = plots.labelled_drawings(y, prob, threshold)
        drawings = {"score_histogram.png": labelled.pop("score_histogram.png"), **labelled}  # the histogram first
    else:
        drawings = {"score_histogram.png": lambda path: plots.plot_score_histogram(prob, path, threshold=threshold,
                                                                                     y_true=y)}
    outside = out_of_distribution(scored)
    if len(outside):
        storage.write_text(storage.join(folder, OUTSIDE_CSV), outside[
            ["isic_id", "image_uri", "ood_score", "prob_malignant", "dx_pred"]].to_csv(index=False), st)
    top = top_suspicious(scored[scored["predicted"] != OUT_OF_DISTRIBUTION], cfg.score.top_k)
    if len(top) and artifact is not None:
        storage.write_text(storage.join(folder, "top_suspicious.csv"), top[
            ["isic_id", "image_uri", "prob_malignant", "logit_malignant", "predicted", "dx_pred"]].to_csv(index=False),
            st)
        drawings["top_suspicious.png"] = lambda path: _contact_sheet(top, artifact, cfg, path)
    return plots.pngs(drawings), report


def _decoded(rows: pd.DataFrame, artifact: ModelArtifact, cfg: SkinrayConfig) -> list[np.ndarray | None]:
    image_cfg = artifact.image_config(cfg.image)
    out: list[np.ndarray | None] = []
    for r in rows.itertuples():
        try:
            out.append(images.load(r.image_uri, cfg.storage, image_cfg, getattr(r, "image_root", None)))
        except images.ImageError:
            out.append(None)  # the image changed since it was scored
    return out


def _cards(rows: pd.DataFrame, artifact: ModelArtifact | None, cfg: SkinrayConfig, cam: Any, folder: str
           ) -> tuple[list[review_page.Lesion], list[float]]:
    if artifact is None or rows.empty:
        return [], []
    arrays = _decoded(rows, artifact, cfg)
    shown = [(r, a) for r, a in zip(rows.itertuples(), arrays) if a is not None]
    maps: np.ndarray | None = None
    timings: list[float] = []
    if cam is not None and shown:
        maps, per_image = cam.timed(np.stack([a for _, a in shown]).astype(np.float32))
        timings.append(per_image)
    from skinray.model.saliency import overlay

    cards = []
    for i, (r, a) in enumerate(shown):
        cards.append(review_page.Lesion(
            isic_id=str(r.isic_id), image=review_page.jpeg(a),
            overlay=review_page.jpeg(overlay(a, maps[i])) if maps is not None else None,
            prob=float(r.prob_malignant), predicted=str(r.predicted),
            dx_pred=r.dx_pred if isinstance(getattr(r, "dx_pred", None), str) else None,
            uri=str(r.image_uri), href=worklist.link(str(r.image_uri), folder)))
    return cards, timings


def _saliency(artifact: ModelArtifact | None, cfg: SkinrayConfig) -> tuple[Any, str]:
    if cfg.score.explain_top_k <= 0:
        return None, "Saliency is off (score.explain_top_k = 0)."
    if artifact is None or MODEL_FILE not in artifact.meta.files:
        return None, "No saliency: the model's Keras file is not available."
    if not installed("tensorflow"):  # a scoring-only install: Grad-CAM needs the Keras model's gradients
        return None, f"No saliency: TensorFlow is not installed here ({TRAIN_EXTRA_INSTALL} adds Grad-CAM)."
    from skinray.model.saliency import GradCam

    cam = GradCam(artifact.load_keras())
    whose = (f"the {len(cam.members)} ensemble members' last blocks, for their mean logit" if len(cam.members) > 1
             else "MobileNetV2's last block")
    return cam, (f"Right of each image: Grad-CAM on {whose} — where the malignancy logit was most sensitive "
                 "(bright = more).")


def _trend(out: str, run: RunRecord, cfg: SkinrayConfig) -> list[dict[str, Any]]:
    """Recent committed runs (from the table's history) and this one, oldest first."""
    rows: list[dict[str, Any]] = []
    try:
        history = scores_table.snapshot(out, cfg.storage).runs
    except SkinrayError:
        history = pd.DataFrame()
    for rec in history.tail(TREND_RUNS).to_dict("records"):
        if rec.get("run_id") == run.run_id:
            continue
        rows.append(_trend_point(rec))
    rows.append(_point(run.run_id, run.scored_date, run.flagged, run.scored, run.failed, run.rows, run.mean_prob,
                       bool((run.drift or {}).get("drifted"))))
    return rows[-TREND_RUNS:]


def _trend_point(commit: dict[str, Any]) -> dict[str, Any]:
    """A point of the trend from a commit's metadata in the table's history (its values as text)."""
    def num(key: str) -> float | None:
        try:
            return float(commit.get(key))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None

    return _point(commit.get("run_id"), commit.get("scored_date"), num("flagged"), num("scored"), num("failed"),
                  num("rows"), num("mean_prob"), str(commit.get("drifted")).lower() == "true")


def _point(run_id: Any, scored_date: Any, flagged: float | None, scored: float | None, failed: float | None,
           rows: float | None, mean_prob: float | None, drifted: bool) -> dict[str, Any]:
    def finite(value: float | None) -> float | None:
        return value if value is not None and np.isfinite(value) else None

    flagged, scored, failed, rows, mean_prob = map(finite, (flagged, scored, failed, rows, mean_prob))
    return {"run_id": run_id, "scored_date": scored_date,
            "flag_rate": (flagged / scored) if scored and flagged is not None else None,
            "failure_rate": (failed / rows) if rows and failed is not None else None,
            "mean_prob": mean_prob, "drifted": drifted}


def _run_page(out: str, df: pd.DataFrame, artifact: ModelArtifact | None, cfg: SkinrayConfig, run: RunRecord,
              pngs: dict[str, bytes], work: pd.DataFrame) -> tuple[review_page.RunPage, float | None]:
    scored, folder = df[df["error"].isna()], run_dir(out, run.run_id)
    flagged_rows = worklist.flagged(scored).head(cfg.score.top_k)  # the worklist's first, as cards
    outside_rows = out_of_distribution(scored)
    near = borderline(scored.drop(index=outside_rows.index), run.threshold, BORDERLINE, flagged_rows.index)
    cam, note = _saliency(artifact, cfg)
    k = cfg.score.explain_top_k
    flagged, t1 = _cards(flagged_rows.head(k) if cam else flagged_rows, artifact, cfg, cam, folder)
    near_cards, t2 = _cards(near.head(k) if cam else near, artifact, cfg, cam, folder)
    outside, _ = _cards(outside_rows.head(cfg.score.top_k), artifact, cfg, None, folder)
    timings = t1 + t2
    failures = {str(reason): _ids(group) for reason, group in
                df[df["error"].notna()].assign(_r=lambda d: images.error_reasons(d["error"])).groupby("_r")}
    threshold_text = describe(artifact.meta.threshold) if artifact is not None else str(
        run.threshold_policy.get("policy", ""))
    guard_text = ood.describe(artifact.meta.ood) if artifact is not None else "unknown (the model cannot be opened)"
    page = review_page.RunPage(
        run=run, flagged_count=len(work), flagged=flagged, worklist=[review_page.Flag(
            int(w.rank), w.isic_id, float(w.prob_malignant), w.dx_pred, w.dx_pred_prob, w.image_uri,
            worklist.link(w.image_uri, folder)) for w in work.itertuples()],
        borderline=near_cards, failures=failures, drift=run.drift or {"reference": False},
        trend=_trend(out, run, cfg), health=health(run, threshold_text, guard_text),
        plots={k_: v for k_, v in pngs.items() if k_ in plots.LABELLED_PLOTS} if run.metrics else {},
        saliency_note=note, outside=outside, outside_count=int(len(outside_rows)), guard_text=guard_text)
    return page, (round(float(np.mean(timings)), 4) if timings else None)


def health(run: RunRecord, threshold_text: str, guard_text: str) -> list[dict[str, Any]]:
    """The page's run-health table: where the input came from, how it was scored, how long it took."""
    o = run.out_of_distribution or {}
    guard = (f" — {o['flagged']} of {o['scored']} scored images flagged ({fmt(o['share'])}, expected about "
             f"{fmt(o['expected_share'])})" + (": FAR MORE THAN EXPECTED — are these dermoscopy images of the kind "
                                               "the model was trained on?" if o.get("high") else "")
             if o.get("guard") else "")
    submissions = "; ".join(
        f"submission {x.get('submission')}: {x.get('new', '?')} new images, table version {x.get('table_version')}"
        + (f", {x['retry_later']} left to retry" if x.get("retry_later") else "") for x in run.submissions)
    views = Views(tta=run.tta, band=run.tta_band).describe(per_image(run.views))
    return [
        {"": "status", "value": f"{run.status}" + (f" — {run.failure_reason}" if run.failure_reason else "")},
        {"": "run id / date", "value": f"{run.run_id} / {run.scored_date}"},
        {"": "input", "value": f"{run.input} ({run.input_kind})"},
        {"": "left out of the input", "value": run.skipped_inputs or "nothing"},
        {"": "resumed rows", "value": run.resumed_rows},
        {"": "engine / views / batch mode", "value": f"{run.engine} / {views} / {counts(run.batch_modes)}"},
        {"": "model", "value": f"{run.model_id} ({run.model})"},
        {"": "threshold", "value": f"{fmt(run.threshold)}: {threshold_text}"},
        {"": "table version", "value": "not committed" if run.table_version is None else run.table_version},
        {"": "submissions (commits of this night)", "value": submissions or "none yet"},
        {"": "waiting to be read again (storage unavailable)", "value": run.retry_later},
        {"": "wall / start-up / commit", "value": f"{run.wall_seconds} s / "
                                                  f"{0 if run.startup_seconds is None else run.startup_seconds} s / "
                                                  f"{'n/a' if run.commit_seconds is None else run.commit_seconds} s"},
        {"": "scoring actors ready (first / last)",
         "value": " / ".join(f"{v} s" for v in run.actors_ready_seconds) if run.actors_ready_seconds else "n/a"},
        {"": "images per second (steady / overall)",
         "value": f"{run.images_per_second_steady} / {run.images_per_second_overall}"},
        {"": "rows per node", "value": counts(run.rows_by_node)},
        {"": "out-of-distribution guard", "value": guard_text + guard},
    ]


def _contact_sheet(rows: pd.DataFrame, artifact: ModelArtifact, cfg: SkinrayConfig, path: str) -> str | None:
    arrays, captions, flags = [], [], []
    for r, arr in zip(rows.itertuples(), _decoded(rows, artifact, cfg)):
        if arr is None:
            continue
        dx = f" {r.dx_pred}" if isinstance(getattr(r, "dx_pred", None), str) else ""
        arrays.append(arr)
        captions.append(f"{r.isic_id}\n{r.prob_malignant:.3f} {r.predicted}{dx}")
        flags.append(r.predicted == "malignant")
    return plots.contact_sheet(arrays, captions, path, highlight=flags) if arrays else None


def regenerate(out: str, cfg: SkinrayConfig, run_id: str | None = None, date: str | None = None) -> str:
    """Write a finished run's review page again (the latest committed run of ``date`` without ``run_id``)."""
    if run_id is None:
        if date is None:
            raise SkinrayError("report needs --run-id or --date")
        history = scores_table.snapshot(out, cfg.storage).runs
        match = history[history["scored_date"] == date].tail(1)
        if match.empty:
            raise SkinrayError(f"no committed run for {date} under {out}")
        run_id = str(match["run_id"].iloc[0])
    run = records.read(out, run_id, cfg.storage)
    if run is None:
        raise SkinrayError(f"no run {run_id} under {out}")
    df = records.night_rows(out, run, cfg.storage)
    try:
        artifact: ModelArtifact | None = ModelArtifact.open(run.model, cfg.storage)
    except SkinrayError as exc:
        log.warning("no images or saliency on the page: %s", exc)
        artifact = None
    write(out, df, artifact, cfg, run)
    return storage.join(run_dir(out, run_id), PAGE)
