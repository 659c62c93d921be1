"""The Ray Data plan that runs the predictor at scale: rows → an actor pool of
:class:`skinray.inference.predictor.ImagePredictor` → rows with the result columns.

Score and evaluate (and the benchmarks) all build their plan here, so the pool is sized one way (from the config,
not from the nodes alive right now) and whatever stops a plan — an actor's :class:`SkinrayError`, actors that never
start — reaches the user as one line rather than Ray's traceback. The engines and the predictor run without Ray
(train, export, predict); this is where Ray Data comes in.
"""

from __future__ import annotations

import gc
from typing import Any, Iterator

import numpy as np
import pandas as pd

from skinray import SkinrayError, TemporaryError
from skinray.config import SkinrayConfig
from skinray.inference.predictor import ImagePredictor
from skinray.io import storage
from skinray.runtime import cluster_cpus, dataset_from_frame, ensure_ray, wait_for_gpus


def actor_pool(cfg: SkinrayConfig) -> tuple[Any, int, int]:
    """(``ActorPoolStrategy``, initial size, max size) from the config, not from the nodes alive right now.

    A fixed ``inference.actors`` gives a fixed pool; otherwise the pool starts with what the cluster offers now (at
    least ``min_actors``) and grows to ``max_actors`` as the autoscaler adds nodes. With ``--gpu`` it first waits
    up to ``inference.gpu_wait_seconds`` for a GPU (a GPU worker group that scales from zero has none at start).
    """
    import ray

    s = cfg.inference
    if s.use_gpu:
        available = wait_for_gpus(s.gpu_wait_seconds)
        per_actor = 1.0
    else:
        available = cluster_cpus()
        per_actor = s.cpus_per_actor
    if s.actors:
        return ray.data.ActorPoolStrategy(size=s.actors), s.actors, s.actors
    initial = max(s.min_actors, min(s.max_actors, int(available // per_actor)))
    return (ray.data.ActorPoolStrategy(min_size=s.min_actors, max_size=s.max_actors, initial_size=initial),
            initial, s.max_actors)


def pipeline_error(exc: Exception, cfg: SkinrayConfig) -> SkinrayError | None:
    """What the Ray Data plan of :func:`predict_dataset` raised, as one line for the user; None when it is not
    ours to explain (a bug, which keeps its traceback)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, SkinrayError):  # raised inside an actor: Ray wraps it with the remote traceback
            text = str(seen).strip().splitlines()
            return SkinrayError(next((t.split("SkinrayError: ", 1)[-1] for t in text if "SkinrayError" in t),
                                     text[-1] if text else type(seen).__name__))
        if type(seen).__name__ == "GetTimeoutError" and "starting actors" in str(seen):
            s = cfg.inference
            need = f"{s.cpus_per_actor:g} CPU" if not s.use_gpu else "1 GPU"
            return TemporaryError(f"the scoring actors did not all start within {s.actor_start_seconds:g} s "
                                f"(inference.actor_start_seconds): each needs {need} and the model loaded; give the "
                                f"cluster more nodes or ask for fewer actors (inference.actors / min_actors)")
        seen = seen.__cause__ or seen.__context__
    marker = "SkinrayError: "
    line = next((t for t in str(exc).splitlines() if marker in t), None)
    return SkinrayError(line.split(marker, 1)[1]) if line else None


def pipeline_batches(ds: Any, cfg: SkinrayConfig) -> Iterator[pd.DataFrame]:
    """The batches of a :func:`predict_dataset` plan as they arrive, and what went wrong as one line
    (:func:`pipeline_error`) rather than Ray's traceback."""
    batches = iter(ds.iter_batches(batch_size=None, batch_format="pandas"))
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:
            if isinstance(exc, SkinrayError) and type(exc).__module__.startswith("skinray"):
                raise  # ours, raised in this process: already one line
            failure = pipeline_error(exc, cfg)  # Ray's wrappers, an actor's SkinrayError among them
            if failure is None:
                raise
            break
        yield batch
    # raised outside the handler, after a collection: the failed plan's frames (held in a cycle by its exception)
    # keep the actors it started, and their CPUs, until then
    del batches
    gc.collect()
    raise failure


def predict_dataset(rows: pd.DataFrame, model_uri: str, cfg: SkinrayConfig, batch_size: int) -> tuple[Any, int]:
    """The Ray Data plan every batch prediction runs (score, evaluate, benchmarks): rows → actor pool of
    :class:`ImagePredictor` (read + decode + predict) → rows with the result columns, in no particular order.

    Returns (dataset, initial pool size).
    """
    ensure_ray()
    s = cfg.inference
    strategy, initial, _ = actor_pool(cfg)
    # Small blocks: rows reach the driver a block at a time, so a block of a few batches keeps memory flat and
    # progress smooth; per-block overhead is small next to decode + inference.
    blocks = max(initial * 4, int(np.ceil(len(rows) / (batch_size * 2))))
    ds = dataset_from_frame(rows, blocks)
    scored = ds.map_batches(
        ImagePredictor,
        fn_constructor_kwargs={
            "model_uri": storage.normalize(model_uri),  # actors run elsewhere: absolute URIs only
            "storage_cfg": cfg.storage,
            "inference": cfg.inference,
            "image_guards": cfg.image,
            "use_gpu": s.use_gpu,
            "threads": max(1, int(s.cpus_per_actor)),
        },
        batch_size=batch_size,
        batch_format="pandas",
        compute=strategy,
        num_cpus=0 if s.use_gpu else s.cpus_per_actor,
        num_gpus=1 if s.use_gpu else 0,
    )
    # this plan's own context, not the process's: the first actors all load the model before the first batch goes
    # out, or whichever loads first (the driver's node, with no download) takes every batch of a short run
    scored.context.wait_for_min_actors_s = max(1, int(np.ceil(s.actor_start_seconds)))
    return scored, initial
