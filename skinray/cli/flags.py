"""Every subcommand and every flag of the command line, each declared once.

A flag (``flag(...)``) holds what argparse needs, its help, and the config key it sets, if any: the help then ends
with ``(default: VALUE; config KEY)`` read from the config's own defaults (``show_default=False`` where the help
says the default itself), and ``config_keys`` derives which parsed value goes to which key. Flags shared by
several subcommands (``TTA``, ``POOL``, ``LABELLED``) are tuples spliced into each one's list, in help order.
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass, field
from typing import Any, get_args

from skinray.config import InferenceConfig, SkinrayConfig

DEFAULTS = SkinrayConfig()


def _default(key: str) -> str:
    """``(default: VALUE; config KEY)`` for a flag that sets config ``key``."""
    node: Any = DEFAULTS
    for part in key.split("."):
        node = getattr(node, "schema_name" if part == "schema" else part)
    shown = "from the model" if node is None and key.endswith(".tta") else node
    return f"(default: {shown}; config {key})"


@dataclass(frozen=True)
class Flag:
    """One flag or positional: argparse's names and arguments, its help, and the config key it sets (if any)."""

    names: tuple[str, ...]
    help: str
    key: str | None = None
    show_default: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def full_help(self) -> str:
        return f"{self.help} {_default(self.key)}" if self.key and self.show_default else self.help

    @property
    def dest(self) -> str:
        """The namespace attribute the value lands in, by argparse's own rule."""
        return argparse.ArgumentParser(add_help=False).add_argument(*self.names, **self.kwargs).dest


def flag(*names: str, help: str, key: str | None = None, show_default: bool = True, **kwargs: Any) -> Flag:
    """A flag: ``names`` and ``kwargs`` as for ``add_argument``; ``key``: the config key its value sets."""
    return Flag(names, help, key, show_default, kwargs)


@dataclass(frozen=True)
class Command:
    """A subcommand: its one-line help (also its description), examples, and flags in help order."""

    name: str
    help: str
    examples: str
    flags: tuple[Flag, ...]
    intermixed: bool = False  # flags and positionals in any order (the SQL of `query` may follow the flags)


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, flags: tuple[Flag, ...]) -> None:
    """Add ``flags`` to ``parser`` (a list default is copied: each parser gets its own)."""
    for f in flags:
        kwargs = {k: v.copy() if isinstance(v, list) else v for k, v in f.kwargs.items()}
        parser.add_argument(*f.names, help=f.full_help, **kwargs)


COMMON = (
    flag("--config", metavar="YAML", help="config file (local or s3://); flags override it (default: none)"),
    flag("--recipe", metavar="NAME", help="start from a named training recipe: seed (the notebook's, for "
         "comparison) or improved (the default's settings, spelled out) (default: none)"),
    flag("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
         help="override any config key, e.g. --set train.learning_rate=3e-4 (repeatable) (default: none)"),
    flag("--endpoint-url", key="storage.endpoint_url", show_default=False,
         help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)"),
    flag("--region", key="storage.region", show_default=False,
         help="S3 region (default: each bucket's own region, else $AWS_REGION)"),
    flag("-v", "--verbose", action="store_true", help="show Ray, TensorFlow and library logs"),
    flag("--log-format", choices=["text", "json"], default="text",
         help="text: one line per stage for people; json: one JSON object per event"),
)

POOL = (
    flag("--actors", type=int, key="inference.actors",
         help="a fixed pool of this many actors; 0 autoscales between --min-actors and --max-actors"),
    flag("--min-actors", type=int, key="inference.min_actors", help="autoscaling pool floor"),
    flag("--max-actors", type=int, key="inference.max_actors", help="autoscaling pool ceiling"),
    flag("--gpu", action="store_true", default=None, key="inference.use_gpu",
         help="one GPU per actor (onnxruntime-gpu)"),
    flag("--gpu-wait", type=float, key="inference.gpu_wait_seconds", help="seconds to wait for a GPU node to join"),
)

TTA = (
    flag("--engine", choices=list(get_args(InferenceConfig.model_fields["engine"].annotation)),
         key="inference.engine", help="inference engine: onnx-int8 needs the model's int8 graph (skinray export --int8)"),
    flag("--tta", action=argparse.BooleanOptionalAction, default=None, key="inference.tta",
         help="--tta: average over flips for every image; --no-tta: one view; unset: as the model was fitted "
         "(flips only near its threshold when skinray.json has a tta_band)"),
)


