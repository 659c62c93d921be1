"""The one inference path: engines (ONNX Runtime by default, TensorFlow on request), the predictor class that
``score``, ``evaluate`` and ``predict`` all use, and the Ray Data plan that runs it at scale.

The predictor reads and decodes inside the actor: on CPU nodes this keeps decoded arrays out of the object store
and was the fastest arrangement measured (bench/RESULTS.md). Engines return logits; flip TTA averages the views'
logits (:mod:`skinray.model.views`: all views in one engine call, only near the threshold when the model has a band),
and :class:`skinray.decision.operating_point.OperatingPoint` turns them into calibrated probabilities in float64.
"""

from __future__ import annotations

import gc
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np
import pandas as pd

from skinray import SkinrayError, TemporaryError
from skinray.config import ImageConfig, InferenceConfig, SkinrayConfig
from skinray.data import images
from skinray.io import storage
from skinray.io.storage import StorageConfig
from skinray.model import views
from skinray.model.artifact import INT8_FILE, MODEL_FILE, ONNX_FILE, ONNX_PARITY_LIMIT, ModelArtifact
from skinray.model.network import DX_LOGITS, LOGIT, forward, with_features
from skinray.model.ood import FEATURES
from skinray.runtime import (
    ORT_GPU_SWAP,
    cluster_cpus,
    dataset_from_frame,
    ensure_ray,
    import_tensorflow,
    require_train_extra,
    wait_for_gpus,
)

IO_THREADS = 8
RESULT_COLUMNS = ["prob_malignant", "logit_malignant", "predicted", "confidence", "threshold", "dx_pred", "dx_probs",
                  "ood_score", "out_of_distribution", "error", "image_width", "image_height", "mean_red", "mean_green",
                  "mean_blue"]
OUT_OF_DISTRIBUTION = "out_of_distribution"  # ``predicted`` of an image the guard flags: no benign/malignant call
# where and how each row was scored (node, engine call, views averaged, when its actor had the model loaded); the
# driver aggregates and drops them
WORKER_COLUMNS = ["_node_id", "_batch_mode", "_views", "_ready_at"]
PROBE_BATCHES = 2  # batch_policy auto: batches timed both ways (after a first, untimed one) before the faster is kept
PROBE_MIN_ROWS = 4


