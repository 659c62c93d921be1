"""Batch scoring: a night's image set → the scores table, every image of the night answered exactly once.

    OUT/scores/              Delta Lake table, one commit per submission   (skinray.scoring.table)
    OUT/runs/<run_id>/       run.json (claim, submissions, outcome) and a failed night's rows.parquet
                             (skinray.scoring.record), lease.json (skinray.scoring.runs), pictures, metrics and
                             the review page (skinray.scoring.report)
    OUT/_staging/<run_id>/   parts of a submission in progress              (skinray.scoring.staging)

A *run* is one night of one input and one model (the default run id hashes the three). Every submission of it
claims the run, holds a lease while it works, scores only the images the night has no answer for yet (new files,
or files whose bytes changed: ``image_stamp``) and commits them in one commit; a submission with nothing new
commits nothing. Killed at any point, the same command resumes; an image that could not be read for a passing
reason is not committed and the next submission reads it again (exit 75); a failed night (too many bad images) is
recorded as failed and stays failed on re-submit (exit 3).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pandas as pd

from skinray import DataError, SkinrayError, TemporaryError
from skinray.config import SkinrayConfig
from skinray.data import images
from skinray.decision import drift
from skinray.inference import engines, plan as ray_plan, predictor
from skinray.io import storage
from skinray.model import ood
from skinray.model.artifact import ModelArtifact
from skinray.runtime import versions
from skinray.scoring import (
    inputs as score_inputs,
    record as records,
    report as score_report,
    row_schema,
    runs,
    staging,
    table as scores_table,
    worklist,
)
from skinray.scoring.record import RunRecord

log = logging.getLogger("skinray.score")


def default_run_id(input_uri: str, model_id: str, date: str) -> str:
    """Same input, model and date → same run id (the night's), so re-submitting a nightly job scores only what is
    new instead of duplicating."""
    digest = hashlib.sha256(f"{storage.normalize(input_uri)}|{model_id}|{date}".encode()).hexdigest()[:10]
    return f"{date}-{digest}"


def input_fingerprint(rows: pd.DataFrame, model_id: str) -> str:
    """What this submission saw (its listing, the bytes' stamps and the model), for the record."""
    h = hashlib.sha256(model_id.encode())
    h.update(pd.util.hash_pandas_object(rows[["input_row", "isic_id", "image_uri", "image_stamp"]].astype(str),
                                        index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def _score_rows(todo: pd.DataFrame, cfg: SkinrayConfig, out: str, run_id: str, model_id: str,
                lease: runs.Lease) -> dict[str, Any]:
    """Runs the Ray Data plan over ``todo`` and stages its rows part by part; returns timing and placement."""
    s = cfg.score
    started = time.time()  # the time to the first rows counts building the plan (Ray's block metadata) too
    ds, actors = ray_plan.predict_dataset(todo, s.model, cfg, s.batch_size)
    writer = staging.PartWriter(out, run_id, cfg.storage)
    nodes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    n_views: Counter[int] = Counter()
    ready: set[float] = set()  # when each actor had its model loaded
    buffer: list[pd.DataFrame] = []
    done = buffered = 0
    first_at: float | None = None
    first_rows = 0

    def flush() -> None:
        nonlocal buffer, buffered
        if buffer:
            part = pd.concat(buffer, ignore_index=True).assign(run_id=run_id, model_id=model_id,
                                                                scored_at=pd.Timestamp.now(tz="UTC"))
            writer.write(row_schema.to_rows(part))
            buffer, buffered = [], 0

    for batch in ray_plan.pipeline_batches(ds, cfg):
        if lease.lost:
            raise SkinrayError(f"run {run_id} was taken over by another process; this one stops")
        if first_at is None:
            first_at, first_rows = time.time(), len(batch)
        nodes.update(batch["_node_id"].astype(str).tolist())
        modes.update(batch["_batch_mode"].astype(str).tolist())
        n_views.update({int(k): int(v) for k, v in batch["_views"].value_counts().items()})
        ready.update(batch["_ready_at"].tolist())
        buffer.append(batch.drop(columns=predictor.WORKER_COLUMNS))
        buffered += len(batch)
        done += len(batch)
        if buffered >= s.part_rows:
            flush()
            rate = done / max(time.time() - started, 1e-9)
            log.info("scored %s/%s images (%.0f img/s)", f"{done:,}", f"{len(todo):,}", rate,
                     extra={"event": {"run_id": run_id, "done": done, "total": int(len(todo)),
                                      "images_per_second": round(rate, 1)}})
    flush()
    finished = time.time()
    steady = None  # rows after the first batch over the time after it: start-up (model load, warm-up) excluded
    if first_at is not None and len(todo) > first_rows and finished > first_at:
        steady = round((len(todo) - first_rows) / (finished - first_at), 1)
    return {"actors": actors, "rows_by_node": dict(nodes), "batch_modes": dict(modes),
            "views": {str(k): v for k, v in sorted(n_views.items())},  # rows by views averaged (0: not scored)
            "startup_seconds": round((first_at or finished) - started, 2), "images_per_second_steady": steady,
            # the first and the last actor ready (Ray worker started, skinray imported, model opened): the rest of
            # the start-up is the first batch
            "actors_ready_seconds": [round(min(ready) - started, 2), round(max(ready) - started, 2)] if ready else None,
            "images_per_second_overall": round(len(todo) / max(finished - started, 1e-9), 1)}


def _retryable(rows: pd.DataFrame) -> pd.Series:
    """Rows whose image could not be read for a passing reason: not a result, read again by the next submit."""
    reason = images.error_reasons(rows["error"])
    return reason.isin(images.RETRYABLE_REASONS).fillna(False).astype(bool)


@dataclass
class Submission:
    """What one submission of a night has to do: the inputs without a current answer, and what is staged of them."""

    pending: pd.DataFrame  # input rows the night has no answer for (new images, changed bytes)
    staged: pd.DataFrame  # staged rows of pending images (an earlier attempt of this submission)
    answered: int  # images the night already has an answer for
    quarantined: list[str]  # staged parts that could not be read, moved aside (their images are scored again)

    @property
    def todo(self) -> pd.DataFrame:
        if self.staged.empty:
            return self.pending
        done = set(zip(self.staged["image_key"], self.staged["image_stamp"]))
        keep = [(k, s) not in done for k, s in zip(self.pending["image_key"], self.pending["image_stamp"])]
        return self.pending[keep].reset_index(drop=True)


def _plan(rows: pd.DataFrame, out: str, run_id: str, date: str, st: Any) -> Submission:
    """Compare the input with the night's answers and the staged parts."""
    answers = scores_table.answered(out, run_id, date, st)
    have = set(zip(answers["image_key"], answers["image_stamp"]))
    is_new = [(k, s) not in have for k, s in zip(rows["image_key"], rows["image_stamp"])]
    pending = rows[is_new].reset_index(drop=True)
    parts = staging.load(out, run_id, st)
    staged = parts.frame()
    if not staged.empty:  # keep the staged rows of pending images, numbered as this submission's input
        key = pending.set_index(["image_key", "image_stamp"])["input_row"]
        idx = pd.MultiIndex.from_arrays([staged["image_key"], staged["image_stamp"]])
        staged = staged[idx.isin(key.index)].reset_index(drop=True)
        staged["input_row"] = key.reindex(pd.MultiIndex.from_arrays(
            [staged["image_key"], staged["image_stamp"]])).to_numpy()
    return Submission(pending, staged, len(rows) - len(pending), parts.quarantined)


def _submitted(cfg: SkinrayConfig, run_id: str, date: str, input_uri: str, scoring_input: Any, fingerprint: str,
               artifact: ModelArtifact) -> RunRecord:
    """The record a submission starts with: what it knows before it scores."""
    return RunRecord.submitted(
        run_id=run_id, scored_date=date, input=input_uri, input_kind=scoring_input.kind, image_root=scoring_input.root,
        input_fingerprint=fingerprint, skipped_inputs=scoring_input.skipped, nulled_values=scoring_input.nulled,
        model=artifact.uri, model_id=artifact.model_id, engine=cfg.inference.engine,
        **artifact.views(cfg.inference.tta).record(), threshold=artifact.threshold,
        threshold_policy=artifact.meta.threshold.model_dump(), calibration=artifact.meta.calibration.model_dump(),
        diagnoses=artifact.diagnoses, table=scores_table.table_uri(cfg.score.out or ""),
        config=json.loads(cfg.model_dump_json(by_alias=True)), versions=versions())


def score(cfg: SkinrayConfig) -> RunRecord:
    """Score the night's images that have no answer yet, in one commit; returns the night's record (``run.json``).

    Raises :class:`TemporaryError` (exit 75) after committing when some images could not be read for a passing
    reason, and :class:`DataError` (exit 3) when the night failed on its data.
    """
    s, st = cfg.score, cfg.storage
    for name in ("model", "input", "out"):
        if not getattr(s, name):
            raise SkinrayError(f"score needs --{name}")
    started = time.time()
    date = s.night()
    out, input_uri = storage.normalize(s.out), storage.normalize(s.input)
    score_inputs.check_not_nested(input_uri, out)
    artifact = ModelArtifact.open(s.model, st)
    engines.check_engine(artifact, cfg.inference.engine)
    engines.check_loads(artifact, cfg.inference.engine)
    scoring_input = score_inputs.load(input_uri, s.input_kind, s.images, cfg.manifest, st)
    rows = scoring_input.rows
    run_id = s.run_id or default_run_id(input_uri, artifact.model_id, date)
    found = records.claim(out, run_id, date, input_uri, artifact.model_id, st)
    with runs.lease(out, run_id, s.lease_seconds, st) as lease:
        plan = _plan(rows, out, run_id, date, st)
        if found is not None and found.answers_all(len(plan.pending)):
            log.info("run %s: nothing new (%s images answered, table version %s)", run_id, f"{plan.answered:,}",
                     found.table_version, extra={"event": {
                         "run_id": run_id, "status": "nothing_new", "table_version": found.table_version}})
            staging.clear(out, run_id, st)
            return found.found_complete()
        run = _submitted(cfg, run_id, date, input_uri, scoring_input, input_fingerprint(rows, artifact.model_id),
                         artifact)
        if found is None:
            records.write(out, run, st)
        todo = plan.todo
        log.info("run %s: %s inputs (%s), %s answered before, %s staged, %s to score with %s", run_id,
                 f"{len(rows):,}", scoring_input.kind, f"{plan.answered:,}", f"{len(plan.staged):,}",
                 f"{len(todo):,}", cfg.inference.engine, extra={"event": {"run_id": run_id, "stage": "score"}})
        run = run.planned(scored_this_attempt=int(len(todo)), resumed_rows=int(len(plan.staged)),
                          quarantined_parts=plan.quarantined)
        if len(todo):
            run = run.throughput(**_score_rows(todo, cfg, out, run_id, artifact.model_id, lease))
            plan = _plan(rows, out, run_id, date, st)
        return _finish(plan, run, artifact, cfg, out, date, lease, started)


def _night(plan: Submission, out: str, run_id: str, st: Any) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, int]:
    """The night's answers after this submission (earlier submissions' and the new), the new rows to commit, which
    new rows wait to be read again, and how many submissions are committed already."""
    new = plan.staged
    if len(new) != len(plan.pending):
        raise SkinrayError(f"run {run_id}: {len(new)} scored rows for {len(plan.pending)} new inputs; the staged "
                           "parts are kept, run the same command again to finish", run_id=run_id)
    retry = _retryable(new) if len(new) else pd.Series(dtype=bool)
    final = new[~retry.to_numpy()] if len(new) else new
    committed = scores_table.submissions(out, run_id, st)
    earlier = scores_table.run_rows(out, run_id, st) if committed else pd.DataFrame()
    if len(earlier):
        earlier = earlier[~earlier["image_key"].isin(set(final.get("image_key", [])))]
    night = pd.concat([earlier, final], ignore_index=True) if len(earlier) else final.reset_index(drop=True)
    return night, final, retry, committed


def _finish(plan: Submission, run: RunRecord, artifact: ModelArtifact, cfg: SkinrayConfig, out: str, date: str,
            lease: runs.Lease, started: float) -> RunRecord:
    """Check, commit and record a scored submission; the night's pages and figures over its current answers."""
    st, s, run_id = cfg.storage, cfg.score, run.run_id
    night, final, retry, committed = _night(plan, out, run_id, st)
    run = run.outcome(night, int(retry.sum()), s.max_failure_fraction)
    run = run.with_figures(**_figures(night, artifact, s, run_id))
    if run.stays_failed:
        _record_failure(run, plan.staged, night, artifact, cfg, out)
    lease.check()
    if len(final):
        commit_started = time.time()
        scores_table.commit_run(out, run_id, date, row_schema.to_rows(final), run.commit_info(new=int(len(final))),
                                st, fail_at=s.fail_at, submission=committed + 1)
        run = run.committed_in(round(time.time() - commit_started, 3))
        if s.fail_at == "after_commit":
            os._exit(137)  # fault injection (tests): killed after the commit, before run.json says so
    run = run.finished(scores_table.run_submissions(out, run_id, st), wall_seconds=round(time.time() - started, 2))
    # the pictures and the review page after the commit: they show the table version and every timing
    run = score_report.write(out, night, artifact, cfg, run)
    records.write(out, run, st)
    staging.clear(out, run_id, st)
    _announce(run)
    if run.retry_later:
        raise TemporaryError(f"run {run_id}: {run.retry_later} images could not be read now (storage "
                             "unavailable); they are not in the table: run the same command again later",
                             run_id=run_id)
    return run


def _figures(night: pd.DataFrame, artifact: ModelArtifact, s: Any, run_id: str) -> dict[str, Any]:
    """The night's flagged count (the worklist's rows), mean, out-of-distribution share and drift, over its scored
    images."""
    scored = night[night["error"].isna()] if len(night) else night
    figures: dict[str, Any] = {"out_of_distribution": ood.summary(scored, artifact.meta.ood)}
    if figures["out_of_distribution"].get("high"):
        log.warning("run %s: %s of %s images are not like the training images (about %.0f%% expected)", run_id,
                    figures["out_of_distribution"]["flagged"], len(scored),
                    100 * figures["out_of_distribution"]["expected_share"])
    figures.update(flagged=int(len(worklist.flagged(scored))) if len(scored) else 0,
                   mean_prob=round(float(scored["prob_malignant"].mean()), 6) if len(scored) else None,
                   drift=drift.compare(artifact.reference(), scored, s.drift_psi, s.drift_ks_alpha))
    if figures["drift"]["drifted"]:
        log.warning("run %s drifted from the model's validation reference: %s", run_id,
                    ", ".join(figures["drift"]["flagged"]))
    return figures


def _record_failure(run: RunRecord, new: pd.DataFrame, night: pd.DataFrame, artifact: ModelArtifact,
                    cfg: SkinrayConfig, out: str) -> None:
    """A night failed on its data: its new rows go to ``rows.parquet``, never to the table; it stays failed."""
    st = cfg.storage
    where = records.write_rows(out, run.run_id, new, st)
    run = score_report.write(out, night, artifact, cfg, run.stopped())
    records.write(out, run, st)
    staging.clear(out, run.run_id, st)
    raise DataError(f"{run.failure_reason}; the rows are in {where}, not in the scores table", run_id=run.run_id)


def _announce(run: RunRecord) -> None:
    last = run.submissions[-1] if run.submissions else {}
    if last.get("started_at") != run.started_at:
        last = {}  # this submission committed nothing
    log.info("run %s: %s new images committed as table version %s; the night has %s scored, %s failed, %s flagged",
             run.run_id, f"{last.get('new', 0):,}", run.table_version, f"{run.scored:,}", f"{run.failed:,}",
             run.flagged, extra={"event": {k: getattr(run, k) for k in (
                 "run_id", "scored_date", "status", "rows", "scored", "failed", "failed_by_reason", "flagged",
                 "retry_later", "table_version", "wall_seconds", "images_per_second_steady",
                 "images_per_second_overall")} | {"drifted": (run.drift or {}).get("drifted"),
                                                  "submission": last.get("submission")}})
