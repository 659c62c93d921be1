"""What the stages hand back: typed results that the CLI, the demo and callers read by attribute.

Each result carries ``record``, the whole JSON document the stage wrote (``report.json``, ``metrics.json``,
``run.json``), so nothing written is lost to the typed view and nothing typed is computed twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


def _top_level(cls: type, record: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The dataclass fields of ``cls`` that ``record`` holds at its top level (``extra`` wins)."""
    names = {f.name for f in fields(cls)} - {"record"}
    return {**{k: record[k] for k in names if k in record}, **extra}


@dataclass(frozen=True)
class PrepareReport:
    """``prepare``: every input row kept or rejected with a reason, and the split."""

    rows_in: int
    kept: int
    rejected: int
    rejected_by_reason: dict[str, int]
    splits: dict[str, dict[str, Any]]  # split → rows, share, malignant_fraction, lesions
    lesions: int
    lesions_in_two_splits: int
    schema: str
    sources: dict[str, dict[str, Any]]  # source → rows_in, kept, rejected, malignant, lesion_grouped, splits
    record: dict[str, Any] = field(repr=False)  # report.json

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PrepareReport:
        return cls(**_top_level(cls, record), record=record)


@dataclass(frozen=True)
class EvaluationReport:
    """``evaluate``: ranking and decision metrics of one split at the model's stored operating point."""

    split: str
    n: int
    failed: int
    roc_auc: float | None
    roc_auc_ci95: tuple[float | None, float | None]
    ece: float | None
    threshold: float
    sensitivity: float | None
    specificity: float | None
    diagnosis_balanced_accuracy: float | None  # models with a diagnosis output and labelled diagnoses
    record: dict[str, Any] = field(repr=False)  # metrics.json

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> EvaluationReport:
        ranking, at = record.get("ranking") or {}, record["at_threshold"]
        ci = record.get("roc_auc_ci95") or (None, None)
        return cls(split=record["split"], n=int(record["n"]), failed=int(record.get("failed", 0)),
                   roc_auc=ranking.get("roc_auc"), roc_auc_ci95=(ci[0], ci[1]), ece=ranking.get("ece"),
                   threshold=float(at["threshold"]), sensitivity=at.get("sensitivity"),
                   specificity=at.get("specificity"),
                   diagnosis_balanced_accuracy=(record.get("diagnosis") or {}).get("balanced_accuracy"),
                   record=record)


@dataclass(frozen=True)
class RunRecord:
    """``score``: one scoring run, as ``runs/<run_id>/run.json`` records it."""

    run_id: str
    status: str  # running | succeeded | failed
    scored_date: str | None = None
    table: str | None = None
    rows: int = 0
    scored: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    flagged: int | None = None
    table_version: int | None = None
    wall_seconds: float | None = None
    images_per_second_steady: float | None = None
    images_per_second_overall: float | None = None
    pngs: list[str] = field(default_factory=list)
    already_complete: bool = False  # this call found the run committed and did nothing
    record: dict[str, Any] = field(default_factory=dict, repr=False)  # run.json

    @classmethod
    def from_record(cls, record: dict[str, Any], already_complete: bool = False) -> RunRecord:
        return cls(**_top_level(cls, record, already_complete=already_complete), record=record)
