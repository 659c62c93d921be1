"""What one scoring run's commit to the scores table costs, against writing the same rows as one plain Parquet file.

For N rows (default 20,000, the size of a large night) in the table's schema: ``scores_table.commit_run`` (data
files written, then one Delta commit with its application transaction and metadata) vs
``storage.write_parquet`` of the same table, each timed ``--repeats`` times into fresh locations, on a local folder
and on a local S3 endpoint (moto; started here). Only ratios count on a shared host.

Run from the repository root:  .venv/bin/python bench/bench_commit.py [--rows 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import log, print_results, ratio  # noqa: E402


def _rows(n: int) -> Any:
    import numpy as np
    import pandas as pd

    from skinray.scoring import row_schema

    rng = np.random.default_rng(0)
    logit = rng.normal(-1.5, 2.0, n)
    df = pd.DataFrame({
        "run_id": "bench", "input_row": np.arange(n), "isic_id": [f"ISIC_{i:07d}" for i in range(n)],
        "image_uri": [f"s3://bucket/incoming/2026-11-29/ISIC_{i:07d}.jpg" for i in range(n)],
        "prob_malignant": 1 / (1 + np.exp(-logit)), "logit_malignant": logit,
        "predicted": np.where(logit > 0, "malignant", "benign"), "confidence": 0.8, "threshold": 0.5,
        "dx_pred": "nv", "dx_probs": json.dumps({d: 1 / 7 for d in ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")}),
        "model_id": "0123456789abcdef", "scored_at": pd.Timestamp.now(tz="UTC"), "error": None,
        "image_width": 600, "image_height": 450, "mean_red": rng.normal(180, 10, n), "mean_green": 140.0,
        "mean_blue": 130.0, "label": rng.integers(0, 2, n), "dx": "nv", "age_approx": 50.0, "sex": "male",
        "anatom_site_general": "back", "lesion_id": [f"HAM_{i // 2:07d}" for i in range(n)]})
    df["image_key"], df["image_stamp"] = df["image_uri"], "123456:1764000000000000000"
    return row_schema.to_rows(df)


def _time(fn: Any, repeats: int) -> list[float]:
    out = []
    for i in range(repeats):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def _moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    proc, endpoint = _moto()
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint})
    from skinray.io import storage
    from skinray.scoring import table as scores_table

    storage.boto3_client().create_bucket(Bucket="skinray-bench")
    import pyarrow.compute as pc

    rows = _rows(args.rows)
    log(f"{args.rows:,} rows, {rows.nbytes / 1e6:.1f} MB in memory; host load {os.getloadavg()[0]:.2f}")
    local = tempfile.mkdtemp(prefix="skinray-commit-")
    results: list[dict[str, Any]] = []
    try:
        for where, base in (("local", local), ("S3 (moto)", "s3://skinray-bench/run")):
            plain = _time(lambda i: storage.write_parquet(rows, f"{base}/plain-{i}/part.parquet"), args.repeats)
            delta = _time(lambda i: scores_table.commit_run(f"{base}/table-{i}", f"r{i}", "2026-11-29", rows,
                                                            {"status": "succeeded", "rows": args.rows}),
                          args.repeats)
            second = _time(lambda i: scores_table.commit_run(f"{base}/table-{i}", f"s{i}", "2026-11-30", rows,
                                                             {"status": "succeeded"}), args.repeats)
            again = _time(lambda i: scores_table.commit_run(f"{base}/table-{i}", f"s{i}", "2026-11-30", rows, {}),
                          args.repeats)
            late = rows.slice(0, max(args.rows // 40, 1))  # a late submission: 2.5% of the night, all new images
            late = late.set_column(late.schema.get_field_index("image_key"), "image_key",
                                   pc.binary_join_element_wise(late["image_key"], "-late", ""))
            added = _time(lambda i: scores_table.commit_run(f"{base}/table-{i}", f"s{i}", "2026-11-30", late, {},
                                                            submission=2), args.repeats)
            rescore = _time(lambda i: scores_table.commit_run(f"{base}/table-{i}", f"m{i}", "2026-11-30", rows, {}),
                            args.repeats)  # another model re-scores the whole night: every file replaced
            med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
            results.append({"storage": where, "plain Parquet s": round(med(plain), 3),
                            "first commit s (creates table)": round(med(delta), 3),
                            "later commit s": round(med(second), 3),
                            "re-commit (already in) s": round(med(again), 3),
                            "late 2.5% added s": round(med(added), 3),
                            "whole night re-scored (replaces) s": round(med(rescore), 3),
                            "later commit / plain Parquet": ratio(med(second), med(plain)),
                            "re-score / later commit": ratio(med(rescore), med(second))})
    finally:
        shutil.rmtree(local, ignore_errors=True)
        proc.terminate()
    print_results("bench_commit", {f"Committing one run of {args.rows:,} rows (median of {args.repeats})": results},
                  {"rows": args.rows, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
