"""What a second model costs to score against a first, on the same images in one run (e.g. the k-fold ensemble
against the single model): the question "what does it cost per 10,000 images" needs both on the same host, at the
same load.

  engine alone  each model's forward passes (its default views) on images decoded beforehand with its own
                preprocessing spec, as the actor pool runs them; in the order A B B A so load drift hits both alike
  score()       each model end to end on the same manifest: start-up, steady rate, wall
  per 10,000    start-up + 10,000 / steady rate, in minutes

Run from the repository root:
  .venv/bin/python bench/bench_models.py --model SINGLE --against ENSEMBLE [--prepared P --split test] [--n 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_score import decode_to_npy, engine_alone, run_pipeline, split_images, write_manifest  # noqa: E402
from bench.common import DEFAULT_IMAGES, DEFAULT_WORKDIR, in_subprocess, list_images, log, print_results, ratio  # noqa: E402

PER = 10_000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the baseline model directory (A)")
    ap.add_argument("--against", required=True, help="the model directory compared with it (B)")
    ap.add_argument("--images", default=DEFAULT_IMAGES, help="folder of JPEGs (default: HAM10000 images)")
    ap.add_argument("--prepared", help="take the images of one split of this prepared dataset instead")
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=1000, help="images per measurement (default 1000)")
    ap.add_argument("--actors", type=int, default=0, help="inference.actors (0 = one per CPU)")
    ap.add_argument("--cpus-per-actor", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=32, help="rows per predictor call (score.batch_size)")
    ap.add_argument("--engine", choices=["onnx", "onnx-int8", "tf"], default="onnx")
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR)
    args = ap.parse_args(argv)

    work = os.path.join(args.workdir, "models")
    os.makedirs(work, exist_ok=True)
    paths = split_images(args.prepared, args.split, args.n) if args.prepared else list_images(args.images, args.n)
    models = {"A": os.path.abspath(args.model), "B": os.path.abspath(args.against)}

    from skinray.runtime import cluster_cpus

    from bench.common import start_ray

    ray = start_ray()
    actors = args.actors or max(1, int(cluster_cpus() // args.cpus_per_actor))
    threads = max(1, int(args.cpus_per_actor))
    npy = {k: os.path.join(work, f"decoded-{k}-{args.n}.npy") for k in models}
    for k, m in models.items():
        in_subprocess(decode_to_npy, paths, m, npy[k])
    engine: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    for k in ("A", "B", "B", "A"):
        log(f"engine alone, {k}: {models[k]}")
        engine[k].append(engine_alone(models[k], args.engine, npy[k], args.n, actors, threads, args.batch_size))
        log(f"    {engine[k][-1]['images_per_second']} img/s, {engine[k][-1]['views_per_image']} views per image")
    manifest = write_manifest(paths, os.path.join(work, f"manifest-{args.n}.csv"))
    pipeline = {}
    for k in ("A", "B"):
        log(f"score() end to end, {k}")
        pipeline[k] = run_pipeline(manifest, os.path.join(work, f"out-{k}"), args, models[k], f"models-{k}")
        log(f"    start-up {pipeline[k]['startup']} s, steady {pipeline[k]['steady_summary']} img/s")
    ray.shutdown()
    for f in npy.values():
        os.remove(f)

    rows, per = [], {}
    for k in ("A", "B"):
        e, p = engine[k], pipeline[k]
        rate = round(sum(r["images_per_second"] for r in e) / len(e), 2)
        per[k] = round((p["startup"] + PER / p["steady_summary"]) / 60, 1) if p["steady_summary"] else None
        rows.append({"model": k, "dir": models[k], "views/img": e[0]["views_per_image"],
                     "engine img/s": rate, "engine CPU-s/img": round(sum(r["cpu_s_per_image"] for r in e) / len(e), 4),
                     "score() start-up s": p["startup"], "score() steady img/s": p["steady_summary"],
                     "score() wall s": p["wall_total"], "peak MB": p["peak_mb"], f"min per {PER:,}": per[k]})
    ratios = [
        {"ratio": "engine time per image, B / A", "value": ratio(rows[0]["engine img/s"], rows[1]["engine img/s"])},
        {"ratio": "score() steady time per image, B / A",
         "value": ratio(pipeline["A"]["steady_summary"], pipeline["B"]["steady_summary"])},
        {"ratio": f"minutes per {PER:,} images, B / A", "value": ratio(per["B"], per["A"])},
    ]
    print_results("bench_models", {
        f"Two models, the same {args.n} images, {actors} actor(s) x {threads} thread(s), engine {args.engine}": rows,
        "Ratios": ratios}, {"n": args.n, "models": models, "engine": engine, "pipeline": pipeline,
                            "ratios": {r["ratio"]: r["value"] for r in ratios}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
