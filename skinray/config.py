"""One typed config for every stage: defaults here, a YAML file over them, CLI flags over that.

The resolved config is written next to every output (``config.yaml``) so that any run can be repeated exactly.
How the layers are read (recipes, the file, ``--set`` strings, keys that moved) is :mod:`skinray.config_layers`.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from skinray import SkinrayError
from skinray.config_layers import format_error, load_recipe, merge, migrate, parse_override, read_file, set_path
from skinray.io.storage import StorageConfig

DEFAULT_MALIGNANT_DX = ("mel", "bcc", "akiec")


class _Section(BaseModel):
    # NaN and infinity are refused as what they are, before a range check would call them out of range
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ImageConfig(_Section):
    """How a file becomes pixels; stored in the model's ``skinray.json`` so scoring matches training."""

    size: int = Field(224, ge=32, le=1024)
    # center_crop: the 4:3 dermoscopy frame cropped to its centre square (measured best); squash: the seed's
    resize: Literal["squash", "center_crop", "pad"] = "center_crop"
    # shades_of_gray: each channel rescaled so the image's Minkowski p=6 mean colour is grey (colour constancy:
    # dermoscopes and lighting differ between clinics); part of the model's preprocessing, applied in every path
    color_constancy: Literal["none", "shades_of_gray"] = "none"
    max_pixels: int = Field(64_000_000, ge=1)  # decompression-bomb guard (PIL's own default is ~89M)
    max_bytes: int = Field(64 * 1024 * 1024, ge=1)


class ManifestConfig(_Section):
    """How a manifest is read, shared by prepare and score (a scoring manifest is read like a training one)."""

    schema_name: Literal["auto", "isic", "ham10000"] = Field("auto", alias="schema")
    image_template: str = "{images}/{isic_id}.jpg"  # any manifest column may appear; each is checked like an id
    malignant_dx: list[str] = Field(default_factory=lambda: list(DEFAULT_MALIGNANT_DX))

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class InferenceConfig(_Section):
    """How a model scores, shared by evaluate, score and predict."""

    engine: Literal["onnx", "onnx-int8", "tf"] = "onnx"  # onnx-int8: the model's int8 graph (skinray export --int8)
    # None = as the model was calibrated (skinray.json "tta", flips near the threshold when it has a "tta_band");
    # true = flips for every image; false = one view
    tta: bool | None = None
    # auto: each scoring actor times one image per call against whole batches on two batches after its first (the
    # untimed warm-up) and keeps the faster (recorded in run.json); per_image / batch force one
    batch_policy: Literal["auto", "per_image", "batch"] = "auto"
    # the Ray Data actor pool that evaluate and score run the predictor in: sized from here, not from the nodes
    # alive at start (a cluster that scales from zero has none)
    actors: int = Field(0, ge=0)  # > 0: a fixed pool of this many; 0: autoscale between min_actors and max_actors
    min_actors: int = Field(1, ge=1)
    max_actors: int = Field(16, ge=1)  # the pool grows to this as the cluster (autoscaler) offers CPUs/GPUs
    cpus_per_actor: float = Field(1.0, gt=0)
    use_gpu: bool = False  # one GPU per actor (ONNX Runtime's CUDA provider, or TensorFlow's GPU)
    gpu_wait_seconds: float = Field(600.0, ge=0)  # --gpu: wait this long for the autoscaler to add a GPU node
    # the pool's first actors must all have loaded the model within this before the first batch is sent, so the
    # work spreads over every actor (and node) from the start instead of going to whichever loaded first
    actor_start_seconds: float = Field(600.0, gt=0)

    @model_validator(mode="after")
    def _pool(self) -> InferenceConfig:
        if self.min_actors > self.max_actors:
            raise ValueError(f"min_actors ({self.min_actors}) is above max_actors ({self.max_actors})")
        return self


class MetricsConfig(_Section):
    bootstrap: int = Field(1000, ge=0)  # resamples for the ROC-AUC confidence interval (evaluate and score)


SOURCE_NAME = r"^[A-Za-z0-9._-]{1,64}$"


class SourceConfig(_Section):
    """One labelled image source of a multi-source prepared dataset (a clinic, an archive, a dermoscope era)."""

    name: str = Field(pattern=SOURCE_NAME)
    manifest: str
    images: str | None = None  # root of this source's images; used by ``manifest.image_template``


