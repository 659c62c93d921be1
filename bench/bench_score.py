"""Scoring throughput and memory: the Ray Data pipeline vs the engine alone vs the seed's one-image loop.

All on the same images and the same model, in one run (the host is shared and noisy, so only ratios count):

  (a) ``skinray.scoring.run.score(cfg)`` end to end on N images: wall, start-up (time to first row), steady images/s
  (b) the engine's forward pass alone on images decoded beforehand with ``skinray.data.images.decode``: one process per
      scoring actor, the same threads per process, the same batches and ``skinray.model.views.run`` call the predictor
      makes; measured before and after (a), the mean is the baseline
  (c) the seed's loop on a subset: PIL open + resize to 224 + /255 + Keras ``model.predict(x[None])``, per image
  memory: peak summed RSS (driver + Ray instance) of (a) on N and on ``--mem-factor`` x N images

Run from the repository root:  .venv/bin/python bench/bench_score.py [--n 2000] [--model DIR]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    DEFAULT_IMAGES,
    DEFAULT_WEIGHTS,
    DEFAULT_WORKDIR,
    PeakMemory,
    Timer,
    cycle,
    list_images,
    log,
    print_results,
    ratio,
    resolve_model,
    verdict,
)

TARGET_PIPELINE_VS_ENGINE = 0.90
TARGET_PIPELINE_VS_SEED = 20.0
TARGET_MEMORY_RATIO = 1.2
TARGET_TTA_COST = 1.6  # flip TTA (3 views) costs at most 1.6x one view per image
TARGET_INT8_GAIN = 1.6  # int8 engine alone at least 1.6x float32


# ---------------------------------------------------------------------------------------------------------------
# Child-process bodies (spawned: no Ray, no TensorFlow in the driver's memory)
# ---------------------------------------------------------------------------------------------------------------


def split_images(prepared: str, split: str, n: int) -> list[str]:
    """The image files of one split of a prepared dataset, cycled to exactly ``n``."""
    from skinray.data.prepare import load_prepared

    rows = load_prepared(prepared)
    files = rows.loc[rows["split"] == split, "image_uri"].tolist()
    if not files:
        raise SystemExit(f"{prepared}: no {split} images")
    return cycle(files, n)


def decode_to_npy(paths: list[str], model_dir: str, out: str) -> dict[str, Any]:
    """Decode ``paths`` with the model's preprocessing spec into a uint8 .npy of shape (n, size, size, 3)."""
    import numpy as np

    from skinray.config import ImageConfig
    from skinray.data import images
    from skinray.model.artifact import ModelArtifact

    cfg = ModelArtifact.open(model_dir).image_config(ImageConfig())
    arr = np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(len(paths), cfg.size, cfg.size, 3))
    t = time.perf_counter()
    for i, p in enumerate(paths):
        arr[i] = images.decode(Path(p).read_bytes(), cfg)
    seconds = time.perf_counter() - t
    arr.flush()
    del arr
    return {"images": len(paths), "decode_seconds": seconds}


def _engine_proc(q: Any, barrier: Any, model_dir: str, engine_name: str, threads: int, npy: str,
                 idx: list[int], batch_size: int, policy: str, tta: bool | None) -> None:
    try:
        import numpy as np

        from skinray.inference.engines import make_engine
        from skinray.model.artifact import ModelArtifact
        from skinray.model.views import VIEWS, run

        artifact = ModelArtifact.open(model_dir)
        engine = make_engine(artifact, engine_name, False, threads, policy)
        views = artifact.views(tta)
        x = np.load(npy, mmap_mode="r")
        run(engine, np.asarray(x[idx[:1]], dtype=np.float32), views)  # warm-up, not timed
        for j in idx:  # fault the pages in: reading pre-decoded tensors is not what (b) measures
            x[j].sum()
        barrier.wait()
        views_done = 0
        t0, cpu0 = time.monotonic(), time.process_time()
        for i in range(0, len(idx), batch_size):
            # What ImagePredictor.__call__ does with its decoded list, minus the decode.
            batch = np.stack([x[j] for j in idx[i : i + batch_size]]).astype(np.float32)
            views_done += int(run(engine, batch, views)[VIEWS].sum())
        q.put((t0, time.monotonic(), len(idx), None, time.process_time() - cpu0, views_done))
    except BaseException as exc:  # report instead of hanging the parent on the barrier
        barrier.abort()
        q.put((0.0, 0.0, 0, f"{type(exc).__name__}: {exc}", 0.0, 0))


