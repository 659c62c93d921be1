"""The engines: a model's graph run on a batch of images, returning logits (and the features the guard reads).

ONNX Runtime by default (the float graph, or the int8 one), TensorFlow on request as the reference the export is
checked against. They live apart from the predictor and the Ray Data plan because they are used without Ray: training
fits the operating point and the guard through the exported graph, and ``export`` checks the int8 graph with them.
Checking that a model directory can run on an engine (:func:`check_engine`, :func:`check_loads`) is here too, so
score, evaluate and doctor fail before any Ray work.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from skinray import SkinrayError
from skinray.model.artifact import INT8_FILE, MODEL_FILE, ONNX_FILE, ONNX_PARITY_LIMIT, ModelArtifact
from skinray.model.network import DX_LOGITS, LOGIT, forward, with_features
from skinray.model.ood import FEATURES
from skinray.runtime import ORT_GPU_SWAP, import_tensorflow, node_id, require_train_extra

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
                                   f"{node_id()[:12]} has {ort.get_available_providers()}: {ORT_GPU_SWAP}")
            providers.insert(0, "CUDAExecutionProvider")
        self.session = onnx_session(path, where or os.path.dirname(path), opts, providers)
        if use_gpu and self.session.get_providers()[0] != "CUDAExecutionProvider":
            # compiled in but not loaded (CUDA/cuDNN libraries missing): ONNX Runtime would silently use the CPU
            raise SkinrayError(f"--gpu: ONNX Runtime on node {node_id()[:12]} could not load its CUDA provider "
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