class PrepareConfig(_Section):
    manifest: str | None = None
    images: str | None = None  # root of the images; used by ``manifest.image_template``
    # several sources in one dataset (instead of manifest/images): each row keeps its source's name, and the split
    # is stratified by label and source; one manifest with a ``source`` column keeps that column's values
    sources: list[SourceConfig] = Field(default_factory=list)
    out: str | None = None
    seed: int = 42
    val_fraction: float = Field(0.08, gt=0, lt=0.5)
    test_fraction: float = Field(0.20, gt=0, lt=0.5)


class TrainConfig(_Section):
    prepared: str | None = None
    out: str | None = None
    workers: int = Field(2, ge=1)
    use_gpu: bool = False
    gpu_wait_seconds: float = Field(600.0, ge=0)  # --gpu: how long the preflight waits for a GPU node to join
    cpus_per_worker: float = Field(1.0, gt=0)
    epochs: int = Field(4, ge=1)  # the head phase (frozen base); fine-tuning follows
    batch_size: int = Field(16, ge=1)  # per worker; the global batch is batch_size * workers (2 x 16 = 32)
    learning_rate: float = Field(1e-3, gt=0)
    alpha: float = 1.0
    # mobilenet: MobileNetV2's own [-1, 1], what its ImageNet weights expect; unit: the seed's [0, 1] (kept only so
    # the seed recipe stays reproducible). Either way it is a layer inside the model, so scoring needs no setting.
    input_scaling: Literal["mobilenet", "unit"] = "mobilenet"
    weights: str = "imagenet"  # imagenet | none | a local or s3 path to a weights file
    # the out-of-distribution guard (skinray.model.ood): the exported graph also outputs the pooled features, and the
    # model directory holds their training statistics; off: no guard (as models trained before it)
    ood_guard: bool = True
    # a skinray model directory to start from instead (its fine-tuned base; a new head; its preprocessing and alpha)
    init_model: str | None = None
    dropout: float = Field(0.3, ge=0, lt=1)
    dense_units: int = Field(64, ge=1)
    augment: bool = True
    vertical_flip: bool = True
    # with augment: what a dermoscope varies too: brightness/contrast, saturation/hue, blur, a shift, one cutout
    photometric_augment: bool = False
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
    # binary: the logit head trained on benign/malignant (with the auxiliary diagnosis head above); diagnosis: the
    # diagnosis softmax is the target (plain cross-entropy; class_weight applies to rows without a dx, which train
    # the readout) and the logit is read out of it as log P(malignant diagnoses) / P(benign ones) — the SIIM-ISIC
    # 2020 winners' recipe. A diagnosis is malignant when most of its training rows are labelled malignant.
    target: Literal["binary", "diagnosis"] = "binary"
    # sensitivity (default): a triage threshold that misses at most 15% of malignant lesions, promised at 95%
    # confidence from the validation counts (a one-sided exact binomial bound), not merely met on validation;
    # youden: the best balance of sensitivity and specificity; fixed: 0.5
    threshold_policy: Literal["youden", "sensitivity", "fixed"] = "sensitivity"
    target_sensitivity: float | None = Field(0.85, gt=0, le=1)
    threshold_confidence: float | None = Field(0.95, gt=0, lt=1)  # null: the target met on validation only
    # per-diagnosis floors under the threshold (youden or sensitivity policy), with the same confidence: the
    # threshold is lowered until each named diagnosis' malignant validation images reach their own target, so a
    # triage point that meets 0.85 overall on the carcinomas still catches melanomas. Keys are dx values, matched
    # lower-cased (HAM10000's "mel", ISIC's "melanoma"); one absent from the validation split is recorded, not met.
    diagnosis_sensitivity: dict[str, float] = Field(default_factory=lambda: {"mel": 0.80, "melanoma": 0.80})
    # fitted on validation: platt = temperature and bias (needed after class weights), temperature, or none
    calibration: Literal["platt", "temperature", "none"] = "platt"
    # flip test-time augmentation: calibration and threshold are fitted on flip-averaged validation scores, and
    # evaluate/score/predict average over flips by default (recorded as ``tta`` in skinray.json)
    tta: bool = True
    # flip views only where they can move a decision: for images whose one-view logit lies within the largest shift
    # the flips gave a validation image (skinray.json "tta_band"); one view elsewhere (1.7-2 views per image, not 3)
    tta_near_threshold: bool = True
    # k >= 2: lesion-grouped k-fold cross-validation over train+val instead of choosing on the val split: k fold
    # models score every train+val image out of fold, the epoch count, calibration, threshold and flip band are
    # fitted on those scores (about ten times the val split's positives), and the final model trains on all of
    # train+val for that many epochs. Costs k + 1 trainings. 0: choose on the val split (one training).
    folds: int = Field(0, ge=0, le=20)
    # with folds: export the k fold models as one ensemble (one ONNX graph that averages their logits) instead of
    # training a final model on all of train+val. Its operating point is fitted on the same out-of-fold scores.
    # Costs k trainings (one fewer) and k forward passes per view when scoring; the fold runs are shared with the
    # same training without it, so switching it on after a cross-validation trains nothing.
    ensemble: bool = False
    # with folds and the sensitivity policy: the threshold must also meet target_sensitivity (and the diagnosis
    # targets) as a threshold_confidence prediction bound over the folds' own sensitivities, which spread by the
    # trained networks' differences as well as by the images; lower thresholds, a promise about the next network
    threshold_fold_spread: bool = False
    # a model is written only when its held-out ROC-AUC is above chance (0.5) at this confidence: the lower end of
    # the two-sided percentile-bootstrap interval (skinray.train.learned); 0: not checked (a few images cannot show it).
    # Held-out outputs that are constant or not finite stop the training either way: no model is written.
    above_chance_confidence: float = Field(0.95, ge=0, lt=1)
    run_name: str | None = None  # same name + same storage = resume
    storage_path: str | None = None  # Ray Train checkpoints; default {out}/_ray
    max_failures: int = Field(2, ge=0)
    seed: int = 42
    fail_after_epoch: int | None = None  # fault injection for tests: one worker dies once after this epoch

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str) -> str:
        return v.strip() or "imagenet"

    @field_validator("diagnosis_sensitivity")
    @classmethod
    def _diagnosis_targets(cls, v: dict[str, float]) -> dict[str, float]:
        out = {}
        for name, target in v.items():
            key = str(name).strip().lower()
            if not key or not (0.0 < float(target) <= 1.0):
                raise ValueError(f"diagnosis_sensitivity needs dx names with targets in (0, 1], got {name!r}: "
                                 f"{target!r}")
            out[key] = float(target)
        return out

    @model_validator(mode="after")
    def _operating_point(self) -> TrainConfig:
        # checked here, not after an hour of training
        if self.threshold_policy == "sensitivity" and self.target_sensitivity is None:
            raise ValueError("threshold_policy 'sensitivity' needs train.target_sensitivity")
        if self.folds == 1:
            raise ValueError("folds must be 0 (choose on the val split) or at least 2")
        if self.ensemble and not self.folds:
            raise ValueError("ensemble needs folds (at least 2): the ensemble's members are the fold models")
        if self.threshold_fold_spread and not (self.folds and self.threshold_policy == "sensitivity"
                                               and self.threshold_confidence is not None):
            raise ValueError("threshold_fold_spread needs folds (at least 2), threshold_policy 'sensitivity' and a "
                             "threshold_confidence")
        return self


