"""Batch scoring: an image set → one committed run of the scores table, every input row exactly once.

    OUT/scores/              Delta Lake table, one commit per run          (skinray.scores_table)
    OUT/runs/<run_id>/       run.json (claim, outcome), lease.json, pictures and metrics (skinray.runs,
                             skinray.score_report)
    OUT/_staging/<run_id>/   parts of a run in progress                    (skinray.staging)

A run claims its id (one date, one input), holds a lease while it works, scores what its staged parts do not
hold yet, and publishes all rows in one commit. Killed at any point, the same command resumes; re-submitted after
success it does nothing; a failed run (too many unreadable images) is recorded as failed, never committed, and
stays failed on re-submit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import time
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from skinray import (SkinrayError, drift, inference, ood, runs, score_inputs, score_report, scores_table, staging,
                     storage)
from skinray.artifact import ModelArtifact
from skinray.config import SkinrayConfig
from skinray.results import RunRecord
from skinray.runtime import versions

log = logging.getLogger("skinray.score")


def default_run_id(input_uri: str, model_id: str, date: str) -> str:
    """Same input, model and date → same run id, so re-submitting a nightly job resumes instead of duplicating."""
    digest = hashlib.sha256(f"{storage.normalize(input_uri)}|{model_id}|{date}".encode()).hexdigest()[:10]
    return f"{date}-{digest}"


def input_fingerprint(rows: pd.DataFrame, model_id: str) -> str:
    h = hashlib.sha256(model_id.encode())
    h.update(pd.util.hash_pandas_object(rows[["input_row", "isic_id", "image_uri"]].astype(str),
                                        index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def _score_rows(todo: pd.DataFrame, cfg: SkinrayConfig, out: str, run_id: str, model_id: str,
                lease: runs.Lease) -> dict[str, Any]:
    """Runs the Ray Data plan over ``todo`` and stages its rows part by part; returns timing and placement."""
    s = cfg.score
    started = time.time()  # the time to the first rows counts building the plan (Ray's block metadata) too
    ds, actors = inference.predict_dataset(todo, s.model, cfg, s.batch_size)
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
            writer.write(scores_table.to_rows(part))
            buffer, buffered = [], 0

    for batch in inference.pipeline_batches(ds, cfg):
        if lease.lost:
            raise SkinrayError(f"run {run_id} was taken over by another process; this one stops")
        if first_at is None:
            first_at, first_rows = time.time(), len(batch)
        nodes.update(batch["_node_id"].astype(str).tolist())
        modes.update(batch["_batch_mode"].astype(str).tolist())
        n_views.update({int(k): int(v) for k, v in batch["_views"].value_counts().items()})
        ready.update(batch["_ready_at"].tolist())
        buffer.append(batch.drop(columns=inference.WORKER_COLUMNS))
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


def _outcome(result: pd.DataFrame, cfg: SkinrayConfig) -> dict[str, Any]:
    n_failed = int(result["error"].notna().sum())
    by_reason = result["error"].dropna().str.split(":").str[0].value_counts().to_dict()
    outcome: dict[str, Any] = {"rows": int(len(result)), "scored": int(len(result) - n_failed), "failed": n_failed,
                               "failed_by_reason": {str(k): int(v) for k, v in by_reason.items()},
                               "status": "succeeded"}
    share = n_failed / max(len(result), 1)
    if share > cfg.score.max_failure_fraction:
        outcome["status"] = "failed"
        outcome["failure_reason"] = (f"{n_failed} of {len(result)} images could not be scored ({share:.1%} > "
                                     f"score.max_failure_fraction {cfg.score.max_failure_fraction:.1%})")
    return outcome


def score(cfg: SkinrayConfig) -> RunRecord:
    """Score every input row exactly once into one committed run; returns the run's record (``run.json``)."""
    s, st = cfg.score, cfg.storage
    for name in ("model", "input", "out"):
        if not getattr(s, name):
            raise SkinrayError(f"score needs --{name}")
    started = time.time()
    date = s.date or dt.datetime.now(dt.timezone.utc).date().isoformat()
    out, input_uri = storage.normalize(s.out), storage.normalize(s.input)
    score_inputs.check_not_nested(input_uri, out)
    artifact = ModelArtifact.open(s.model, st)
    inference.check_engine(artifact, cfg.inference.engine)
    inference.check_loads(artifact, cfg.inference.engine)
    scoring_input = score_inputs.load(input_uri, s.input_kind, s.images, cfg.manifest, st)
    rows = scoring_input.rows
    run_id = s.run_id or default_run_id(input_uri, artifact.model_id, date)
    fingerprint = input_fingerprint(rows, artifact.model_id)
    record = runs.claim(out, run_id, date, input_uri, fingerprint, st)
    if record and record.get("status") == "succeeded" and scores_table.is_committed(out, run_id, st):
        log.info("run %s is already complete (table version %s): nothing to do", run_id, record.get("table_version"),
                 extra={"event": {"run_id": run_id, "status": "already_complete",
                                  "table_version": record.get("table_version")}})
        return RunRecord.from_record(record, already_complete=True)

    with runs.lease(out, run_id, s.lease_seconds, st) as lease:
        summary: dict[str, Any] = {
            "run_id": run_id, "scored_date": date, "status": "running", "input": input_uri,
            "input_kind": scoring_input.kind, "input_fingerprint": fingerprint, "skipped_inputs": scoring_input.skipped,
            "model": artifact.uri, "model_id": artifact.model_id, "engine": cfg.inference.engine,
            **inference.resolve_views(artifact, cfg.inference.tta).record(), "threshold": artifact.threshold,
            "threshold_policy": artifact.meta.threshold.model_dump(),
            "calibration": artifact.meta.calibration.model_dump(), "diagnoses": artifact.diagnoses,
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "table": scores_table.table_uri(out), "config": json.loads(cfg.model_dump_json(by_alias=True)),
            "versions": versions(),
        }
        if record is None:
            runs.write(out, summary, st)
        staged = staging.load(out, run_id, st)
        committed = scores_table.is_committed(out, run_id, st)  # killed after its commit, before run.json
        done = staged.done()
        todo = rows[~rows["input_row"].isin(done)].reset_index(drop=True) if not committed else rows.iloc[:0]
        log.info("run %s: %s inputs (%s), %s already scored, %s to score with %s", run_id, f"{len(rows):,}",
                 scoring_input.kind, f"{len(done):,}", f"{len(todo):,}", cfg.inference.engine)
        summary.update(scored_this_attempt=int(len(todo)), resumed_rows=int(len(done)),
                       quarantined_parts=staged.quarantined)
        if len(todo):
            summary.update(_score_rows(todo, cfg, out, run_id, artifact.model_id, lease))
            staged = staging.load(out, run_id, st)
        result = (scores_table.run_rows(out, run_id, st) if committed
                  else staged.rows.to_pandas() if staged.rows is not None else pd.DataFrame())
        if len(result) != len(rows) or not np.array_equal(np.sort(result["input_row"].to_numpy()),
                                                          rows["input_row"].to_numpy()):
            raise SkinrayError(f"run {run_id}: {len(result)} scored rows for {len(rows)} inputs; the staged parts "
                               "are kept, run the same command again to finish")
        result = result.merge(rows[["input_row", "image_root"]], on="input_row", how="left")
        summary.update(_outcome(result, cfg))
        scored = result[result["error"].isna()]
        summary.update(out_of_distribution=ood.summary(scored, artifact.meta.ood))
        if summary["out_of_distribution"].get("high"):
            log.warning("run %s: %s of %s images are not like the training images (about %.0f%% expected)", run_id,
                        summary["out_of_distribution"]["flagged"], len(scored),
                        100 * summary["out_of_distribution"]["expected_share"])
        summary.update(flagged=int((scored["predicted"] == "malignant").sum()),
                       mean_prob=round(float(scored["prob_malignant"].mean()), 6) if len(scored) else None,
                       drift=drift.compare(artifact.reference(), scored, s.drift_psi, s.drift_ks_alpha))
        if summary["drift"]["drifted"]:
            log.warning("run %s drifted from the model's validation reference: %s", run_id,
                        ", ".join(summary["drift"]["flagged"]))
        summary.update(finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       wall_seconds=round(time.time() - started, 2))
        if summary["status"] == "failed":
            storage.write_parquet(staged.rows, storage.join(runs.run_dir(out, run_id), "rows.parquet"), st)
            summary.update(score_report.write(out, run_id, result, artifact, cfg, summary))
            runs.write(out, summary, st)
            staging.clear(out, run_id, st)
            raise SkinrayError(summary["failure_reason"] + f"; the rows are in {runs.run_dir(out, run_id)}"
                               "/rows.parquet, not in the scores table")
        lease.check()
        commit_meta = {k: summary[k] for k in ("status", "rows", "scored", "failed", "failed_by_reason", "flagged",
                                               "mean_prob", "model_id", "input", "engine", "threshold")}
        commit_meta["drifted"] = summary["drift"]["drifted"]
        commit_meta["out_of_distribution"] = summary["out_of_distribution"].get("flagged")
        commit_started = time.time()
        summary["table_version"] = (scores_table.run_version(out, run_id, st) if committed else
                                    scores_table.commit_run(out, run_id, date, staged.rows, commit_meta, st,
                                                            fail_at=s.fail_at))
        summary["commit_seconds"] = round(time.time() - commit_started, 3)
        if s.fail_at == "after_commit":
            os._exit(137)  # fault injection (tests): killed after the commit, before run.json says so
        # the pictures and the review page after the commit: they show the table version and every timing
        summary.update(score_report.write(out, run_id, result, artifact, cfg, summary))
        runs.write(out, summary, st)
        staging.clear(out, run_id, st)
    log.info("run %s committed as table version %s: %s scored, %s failed, %s flagged", run_id,
             summary["table_version"], f"{summary['scored']:,}", f"{summary['failed']:,}", summary["flagged"],
             extra={"event": {k: summary.get(k) for k in (
                 "run_id", "scored_date", "status", "rows", "scored", "failed", "failed_by_reason", "flagged",
                 "table_version", "wall_seconds", "images_per_second_steady", "images_per_second_overall")}
                 | {"drifted": summary["drift"]["drifted"]}})
    return RunRecord.from_record(summary)
