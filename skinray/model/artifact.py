"""The model directory, owned both ways: written by training (or ``skinray export``), opened and verified by every
stage that scores.

    model.keras    Keras 3 (loads with safe_mode=True): the reference, and what ``--engine tf`` runs
    model.onnx     what scoring runs by default; outputs ``logit`` and, with a diagnosis head, ``dx_logits``, and
                   with the out-of-distribution guard ``features``
    ood.npz        the guard's statistics (skinray.model.ood), when the model has one
    config.yaml    the training config, as resolved (``skinray train --config`` of it repeats the training)
    reference.json the validation split's profile (scores, metadata, image size and colour) for drift checks
    skinray.json   the typed, versioned description (:class:`ModelMeta`): preprocessing, outputs, the operating
                   point, provenance, and the SHA-256 of every other file — written last

Nothing read from a model directory is trusted: ``skinray.json`` is validated against the schema (a threshold
outside [0, 1] or a non-finite calibration is refused with one line), and every file is checked against its
recorded hash (a swapped ``model.onnx`` is refused). The model id is the hash of ``skinray.json``, which pins every
file, so a remote model is cached by content: replacing it at the same URI is picked up on the next open.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from skinray import SkinrayError
from skinray.config import ImageConfig, SkinrayConfig, load_config
from skinray.decision.calibration import Calibration
from skinray.decision.metrics import CLASS_NAMES
from skinray.decision.operating_point import OperatingPoint, ThresholdChoice
from skinray.io import storage
from skinray.io.storage import StorageConfig
from skinray.model.ood import FILE as OOD_FILE, OodGuard, Stats
from skinray.model.views import Views, for_model

MODEL_FILE = "model.keras"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"  # optional: written by `skinray export --int8` (skinray.inference.quantize)
META_FILE = "skinray.json"
CONFIG_FILE = "config.yaml"
REFERENCE_FILE = "reference.json"  # the validation split's profile, for drift checks (skinray.decision.drift)
FORMAT_VERSION = 2
ONNX_PARITY_LIMIT = 1e-4
MAX_META_BYTES = 32 * 1024 * 1024
PREPROCESSING_VERSION = 1


def check_parity(parity: float) -> float:
    """An exported graph that does not compute what the Keras model computes is never written nor scored with."""
    if not parity <= ONNX_PARITY_LIMIT:
        raise SkinrayError(f"the exported ONNX graph differs from Keras by {parity:.2e} (> {ONNX_PARITY_LIMIT}): "
                           "not written")
    return parity


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Preprocessing(_Strict):
    """How a file becomes pixels; the same :func:`skinray.data.images.decode` runs in training and every scoring path.

    Input guards (pixel and byte limits) are deliberately not here: they come from the run's own config and a
    model file can never raise them.
    """

    version: Literal[1] = PREPROCESSING_VERSION
    decoder: Literal["PIL"] = "PIL"
    size: int = Field(ge=32, le=1024)
    resize: Literal["squash", "center_crop", "pad"]
    resample: Literal["bilinear"] = "bilinear"
    color: str = "RGB, EXIF orientation applied, alpha composited on black, 16-bit scaled to 8-bit"
    # after resizing: shades_of_gray = skinray.data.images.shades_of_gray with p = 6
    color_constancy: Literal["none", "shades_of_gray"] = "none"
    dtype: str = "float32 in [0, 255]; the model scales its own input (architecture.input_scaling)"

    @classmethod
    def from_config(cls, image: ImageConfig) -> Preprocessing:
        return cls(size=image.size, resize=image.resize, color_constancy=image.color_constancy)

    def image_config(self, guards: ImageConfig) -> ImageConfig:
        """Pixels as the model was trained (size, resize, colour constancy), input guards (bomb and byte limits) as
        the run says."""
        return guards.model_copy(update={"size": self.size, "resize": self.resize,
                                         "color_constancy": self.color_constancy})


class Outputs(_Strict):
    """The graph's outputs: a malignancy logit and, optionally, one logit per diagnosis (``diagnoses`` order)."""

    logit: str = "logit"
    dx_logits: str | None = None
    diagnoses: list[str] = Field(default_factory=list)
    features: str | None = None  # the pooled features, for the out-of-distribution guard (``ood``)

    @field_validator("diagnoses")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v) or any(not d for d in v):
            raise ValueError("diagnoses must be distinct, non-empty names")
        return v


class OnnxCheck(_Strict):
    parity_max_abs_diff: float = Field(ge=0)
    limit: float = ONNX_PARITY_LIMIT