class EvaluateConfig(_Section):
    model: str | None = None
    prepared: str | None = None
    out: str | None = None
    # all: every row (a source the model never trained on, prepared on its own, is held out as a whole)
    split: Literal["train", "val", "test", "all"] = "test"
    batch_size: int = Field(64, ge=1)


class LabelledConfig(_Section):
    """A model against a clinic's labelled images: ``validate`` checks its promises on them, ``calibrate`` refits its
    calibration and threshold on them into a new model directory (``out``)."""

    model: str | None = None
    labelled: str | None = None  # a manifest of labelled images (the columns prepare reads)
    images: str | None = None  # root of the images, used by manifest.image_template
    out: str | None = None  # validate: a folder for validation.json and validation.md; calibrate: the new model


# a run id is a folder name and a command-line argument: it starts with a letter or digit (not "-", an option to
# every CLI; not "." or "_", a name listings and Delta readers hide)
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


RELATIVE_DATES = ("today", "yesterday")


def check_date(value: str) -> str:
    """``YYYY-MM-DD`` and a real calendar day; nothing else (``20260202`` or ``2026-W05-1`` would make a second
    partition for the same night)."""
    text = str(value).strip()
    try:
        if not ISO_DATE.match(text):
            raise ValueError
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise ValueError(f"must be a date as YYYY-MM-DD, got {value!r}") from None


