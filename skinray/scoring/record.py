"""``OUT/runs/<run_id>/run.json`` and ``rows.parquet``: one scoring night's record (this module alone writes and
reads them; everyone else reads the record by attribute).

``run.json`` is :class:`RunRecord`, typed and versioned (``format_version``; a record written before the field
existed reads as format 0). A submission builds it once (:meth:`RunRecord.submitted`: the claim, ``status:
running``) and extends it step by step — :meth:`~RunRecord.planned`, :meth:`~RunRecord.throughput`,
:meth:`~RunRecord.outcome`, :meth:`~RunRecord.with_figures`, :meth:`~RunRecord.committed_in`,
:meth:`~RunRecord.finished` or :meth:`~RunRecord.stopped`, :meth:`~RunRecord.reported` — each a validated copy
that adds its keys; only the keys a step set are written, so a record says what happened and no more.

The status is decided here and nowhere else:

* ``running``: claimed, not finished (or killed: the same command resumes it);
* ``succeeded``: every image of the night has its answer in the scores table;
* ``incomplete``: committed, but some images could not be read for a passing reason and wait for the next
  submission (``retry_later``);
* ``failed``: more images than ``score.max_failure_fraction`` could not be scored; nothing went to the table, the
  new rows are in ``rows.parquet``, and the night stays failed when re-submitted (a new run id scores again).

A run id is never reused for another date, input or model (:func:`claim`). ``image_root`` is the folder the
input's images must stay inside (a folder input: the folder; a manifest: ``--images``), recorded for every input
kind, so a page written again later reads the images under the same guard as scoring did
(:meth:`RunRecord.with_roots`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from skinray import DataError, SkinrayError
from skinray.data.images import error_reasons
from skinray.io import storage
from skinray.io.storage import StorageConfig
from skinray.scoring import row_schema, table as scores_table
from skinray.scoring.runs import run_dir

RUN_FILE = "run.json"
ROWS_FILE = "rows.parquet"  # a failed night's new rows (never in the table)
FORMAT_VERSION = 1
LEGACY_VERSION = 0  # a run.json written before format_version: the same keys, read as they are
Status = Literal["running", "succeeded", "incomplete", "failed"]
COMMITTED: tuple[Status, ...] = ("succeeded", "incomplete")  # the night's answers are in the scores table


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class RunRecord(BaseModel):
    """``run.json``, format 1. Parts owned elsewhere stay free-form: the config, the operating point, the guard's
    summary, drift, metrics and the table's submissions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = Field(FORMAT_VERSION, ge=LEGACY_VERSION, le=FORMAT_VERSION)
    # the claim: what a submission knows before it scores
    run_id: str
    scored_date: str
    status: Status = "running"
    input: str
    input_kind: Literal["images", "manifest"] | None = None
    image_root: str | None = None  # the folder the images must stay inside (None: a manifest without --images)
    input_fingerprint: str | None = None
    skipped_inputs: dict[str, int] = Field(default_factory=dict)  # what a folder walk left out, by reason
    nulled_values: dict[str, int] = Field(default_factory=dict)  # impossible values read as unknown, by column
    model: str
    model_id: str
    engine: str | None = None
    tta: bool = False
    tta_band: float | None = None
    threshold: float
    threshold_policy: dict[str, Any] = Field(default_factory=dict)
    calibration: dict[str, Any] = Field(default_factory=dict)
    diagnoses: list[str] = Field(default_factory=list)
    started_at: str | None = None
    table: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    # this submission's work
    scored_this_attempt: int | None = None
    resumed_rows: int | None = None
    quarantined_parts: list[str] = Field(default_factory=list)  # staged parts moved aside (scored again)
    actors: int | None = None
    rows_by_node: dict[str, int] = Field(default_factory=dict)
    batch_modes: dict[str, int] = Field(default_factory=dict)
    views: dict[str, int] = Field(default_factory=dict)  # rows by views averaged (0: not scored)
    startup_seconds: float | None = None
    images_per_second_steady: float | None = None
    actors_ready_seconds: list[float] | None = None
    images_per_second_overall: float | None = None
    # the night's outcome (every submission's answers)
    rows: int = 0
    scored: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = Field(default_factory=dict)
    failure_reason: str | None = None
    retry_later: int = 0
    out_of_distribution: dict[str, Any] = Field(default_factory=dict)  # skinray.model.ood.summary
    flagged: int | None = None  # the worklist's rows
    mean_prob: float | None = None
    drift: dict[str, Any] | None = None  # skinray.decision.drift.compare
    commit_seconds: float | None = None
    submissions: list[dict[str, Any]] = Field(default_factory=list)  # from the table's history
    table_version: int | None = None
    finished_at: str | None = None
    wall_seconds: float | None = None
    # what the report wrote (skinray.scoring.report)
    pngs: list[str] = Field(default_factory=list)
    metrics: dict[str, Any] | None = None
    worklist: str | None = None
    saliency_seconds_per_image: float | None = None
    # not in run.json: this call found the night answered and did nothing
    already_complete: bool = Field(False, exclude=True)

    # --- built once, extended step by step ----------------------------------------------------------------------

    @classmethod
    def submitted(cls, **claim: Any) -> RunRecord:
        """A submission's record before it scores (``status: running``)."""
        return cls.model_validate({"format_version": FORMAT_VERSION, "status": "running", **claim,
                                   "started_at": _now()})

    def _with(self, **changes: Any) -> RunRecord:
        return type(self).model_validate({**self.dump(), **changes})

    def planned(self, scored_this_attempt: int, resumed_rows: int, quarantined_parts: list[str]) -> RunRecord:
        return self._with(scored_this_attempt=scored_this_attempt, resumed_rows=resumed_rows,
                          quarantined_parts=quarantined_parts)

    def throughput(self, **measured: Any) -> RunRecord:
        """How the images were scored: actors, placement, batch modes, views and timings."""
        return self._with(**measured)

    def outcome(self, night: pd.DataFrame, retry_later: int, max_failure_fraction: float) -> RunRecord:
        """The night's counts over every answer it has (``error`` set: not scored), and whether it failed."""
        n_failed = int(night["error"].notna().sum())
        by_reason = error_reasons(night["error"].dropna()).value_counts().to_dict()
        changes: dict[str, Any] = {"rows": int(len(night)), "scored": int(len(night) - n_failed), "failed": n_failed,
                                   "failed_by_reason": {str(k): int(v) for k, v in by_reason.items()},
                                   "status": "succeeded"}
        share = n_failed / max(len(night), 1)
        if share > max_failure_fraction:
            changes["status"] = "failed"
            changes["failure_reason"] = (f"{n_failed} of {len(night)} images could not be scored ({share:.1%} > "
                                         f"score.max_failure_fraction {max_failure_fraction:.1%})")
        return self._with(**changes, retry_later=retry_later)

    def with_figures(self, out_of_distribution: dict[str, Any], flagged: int, mean_prob: float | None,
                     drift: dict[str, Any]) -> RunRecord:
        return self._with(out_of_distribution=out_of_distribution, flagged=flagged, mean_prob=mean_prob, drift=drift)

    def commit_info(self, new: int) -> dict[str, Any]:
        """What the submission's commit carries in the table's ``commitInfo``."""
        info = {k: getattr(self, k) for k in ("status", "rows", "scored", "failed", "failed_by_reason", "flagged",
                                              "mean_prob", "model_id", "input", "engine", "threshold", "started_at")}
        return info | {"drifted": (self.drift or {}).get("drifted"), "new": new, "retry_later": self.retry_later,
                       "out_of_distribution": self.out_of_distribution.get("flagged")}

    def committed_in(self, seconds: float) -> RunRecord:
        return self._with(commit_seconds=seconds)

    def finished(self, submissions: list[dict[str, Any]], wall_seconds: float) -> RunRecord:
        """The submission is over: the night's commits, and ``incomplete`` while images wait to be read again."""
        return self._with(submissions=submissions,
                          table_version=submissions[-1]["table_version"] if submissions else None,
                          **({"status": "incomplete"} if self.retry_later else {}),
                          finished_at=_now(), wall_seconds=wall_seconds)

    def stopped(self) -> RunRecord:
        """A failed night is over (nothing committed)."""
        return self._with(finished_at=_now())

    def reported(self, pngs: list[str], metrics: dict[str, Any] | None, worklist: str) -> RunRecord:
        return self._with(pngs=pngs, metrics=metrics, worklist=worklist)

    def explained(self, saliency_seconds_per_image: float | None) -> RunRecord:
        return self._with(saliency_seconds_per_image=saliency_seconds_per_image)

    def found_complete(self) -> RunRecord:
        """This record, as the answer of a submission that found nothing new."""
        return self.model_copy(update={"already_complete": True})

    # --- the status, decided here ---------------------------------------------------------------------------------

    @property
    def committed(self) -> bool:
        """The night's answers are in the scores table (succeeded, or incomplete)."""
        return self.status in COMMITTED

    @property
    def stays_failed(self) -> bool:
        """The night failed on its data: re-submitting cannot help (a new run id scores again)."""
        return self.status == "failed"

    def answers_all(self, pending: int) -> bool:
        """Nothing new to do: the night is committed and no input is ``pending`` (without an answer)."""
        return self.committed and pending == 0

    # --- reading it -----------------------------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """``run.json`` as written: the keys the steps so far have set."""
        return self.model_dump(exclude_unset=True)

    @property
    def record(self) -> dict[str, Any]:
        """``run.json`` as a JSON object (what a caller that prints or forwards the whole record wants)."""
        return self.dump()

    @property
    def root(self) -> str | None:
        """The image root; a record written before it was recorded knew it only for a folder input."""
        if "image_root" in self.model_fields_set or self.input_kind != "images":
            return self.image_root
        return self.input

    def with_roots(self, rows: pd.DataFrame) -> pd.DataFrame:
        """``rows`` with ``image_root``: the folder each image must stay inside when read again, as scoring read it
        — the root for an image under it; none for a manifest's absolute URI elsewhere (scoring read it without)."""
        root = self.root
        if not root:
            return rows.assign(image_root=pd.Series([None] * len(rows), index=rows.index, dtype=object))
        uri = rows["image_uri"].astype("string")
        under = (uri.eq(root) | uri.str.startswith(root.rstrip("/") + "/")).fillna(False).astype(bool)
        return rows.assign(image_root=pd.Series(root, index=rows.index, dtype=object).where(under, None))