class ModelMeta(BaseModel):
    """``skinray.json``, format 2. Descriptive sections (training, data, history, validation) stay free-form."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[2] = FORMAT_VERSION
    created_at: str
    recipe: str | None = None
    architecture: dict[str, Any]
    weights_source: str
    preprocessing: Preprocessing
    classes: tuple[str, str] = CLASS_NAMES
    outputs: Outputs
    calibration: Calibration
    threshold: ThresholdChoice
    tta: bool = False
    # flip views only for images whose one-view logit lies within this many raw-logit units of the threshold
    # (fitted on validation by skinray.model.views); None: every image gets every view
    tta_band: float | None = Field(None, ge=0)
    onnx: OnnxCheck | None = None
    int8: dict[str, Any] | None = None  # model.int8.onnx: how it was calibrated and what it changes (skinray.inference.quantize)
    ood: OodGuard | None = None  # the out-of-distribution guard (skinray.model.ood); None: trained before it
    files: dict[str, str] = Field(default_factory=dict)  # file name → SHA-256 (hex)
    training: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    history: list[dict[str, Any]] = Field(default_factory=list)
    validation: dict[str, Any] | None = None
    versions: dict[str, str] = Field(default_factory=dict)

    @field_validator("tta_band")
    @classmethod
    def _band(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number of logits")
        return v

    @model_validator(mode="after")
    def _guard(self) -> ModelMeta:
        if self.ood is not None and (self.outputs.features != self.ood.output or
                                     (self.files and OOD_FILE not in self.files)):
            raise ValueError(f"the guard needs the graph's features output and {OOD_FILE}")
        return self

    @field_validator("files")
    @classmethod
    def _files(cls, v: dict[str, str]) -> dict[str, str]:
        for name, digest in v.items():
            if name != os.path.basename(name) or name in (".", "..", META_FILE) or not name:
                raise ValueError(f"{name!r} is not a plain file name of the model directory")
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"{name}: {digest!r} is not a SHA-256 hex digest")
        return v


def _schema_error(uri: str, exc: ValidationError) -> SkinrayError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return SkinrayError(f"{uri}: {META_FILE} is not a valid skinray model description ({where}: {first['msg']})")


def read_meta_json(uri: str, storage_cfg: StorageConfig | None = None, raw: bytes | None = None) -> dict[str, Any]:
    """``skinray.json`` of any format version as a JSON object (bounded in size), or one line that says why not;
    :func:`parse_meta` then holds it to the current schema, ``skinray export`` upgrades older ones."""
    if raw is None:
        raw = storage.read_bytes(storage.join(uri, META_FILE), storage_cfg, max_bytes=MAX_META_BYTES)
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=lambda c: float(c))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SkinrayError(f"{uri}: {META_FILE} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SkinrayError(f"{uri}: {META_FILE} must hold a JSON object")
    return data


def parse_meta(raw: bytes, uri: str) -> ModelMeta:
    """Bytes of ``skinray.json`` → :class:`ModelMeta`, or one line that says what is wrong."""
    data = read_meta_json(uri, raw=raw)
    version = data.get("format_version")
    if version == 1:
        raise SkinrayError(f"{uri}: model format 1 (sigmoid output, no file hashes) is no longer scored; "
                           f"upgrade it with `skinray export --model {uri} --out NEW_DIR`")
    if version != FORMAT_VERSION:
        raise SkinrayError(f"{uri}: model format {version!r} is not supported (this skinray reads {FORMAT_VERSION})")
    try:
        return ModelMeta.model_validate(data)
    except ValidationError as exc:
        raise _schema_error(uri, exc) from exc


def _verify(local_dir: str, meta: ModelMeta, uri: str) -> None:
    if MODEL_FILE not in meta.files and ONNX_FILE not in meta.files:
        raise SkinrayError(f"{uri}: {META_FILE} records neither {MODEL_FILE} nor {ONNX_FILE}")
    for name, digest in meta.files.items():
        path = os.path.join(local_dir, name)
        if not os.path.isfile(path):
            raise SkinrayError(f"{uri}: {name} is missing (recorded in {META_FILE})")
        if storage.sha256_file(path) != digest:
            raise SkinrayError(f"{uri}: {name} does not match the SHA-256 recorded in {META_FILE}: "
                               "the file was replaced or corrupted; refusing to use it")


def _cache_remote(uri: str, raw: bytes, meta: ModelMeta, storage_cfg: StorageConfig | None) -> str:
    """Download a remote model into a cache folder named by the content of its ``skinray.json``."""
    key = hashlib.sha256(raw).hexdigest()[:32]
    root = os.path.join(tempfile.gettempdir(), "skinray-models")
    local = os.path.join(root, key)
    if os.path.isfile(os.path.join(local, META_FILE)):
        try:
            _verify(local, meta, uri)
            return local
        except SkinrayError:
            shutil.rmtree(local, ignore_errors=True)  # a damaged cache entry: fetch it again
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=root)
    try:
        for name in meta.files:
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(storage.read_bytes(storage.join(uri, name), storage_cfg))
        _verify(tmp, meta, uri)
        with open(os.path.join(tmp, META_FILE), "wb") as f:
            f.write(raw)
        try:
            os.replace(tmp, local)
        except OSError:  # another process on this node finished first; its copy was verified the same way
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return local


@dataclass(frozen=True)
class ModelArtifact:
    """A model directory opened for use: verified, and local (downloaded first when it lives on S3)."""

    uri: str
    local_dir: str
    meta: ModelMeta
    model_id: str

    @classmethod
    def open(cls, uri: str, storage_cfg: StorageConfig | None = None) -> ModelArtifact:
        uri = storage.normalize(uri)
        meta_uri = storage.join(uri, META_FILE)
        if not storage.exists(meta_uri, storage_cfg):
            raise SkinrayError(f"{uri} is not a skinray model directory (no {META_FILE}): run `skinray train`")
        raw = storage.read_bytes(meta_uri, storage_cfg, max_bytes=MAX_META_BYTES)
        meta = parse_meta(raw, uri)
        if storage.is_s3(uri):
            local = _cache_remote(uri, raw, meta, storage_cfg)
        else:
            local = uri
            _verify(local, meta, uri)
        return cls(uri=uri, local_dir=local, meta=meta, model_id=hashlib.sha256(raw).hexdigest()[:16])

    @property
    def operating_point(self) -> OperatingPoint:
        return OperatingPoint(self.meta.calibration, self.meta.threshold)

    def views(self, override: bool | None = None) -> Views:
        """The views this model's images are scored on: its own TTA setting and flip band, unless ``override``
        (``inference.tta``) says flips for every image (True) or one view (False)."""
        return for_model(self.meta.tta, self.meta.tta_band, self.operating_point, override)

    @property
    def threshold(self) -> float:
        return self.meta.threshold.threshold

    @property
    def diagnoses(self) -> list[str]:
        return list(self.meta.outputs.diagnoses) if self.meta.outputs.dx_logits else []

    def image_config(self, guards: ImageConfig) -> ImageConfig:
        return self.meta.preprocessing.image_config(guards)

    def path(self, name: str) -> str:
        if name not in self.meta.files:
            raise SkinrayError(f"{self.uri}: the model directory has no {name}")
        return os.path.join(self.local_dir, name)

    def reference(self) -> dict[str, Any] | None:
        """The validation profile drift is measured against (None for models trained without one)."""
        if REFERENCE_FILE not in self.meta.files:
            return None
        with open(self.path(REFERENCE_FILE)) as f:
            return json.load(f)

    def config(self) -> SkinrayConfig | None:
        """The config the model was trained with (None for a model directory without one)."""
        if CONFIG_FILE not in self.meta.files:
            return None
        return load_config(self.path(CONFIG_FILE))

    def load_keras(self) -> Any:
        from skinray.model.network import load_keras

        return load_keras(self.path(MODEL_FILE))

    def guard(self) -> Stats | None:
        """The out-of-distribution guard's statistics (None for a model trained before the guard)."""
        if self.meta.ood is None:
            return None
        with open(self.path(OOD_FILE), "rb") as f:
            return Stats.from_bytes(f.read(), self.meta.ood.dims)