class OnnxEngine:
    """An ONNX Runtime session that runs either one image per call or whole batches, whichever is faster here.

    On 2-core CPU hosts one image per call measured fastest on one machine and whole batches on another
    (bench/RESULTS.md), so with ``policy="auto"`` the engine times both on two batches after its first (the untimed
    warm-up of both call shapes) and keeps the faster. GPUs always run whole batches.
    """

    name = "onnx"

    def __init__(self, path: str, outputs: dict[str, str], use_gpu: bool = False, threads: int = 0,
                 policy: str = "auto", where: str | None = None) -> None:
        ort = _onnxruntime()
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if use_gpu:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise SkinrayError(f"--gpu needs ONNX Runtime's CUDA provider on the scoring nodes; node "
                                   f"{_node_id()[:12]} has {ort.get_available_providers()}: {ORT_GPU_SWAP}")
            providers.insert(0, "CUDAExecutionProvider")
        self.session = onnx_session(path, where or os.path.dirname(path), opts, providers)
        if use_gpu and self.session.get_providers()[0] != "CUDAExecutionProvider":
            # compiled in but not loaded (CUDA/cuDNN libraries missing): ONNX Runtime would silently use the CPU
            raise SkinrayError(f"--gpu: ONNX Runtime on node {_node_id()[:12]} could not load its CUDA provider "
                               f"(session providers {self.session.get_providers()}); check the CUDA 12 / cuDNN 9 "
                               "libraries of skinray[gpu]")
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = outputs  # ours → the graph's
        self.mode = "batch" if use_gpu or policy == "batch" else ("per_image" if policy == "per_image" else None)
        self.last_mode: str | None = None
        self._timings: dict[str, float] = {"per_image": 0.0, "batch": 0.0}
        self._probes = 0
        self._warm = False

    def _call(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(list(self.outputs.values()), {self.input_name: x})

    def _per_image(self, x: np.ndarray, group: int) -> list[np.ndarray]:
        parts = [self._call(x[i : i + group]) for i in range(0, len(x), group)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(self.outputs))]

    def run(self, x: np.ndarray, group: int = 1, follow_up: bool = False) -> dict[str, np.ndarray]:
        """Outputs for ``x``; one image per call means ``group`` rows per call (an image's TTA views).

        ``follow_up``: a second call for the same batch (the flips of the images near the threshold): it runs as
        already decided, is not timed as a probe and leaves ``last_mode`` as the batch's first call set it.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        if follow_up:
            raw = self._per_image(x, group) if self.mode == "per_image" else self._call(x)
            return self._outputs(raw)
        self.last_mode = self.mode or "batch"  # what this call did; a batch too small to time runs batched
        if self.mode is None and not self._warm:
            # not timed: each call shape's first run sets up the session's buffers, which would bias the probe
            self._call(x[:group])
            raw = self._call(x)
            self._warm = True
        elif self.mode is None and len(x) >= PROBE_MIN_ROWS * group:
            self.last_mode = "probing"
            t0 = time.perf_counter()
            self._per_image(x, group)
            t1 = time.perf_counter()
            raw = self._call(x)
            self._timings["per_image"] += t1 - t0
            self._timings["batch"] += time.perf_counter() - t1
            self._probes += 1
            if self._probes >= PROBE_BATCHES:
                self.mode = min(self._timings, key=lambda k: self._timings[k])
        elif self.mode == "per_image":
            raw = self._per_image(x, group)
        else:
            raw = self._call(x)
        return self._outputs(raw)

    def _outputs(self, raw: list[np.ndarray]) -> dict[str, np.ndarray]:
        out = {name: value for name, value in zip(self.outputs, raw)}
        out[LOGIT] = out[LOGIT].reshape(-1)
        return out


def _onnxruntime() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise SkinrayError(f"ONNX Runtime is not installed: pip install onnxruntime (GPU nodes: {ORT_GPU_SWAP})"
                           ) from exc
    return ort


def onnx_session(path: str, where: str, opts: Any = None, providers: list[str] | None = None) -> Any:
    """An ONNX Runtime session for ``path``, or one line naming the file and the model (``where``) when the bytes
    are no graph ONNX Runtime can load — a hash only proves the file is the one recorded, not that it works."""
    ort = _onnxruntime()
    try:
        return ort.InferenceSession(path, sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's InvalidProtobuf, Fail, InvalidGraph, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SkinrayError(f"{os.path.basename(path)} in {where} cannot be loaded by ONNX Runtime: {first}") from exc


class TfEngine:
    """The Keras model under ``tf.function``: the reference the ONNX export is checked against."""

    name = "tf"
    mode = "batch"

    def __init__(self, artifact: ModelArtifact, threads: int = 0) -> None:
        tf = import_tensorflow("--engine tf")

        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
            except RuntimeError:
                pass  # already initialised in this process
        model = artifact.load_keras()
        self.model = with_features(model) if artifact.meta.ood is not None else model

    def run(self, x: np.ndarray, group: int = 1, follow_up: bool = False) -> dict[str, np.ndarray]:
        return forward(self.model, x)


def check_engine(artifact: ModelArtifact, engine: str) -> None:
    """Fail fast, before any Ray work, when the model directory cannot run on ``engine``."""
    if engine == "tf":
        artifact.path(MODEL_FILE)  # a clear error when the directory has no Keras model
        require_train_extra("--engine tf")
        return
    if engine == "onnx-int8":
        if artifact.meta.int8 is None or INT8_FILE not in artifact.meta.files:
            raise SkinrayError(f"{artifact.uri} has no int8 graph: add one with `skinray export --int8`")
        return
    if engine != "onnx":
        raise SkinrayError(f"unknown engine {engine!r}: use onnx, onnx-int8 or tf")
    check = artifact.meta.onnx
    if ONNX_FILE not in artifact.meta.files or check is None:
        raise SkinrayError(f"{artifact.uri} has no checked {ONNX_FILE}: use --engine tf or `skinray export` it")
    if check.parity_max_abs_diff > ONNX_PARITY_LIMIT:
        raise SkinrayError(f"{ONNX_FILE} differs from Keras by {check.parity_max_abs_diff:.2e} "
                           f"(> {ONNX_PARITY_LIMIT}): refusing to score with it")


def check_loads(artifact: ModelArtifact, engine: str) -> None:
    """Load the graph ``engine`` runs once, on the CPU, before any run is claimed or any image read: a file that
    matches its recorded hash but is not a loadable graph (or lacks an output the model records) is one line here,
    not a traceback in every scoring actor. The Keras model (``tf``) is loaded where it runs."""
    if engine == "tf":
        return
    name = INT8_FILE if engine == "onnx-int8" else ONNX_FILE
    session = onnx_session(artifact.path(name), artifact.uri)
    present = {o.name for o in session.get_outputs()}
    missing = [o for o in _graph_outputs(artifact, engine).values() if o not in present]
    if missing:
        raise SkinrayError(f"{name} in {artifact.uri} has no output {missing[0]!r} (it has {sorted(present)}): "
                           f"the graph does not match {artifact.uri}'s skinray.json")


def _graph_outputs(artifact: ModelArtifact, engine: str) -> dict[str, str]:
    """Ours → the graph's output names, for the graph ``engine`` runs."""
    outputs = {LOGIT: artifact.meta.outputs.logit}
    if artifact.meta.outputs.dx_logits:
        outputs[DX_LOGITS] = artifact.meta.outputs.dx_logits
    if artifact.meta.ood is not None and engine != "onnx-int8":  # the int8 graph was quantized without it
        outputs[FEATURES] = artifact.meta.outputs.features
    return outputs