def engine_alone(model_dir: str, engine_name: str, npy: str, n: int, processes: int, threads: int,
                 batch_size: int, policy: str = "auto", tta: bool | None = None) -> dict[str, Any]:
    """(b): ``processes`` engine processes (like the actor pool), each on an interleaved share of the images.

    Throughput = all images / (last process done - first process started), timed after a barrier so model
    loading and warm-up are excluded.
    """
    from multiprocessing import get_context

    ctx = get_context("spawn")
    q, barrier = ctx.Queue(), ctx.Barrier(processes)
    shares = [list(range(k, n, processes)) for k in range(processes)]
    procs = [ctx.Process(target=_engine_proc, args=(q, barrier, model_dir, engine_name, threads, npy, share,
                                                    batch_size, policy, tta)) for share in shares]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    errors = [r[3] for r in results if r[3]]
    if errors:
        raise RuntimeError(f"engine benchmark failed: {errors[0]}")
    start, end = min(r[0] for r in results), max(r[1] for r in results)
    done = sum(r[2] for r in results)
    return {"images": done, "seconds": round(end - start, 2), "images_per_second": round(done / (end - start), 2),
            "cpu_s_per_image": round(sum(r[4] for r in results) / done, 4),
            "views_per_image": round(sum(r[5] for r in results) / done, 3)}


def seed_loop(model_dir: str, paths: list[str], size: int = 224) -> dict[str, Any]:
    """(c): the seed's scoring loop, one image at a time through Keras ``model.predict``."""
    import numpy as np
    from PIL import Image

    from skinray.model.artifact import ModelArtifact

    model = ModelArtifact.open(model_dir).load_keras()
    model.predict(np.zeros((1, size, size, 3), np.float32), verbose=0)  # warm-up, not timed
    t, cpu = time.perf_counter(), time.process_time()
    for p in paths:
        img = Image.open(p).convert("RGB").resize((size, size))
        x = np.asarray(img, dtype=np.float32) / 255.0
        model.predict(x[None], verbose=0)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    return {"images": len(paths), "seconds": round(seconds, 2), "images_per_second": round(len(paths) / seconds, 2),
            "cpu_s_per_image": round(cpu / len(paths), 4)}


# ---------------------------------------------------------------------------------------------------------------
# (a): the pipeline, with the arrival time of every batch at the driver recorded
# ---------------------------------------------------------------------------------------------------------------


class _TracedDataset:
    """Wraps the dataset ``plan.predict_dataset`` returns; records (time, rows) of each batch the driver gets."""

    def __init__(self, ds: Any, trace: list[tuple[float, int]]) -> None:
        self._ds, self._trace = ds, trace

    def iter_batches(self, *args: Any, **kwargs: Any) -> Any:
        for batch in self._ds.iter_batches(*args, **kwargs):
            self._trace.append((time.time(), len(batch)))
            yield batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ds, name)


def _steady_from_trace(trace: list[tuple[float, int]], actors: int) -> dict[str, Any]:
    """A conservative steady-state rate from the batch arrivals at the driver.

    Rows leave the actor pool in whole blocks (about ``N / 8`` rows for N <= 2048), each actor's first block
    arriving at about the same time. Rows of the first ``actors`` blocks were scored before (or around) the first
    arrival, so only later rows count: (rows - rows of the first ``actors`` batches) / (last arrival - first).
    ``images_per_second_steady`` in run.json counts all rows over that interval, which overstates the rate by
    about blocks / (blocks - actors) when there are few blocks.
    """
    out: dict[str, Any] = {"batches": len(trace), "first_batch_rows": trace[0][1] if trace else None,
                           "steady_trace": None}
    if len(trace) <= actors:
        return out
    span = trace[-1][0] - trace[0][0]
    rows_after = sum(r for _, r in trace[actors:])
    if span > 0:
        out["steady_trace"] = round(rows_after / span, 2)
    return out


def write_manifest(paths: list[str], out: str) -> str:
    import pandas as pd

    pd.DataFrame({"image_uri": paths}).to_csv(out, index=False)
    return out