# --- the files a training writes into ``local_dir`` before :func:`write` publishes them ------------------------------


def write_config(local_dir: str, cfg: SkinrayConfig) -> None:
    """``config.yaml``: the training config, read back by :meth:`ModelArtifact.config`."""
    with open(os.path.join(local_dir, CONFIG_FILE), "w") as f:
        f.write(cfg.to_yaml())


def write_reference(local_dir: str, profile: dict[str, Any]) -> None:
    """``reference.json``: the validation profile (:func:`skinray.decision.drift.profile`), read back by
    :meth:`ModelArtifact.reference`."""
    storage.write_json(os.path.join(local_dir, REFERENCE_FILE), profile)


def write_guard(local_dir: str, stats: Stats) -> None:
    """``ood.npz``: the out-of-distribution guard's statistics, read back by :meth:`ModelArtifact.guard`."""
    with open(os.path.join(local_dir, OOD_FILE), "wb") as f:
        f.write(stats.to_bytes())


def write(local_dir: str, out_uri: str, meta: ModelMeta, storage_cfg: StorageConfig | None = None
          ) -> tuple[str, ModelMeta]:
    """Publish the files in ``local_dir`` as a model directory at ``out_uri``; returns (model id, what was written).

    Every file is hashed into ``skinray.json``, which is uploaded last: a reader never opens a half-copied model
    (a missing or stale file fails its hash).
    """
    names = sorted(n for n in os.listdir(local_dir) if n != META_FILE and os.path.isfile(os.path.join(local_dir, n)))
    meta = meta.model_copy(update={"files": {n: storage.sha256_file(os.path.join(local_dir, n)) for n in names}})
    ModelMeta.model_validate(meta.model_dump())  # the schema holds for what is written, not only for what is read
    raw = (json.dumps(meta.model_dump(mode="json"), indent=2, allow_nan=False, default=_json_default) + "\n").encode()
    for name in names:
        with open(os.path.join(local_dir, name), "rb") as f:
            storage.write_bytes(storage.join(out_uri, name), f.read(), storage_cfg)
    storage.write_bytes(storage.join(out_uri, META_FILE), raw, storage_cfg)
    return hashlib.sha256(raw).hexdigest()[:16], meta


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