# --- run.json -------------------------------------------------------------------------------------------------------


def run_uri(out: str, run_id: str) -> str:
    return storage.join(run_dir(out, run_id), RUN_FILE)


def parse(data: dict[str, Any], uri: str) -> RunRecord:
    """A JSON object read from ``run.json`` → :class:`RunRecord`, or one line that says what is wrong."""
    version = data.get("format_version", LEGACY_VERSION)
    if not isinstance(version, int) or not LEGACY_VERSION <= version <= FORMAT_VERSION:
        raise SkinrayError(f"{uri}: run record format {version!r} is not one this skinray reads (up to "
                           f"{FORMAT_VERSION}): score with a new --run-id, or upgrade skinray")
    if version == LEGACY_VERSION:  # written before the schema: its keys as they are, anything since gone left out
        data = {k: v for k, v in data.items() if k in RunRecord.model_fields} | {"format_version": LEGACY_VERSION}
    try:
        return RunRecord.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise SkinrayError(f"{uri} is not a valid run record ({where}: {first['msg']}); move it away to re-use "
                           f"run id {data.get('run_id')}") from exc


def read(out: str, run_id: str, storage_cfg: StorageConfig | None = None) -> RunRecord | None:
    """The night's record, or None when the run id is new."""
    uri = run_uri(out, run_id)
    if not storage.exists(uri, storage_cfg):
        return None
    try:
        data = storage.read_json(uri, storage_cfg)
    except ValueError as exc:
        raise SkinrayError(f"{uri} is not valid JSON ({exc}); move it away to re-use run id {run_id}") from exc
    return parse(data, uri) if isinstance(data, dict) else None