def run_pipeline(manifest: str, out: str, args: argparse.Namespace, model_dir: str, label: str
                 ) -> dict[str, Any]:
    from skinray.config import load_config
    from skinray.inference import plan
    from skinray.scoring import run as score_mod

    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(overrides={
        "score.model": model_dir, "score.input": manifest, "score.out": out, "inference.engine": args.engine,
        "score.batch_size": args.batch_size, "inference.actors": args.actors,
        "inference.cpus_per_actor": args.cpus_per_actor,
        "score.run_id": f"bench-{label}", "score.top_k": 8,
    })
    trace: list[tuple[float, int]] = []
    original = plan.predict_dataset
    t_pipeline = [0.0]

    def traced(*a: Any, **kw: Any) -> Any:
        t_pipeline[0] = time.time()
        ds, actors = original(*a, **kw)
        return _TracedDataset(ds, trace), actors

    plan.predict_dataset = traced
    gc.collect()
    try:
        with PeakMemory() as mem, Timer() as t:
            summary = score_mod.score(cfg)
    finally:
        plan.predict_dataset = original
    if summary.failed:
        log(f"WARNING: {summary.failed} images failed: {summary.failed_by_reason}")
    return {
        "label": label,
        "images": summary.rows,
        "failed": summary.failed,
        "actors": summary.record["actors"],
        "wall_total": round(t.seconds, 2),  # score() call including reports and the commit
        "commit_seconds": summary.record["commit_seconds"],  # writing the table's data files + the one Delta commit
        "wall_summary": summary.wall_seconds,  # run.json: start .. last part written
        "startup": summary.record["startup_seconds"],
        "actors_ready": summary.record.get("actors_ready_seconds"),  # [first, last] actor with its model loaded
        "steady_summary": summary.images_per_second_steady,
        "overall_summary": summary.images_per_second_overall,
        **_steady_from_trace(trace, summary.record["actors"]),
        "peak_mb": round(mem.peak_mb, 1),
        "start_mb": round(mem.start_mb, 1),
        "processes_at_peak": mem.peak_processes,
        "mem_samples": mem.samples,
        "cpu_s_per_image": round(mem.cpu_seconds / max(summary.rows, 1), 4),
        "cpu_s_by_process": {k: round(v, 2) for k, v in mem.cpu_by_process().items()},
        "arrivals": [[round(t - t_pipeline[0], 2), r] for t, r in trace],  # (s after the plan was built, rows)
    }


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=DEFAULT_IMAGES, help="folder of JPEGs (default: HAM10000 images)")
    ap.add_argument("--prepared", help="take the images of one split of this prepared dataset instead (images the "
                    "model never trained on: how many land near its threshold depends on that)")
    ap.add_argument("--split", default="test", help="the split of --prepared (default test)")
    ap.add_argument("--n", type=int, default=2000, help="images for (a) and (b) (default 2000)")
    ap.add_argument("--model", help="a model directory (default: build an untrained one with --weights)")
    ap.add_argument("--weights", default=DEFAULT_WEIGHTS, help="MobileNetV2 ImageNet no-top .h5 for the built model")
    ap.add_argument("--actors", type=int, default=0, help="inference.actors (0 = one per CPU)")
    ap.add_argument("--cpus-per-actor", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=32, help="rows per predictor call (score.batch_size)")
    ap.add_argument("--engine", choices=["onnx", "onnx-int8", "tf"], default="onnx")
    ap.add_argument("--seed-n", type=int, default=300, help="images for the seed loop (c) (default 300)")
    ap.add_argument("--mem-factor", type=int, default=10, help="memory run on factor x N images (0 = skip)")
    ap.add_argument("--views-and-precision", action="store_true",
                    help="also time the engine alone with one view and with flip TTA, in float32 and (if the model "
                    "has model.int8.onnx) int8: the cost of TTA and the gain of int8")
    ap.add_argument("--sweep", action="store_true",
                    help="also time the engine alone at other predictor batch sizes, per-image vs batched ONNX")
    ap.add_argument("--sweep-n", type=int, default=512, help="images per sweep setting (default 512)")
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR, help="scratch space (model, manifests, outputs)")
    args = ap.parse_args(argv)

    work = os.path.join(args.workdir, "score")
    os.makedirs(work, exist_ok=True)
    paths = split_images(args.prepared, args.split, args.n) if args.prepared else list_images(args.images, args.n)
    model_dir = resolve_model(args.model, args.weights, args.workdir, sample_images=paths[:8])

    from skinray.runtime import cluster_cpus

    from bench.common import start_ray

    ray = start_ray()
    actors = args.actors or max(1, int(cluster_cpus() // args.cpus_per_actor))  # as plan.actor_pool starts
    threads = max(1, int(args.cpus_per_actor))
    log(f"Ray up: {cluster_cpus()} CPUs -> {actors} actors x {threads} thread(s); engine {args.engine}, "
        f"batch {args.batch_size}, N={args.n}")

    from bench.common import in_subprocess

    npy = os.path.join(work, f"decoded-{args.n}.npy")
    dec = in_subprocess(decode_to_npy, paths, model_dir, npy)
    log(f"decoded {dec['images']} images for (b) in {dec['decode_seconds']:.1f}s "
        f"({dec['images'] / dec['decode_seconds']:.0f}/s on one core)")

    log("(b) engine alone, run 1")
    b1 = engine_alone(model_dir, args.engine, npy, args.n, actors, threads, args.batch_size)
    log(f"    {b1['images_per_second']} img/s")

    manifest_n = write_manifest(paths, os.path.join(work, f"manifest-{args.n}.csv"))
    log(f"(a) pipeline on {args.n} images")
    a = run_pipeline(manifest_n, os.path.join(work, f"out-{args.n}"), args, model_dir, f"n{args.n}")
    log(f"    steady {a['steady_summary']} img/s (summary), {a['steady_trace']} (trace); peak {a['peak_mb']:.0f} MB")

    log("(b) engine alone, run 2")
    b2 = engine_alone(model_dir, args.engine, npy, args.n, actors, threads, args.batch_size)
    log(f"    {b2['images_per_second']} img/s")

    seed_paths = paths[: args.seed_n]
    log(f"(c) seed loop on {len(seed_paths)} images")
    c = in_subprocess(seed_loop, model_dir, seed_paths)
    log(f"    {c['images_per_second']} img/s")

    big = None
    if args.mem_factor > 0:
        n_big = args.n * args.mem_factor
        manifest_big = write_manifest(list_images(args.images, n_big), os.path.join(work, f"manifest-{n_big}.csv"))
        log(f"(a) pipeline on {n_big} images (memory)")
        big = run_pipeline(manifest_big, os.path.join(work, f"out-{n_big}"), args, model_dir, f"n{n_big}")
        log(f"    steady {big['steady_summary']} img/s; peak {big['peak_mb']:.0f} MB")
        log("(b) engine alone, run 3")
        b3 = engine_alone(model_dir, args.engine, npy, args.n, actors, threads, args.batch_size)
        log(f"    {b3['images_per_second']} img/s")

    vp_rows: list[dict[str, Any]] = []
    if args.views_and_precision:
        from skinray.model.artifact import ModelArtifact

        meta = ModelArtifact.open(model_dir).meta
        engines = ["onnx"] + (["onnx-int8"] if meta.int8 else [])
        # one view, flips for every image, and (a model with a band) flips near the threshold only: the default
        modes: list[tuple[str, bool | None]] = [("one view", False), ("flip TTA, every image", True)]
        if meta.tta and meta.tta_band is not None:
            modes.append(("flip TTA near the threshold (default)", None))
        settings = [(e, m) for e in engines for m in range(len(modes))]
        measured: dict[tuple[str, int], list[dict[str, Any]]] = {k: [] for k in settings}
        for round_order in (settings, settings[::-1]):  # forward then reversed: load drift hits every setting alike
            for engine_name, m in round_order:
                log(f"views/precision: engine alone, {engine_name}, {modes[m][0]}")
                measured[(engine_name, m)].append(engine_alone(model_dir, engine_name, npy, args.n, actors, threads,
                                                               args.batch_size, tta=modes[m][1]))
        for (engine_name, m), (r1, r2) in measured.items():
            vp_rows.append({"engine": engine_name, "views": modes[m][0], "views per image": r1["views_per_image"],
                            "images": r1["images"],
                            "img/s round 1": r1["images_per_second"], "img/s round 2": r2["images_per_second"],
                            "img/s mean": round((r1["images_per_second"] + r2["images_per_second"]) / 2, 2),
                            "CPU-s/img": round((r1["cpu_s_per_image"] + r2["cpu_s_per_image"]) / 2, 4)})

    sweep_rows: list[dict[str, Any]] = []
    if args.sweep:
        sn = min(args.sweep_n, args.n)
        settings = [("auto (measured per actor)", args.batch_size, "auto")]
        if args.engine == "onnx":
            settings += [("per-image", args.batch_size, "per_image"), ("batched", 16, "batch"),
                         ("batched", 64, "batch")]
        runs: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(settings))}
        order = list(range(len(settings)))
        for round_order in (order, order[::-1]):  # forward then reversed: a drift in load hits all settings alike
            for i in round_order:
                name, bs, policy = settings[i]
                log(f"sweep: engine alone, {name}, batch {bs}")
                runs[i].append(engine_alone(model_dir, args.engine, npy, sn, actors, threads, bs, policy))
        for i, (name, bs, _) in enumerate(settings):
            r1, r2 = runs[i]
            sweep_rows.append({"engine call": name, "batch": bs, "images": r1["images"],
                               "img/s round 1": r1["images_per_second"], "img/s round 2": r2["images_per_second"],
                               "img/s mean": round((r1["images_per_second"] + r2["images_per_second"]) / 2, 2),
                               "CPU-s/img": round((r1["cpu_s_per_image"] + r2["cpu_s_per_image"]) / 2, 4)})
        fastest = max(r["img/s mean"] for r in sweep_rows)
        least_cpu = min(r["CPU-s/img"] for r in sweep_rows)
        for r in sweep_rows:
            r["img/s vs fastest"] = round(r["img/s mean"] / fastest, 3)
            r["CPU vs least"] = round(r["CPU-s/img"] / least_cpu, 3)

    ray.shutdown()
    os.remove(npy)

    def mean_rate(*runs: dict[str, Any]) -> float:
        return round(sum(r["images_per_second"] for r in runs) / len(runs), 2)

    def ready_text(run: dict[str, Any]) -> str:
        return "–" if not run["actors_ready"] else " / ".join(f"{v:g}" for v in run["actors_ready"])

    def mean_cpu(*runs: dict[str, Any]) -> float:
        return round(sum(r["cpu_s_per_image"] for r in runs) / len(runs), 4)

    b_runs = [b1, b2] + ([b3] if big else [])
    b_n = mean_rate(b1, b2)  # bracketing (a) on N
    throughput = [
        {"stage": "(a) pipeline: score(), N", "images": a["images"], "wall s": a["wall_total"],
         "start-up s": a["startup"], "actors ready s": ready_text(a), "img/s (run.json steady)": a["steady_summary"],
         "img/s (trace steady)": a["steady_trace"], "img/s incl. start-up": a["overall_summary"],
         "CPU-s/img": a["cpu_s_per_image"], "commit s": a["commit_seconds"]},
    ]
    if big:
        throughput.append(
            {"stage": f"(a) pipeline: score(), {args.mem_factor}N", "images": big["images"],
             "wall s": big["wall_total"], "start-up s": big["startup"], "actors ready s": ready_text(big),
             "img/s (run.json steady)": big["steady_summary"],
             "img/s (trace steady)": big["steady_trace"], "img/s incl. start-up": big["overall_summary"],
             "CPU-s/img": big["cpu_s_per_image"], "commit s": big["commit_seconds"]})
    for i, r in enumerate(b_runs, 1):
        throughput.append({"stage": f"(b) engine alone, run {i}", "images": r["images"], "wall s": r["seconds"],
                           "img/s (trace steady)": r["images_per_second"], "CPU-s/img": r["cpu_s_per_image"]})
    throughput.append({"stage": "(c) seed loop (Keras, 1 image/call)", "images": c["images"], "wall s": c["seconds"],
                       "img/s (trace steady)": c["images_per_second"], "CPU-s/img": c["cpu_s_per_image"]})

    def row(name: str, value: float | None, target: float | None = None, lower: bool = False) -> dict[str, Any]:
        if target is None:
            return {"ratio": name, "value": value, "target": "(info)", "verdict": ""}
        return {"ratio": name, "value": value, "target": f"{'<=' if lower else '>='} {target}",
                "verdict": verdict(value, target, higher_is_better=not lower)}

    ratios = [
        row("(a)/(b), N: run.json steady / engine (runs 1-2)", ratio(a["steady_summary"], b_n),
            TARGET_PIPELINE_VS_ENGINE),
        row("(a)/(b), N: trace steady / engine (runs 1-2)", ratio(a["steady_trace"], b_n), TARGET_PIPELINE_VS_ENGINE),
        row("(a)/(b), N: incl. start-up / engine", ratio(a["overall_summary"], b_n)),
        row("(a)/(c), N: run.json steady / seed loop", ratio(a["steady_summary"], c["images_per_second"]),
            TARGET_PIPELINE_VS_SEED),
        row("(a)/(c), N: trace steady / seed loop", ratio(a["steady_trace"], c["images_per_second"]),
            TARGET_PIPELINE_VS_SEED),
        row("CPU per image, N: (b)/(a) (all of score(), incl. start-up)",
            ratio(mean_cpu(b1, b2), a["cpu_s_per_image"])),
        row("CPU per image, N: (c)/(a)", ratio(c["cpu_s_per_image"], a["cpu_s_per_image"])),
    ]
    if big:
        b_big = mean_rate(b2, b3)  # bracketing (a) on 10N
        ratios[3:3] = [
            row(f"(a)/(b), {args.mem_factor}N: run.json steady / engine (runs 2-3)",
                ratio(big["steady_summary"], b_big), TARGET_PIPELINE_VS_ENGINE),
            row(f"(a)/(b), {args.mem_factor}N: trace steady / engine (runs 2-3)",
                ratio(big["steady_trace"], b_big), TARGET_PIPELINE_VS_ENGINE),
        ]
        ratios.append(row(f"CPU per image, {args.mem_factor}N: (b)/(a)",
                          ratio(mean_cpu(b2, b3), big["cpu_s_per_image"])))
    rates = [r["images_per_second"] for r in b_runs]
    ratios.append(row("noise: fastest / slowest (b) run", ratio(max(rates), min(rates))))

    tables: dict[str, Any] = {
        f"Throughput: HAM10000 images, N={args.n}, {actors} actor(s) x {threads} thread(s), engine {args.engine}, "
        f"batch {args.batch_size}": throughput,
        "Ratios": ratios,
    }
    payload: dict[str, Any] = {"n": args.n, "model": model_dir, "engine": args.engine, "actors": actors,
                               "threads": threads, "batch_size": args.batch_size, "a": a, "b": b_runs, "c": c,
                               "decode": dec, "ratios": {r["ratio"]: r["value"] for r in ratios}}
    if big:
        r_mem = ratio(big["peak_mb"], a["peak_mb"])
        tables["Memory: peak summed RSS of driver + Ray instance during score()"] = [
            {"run": "(a) N", "images": a["images"], "peak MB": a["peak_mb"], "MB at start": a["start_mb"],
             "processes at peak": a["processes_at_peak"]},
            {"run": f"(a) {args.mem_factor}N", "images": big["images"], "peak MB": big["peak_mb"],
             "MB at start": big["start_mb"], "processes at peak": big["processes_at_peak"]},
            {"run": f"ratio {args.mem_factor}N / N (target <= {TARGET_MEMORY_RATIO})", "peak MB": r_mem,
             "verdict": verdict(r_mem, TARGET_MEMORY_RATIO, higher_is_better=False)},
        ]
        payload["a_big"] = big
    where = big or a
    total_cpu = sum(where["cpu_s_by_process"].values()) or 1.0
    tables[f"Where the CPU of score() went ({where['images']} images)"] = [
        {"process": k, "CPU s": v, "CPU ms/img": round(1000 * v / where["images"], 2), "share": round(v / total_cpu, 3)}
        for k, v in where["cpu_s_by_process"].items() if v >= 0.01 * total_cpu
    ] + [{"process": "engine alone, for comparison", "CPU ms/img": round(1000 * mean_cpu(*b_runs), 2)}]
    if vp_rows:
        rate = {(r["engine"], r["views"]): r["img/s mean"] for r in vp_rows}
        tables[f"Views and precision, engine alone ({actors} process(es) x {threads} thread(s), batch "
               f"{args.batch_size}, 2 rounds)"] = vp_rows
        vp_ratios = []
        for name, _ in modes[1:]:
            vp_ratios.append(row(f"TTA cost: one view / {name} (float32), time per image",
                                 ratio(rate[("onnx", "one view")], rate[("onnx", name)]), TARGET_TTA_COST, lower=True))
        if "onnx-int8" in engines:
            vp_ratios += [row(f"int8 / float32, {name}", ratio(rate[("onnx-int8", name)], rate[("onnx", name)]),
                              TARGET_INT8_GAIN) for name, _ in modes]
        tables["Ratios: views and precision"] = vp_ratios
        payload["views_and_precision"] = vp_rows
    if sweep_rows:
        tables[f"Engine-alone sweep ({actors} process(es) x {threads} thread(s), {sweep_rows[0]['images']} images, "
               "2 rounds)"] = sweep_rows
        payload["sweep"] = sweep_rows
    print_results("bench_score", tables, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
