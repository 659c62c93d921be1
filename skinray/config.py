"""One typed config for every stage: defaults here, a YAML file over them, CLI flags over that.

The resolved config is written next to every output (``config.yaml``) so that any run can be repeated exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from skinray import SkinrayError
from skinray.storage import StorageConfig

DEFAULT_MALIGNANT_DX = ("mel", "bcc", "akiec")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ImageConfig(_Section):
    """How a file becomes pixels; stored in the model's ``skinray.json`` so scoring matches training."""

    size: int = Field(224, ge=32, le=1024)
    # center_crop: the 4:3 dermoscopy frame cropped to its centre square (measured best); squash: the seed's
    resize: Literal["squash", "center_crop", "pad"] = "center_crop"
    max_pixels: int = Field(64_000_000, ge=1)  # decompression-bomb guard (PIL's own default is ~89M)
    max_bytes: int = Field(64 * 1024 * 1024, ge=1)


class PrepareConfig(_Section):
    manifest: str | None = None
    images: str | None = None  # root of the images; used by ``image_template``
    out: str | None = None
    schema_name: Literal["auto", "isic", "ham10000"] = Field("auto", alias="schema")
    image_template: str = "{images}/{isic_id}.jpg"
    malignant_dx: list[str] = Field(default_factory=lambda: list(DEFAULT_MALIGNANT_DX))
    seed: int = 42
    val_fraction: float = Field(0.08, gt=0, lt=0.5)
    test_fraction: float = Field(0.20, gt=0, lt=0.5)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class TrainConfig(_Section):
    prepared: str | None = None
    out: str | None = None
    workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    epochs: int = Field(4, ge=1)  # the head phase (frozen base); fine-tuning follows
    batch_size: int = Field(16, ge=1)  # per worker; the global batch is batch_size * workers (2 x 16 = 32)
    learning_rate: float = Field(1e-3, gt=0)
    alpha: float = 1.0
    # mobilenet: MobileNetV2's own [-1, 1], what its ImageNet weights expect; unit: the seed's [0, 1] (kept only so
    # the seed recipe stays reproducible). Either way it is a layer inside the model, so scoring needs no setting.
    input_scaling: Literal["mobilenet", "unit"] = "mobilenet"
    weights: str = "imagenet"  # imagenet | none | a local or s3 path to a weights file
    dropout: float = Field(0.3, ge=0, lt=1)
    dense_units: int = Field(64, ge=1)
    augment: bool = True
    vertical_flip: bool = True
    class_weight: Literal["none", "balanced"] = "balanced"
    # unfreeze the top N base layers in a second phase (154: all of MobileNetV2; 100: blocks 6-16; 56: 11-16).
    # BatchNorm layers stay frozen, in inference mode.
    fine_tune_layers: int = Field(154, ge=0)
    fine_tune_epochs: int = Field(10, ge=0)  # 0 = no second phase
    fine_tune_learning_rate: float = Field(1e-4, gt=0)
    # cosine: the fine-tuning rate decays to 1% over fine_tune_epochs (large steps late in a long phase undo gains)
    fine_tune_schedule: Literal["constant", "cosine"] = "cosine"
    early_stopping_patience: int = Field(3, ge=0)  # per phase; 0 = off
    # > 0: a training-only softmax over the manifest's diagnoses (dx) beside the binary head, its cross-entropy
    # weighted by this; it teaches the features the benign look-alikes (bkl vs mel). The exported model is binary.
    # Rows without a dx add no auxiliary loss; a manifest without dx trains without it.
    aux_diagnosis_weight: float = Field(0.5, ge=0)
    # sensitivity (default): a triage threshold that misses at most 15% of malignant lesions, promised at 95%
    # confidence from the validation counts (a one-sided exact binomial bound), not merely met on validation;
    # youden: the best balance of sensitivity and specificity; fixed: 0.5
    threshold_policy: Literal["youden", "sensitivity", "fixed"] = "sensitivity"
    target_sensitivity: float | None = Field(0.85, gt=0, le=1)
    threshold_confidence: float | None = Field(0.95, gt=0, lt=1)  # null: the target met on validation only
    # fitted on validation: platt = temperature and bias (needed after class weights), temperature, or none
    calibration: Literal["platt", "temperature", "none"] = "platt"
    # flip test-time augmentation: calibration and threshold are fitted on flip-averaged validation scores, and
    # evaluate/score/predict average over flips by default (recorded as ``tta`` in skinray.json)
    tta: bool = True
    run_name: str | None = None  # same name + same storage = resume
    storage_path: str | None = None  # Ray Train checkpoints; default {out}/_ray
    max_failures: int = Field(2, ge=0)
    seed: int = 42
    fail_after_epoch: int | None = None  # fault injection for tests: one worker dies once after this epoch

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str) -> str:
        return v.strip() or "imagenet"

    @model_validator(mode="after")
    def _operating_point(self) -> TrainConfig:
        # checked here, not after an hour of training
        if self.threshold_policy == "sensitivity" and self.target_sensitivity is None:
            raise ValueError("threshold_policy 'sensitivity' needs train.target_sensitivity")
        return self