def _labelled(command: str) -> tuple[Flag, ...]:
    """The flags of a command that reads a clinic's labelled images (validate, calibrate)."""
    return (
        flag("--model", key=f"{command}.model", show_default=False, help="model directory (required)"),
        flag("--labelled", metavar="MANIFEST", key=f"{command}.labelled", show_default=False,
             help="a manifest of the clinic's labelled images, read as prepare reads one (required)"),
        flag("--images", key=f"{command}.images", show_default=False,
             help="folder of those images, used by the image template (default: none)"),
        *TTA, *POOL,
    )


SYNTH = Command("synth", "write synthetic dermoscopy-like sample images and a metadata file", """
    skinray synth --out data/sample --n 400
    skinray synth --out s3://bucket/sample --n 1000 --schema ham10000 --corrupt 5 --missing 5""", (
    flag("--out", required=True, help="folder or s3:// prefix to write into (required)"),
    flag("--n", type=int, default=400, help="images to generate"),
    flag("--image-size", type=int, default=128, help="side of the square images, in pixels"),
    flag("--schema", choices=["isic", "ham10000"], default="isic", help="metadata columns to write"),
    flag("--malignant-fraction", type=float, default=0.2, help="share of malignant lesions"),
    flag("--seed", type=int, default=0, help="random seed (same seed, same files)"),
    flag("--corrupt", type=int, default=0, help="images to damage on purpose (truncated files)"),
    flag("--missing", type=int, default=0, help="manifest rows whose image is left out"),
))

PREPARE = Command("prepare", "check, clean and split a manifest into prepared/ (manifest, rejects, report)", """
    skinray prepare --manifest data/sample/metadata.csv --images data/sample/images --out out/prepared
    skinray prepare --manifest ../shared/data/ham10000/HAM10000_metadata.csv \\
        --images ../shared/data/ham10000/images --out out/ham-prepared
    skinray prepare --out out/pooled \\
        --source ham10000 ../shared/data/ham10000/HAM10000_metadata.csv ../shared/data/ham10000/images \\
        --source isic2017 ../shared/data/isic2017/metadata.csv ../shared/data/isic2017/images""", (
    flag("--manifest", key="prepare.manifest", show_default=False,
         help="CSV, Parquet or JSON-lines manifest, local or s3:// (required unless --source is given)"),
    flag("--images", key="prepare.images", show_default=False,
         help="folder of the images, used by the image template (default: none)"),
    # the sources are lists of words: build_config checks and shapes them into prepare.sources
    flag("--source", dest="sources", nargs="+", action="append", metavar="NAME MANIFEST [IMAGES]",
         help="one labelled source of several (repeatable, instead of --manifest): every row keeps NAME, and the "
         "split is stratified by label and source (default: none; config prepare.sources)"),
    flag("--out", key="prepare.out", show_default=False, help="output folder or prefix (required)"),
    flag("--schema", choices=["auto", "isic", "ham10000"], key="manifest.schema", help="manifest columns"),
    flag("--image-template", key="manifest.image_template",
         help="where a row's image is; any manifest column may be used"),
    flag("--seed", type=int, key="prepare.seed", help="split seed"),
))

TRAIN = Command("train", "fine-tune MobileNetV2 on Ray Train and write a model directory", """
    skinray train --prepared out/prepared --out out/model --workers 2
    skinray train --prepared out/prepared --out out/model --head-epochs 6 --fine-tune-epochs 0
    skinray train --prepared out/prepared --out out/model --weights none --image-size 96 --set train.alpha=0.35
    skinray train --prepared s3://b/prepared --out s3://b/models/m1 --gpu --workers 4
    skinray train --prepared clinic/prepared --out out/model-clinic --init-model out/model""", (
    flag("--prepared", key="train.prepared", show_default=False, help="a prepare output folder (required)"),
    flag("--out", key="train.out", show_default=False, help="model directory to write (required)"),
    flag("--workers", type=int, key="train.workers", help="Ray Train workers"),
    flag("--gpu", action="store_true", default=None, key="train.use_gpu", help="one GPU per worker"),
    flag("--head-epochs", "--epochs", dest="epochs", type=int, key="train.epochs",
         help="epochs of the first phase only (new head, base frozen); fine-tuning follows"),
    flag("--fine-tune-epochs", type=int, key="train.fine_tune_epochs",
         help="epochs of the second phase (base layers unfrozen; 0: none)"),
    flag("--batch-size", type=int, key="train.batch_size",
         help="per worker; the global batch is this times --workers"),
    flag("--image-size", type=int, key="image.size", help="input side in pixels"),
    flag("--weights", key="train.weights",
         help="imagenet | none | local or s3 path to a no-top MobileNetV2 weights file"),
    flag("--init-model", metavar="MODEL", key="train.init_model",
         help="start from a skinray model directory instead of ImageNet: its fine-tuned base, a new head and "
         "operating point (e.g. a clinic's own archive)"),
    flag("--folds", type=int, key="train.folds",
         help="k >= 2: choose the epoch count and fit the operating point on k-fold out-of-fold scores of "
         "train+val, then train on all of it (k + 1 trainings)"),
    flag("--ensemble", action="store_true", default=None, key="train.ensemble",
         help="with --folds: export the k fold models as one ensemble (their mean logit) instead of a final "
         "model; k trainings, k forward passes per view when scoring"),
    flag("--run-name", key="train.run_name", show_default=False,
         help="same name + same storage resumes from the last checkpoint (default: derived from the data and the "
         "settings)"),
))

