"""Batch scoring on Ray Data → a date-partitioned Parquet dataset, resumable and published atomically.

Layout under ``--out``::

    scores/scored_date=D/run_id=R/part-00000.parquet   published rows (Hive partitions give date and run id)
    runs/R/run.json, metrics.json, *.png, _SUCCESS      bookkeeping; _SUCCESS is written last
    _staging/R/part-*.parquet, _input.json              a run in progress (underscore: ignored by readers)

A part file is written whole or not at all, so a crashed run resumes by scoring only rows missing from its parts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
import time
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from skinray import SkinrayError, images, inference, metrics, schema, storage
from skinray.config import SkinrayConfig
from skinray.model import ModelArtifact
from skinray.runtime import cluster_cpus, cluster_gpus, dataset_from_frame, ensure_ray, versions
from skinray.storage import StorageConfig

CARRIED_COLUMNS = ["label", "benign_malignant", "dx", "age_approx", "sex", "anatom_site_general", "lesion_id"]
OUTPUT_SCHEMA = pa.schema(
    [
        ("input_row", pa.int64()),
        ("isic_id", pa.string()),
        ("image_uri", pa.string()),
        ("prob_malignant", pa.float32()),
        ("predicted", pa.string()),
        ("confidence", pa.float32()),
        ("threshold", pa.float32()),
        ("model_id", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
        ("error", pa.string()),
        ("label", pa.int8()),
        ("benign_malignant", pa.string()),
        ("dx", pa.string()),
        ("age_approx", pa.float32()),
        ("sex", pa.string()),
        ("anatom_site_general", pa.string()),
        ("lesion_id", pa.string()),
    ]
)
SUCCESS = "_SUCCESS"


def load_input_rows(input_uri: str, images_root: str | None, template: str, storage_cfg: StorageConfig,
                    malignant_dx: list[str]) -> pd.DataFrame:
    """Any accepted input (manifest in either schema, or a bare image folder) → one row per input, in order."""
    if not storage.exists(input_uri, storage_cfg):
        raise SkinrayError(f"input not found: {input_uri}")
    if storage.is_dir(input_uri, storage_cfg) and not storage.list_files(input_uri, storage_cfg, (".parquet",)):
        rows = schema.list_image_folder(input_uri, storage_cfg)
        for col in CARRIED_COLUMNS:
            rows[col] = None
        if rows.empty:
            raise SkinrayError(f"no .jpg/.jpeg/.png images under {input_uri}")
    else:
        raw = schema.read_manifest(input_uri, storage_cfg)
        if raw.empty:
            raise SkinrayError(f"manifest {input_uri} has no rows")
        canon = schema.to_canonical(raw, "auto", malignant_dx, labels_required=False)
        root = storage.normalize(images_root) if images_root else None
        raw_cols = raw.astype("string").fillna("").to_dict("records")
        uris: list[str | None] = []
        for rid, ref, cols in zip(canon["isic_id"], canon["_image_ref"], raw_cols):
            if rid is None and not ref:
                uris.append(None)
            elif rid is not None and not ref and schema.unsafe_id(rid):
                uris.append(None)
            else:
                uris.append(schema.resolve_image_uri(rid or "", ref, root, template, cols))
        canon["image_uri"] = uris
        rows = canon[["isic_id", "image_uri", *CARRIED_COLUMNS]].reset_index(drop=True)
    rows.insert(0, "input_row", np.arange(len(rows), dtype=np.int64))
    return rows


def input_fingerprint(rows: pd.DataFrame, model_id: str) -> str:
    h = hashlib.sha256(model_id.encode())
    h.update(pd.util.hash_pandas_object(rows[["input_row", "isic_id", "image_uri"]].astype(str),
                                        index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def _to_table(df: pd.DataFrame) -> pa.Table:
    df = df.copy()
    df["label"] = pd.array(df["label"], dtype="Int8")
    for col in ("isic_id", "image_uri", "predicted", "error", "benign_malignant", "dx", "sex",
                "anatom_site_general", "lesion_id", "model_id"):
        df[col] = df[col].astype("object").where(df[col].notna(), None)
    return pa.Table.from_pandas(df[OUTPUT_SCHEMA.names], schema=OUTPUT_SCHEMA, preserve_index=False)


class RunLayout:
    """Where one run's files live."""

    def __init__(self, out: str, date: str, run_id: str) -> None:
        self.out, self.date, self.run_id = out, date, run_id
        self.staging = storage.join(out, "_staging", run_id)
        self.final = storage.join(out, "scores", f"scored_date={date}", f"run_id={run_id}")
        self.run_dir = storage.join(out, "runs", run_id)
        self.success = storage.join(self.run_dir, SUCCESS)