def make_engine(artifact: ModelArtifact, engine: str = "onnx", use_gpu: bool = False, threads: int = 0,
                policy: str = "auto") -> OnnxEngine | TfEngine:
    check_engine(artifact, engine)
    if engine == "tf":
        return TfEngine(artifact, threads)
    path = artifact.path(INT8_FILE if engine == "onnx-int8" else ONNX_FILE)
    return OnnxEngine(path, _graph_outputs(artifact, engine), use_gpu=use_gpu, threads=threads, policy=policy,
                      where=artifact.uri)


def resolve_views(artifact: ModelArtifact, override: bool | None = None) -> views.Views:
    """The views for this run: as the model's operating point was fitted (flip TTA, near the threshold when the
    model has a band), or the override: True = flips for every image, False = one view."""
    return views.for_model(artifact.meta.tta, artifact.meta.tta_band, artifact.operating_point, override)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class ImagePredictor:
    """Loads a model once (per Ray actor) and scores image URIs; ``map_batches`` calls it on pandas batches.

    Every input row comes out once, with ``prob_malignant`` or with ``error`` set.
    """

    def __init__(self, model_uri: str, storage_cfg: StorageConfig | None = None,
                 inference: InferenceConfig | None = None, image_guards: ImageConfig | None = None,
                 use_gpu: bool = False, threads: int = 1) -> None:
        self.storage_cfg = storage_cfg or StorageConfig()
        inference = inference or InferenceConfig()
        self.artifact = ModelArtifact.open(model_uri, self.storage_cfg)
        self.engine = make_engine(self.artifact, inference.engine, use_gpu, threads, inference.batch_policy)
        self.image_cfg = self.artifact.image_config(image_guards or ImageConfig())
        self.views = resolve_views(self.artifact, inference.tta)
        self.op = self.artifact.operating_point
        self.diagnoses = self.artifact.diagnoses
        self.guard = self.artifact.guard() if inference.engine != "onnx-int8" else None
        self.pool = ThreadPoolExecutor(IO_THREADS)
        self.node_id = _node_id()
        self.ready_at = time.time()  # model loaded: run.json splits the time to the first rows here

    def decode(self, uri: Any, root: Any = None) -> tuple[np.ndarray, tuple[int, int]] | str:
        """(pixels, stored size), or the row's error text (``reason: detail``); a local image must stay inside
        ``root``."""
        if not isinstance(uri, str) or not uri:
            return "missing: no image URI"
        try:
            return images.load_sized(uri, self.storage_cfg, self.image_cfg, root if isinstance(root, str) else None)
        except images.ImageError as exc:
            return str(exc)[:300]
        except Exception as exc:  # an unexpected decoder failure is this image's error, not the job's
            return f"undecodable: {type(exc).__name__}: {exc}"[:300]

    def score_decoded(self, decoded: list[Any]) -> pd.DataFrame:
        """Result columns for decoded images (``(pixels, size)`` or an error text that passes through as ``error``):
        the scores, and the images' stored size and mean colour (for drift checks and image QA)."""
        ok = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
        n = len(decoded)
        size = np.full((n, 2), -1, np.int64)
        color = np.full((n, 3), np.nan, np.float32)
        for i in ok:
            size[i] = decoded[i][1]
            color[i] = images.mean_color(decoded[i][0])
        logit = np.full(n, np.nan)
        n_views = np.zeros(n, np.int8)  # views per row (0: not scored)
        dx_probs: list[str | None] = [None] * n
        dx_pred: list[str | None] = [None] * n
        ood = np.full(n, np.nan)
        if ok:
            raw = views.run(self.engine, np.stack([decoded[i][0] for i in ok]).astype(np.float32), self.views)
            logit[ok] = raw[LOGIT]
            n_views[ok] = raw[views.VIEWS]
            if self.guard is not None:
                ood[ok] = self.guard.score(raw[FEATURES])
            if self.diagnoses and DX_LOGITS in raw:
                probs = _softmax(raw[DX_LOGITS])
                for j, i in enumerate(ok):
                    dx_pred[i] = self.diagnoses[int(np.argmax(probs[j]))]
                    dx_probs[i] = json.dumps({d: round(float(p), 6) for d, p in zip(self.diagnoses, probs[j])})
        scored = self.op.apply(np.nan_to_num(logit))
        failed = np.isnan(logit)
        outside = ~np.isnan(ood) & (ood > (self.artifact.meta.ood.threshold if self.guard is not None else np.inf))
        call = np.where(outside, OUT_OF_DISTRIBUTION, np.where(scored.malignant, "malignant", "benign"))
        return pd.DataFrame({
            "prob_malignant": np.where(failed, np.nan, scored.prob),  # kept for an image out of distribution: audit
            "logit_malignant": np.where(failed, np.nan, scored.logit),
            "predicted": np.where(failed, None, call).astype(object),
            "confidence": np.where(failed, np.nan, scored.confidence),
            "threshold": np.full(n, self.op.threshold.threshold),
            "dx_pred": dx_pred,
            "dx_probs": dx_probs,
            "ood_score": ood,
            "out_of_distribution": pd.array(np.where(np.isnan(ood), None, outside), dtype="boolean"),
            "error": [d if isinstance(d, str) else None for d in decoded],
            "image_width": pd.array(np.where(size[:, 0] >= 0, size[:, 0], None), dtype="Int32"),
            "image_height": pd.array(np.where(size[:, 1] >= 0, size[:, 1], None), dtype="Int32"),
            "mean_red": color[:, 0], "mean_green": color[:, 1], "mean_blue": color[:, 2],
            "_views": n_views,
        })

    def score_uris(self, uris: list[Any], roots: list[Any] | None = None, errors: list[Any] | None = None
                   ) -> tuple[pd.DataFrame, list[Any]]:
        """Scores for image URIs; a row that already has an error (``errors``) is not read at all."""
        n = len(uris)
        roots, errors = roots or [None] * n, errors or [None] * n
        decoded = list(self.pool.map(lambda u, r, e: e if isinstance(e, str) and e else self.decode(u, r),
                                     uris, roots, errors))
        return self.score_decoded(decoded), decoded

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        column = lambda name: batch[name].tolist() if name in batch else None  # noqa: E731
        result, _ = self.score_uris(batch["image_uri"].tolist(), column("image_root"), column("input_error"))
        out = batch.reset_index(drop=True).copy()
        for col in RESULT_COLUMNS:
            out[col] = result[col]
        out["_node_id"] = self.node_id
        out["_batch_mode"] = getattr(self.engine, "last_mode", None) or self.engine.mode or "batch"
        out["_views"] = result["_views"]
        out["_ready_at"] = self.ready_at
        return out


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (predict): the host is the node
        pass
    return f"local:{os.uname().nodename}"


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
