"""Do tonight's images look like the ones the model was validated on?

At training time :func:`profile` summarises the validation split — the calibrated score, age, sex, site, the
images' stored size and mean colour — into ``reference.json`` in the model directory. Each scoring run is compared
with it by :func:`compare`: the population stability index (PSI) per column over the reference's own quantile bins
(or categories), and for numeric columns a two-sample Kolmogorov-Smirnov test against the reference sample. A
column is flagged when its PSI reaches ``psi_threshold`` (0.25: a "major shift" by the usual rule of thumb) or the
KS test rejects sameness at ``ks_alpha`` with a large enough effect; the result goes into ``run.json`` as
``drift`` so a scheduler can alert, and onto the run's review page.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

NUMERIC = ("prob_malignant", "age_approx", "image_width", "image_height", "mean_red", "mean_green", "mean_blue")
CATEGORICAL = ("sex", "anatom_site_general")
BINS = 10
SAMPLE = 2000  # reference values kept for the KS test
MIN_ROWS = 30  # fewer current values than this: reported, never flagged
EPS = 1e-4
PSI_THRESHOLD = 0.25
KS_ALPHA = 0.001
KS_MIN_STATISTIC = 0.15  # with thousands of rows a tiny, harmless shift is "significant": ask for an effect too
VERSION = 1


def _values(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df:
        return np.zeros(0)
    v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
    return v[np.isfinite(v)]


def _categories(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df:
        return pd.Series([], dtype=object)
    return df[col].astype("string").str.strip().str.lower().fillna("missing").replace("", "missing").astype(object)


def profile(df: pd.DataFrame, seed: int = 0) -> dict[str, Any]:
    """The reference: per numeric column its quantile bin edges, the share in each bin and a sample of values; per
    categorical column the share of each category. Columns without values are left out."""
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {}
    for col in NUMERIC:
        v = _values(df, col)
        if not len(v):
            continue
        if np.ptp(v) <= _tolerance(v):  # one value (a constant score, one image size): shares at that value
            columns[col] = {"kind": "numeric", "n": int(len(v)), "constant": float(np.median(v)),
                            "tolerance": _tolerance(v), "mean": float(np.mean(v))}
            continue
        edges = np.unique(np.quantile(v, np.linspace(0, 1, BINS + 1)[1:-1]))
        shares = np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1) / len(v)
        sample = v if len(v) <= SAMPLE else rng.choice(v, SAMPLE, replace=False)
        columns[col] = {"kind": "numeric", "n": int(len(v)), "edges": edges.round(6).tolist(),
                        "shares": shares.round(6).tolist(), "sample": np.sort(sample).round(6).tolist(),
                        "mean": float(np.mean(v))}
    for col in CATEGORICAL:
        c = _categories(df, col)
        if len(c):
            shares = c.value_counts(normalize=True)
            columns[col] = {"kind": "categorical", "n": int(len(c)),
                            "shares": {str(k): round(float(s), 6) for k, s in shares.items()}}
    return {"version": VERSION, "rows": int(len(df)), "columns": columns}


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index between two distributions over the same bins."""
    e = np.clip(np.asarray(expected, float), EPS, None)
    a = np.clip(np.asarray(actual, float), EPS, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def _tolerance(v: np.ndarray) -> float:
    """Values closer than this are the same value (float noise of a saturated or constant score)."""
    return 1e-6 * max(1.0, float(np.max(np.abs(v))))


def _compare_numeric(ref: dict[str, Any], v: np.ndarray) -> dict[str, Any]:
    if "constant" in ref:
        same = float(np.mean(np.abs(v - ref["constant"]) <= ref["tolerance"]))
        return {"psi": round(psi([1.0, 0.0], [same, 1 - same]), 4), "mean": float(np.mean(v)),
                "reference_mean": ref["mean"]}
    edges = np.asarray(ref["edges"], float)
    shares = np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1) / max(len(v), 1)
    out: dict[str, Any] = {"psi": round(psi(ref["shares"], shares), 4), "mean": float(np.mean(v)),
                           "reference_mean": ref.get("mean")}
    if len(ref["sample"]) >= 2 and len(v) >= 2:
        test = ks_2samp(np.asarray(ref["sample"], float), v)
        out.update(ks_statistic=round(float(test.statistic), 4), ks_pvalue=float(test.pvalue))
    return out


def _compare_categorical(ref: dict[str, Any], c: pd.Series) -> dict[str, Any]:
    current = c.value_counts(normalize=True).to_dict()
    names = sorted(set(ref["shares"]) | set(current))
    return {"psi": round(psi([ref["shares"].get(k, 0.0) for k in names], [current.get(k, 0.0) for k in names]), 4),
            "shares": {k: round(float(current.get(k, 0.0)), 4) for k in names},
            "reference_shares": {k: ref["shares"].get(k, 0.0) for k in names}}


def compare(reference: dict[str, Any] | None, df: pd.DataFrame, psi_threshold: float = PSI_THRESHOLD,
            ks_alpha: float = KS_ALPHA) -> dict[str, Any]:
    """Tonight's rows against the reference: per column PSI (and KS), flags, and whether anything drifted."""
    out: dict[str, Any] = {"reference": reference is not None, "thresholds": {
        "psi": psi_threshold, "ks_alpha": ks_alpha, "ks_min_statistic": KS_MIN_STATISTIC, "min_rows": MIN_ROWS},
        "columns": [], "flagged": [], "drifted": False}
    if reference is None:
        return out
    for col, ref in reference.get("columns", {}).items():
        if ref["kind"] == "numeric":
            v = _values(df, col)
            if not len(v):
                continue
            row = {"column": col, "kind": "numeric", "n": int(len(v)), **_compare_numeric(ref, v)}
        else:
            c = _categories(df, col)
            if not len(c) or (c == "missing").all() and "missing" not in ref["shares"]:
                continue
            row = {"column": col, "kind": "categorical", "n": int(len(c)), **_compare_categorical(ref, c)}
        reasons = []
        if row["n"] >= MIN_ROWS:
            if row["psi"] >= psi_threshold:
                reasons.append(f"PSI {row['psi']:.2f} ≥ {psi_threshold}")
            if row.get("ks_pvalue") is not None and row["ks_pvalue"] < ks_alpha \
                    and row["ks_statistic"] >= KS_MIN_STATISTIC:
                reasons.append(f"KS D {row['ks_statistic']:.2f}, p {row['ks_pvalue']:.1e}")
        row["flag"] = bool(reasons)
        row["reason"] = "; ".join(reasons) if reasons else ("too few rows to judge" if row["n"] < MIN_ROWS else "")
        for key in ("mean", "reference_mean", "ks_pvalue"):
            if isinstance(row.get(key), float) and not math.isfinite(row[key]):
                row[key] = None
        out["columns"].append(row)
    out["flagged"] = [r["column"] for r in out["columns"] if r["flag"]]
    out["drifted"] = bool(out["flagged"])
    return out
