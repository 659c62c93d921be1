"""``skinray doctor``: what this process and the Ray cluster can actually do, checked before the work starts.

Ray (version, resources, nodes), ONNX Runtime and TensorFlow (version, devices, exactly one ONNX Runtime build),
S3 (each given URI reachable, with the region it resolves to), a model directory (schema and file hashes), and,
with ``--gpu``, a probe task on a GPU node that must find ONNX Runtime's CUDA provider and a GPU for TensorFlow.
Every job entrypoint runs the checks its own arguments need first (:func:`preflight`), so a nightly job with a
missing bucket or no usable GPU ends in seconds with one line instead of after the cluster scaled up.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from skinray import SkinrayError
from skinray.config import SkinrayConfig
from skinray.io import storage
from skinray.runtime import ORT_GPU_SWAP, TRAIN_EXTRA_INSTALL, installed

log = logging.getLogger("skinray.doctor")
ORT_BUILDS = ("onnxruntime", "onnxruntime-gpu")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> Check:
        check = Check(name, ok, detail)
        self.checks.append(check)
        log.log(logging.INFO if ok else logging.ERROR, "%s %s: %s", "ok  " if ok else "FAIL", name, detail,
                extra={"event": {"check": name, "ok": ok, "detail": detail}})
        return check

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def onnxruntime_builds() -> list[str]:
    """The ONNX Runtime distributions installed here (both at once is a broken install)."""
    found = []
    for name in ORT_BUILDS:
        try:
            metadata.version(name)
            found.append(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def check_onnxruntime(report: Report) -> None:
    builds = onnxruntime_builds()
    if not builds:
        report.add("onnxruntime", False,
                   f"no ONNX Runtime installed: pip install onnxruntime (GPU nodes: {ORT_GPU_SWAP})")
        return
    if len(builds) > 1:
        report.add("onnxruntime", False, "both onnxruntime and onnxruntime-gpu are installed (one silently replaces "
                   "the other): CPU nodes: pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime; "
                   f"GPU nodes: {ORT_GPU_SWAP}")
        return
    import onnxruntime as ort

    report.add("onnxruntime", True, f"{builds[0]} {metadata.version(builds[0])}, providers "
               f"{', '.join(ort.get_available_providers())}")


def check_tensorflow(report: Report) -> None:
    """TensorFlow is the ``train`` extra: a scoring node without it is fine, and is told what it cannot do."""
    if not installed("tensorflow"):
        report.add("tensorflow", True, "not installed: this node scores with ONNX Runtime; training, export, Grad-CAM "
                   f"and --engine tf need {TRAIN_EXTRA_INSTALL}")
        return

    def probe() -> str:
        from skinray.runtime import import_tensorflow

        tf = import_tensorflow()
        return f"{tf.__version__}, {len(tf.config.list_physical_devices('GPU'))} GPU(s) visible here"

    _attempt(report, "tensorflow", probe)


def check_ray(report: Report) -> None:
    def probe() -> str:
        from skinray.runtime import ensure_ray

        ray = ensure_ray()
        resources = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return (f"{ray.__version__} at {os.environ.get('RAY_ADDRESS') or 'a local instance'}: {len(nodes)} node(s), "
                f"{resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU")

    _attempt(report, "ray", probe)


def _attempt(report: Report, name: str, probe: Any) -> None:
    """One check: ``probe()`` says what it found, an exception is the failure."""
    try:
        detail = probe()
    except Exception as exc:
        report.add(name, False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return
    report.add(name, True, detail)


def check_uri(report: Report, uri: str, cfg: SkinrayConfig, must_exist: bool = True) -> None:
    """An input must exist; an output's bucket (or local parent) must be reachable."""
    where = storage.normalize(uri)
    try:
        if storage.is_s3(where):
            bucket = storage.bucket_of(where)
            region = cfg.storage.region_for(bucket)
            if must_exist and not storage.exists(where, cfg.storage):
                report.add(f"s3 {uri}", False, f"not found (bucket {bucket}, region {region})")
                return
            storage.boto3_client(cfg.storage, bucket).head_bucket(Bucket=bucket)
            report.add(f"s3 {uri}", True, f"reachable (bucket {bucket}, region {region})")
        else:
            target = where if must_exist else os.path.dirname(where.rstrip("/")) or "/"
            while not must_exist and not os.path.exists(target) and target != "/":
                target = os.path.dirname(target)
            ok = os.path.exists(target) and (must_exist or os.access(target, os.W_OK))
            report.add(f"path {uri}", ok, "exists" if ok and must_exist else "writable" if ok else
                       ("not found" if must_exist else f"{target} is not writable"))
    except SkinrayError as exc:
        report.add(f"uri {uri}", False, str(exc))
    except Exception as exc:  # botocore: NoSuchBucket, AccessDenied, no credentials, endpoint down
        report.add(f"uri {uri}", False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def check_model(report: Report, uri: str, cfg: SkinrayConfig, engine: str | None = None) -> None:
    from skinray.inference.engines import check_engine, check_loads
    from skinray.model.artifact import ModelArtifact

    try:
        art = ModelArtifact.open(uri, cfg.storage)
        check_engine(art, engine or cfg.inference.engine)
        check_loads(art, engine or cfg.inference.engine)
    except SkinrayError as exc:
        report.add(f"model {uri}", False, str(exc))
        return
    report.add(f"model {uri}", True, f"model {art.model_id}, {art.meta.preprocessing.size} px, threshold "
               f"{art.threshold:.3f}, {len(art.diagnoses)} diagnoses, files verified")


def _gpu_probe() -> dict[str, Any]:
    """Runs on a GPU node: what ONNX Runtime and TensorFlow can use there."""
    import ray

    out: dict[str, Any] = {"node_id": ray.get_runtime_context().get_node_id(),
                           "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                           "onnxruntime_builds": onnxruntime_builds()}
    try:
        import onnxruntime as ort

        out["ort_providers"] = ort.get_available_providers()
    except ImportError:
        out["ort_providers"] = []
    try:
        from skinray.runtime import import_tensorflow

        out["tf_gpus"] = len(import_tensorflow().config.list_physical_devices("GPU"))
    except (ImportError, SkinrayError):  # not installed there (the train extra): a scoring-only GPU node
        out["tf_gpus"] = None
    return out


def check_gpu(report: Report, cfg: SkinrayConfig, wait_seconds: float, need_tf: bool = False,
              need_ort: bool = True) -> None:
    """A task holding one GPU must find what the job needs there: fails fast, before the real work."""
    from skinray.runtime import ensure_ray, wait_for_gpus

    ray = ensure_ray()
    try:
        gpus = wait_for_gpus(wait_seconds)
    except SkinrayError as exc:
        report.add("gpu", False, str(exc))
        return
    probe = ray.get(ray.remote(num_gpus=1, num_cpus=0)(_gpu_probe).remote(), timeout=max(wait_seconds, 60))
    node = probe["node_id"][:12]
    if need_ort and "CUDAExecutionProvider" not in probe["ort_providers"]:
        report.add("gpu", False, f"GPU node {node}: ONNX Runtime has no CUDA provider (builds "
                   f"{probe['onnxruntime_builds']}, providers {probe['ort_providers']}); {ORT_GPU_SWAP}")
    elif need_tf and not probe["tf_gpus"]:
        report.add("gpu", False, f"GPU node {node}: TensorFlow sees no GPU; install skinray[train,gpu] "
                   "(tensorflow[and-cuda]) there")
    else:
        report.add("gpu", True, f"{gpus} GPU(s); node {node}: providers {probe['ort_providers']}, "
                   f"TensorFlow GPUs {probe['tf_gpus']}")


def preflight(command: str, cfg: SkinrayConfig) -> Report:
    """The checks a job's own arguments need; raises one :class:`SkinrayError` naming every failure."""
    report = Report()
    if command == "prepare":
        sources = [u for src in cfg.prepare.sources for u in (src.manifest, src.images)]
        for uri in filter(None, (cfg.prepare.manifest, cfg.prepare.images, *sources)):
            check_uri(report, uri, cfg)
        if cfg.prepare.out:
            check_uri(report, cfg.prepare.out, cfg, must_exist=False)
    elif command == "train":
        if cfg.train.prepared:
            check_uri(report, cfg.train.prepared, cfg)
        if cfg.train.out:
            check_uri(report, cfg.train.out, cfg, must_exist=False)
        if cfg.train.init_model:
            check_model(report, cfg.train.init_model, cfg)
        if cfg.train.use_gpu:
            check_gpu(report, cfg, cfg.train.gpu_wait_seconds, need_tf=True, need_ort=False)
    elif command == "evaluate":
        if cfg.evaluate.model:
            check_model(report, cfg.evaluate.model, cfg)
        if cfg.evaluate.prepared:
            check_uri(report, cfg.evaluate.prepared, cfg)
    elif command in ("validate", "calibrate"):
        section = cfg.validate_ if command == "validate" else cfg.calibrate
        if section.model:
            check_model(report, section.model, cfg)
        for uri in filter(None, (section.labelled, section.images)):
            check_uri(report, uri, cfg)
    elif command == "score":
        s = cfg.score
        if s.model:
            check_model(report, s.model, cfg)
        if s.input:
            check_uri(report, s.input, cfg)
        if s.out:
            check_uri(report, s.out, cfg, must_exist=False)
    if command in ("evaluate", "score", "validate", "calibrate") and cfg.inference.use_gpu:  # the actor pool's GPUs
        check_gpu(report, cfg, cfg.inference.gpu_wait_seconds, need_ort=cfg.inference.engine.startswith("onnx"),
                  need_tf=cfg.inference.engine == "tf")
    if report.failed:
        raise SkinrayError("; ".join(f"{c.name}: {c.detail}" for c in report.failed))
    return report


def doctor(cfg: SkinrayConfig, uris: list[str], model: str | None = None, gpu: bool = False) -> Report:
    """Everything at once, for a person deciding whether this node or cluster is ready."""
    report = Report()
    check_onnxruntime(report)
    check_tensorflow(report)
    check_ray(report)
    for uri in uris:
        check_uri(report, uri, cfg)
    if model:
        check_model(report, model, cfg)
    if gpu:
        check_gpu(report, cfg, cfg.inference.gpu_wait_seconds, need_tf=True)
    return report