def _done_rows(layout: RunLayout, storage_cfg: StorageConfig) -> tuple[set[int], int]:
    """Rows already committed in staging parts, and the next part number."""
    parts = storage.list_files(layout.staging, storage_cfg, suffixes=(".parquet",))
    done: set[int] = set()
    for part in parts:
        done.update(storage.read_parquet(part, storage_cfg).column("input_row").to_pylist())
    return done, len(parts)


def _pipeline(todo: pd.DataFrame, cfg: SkinrayConfig) -> Any:
    """The Ray Data plan: rows → actor pool (read + decode + predict) → pandas batches at the driver."""
    ray = ensure_ray()
    s = cfg.score
    if s.use_gpu:
        gpus = cluster_gpus()
        if gpus == 0:
            raise SkinrayError("--gpu was given but the Ray cluster has no GPUs")
        actors = s.actors or gpus
    else:
        actors = s.actors or max(1, int(cluster_cpus() // s.cpus_per_actor))
    # Small blocks: rows reach the driver (and its Parquet parts) a block at a time, so a block of a few batches
    # keeps memory flat and progress smooth; per-block overhead is small next to decode + inference.
    blocks = max(actors * 4, int(np.ceil(len(todo) / (s.batch_size * 2))))
    ds = dataset_from_frame(todo, blocks)
    return ds.map_batches(
        inference.ImagePredictor,
        fn_constructor_kwargs={
            "model_uri": s.model,
            "storage_cfg": cfg.storage,
            "engine": s.engine,
            "use_gpu": s.use_gpu,
            "threads": max(1, int(s.cpus_per_actor)),
            "tta": s.tta,
            "image_guards": cfg.image,
        },
        batch_size=s.batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=s.cpus_per_actor,
        num_gpus=1 if s.use_gpu else 0,
    ), actors


def _write_reports(layout: RunLayout, df: pd.DataFrame, artifact: ModelArtifact, cfg: SkinrayConfig,
                   storage_cfg: StorageConfig) -> dict[str, Any]:
    """Histogram, top-K sheet and (with labels) metrics + plots into runs/<id>/."""
    scored = df[df["error"].isna()]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        if len(scored):
            y = scored["label"] if scored["label"].notna().all() else None
            files.append(metrics.plot_score_histogram(scored["prob_malignant"].to_numpy(),
                                                      os.path.join(tmp, "score_histogram.png"),
                                                      threshold=artifact.threshold,
                                                      y_true=None if y is None else y.to_numpy().astype(int)))
            if y is not None and y.nunique() == 2:
                yt, pr = y.to_numpy().astype(int), scored["prob_malignant"].to_numpy()
                report = metrics.full_report(yt, pr, artifact.threshold, n_boot=cfg.evaluate.bootstrap)
                storage.write_json(storage.join(layout.run_dir, "metrics.json"), report, storage_cfg)
                out["metrics"] = report
                files += [
                    metrics.plot_roc(yt, pr, os.path.join(tmp, "roc.png"), threshold=artifact.threshold),
                    metrics.plot_confusion(yt, pr, artifact.threshold, os.path.join(tmp, "confusion.png")),
                    metrics.plot_calibration(yt, pr, os.path.join(tmp, "calibration.png")),
                ]
            top = scored.nlargest(cfg.score.top_k, "prob_malignant")
            if len(top):
                storage.write_text(storage.join(layout.run_dir, "top_suspicious.csv"),
                                   top[["isic_id", "image_uri", "prob_malignant", "predicted"]].to_csv(index=False),
                                   storage_cfg)
                files.append(_contact_sheet(top, artifact, storage_cfg, os.path.join(tmp, "top_suspicious.png")))
        for path in files:
            with open(path, "rb") as f:
                storage.write_bytes(storage.join(layout.run_dir, os.path.basename(path)), f.read(), storage_cfg)
        out["pngs"] = [os.path.basename(p) for p in files]
    return out


def _contact_sheet(rows: pd.DataFrame, artifact: ModelArtifact, storage_cfg: StorageConfig, path: str) -> str:
    image_cfg = images.image_config_from_spec(artifact.meta["preprocessing"])
    arrays, captions, flags = [], [], []
    for r in rows.itertuples():
        arrays.append(inference.read_and_decode(r.image_uri, storage_cfg, image_cfg))
        captions.append(f"{r.isic_id}\n{r.prob_malignant:.2f} {r.predicted}")
        flags.append(r.predicted == "malignant")
    return metrics.contact_sheet(arrays, captions, path, highlight=flags)


def default_run_id(input_uri: str, model_id: str, date: str) -> str:
    """Same input, model and date → same run id, so re-submitting a nightly job resumes instead of duplicating."""
    digest = hashlib.sha256(f"{storage.normalize(input_uri)}|{model_id}|{date}".encode()).hexdigest()[:10]
    return f"{date}-{digest}"


def score(cfg: SkinrayConfig, log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Score every input row exactly once into the run's partition; returns the run summary (run.json)."""
    s, st = cfg.score, cfg.storage
    for name in ("model", "input", "out"):
        if not getattr(s, name):
            raise SkinrayError(f"score needs --{name}")
    started = time.time()
    date = s.date or dt.datetime.now(dt.timezone.utc).date().isoformat()
    try:
        dt.date.fromisoformat(date)
    except ValueError as exc:
        raise SkinrayError(f"--date must be YYYY-MM-DD, got {date!r}") from exc
    s.model = storage.normalize(s.model)  # actors run elsewhere: absolute URIs only
    artifact = ModelArtifact.open(s.model, st)
    if s.engine == "onnx":
        meta = artifact.meta.get("onnx") or {}
        if meta.get("parity_max_abs_diff") is None or meta["parity_max_abs_diff"] > inference.ONNX_PARITY_LIMIT:
            raise SkinrayError(f"{s.model}: model.onnx is missing or fails the parity check; use --engine tf")
    rows = load_input_rows(s.input, s.images, cfg.prepare.image_template, st, cfg.prepare.malignant_dx)
    run_id = s.run_id or default_run_id(s.input, artifact.model_id, date)
    layout = RunLayout(s.out, date, run_id)
    fingerprint = input_fingerprint(rows, artifact.model_id)

    if storage.exists(layout.success, st):
        summary = storage.read_json(storage.join(layout.run_dir, "run.json"), st)
        if summary.get("input_fingerprint") != fingerprint:
            raise SkinrayError(f"run {run_id} already exists for other input or model: choose another --run-id")
        log(f"run {run_id} is already complete: nothing to do")
        return {**summary, "already_complete": True}
    if storage.exists(layout.final, st) and not storage.exists(layout.staging, st):
        storage.publish_dir(layout.final, layout.staging, st)  # crashed between publish and _SUCCESS
    marker = storage.join(layout.staging, "_input.json")
    if storage.exists(marker, st):
        if storage.read_json(marker, st)["input_fingerprint"] != fingerprint:
            raise SkinrayError(f"run {run_id} was started on other input or another model: use a new --run-id")
    else:
        storage.write_json(marker, {"input_fingerprint": fingerprint, "rows": len(rows)}, st)

    done, next_part = _done_rows(layout, st)
    todo = rows[~rows["input_row"].isin(done)].reset_index(drop=True)
    log(f"run {run_id}: {len(rows):,} inputs, {len(done):,} already scored, {len(todo):,} to score "
        f"with {s.engine} (model {artifact.model_id})")
    first_row_at, first_rows = None, 0
    t_pipeline = time.time()
    actors = 0
    if len(todo):
        ds, actors = _pipeline(todo, cfg)
        buffer: list[pd.DataFrame] = []
        buffered = 0

        def flush() -> None:
            nonlocal buffer, buffered, next_part
            if not buffer:
                return
            part = pd.concat(buffer, ignore_index=True)
            part["model_id"] = artifact.model_id
            part["scored_at"] = pd.Timestamp.now(tz="UTC")
            storage.write_parquet(_to_table(part), storage.join(layout.staging, f"part-{next_part:05d}.parquet"), st)
            next_part += 1
            buffer, buffered = [], 0

        for batch in ds.iter_batches(batch_size=None, batch_format="pandas"):
            if first_row_at is None:
                first_row_at, first_rows = time.time(), len(batch)
            buffer.append(batch)
            buffered += len(batch)
            if buffered >= s.part_rows:
                flush()
        flush()
    finished = time.time()

    staged = storage.list_files(layout.staging, st, suffixes=(".parquet",))
    table = pa.concat_tables([storage.read_parquet(p, st) for p in staged]) if staged else _to_table(
        rows.assign(prob_malignant=np.nan, predicted=None, confidence=np.nan, threshold=np.nan, error=None,
                    model_id=None, scored_at=pd.NaT).iloc[:0])
    result = table.to_pandas()
    if len(result) != len(rows) or result["input_row"].duplicated().any():
        raise RuntimeError(f"run {run_id}: {len(result)} rows for {len(rows)} inputs; staging left for a re-run")

    n_failed = int(result["error"].notna().sum())
    errors_by_reason = result["error"].dropna().str.split(":").str[0].value_counts().to_dict()
    steady = None  # rows after the first batch over the time after it: start-up (model load, warm-up) excluded
    if first_row_at is not None and len(todo) > first_rows and finished > first_row_at:
        steady = round((len(todo) - first_rows) / (finished - first_row_at), 1)
    summary: dict[str, Any] = {
        "run_id": run_id,
        "scored_date": date,
        "status": "succeeded",
        "input": s.input,
        "input_fingerprint": fingerprint,
        "model": s.model,
        "model_id": artifact.model_id,
        "engine": s.engine,
        "tta": inference.resolve_tta(artifact, s.tta),
        "threshold": artifact.threshold,
        "threshold_policy": artifact.meta["threshold"],  # how it was chosen on validation, and what it gave there
        "calibration": artifact.meta.get("calibration"),
        "rows": int(len(result)),
        "scored": int(len(result) - n_failed),
        "failed": n_failed,
        "failed_by_reason": {str(k): int(v) for k, v in errors_by_reason.items()},
        "scored_this_attempt": int(len(todo)),
        "resumed_rows": int(len(done)),
        "actors": actors,
        "wall_seconds": round(finished - started, 2),
        "startup_seconds": round((first_row_at or finished) - t_pipeline, 2),
        "images_per_second_steady": steady,
        "images_per_second_overall": round(len(todo) / max(finished - t_pipeline, 1e-9), 1),
        "output": layout.final,
        "config": json.loads(cfg.model_dump_json(by_alias=True)),
        "versions": versions(),
    }
    fail_share = n_failed / max(len(result), 1)
    if fail_share > s.max_failure_fraction:
        summary["status"] = "failed"
        summary["failure_reason"] = (
            f"{n_failed} of {len(result)} images could not be scored ({fail_share:.1%} > "
            f"score.max_failure_fraction {s.max_failure_fraction:.1%})"
        )
    summary.update(_write_reports(layout, result, artifact, cfg, st))
    storage.write_text(storage.join(layout.run_dir, "config.yaml"), cfg.to_yaml(), st)
    storage.write_json(storage.join(layout.run_dir, "run.json"), summary, st)
    storage.publish_dir(layout.staging, layout.final, st)
    storage.delete(storage.join(layout.final, "_input.json"), st)
    storage.write_text(layout.success, run_id + "\n", st)
    if summary["status"] == "failed":
        raise SkinrayError(summary["failure_reason"] + f"; results are in {layout.final}")
    return summary