EVALUATE = Command("evaluate", "metrics, report and plots for a model on one split of a prepared dataset", """
    skinray evaluate --model out/model --prepared out/prepared --out out/report
    skinray evaluate --model out/model --prepared out/prepared --out out/val-report --split val
    skinray evaluate --model out/model --prepared out/isic2017-prepared --out out/isic2017 --split all""", (
    flag("--model", key="evaluate.model", show_default=False, help="model directory (required)"),
    flag("--prepared", key="evaluate.prepared", show_default=False, help="a prepare output folder (required)"),
    flag("--out", key="evaluate.out", show_default=False, help="report folder to write (required)"),
    flag("--split", choices=["train", "val", "test", "all"], key="evaluate.split",
         help="which split; all: every row, for a source the model never saw"),
    *TTA, *POOL,
))

VALIDATE = Command("validate", "check a model's promises (sensitivity, melanoma, specificity, AUC, calibration) on a "
                   "clinic's own labelled images; exit 3 when one is not held", """
    skinray validate --model out/model --labelled clinic/labels.csv --images clinic/images
    skinray validate --model s3://b/models/m1 --labelled s3://b/clinic/labels.parquet --out out/validation""", (
    *_labelled("validate"),
    flag("--out", key="validate.out", show_default=False,
         help="folder for validation.json and validation.md (default: none)"),
))

CALIBRATE = Command("calibrate", "refit a model's calibration and threshold on a clinic's labelled images into a new "
                    "model directory (the network unchanged)", """
    skinray calibrate --model out/model --labelled clinic/labels.csv --images clinic/images \\
        --out out/model-clinic""", (
    *_labelled("calibrate"),
    flag("--out", key="calibrate.out", show_default=False, help="the new model directory (required)"),
))

SCORE = Command("score", "score an image set (manifest or folder) into the scores table (Delta Lake)", """
    skinray score --model out/model --input data/sample/images --out out/nightly
    skinray score --model s3://b/models/m1 --input s3://b/incoming/2026-11-25 --out s3://b/nightly --date 2026-11-25
    skinray score --model out/model --input-root s3://b/incoming --date 2026-11-25 --out s3://b/nightly""", (
    flag("--model", key="score.model", show_default=False, help="model directory (required)"),
    flag("--input", key="score.input", show_default=False,
         help="a manifest file (csv/parquet/jsonl) or a folder/prefix of images (required)"),
    # build_config reads it: score.input becomes {input-root}/{the night}
    flag("--input-root", help="nightly: read {input-root}/{date}/ (default: none)"),
    flag("--input-kind", choices=["auto", "images", "manifest"], key="score.input_kind",
         help="auto: a file is a manifest, a folder is images; manifest: a Parquet folder is one manifest"),
    flag("--out", key="score.out", show_default=False,
         help="output folder or prefix: scores/ table, runs/ (required)"),
    flag("--images", key="score.images", show_default=False,
         help="image root for manifests without an image_uri column (default: none)"),
    flag("--run-id", key="score.run_id", show_default=False,
         help="letters, digits, . _ -, starting with a letter or digit (default: derived from input, model and "
         "date: the night's run, so re-submitting scores only what is new)"),
    flag("--date", key="score.date", show_default=False,
         help="the night: YYYY-MM-DD, today or yesterday (in --timezone; a scheduler firing after midnight scores "
         "yesterday) (default: today)"),
    flag("--timezone", key="score.timezone", help="IANA time zone of today / yesterday"),
    *TTA,
    flag("--batch-size", type=int, key="score.batch_size", help="images per actor call"),
    *POOL,
))

FORMAT = flag("--format", choices=["table", "csv", "json"], default="table", help="output format")

