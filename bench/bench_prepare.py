"""``prepare`` at scale: a large manifest whose rows point at a smaller set of real image files.

Builds a HAM10000-schema CSV of ``--rows`` rows (default 200,000) cycling over the JPEGs in ``--images`` (the
10,015 HAM10000 files, each used ~20 times under a unique ``image_id``; an ``image_uri`` column holds the
absolute path), then runs ``skinray.data.prepare.prepare(cfg)`` on it once and reports rows/s, phase times, peak
memory and where the CPU went. Baseline in the same run, before and after: the single-process loop
``read bytes + skinray.data.images.check`` over ``--sample`` rows of the same manifest (rows/s) -> ratio.

Run from the repository root:  .venv/bin/python bench/bench_prepare.py [--rows 200000]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    DEFAULT_IMAGES,
    DEFAULT_WORKDIR,
    PeakMemory,
    Timer,
    list_images,
    log,
    print_results,
    ratio,
    start_ray,
)

HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]


def build_manifest(images_dir: str, rows: int, out: str, metadata: str | None) -> dict[str, Any]:
    """``rows`` HAM10000-style rows over the images in ``images_dir``: ids unique, files repeated.

    Metadata comes from ``metadata`` (HAM10000_metadata.csv) where it names the file's id, else a plain default.
    Copies of one image keep its ``lesion_id``, so the split keeps them together as it would real duplicates.
    """
    import pandas as pd

    files = list_images(images_dir)
    meta: dict[str, dict[str, Any]] = {}
    if metadata and os.path.exists(metadata):
        df = pd.read_csv(metadata, dtype=str)
        if "image_id" in df:
            meta = {r["image_id"]: r for r in df.to_dict("records")}
    base = []
    for i, f in enumerate(files):
        stem = Path(f).stem
        m = meta.get(stem) or {"lesion_id": f"L_{stem}", "dx": "mel" if i % 5 == 0 else "nv", "dx_type": "histo",
                               "age": "50", "sex": "female", "localization": "back"}
        base.append({**{c: m.get(c) for c in HAM_COLUMNS}, "image_id": stem, "image_uri": f})
    out_rows = []
    for i in range(rows):
        b = base[i % len(base)]
        out_rows.append({**b, "image_id": f"{b['image_id']}_r{i // len(base):03d}"})
    pd.DataFrame(out_rows, columns=[*HAM_COLUMNS, "image_uri"]).to_csv(out, index=False)
    return {"rows": rows, "files": len(files), "with_metadata": sum(Path(f).stem in meta for f in files)}


def check_loop(manifest: str, sample: int, seed: int = 0) -> dict[str, Any]:
    """Baseline: one process, one row at a time: read the file, ``images.check`` it (what each prepare task does
    per row, without Ray)."""
    import pandas as pd

    from skinray.config import ImageConfig
    from skinray.data import images

    uris = pd.read_csv(manifest, usecols=["image_uri"])["image_uri"].tolist()
    rng = random.Random(seed)
    picked = rng.sample(uris, min(sample, len(uris)))
    cfg = ImageConfig()
    bad = 0
    with Timer() as t:
        cpu = time.process_time()
        for u in picked:
            reason, _, _ = images.check(Path(u).read_bytes(), cfg)
            bad += reason is not None
        cpu = time.process_time() - cpu
    # The same rows through prepare's own per-row function (pyarrow filesystem stat + open + check).
    from skinray.data import prepare as prep
    from skinray.io.storage import StorageConfig

    st = StorageConfig()
    with Timer() as t2:
        for u in picked:
            prep._read_and_check(u, st, cfg)
    return {"rows": len(picked), "seconds": round(t.seconds, 2), "rows_per_second": round(len(picked) / t.seconds, 1),
            "cpu_ms_per_row": round(1000 * cpu / len(picked), 3), "rejected": bad,
            "read_and_check_rows_per_second": round(len(picked) / t2.seconds, 1)}


def run_prepare(manifest: str, out: str) -> dict[str, Any]:
    from skinray.config import load_config
    from skinray.data import prepare as prep

    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(overrides={"prepare.manifest": manifest, "prepare.out": out})
    marks: list[tuple[str, float]] = []

    def note(msg: str) -> None:
        marks.append((msg.split(" ")[0], time.perf_counter()))

    original = prep.check_images

    def timed_check(rows: Any, c: Any) -> Any:
        marks.append(("check_start", time.perf_counter()))
        try:
            return original(rows, c)
        finally:
            marks.append(("check_end", time.perf_counter()))

    prep.check_images = timed_check
    gc.collect()
    try:
        with PeakMemory() as mem, Timer() as t:
            t0 = time.perf_counter()
            report = prep.prepare(cfg, note)
            t1 = time.perf_counter()
    finally:
        prep.check_images = original
    at = dict(marks)
    phases = {
        "read + canonical columns": at.get("read", t0) - t0,
        "reject rules + image URIs": at.get("check_start", t0) - at.get("read", t0),
        "image check on Ray Data": at.get("check_end", t0) - at.get("check_start", t0),
        "split, impute, write": t1 - at.get("check_end", t0),
    }
    return {
        "rows": report.rows_in,
        "kept": report.kept,
        "rejected": report.rejected,
        "rejected_by_reason": report.rejected_by_reason,
        "seconds": round(t.seconds, 2),
        "rows_per_second": round(report.rows_in / t.seconds, 1),
        "phases": {k: round(v, 2) for k, v in phases.items()},
        "peak_mb": round(mem.peak_mb, 1),
        "start_mb": round(mem.start_mb, 1),
        "peak_driver_mb": round(mem.peak_driver_mb, 1),
        "processes_at_peak": mem.peak_processes,
        "cpu_s": round(mem.cpu_seconds, 2),
        "cpu_s_by_process": {k: round(v, 2) for k, v in mem.cpu_by_process().items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="manifest rows (default 200000)")
    ap.add_argument("--images", default=DEFAULT_IMAGES, help="folder of real image files the rows point at")
    ap.add_argument("--metadata", default=None,
                    help="HAM10000_metadata.csv for the rows' labels (default: next to --images, if there)")
    ap.add_argument("--sample", type=int, default=2000, help="rows for the single-process baseline loop")
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR, help="scratch space (manifest, prepare output)")
    args = ap.parse_args(argv)

    work = os.path.join(args.workdir, "prepare")
    os.makedirs(work, exist_ok=True)
    metadata = args.metadata or str(Path(args.images).resolve().parent / "HAM10000_metadata.csv")
    manifest = os.path.join(work, f"manifest-{args.rows}.csv")
    with Timer() as t:
        built = build_manifest(args.images, args.rows, manifest, metadata)
    log(f"manifest: {built['rows']:,} rows over {built['files']:,} files ({built['with_metadata']:,} with "
        f"metadata) in {t.seconds:.1f}s -> {manifest}")

    start_ray()
    log(f"baseline loop, run 1 ({args.sample} rows)")
    l1 = check_loop(manifest, args.sample, seed=1)
    log(f"    {l1['rows_per_second']} rows/s")
    log(f"prepare on {args.rows:,} rows")
    p = run_prepare(manifest, os.path.join(work, f"out-{args.rows}"))
    log(f"    {p['rows_per_second']} rows/s, peak {p['peak_mb']:.0f} MB")
    log(f"baseline loop, run 2 ({args.sample} rows)")
    l2 = check_loop(manifest, args.sample, seed=2)
    log(f"    {l2['rows_per_second']} rows/s")
    import ray

    ray.shutdown()

    loop_rate = round((l1["rows_per_second"] + l2["rows_per_second"]) / 2, 1)
    loop_cpu = (l1["cpu_ms_per_row"] + l2["cpu_ms_per_row"]) / 2
    prep_cpu_ms = 1000 * p["cpu_s"] / p["rows"]
    throughput = [
        {"stage": "prepare(): whole stage", "rows": p["rows"], "wall s": p["seconds"], "rows/s": p["rows_per_second"],
         "CPU ms/row": round(prep_cpu_ms, 3)},
        {"stage": "prepare(): image check phase only", "rows": p["rows"],
         "wall s": p["phases"]["image check on Ray Data"],
         "rows/s": round(p["rows"] / max(p["phases"]["image check on Ray Data"], 1e-9), 1)},
        {"stage": "baseline loop, run 1 (1 process)", "rows": l1["rows"], "wall s": l1["seconds"],
         "rows/s": l1["rows_per_second"], "CPU ms/row": l1["cpu_ms_per_row"]},
        {"stage": "baseline loop, run 2 (1 process)", "rows": l2["rows"], "wall s": l2["seconds"],
         "rows/s": l2["rows_per_second"], "CPU ms/row": l2["cpu_ms_per_row"]},
    ]
    check_rate = p["rows"] / max(p["phases"]["image check on Ray Data"], 1e-9)
    rc_rate = round((l1["read_and_check_rows_per_second"] + l2["read_and_check_rows_per_second"]) / 2, 1)
    throughput.append({"stage": "loop over prepare._read_and_check (pyarrow fs), runs 1-2 mean", "rows": l1["rows"],
                       "rows/s": rc_rate})
    ratios = [
        {"ratio": "prepare rows/s / baseline loop rows/s", "value": ratio(p["rows_per_second"], loop_rate)},
        {"ratio": "check phase rows/s / baseline loop rows/s", "value": ratio(check_rate, loop_rate)},
        {"ratio": "CPU per row: baseline loop / prepare", "value": ratio(loop_cpu, prep_cpu_ms)},
        {"ratio": "noise: baseline run 2 / run 1", "value": ratio(l2["rows_per_second"], l1["rows_per_second"])},
    ]
    phases = [{"phase": k, "seconds": v, "share": round(v / p["seconds"], 3)} for k, v in p["phases"].items()]
    memory = [{"run": f"prepare, {p['rows']:,} rows", "peak MB (driver + Ray)": p["peak_mb"],
               "MB at start": p["start_mb"], "peak MB driver alone": p["peak_driver_mb"],
               "processes at peak": p["processes_at_peak"]}]
    total_cpu = sum(p["cpu_s_by_process"].values()) or 1.0
    cpu = [{"process": k, "CPU s": v, "CPU ms/row": round(1000 * v / p["rows"], 3), "share": round(v / total_cpu, 3)}
           for k, v in p["cpu_s_by_process"].items() if v >= 0.01 * total_cpu]
    print_results("bench_prepare", {
        f"Throughput: {p['rows']:,} rows over {built['files']:,} real files ({p['kept']:,} kept, "
        f"{p['rejected']:,} rejected)": throughput,
        "Ratios (baseline = mean of the two loop runs)": ratios,
        "prepare() phases": phases,
        "Memory": memory,
        "Where the CPU of prepare() went": cpu,
    }, {"rows": args.rows, "manifest": built, "prepare": p, "loop": [l1, l2],
        "ratios": {r["ratio"]: r["value"] for r in ratios}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