class ScoreConfig(_Section):
    model: str | None = None
    input: str | None = None
    # auto: a file is a manifest, a folder/prefix is images only (a .parquet inside never turns it into a manifest);
    # manifest: read a folder/prefix of Parquet files as one manifest
    input_kind: Literal["auto", "images", "manifest"] = "auto"
    out: str | None = None
    images: str | None = None
    # letters, digits, . _ - (at most 64; a letter or digit first); default: derived from input, model and date
    run_id: str | None = None
    # the night's scored_date partition: YYYY-MM-DD, or today / yesterday in score.timezone (a scheduler firing after
    # midnight scores yesterday's night); default: today
    date: str | None = None
    timezone: str = "UTC"  # the clinic's time zone (IANA name) that today / yesterday are taken in
    batch_size: int = Field(32, ge=1)
    part_rows: int = Field(5000, ge=1)  # rows per staged part file: the unit of resume
    max_failure_fraction: float = Field(0.05, ge=0, le=1)
    top_k: int = Field(24, ge=0)  # most suspicious images on the contact sheet and the review page
    explain_top_k: int = Field(24, ge=0)  # of those (and the borderline ones), how many get a Grad-CAM overlay
    drift_psi: float = Field(0.25, gt=0)  # a column drifted at this population stability index ...
    drift_ks_alpha: float = Field(0.001, gt=0, lt=1)  # ... or when a KS test rejects sameness at this level
    lease_seconds: float = Field(120.0, gt=0)  # a run whose owner has not renewed its lease this long is stale
    # fault injection for tests: the driver exits (as if killed) at this point of the commit
    fail_at: Literal["after_data_files", "after_commit"] | None = None

    @field_validator("date", mode="before")
    @classmethod
    def _date(cls, v: Any) -> str | None:  # YAML reads 2026-11-25 as a date: take that too
        if isinstance(v, str) and v.strip().lower() in RELATIVE_DATES:
            return v.strip().lower()
        return None if v is None else check_date(v.isoformat() if isinstance(v, dt.date) else v)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"must be an IANA time zone such as UTC or Europe/Vienna, got {v!r}") from None
        return v

    def night(self, now: dt.datetime | None = None) -> str:
        """The scored_date this run scores: the given date, or today / yesterday (default today) in the time zone."""
        from zoneinfo import ZoneInfo

        if self.date not in (None, *RELATIVE_DATES):
            return self.date
        today = (now or dt.datetime.now(dt.timezone.utc)).astimezone(ZoneInfo(self.timezone)).date()
        return (today - dt.timedelta(days=1 if self.date == "yesterday" else 0)).isoformat()

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, v: str | None) -> str | None:
        if v is not None and not RUN_ID.match(v):
            raise ValueError(f"must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, "
                             f"got {v!r}")
        return v


class SkinrayConfig(_Section):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    recipe: str | None = None  # the named recipe this config started from (skinray/recipes/NAME.yaml)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    manifest: ManifestConfig = Field(default_factory=ManifestConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    validate_: LabelledConfig = Field(default_factory=LabelledConfig, alias="validate")
    calibrate: LabelledConfig = Field(default_factory=LabelledConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)


def load_config(
    path: str | None = None,
    overrides: dict[str, Any] | None = None,
    sets: list[str] | None = None,
    recipe: str | None = None,
) -> SkinrayConfig:
    """Defaults ← recipe ← YAML file (local or S3) ← ``--set`` strings ← explicit overrides (CLI flags).

    A YAML file may name its own ``recipe:``; ``recipe`` (``--recipe``) wins over it.
    """
    data: dict[str, Any] = read_file(path) if path else {}
    recipe = recipe or data.get("recipe")
    if recipe:
        data = merge(load_recipe(recipe), {**data, "recipe": recipe})
    for text in sets or []:
        set_path(data, *parse_override(text))
    for key, value in (overrides or {}).items():
        if value is not None:
            set_path(data, key, value)
    try:
        return SkinrayConfig.model_validate(migrate(data))
    except ValidationError as exc:
        raise SkinrayError(format_error(exc)) from exc


def with_values(cfg: SkinrayConfig, values: dict[str, Any]) -> SkinrayConfig:
    """A copy of ``cfg`` with dotted keys set (``{"score.date": "2026-11-25"}``), validated like a loaded one."""
    data = cfg.model_dump(by_alias=True)
    for key, value in values.items():
        set_path(data, key, value)
    try:
        return SkinrayConfig.model_validate(migrate(data))
    except ValidationError as exc:
        raise SkinrayError(format_error(exc)) from exc