PREDICT = Command("predict", "predict a few images now (no Ray) and optionally draw a contact sheet", """
    skinray predict --model out/model img1.jpg img2.jpg --sheet sheet.png""", (
    flag("--model", required=True, help="model directory (required)"),
    flag("images", nargs="+", help="image files or URIs"),
    flag("--sheet", help="write a PNG contact sheet of the images with their predictions (default: none)"),
    flag("--explain", action="store_true",
         help="put a Grad-CAM overlay beside each image on the sheet (needs --sheet; uses TensorFlow)"),
    *TTA,
    FORMAT,
))

QUERY = Command("query", "SQL over the scores table (DuckDB views `scores` and `runs`) or a preset", """
    skinray query out/nightly "SELECT predicted, count(*) FROM scores GROUP BY 1"
    skinray query out/nightly --top-suspicious 10 --date 2026-11-25
    skinray query out/nightly --daily-counts --format csv
    skinray query out/nightly --daily-counts --as-of 3        # what the table said at version 3""", (
    flag("out_uri", metavar="OUT", help="the scoring output folder (holds scores/)"),
    flag("sql", nargs="?", help="SQL over the views scores and runs (default: none)"),
    flag("--top-suspicious", type=int, metavar="K", help="the K most suspicious images (default: none)"),
    flag("--daily-counts", action="store_true", help="images, failures and flags per date"),
    flag("--date", help="only this date, YYYY-MM-DD, for --top-suspicious (default: every date)"),
    flag("--as-of", help="read an earlier table version (a number) or time (ISO) (default: latest)"),
    FORMAT,
), intermixed=True)

REPORT = Command("report", "write the review page (report.html) of a scoring run again", """
    skinray report out/nightly --date 2026-11-25
    skinray report s3://b/nightly --run-id 2026-11-25-1a2b3c4d5e""", (
    flag("out_uri", metavar="OUT", help="the scoring output folder (holds scores/ and runs/)"),
    flag("--run-id", help="the run (default: the latest committed run of --date)"),
    flag("--date", help="YYYY-MM-DD: the latest committed run of that date (default: none)"),
))

EXPORT = Command("export", "re-export a model directory into the current format (logit outputs, verified files)", """
    skinray export --model out/old-model --out out/model-v2
    skinray export --model out/model --out out/model-int8 --int8 out/prepared""", (
    flag("--model", required=True, help="model directory to read (required)"),
    flag("--out", required=True, help="new model directory to write (required)"),
    flag("--int8", metavar="PREPARED", help="also write model.int8.onnx, calibrated on this prepared dataset's "
         "training split and checked on its validation split (default: none)"),
    flag("--calibration-images", type=int, default=300, help="training images for the int8 calibration"),
))

DOCTOR = Command("doctor", "check Ray, ONNX Runtime, TensorFlow, S3 and a model before running jobs", """
    skinray doctor
    skinray doctor s3://b/incoming/2026-11-25 s3://b/nightly --model s3://b/models/m1
    RAY_ADDRESS=127.0.0.1:6379 skinray doctor --gpu     # probes a GPU node of the cluster""", (
    flag("uris", nargs="*", help="URIs that must be reachable (local or s3://) (default: none)"),
    flag("--model", help="a model directory to verify (schema, file hashes, engine) (default: none)"),
    flag("--gpu", action="store_true", help="probe a GPU node: ONNX Runtime's CUDA provider and TensorFlow's GPU "
         "(waits inference.gpu_wait_seconds for one to join)"),
))

DEMO = Command("demo", "synth → prepare → train → evaluate → score → query on a local Ray, with a summary", """
    skinray demo --out demo-out
    skinray demo --out demo-out --weights ../shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5
    skinray demo --out ham-out --ham10000 ../shared/data/ham10000 --weights PATH""", (
    flag("--out", default="demo-out", help="folder for everything the demo writes"),
    flag("--n", type=int, default=1500, help="synthetic images"),
    flag("--epochs", type=int, help="head-phase epochs (default: 20 without weights, 3 with)"),
    flag("--weights", help="a weights file: the demo then uses alpha 1.0 at 224 px (default: none)"),
    flag("--ham10000", help="folder with HAM10000_metadata.csv and images/ instead of synthetic data (default: none)"),
    flag("--workers", type=int, default=2, help="Ray Train workers"),
))

SUBCOMMANDS = (SYNTH, PREPARE, TRAIN, EVALUATE, VALIDATE, CALIBRATE, SCORE, PREDICT, QUERY, REPORT, EXPORT, DOCTOR,
               DEMO)


@functools.cache
def config_keys(command: str) -> dict[str, str]:
    """Namespace attribute → config key, for the flags of ``command`` (the shared ones first) that set one."""
    flags = COMMON + next((c.flags for c in SUBCOMMANDS if c.name == command), ())
    return {f.dest: f.key for f in flags if f.key}