class EvaluateConfig(_Section):
    model: str | None = None
    prepared: str | None = None
    out: str | None = None
    split: Literal["train", "val", "test"] = "test"
    bootstrap: int = Field(1000, ge=0)
    batch_size: int = Field(64, ge=1)


class ScoreConfig(_Section):
    model: str | None = None
    input: str | None = None
    out: str | None = None
    images: str | None = None
    run_id: str | None = None
    date: str | None = None  # scored_date partition; default: today (UTC)
    engine: Literal["onnx", "tf"] = "onnx"
    batch_size: int = Field(32, ge=1)
    actors: int = Field(0, ge=0)  # 0 = one per available CPU (or GPU with use_gpu)
    use_gpu: bool = False
    cpus_per_actor: float = Field(1.0, gt=0)
    part_rows: int = Field(5000, ge=1)  # rows per committed part file: the unit of resume
    max_failure_fraction: float = Field(0.05, ge=0, le=1)
    top_k: int = Field(24, ge=0)
    tta: bool | None = None  # None = as the model was calibrated (skinray.json "tta")


class SkinrayConfig(_Section):
    recipe: str | None = None  # the named recipe this config started from (skinray/recipes/NAME.yaml)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)


def _format_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"invalid config value for {where}: {first['msg']}"


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for key in parts[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise SkinrayError(f"config key {dotted!r}: {key!r} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value`` with the value read as YAML (so ``3``, ``true``, ``[a, b]`` keep their types)."""
    if "=" not in text:
        raise SkinrayError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


RECIPES_DIR = Path(__file__).with_name("recipes")


def recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_recipe(name: str) -> dict[str, Any]:
    """A named training recipe: a YAML layer shipped in the package (``seed``: the notebook; ``improved``)."""
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise SkinrayError(f"unknown recipe {name!r}; choose one of {recipes()}")
    return {**(yaml.safe_load(path.read_text()) or {}), "recipe": name}


def load_config(
    path: str | None = None,
    overrides: dict[str, Any] | None = None,
    sets: list[str] | None = None,
    recipe: str | None = None,
) -> SkinrayConfig:
    """Defaults ← recipe ← YAML file (local or S3) ← ``--set`` strings ← explicit overrides (CLI flags).

    A YAML file may name its own ``recipe:``; ``recipe`` (``--recipe``) wins over it.
    """
    data: dict[str, Any] = {}
    if path:
        from skinray import storage

        try:
            data = yaml.safe_load(storage.read_text(path)) or {}
        except yaml.YAMLError as exc:
            raise SkinrayError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise SkinrayError(f"config file {path} must hold a mapping of sections")
    recipe = recipe or data.get("recipe")
    if recipe:
        data = _merge(load_recipe(recipe), {**data, "recipe": recipe})
    for text in sets or []:
        _set_path(data, *parse_override(text))
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_path(data, key, value)
    try:
        return SkinrayConfig.model_validate(data)
    except ValidationError as exc:
        raise SkinrayError(_format_error(exc)) from exc