def write(out: str, record: RunRecord, storage_cfg: StorageConfig | None = None) -> None:
    storage.write_json(run_uri(out, record.run_id), record.dump(), storage_cfg)


def claim(out: str, run_id: str, scored_date: str, input_uri: str, model_id: str,
          storage_cfg: StorageConfig | None = None) -> RunRecord | None:
    """The existing record of this night, after checking it is this night; None when the run id is new.

    Refuses (one line) a run id used for another date, input or model, and re-raises a failed night's reason
    (:class:`DataError`: retrying cannot help). A folder that gained images since is the same night.
    """
    record = read(out, run_id, storage_cfg)
    if record is None:
        return None
    if record.scored_date != scored_date:
        raise SkinrayError(f"run id {run_id} was used for {record.scored_date}, not {scored_date}: "
                           "choose another --run-id", run_id=run_id)
    if storage.normalize(record.input) != storage.normalize(input_uri) or record.model_id != model_id:
        raise SkinrayError(f"run id {run_id} was used for other input or another model "
                           f"({record.input}, model {record.model_id}): choose another --run-id", run_id=run_id)
    if record.stays_failed:
        raise DataError(f"run {run_id} failed: {record.failure_reason} "
                        "(a failed run stays failed; a new --run-id scores again)", run_id=run_id)
    return record


# --- rows.parquet ---------------------------------------------------------------------------------------------------


def rows_uri(out: str, run_id: str) -> str:
    return storage.join(run_dir(out, run_id), ROWS_FILE)


def write_rows(out: str, run_id: str, rows: pd.DataFrame, storage_cfg: StorageConfig | None = None) -> str:
    """A failed night's new rows (the scores table's file schema), beside its record; returns where."""
    uri = rows_uri(out, run_id)
    storage.write_parquet(row_schema.to_rows(rows), uri, storage_cfg)
    return uri


def read_rows(out: str, run_id: str, storage_cfg: StorageConfig | None = None) -> pd.DataFrame | None:
    uri = rows_uri(out, run_id)
    if not storage.exists(uri, storage_cfg):
        return None
    return storage.read_parquet(uri, storage_cfg).to_pandas()


def night_rows(out: str, record: RunRecord, storage_cfg: StorageConfig | None = None) -> pd.DataFrame:
    """The rows a finished night shows: its current answers in the table, or a failed night's ``rows.parquet``."""
    if record.committed:
        return scores_table.run_rows(out, record.run_id, storage_cfg)
    rows = read_rows(out, record.run_id, storage_cfg)
    if rows is None:
        raise SkinrayError(f"run {record.run_id} is {record.status}: no rows to show yet")
    return rows
