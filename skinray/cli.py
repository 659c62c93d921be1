"""The ``skinray`` command line: parse flags into the typed config, call the library, print for people.

Errors print one line (``skinray: error: ...``, or one JSON object under ``--log-format json``) and exit with the
code a scheduler acts on (``skinray.EXIT_*``): 2 fix the command, 3 the data says no, 75 retry later. Nothing here
holds pipeline logic.
Every flag has help text that names its default (and the config key it sets).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any, Callable, Sequence, get_args

from skinray import EXIT_DATA, EXIT_USAGE, SkinrayError, __version__, console
from skinray.config import InferenceConfig, SkinrayConfig, load_config

DEFAULTS = SkinrayConfig()


def _default(key: str) -> str:
    """``(default: VALUE; config KEY)`` for a flag that sets config ``key``."""
    node: Any = DEFAULTS
    for part in key.split("."):
        node = getattr(node, "schema_name" if part == "schema" else part)
    shown = "from the model" if node is None and key.endswith(".tta") else node
    return f"(default: {shown}; config {key})"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; a literal default appended where the help does not give one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" not in text and action.default not in (None, argparse.SUPPRESS) and action.option_strings:
            shown = "off" if action.default is False else action.default
            text += f" (default: {shown})"
        return text


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration and output")
    g.add_argument("--config", metavar="YAML", help="config file (local or s3://); flags override it (default: none)")
    g.add_argument("--recipe", metavar="NAME", help="start from a named training recipe: seed (the notebook's, for "
                   "comparison) or improved (the default's settings, spelled out) (default: none)")
    g.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config key, e.g. --set train.learning_rate=3e-4 (repeatable) (default: none)")
    g.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    g.add_argument("--region", help="S3 region (default: each bucket's own region, else $AWS_REGION)")
    g.add_argument("-v", "--verbose", action="store_true", help="show Ray, TensorFlow and library logs")
    g.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="text: one line per stage for people; json: one JSON object per event")


def _parser() -> argparse.ArgumentParser:
    root = _Parser(
        prog="skinray",
        description="Dermoscopic lesion classification (MobileNetV2) as distributed Ray batch jobs.",
        formatter_class=_Formatter,
        epilog="Run `skinray COMMAND --help` for examples. With RAY_ADDRESS set, jobs join that cluster.",
    )
    root.add_argument("--version", action="version", version=f"skinray {__version__}")
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, examples: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=_Formatter,
                           epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  "))
        _common(p)
        return p

    def pool(p: argparse.ArgumentParser) -> None:
        p.add_argument("--actors", type=int, help="a fixed pool of this many actors; 0 autoscales between "
                       "--min-actors and --max-actors " + _default("inference.actors"))
        p.add_argument("--min-actors", type=int, help="autoscaling pool floor " + _default("inference.min_actors"))
        p.add_argument("--max-actors", type=int, help="autoscaling pool ceiling " + _default("inference.max_actors"))
        p.add_argument("--gpu", action="store_true", default=None,
                       help="one GPU per actor (onnxruntime-gpu) " + _default("inference.use_gpu"))
        p.add_argument("--gpu-wait", type=float, help="seconds to wait for a GPU node to join " +
                       _default("inference.gpu_wait_seconds"))

    def tta(p: argparse.ArgumentParser) -> None:
        p.add_argument("--engine", choices=list(get_args(InferenceConfig.model_fields["engine"].annotation)),
                       help="inference engine: onnx-int8 needs the model's int8 graph (skinray export --int8) "
                       + _default("inference.engine"))
        p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                       help="--tta: average over flips for every image; --no-tta: one view; unset: as the model "
                       "was fitted (flips only near its threshold when skinray.json has a tta_band) "
                       + _default("inference.tta"))

    p = add("synth", "write synthetic dermoscopy-like sample images and a metadata file", """
        skinray synth --out data/sample --n 400
        skinray synth --out s3://bucket/sample --n 1000 --schema ham10000 --corrupt 5 --missing 5""")
    p.add_argument("--out", required=True, help="folder or s3:// prefix to write into (required)")
    p.add_argument("--n", type=int, default=400, help="images to generate")
    p.add_argument("--image-size", type=int, default=128, help="side of the square images, in pixels")
    p.add_argument("--schema", choices=["isic", "ham10000"], default="isic", help="metadata columns to write")
    p.add_argument("--malignant-fraction", type=float, default=0.2, help="share of malignant lesions")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    p.add_argument("--corrupt", type=int, default=0, help="images to damage on purpose (truncated files)")
    p.add_argument("--missing", type=int, default=0, help="manifest rows whose image is left out")

    p = add("prepare", "check, clean and split a manifest into prepared/ (manifest, rejects, report)", """
        skinray prepare --manifest data/sample/metadata.csv --images data/sample/images --out out/prepared
        skinray prepare --manifest ../shared/data/ham10000/HAM10000_metadata.csv \\
            --images ../shared/data/ham10000/images --out out/ham-prepared
        skinray prepare --out out/pooled \\
            --source ham10000 ../shared/data/ham10000/HAM10000_metadata.csv ../shared/data/ham10000/images \\
            --source isic2017 ../shared/data/isic2017/metadata.csv ../shared/data/isic2017/images""")
    p.add_argument("--manifest", help="CSV, Parquet or JSON-lines manifest, local or s3:// (required unless "
                   "--source is given)")
    p.add_argument("--images", help="folder of the images, used by the image template (default: none)")
    p.add_argument("--source", dest="sources", nargs="+", action="append", metavar="NAME MANIFEST [IMAGES]",
                   help="one labelled source of several (repeatable, instead of --manifest): every row keeps NAME, "
                   "and the split is stratified by label and source (default: none; config prepare.sources)")
    p.add_argument("--out", help="output folder or prefix (required)")
    p.add_argument("--schema", choices=["auto", "isic", "ham10000"], help="manifest columns " +
                   _default("manifest.schema"))
    p.add_argument("--image-template", help="where a row's image is; any manifest column may be used " +
                   _default("manifest.image_template"))
    p.add_argument("--seed", type=int, help="split seed " + _default("prepare.seed"))

    p = add("train", "fine-tune MobileNetV2 on Ray Train and write a model directory", """
        skinray train --prepared out/prepared --out out/model --workers 2
        skinray train --prepared out/prepared --out out/model --head-epochs 6 --fine-tune-epochs 0
        skinray train --prepared out/prepared --out out/model --weights none --image-size 96 --set train.alpha=0.35
        skinray train --prepared s3://b/prepared --out s3://b/models/m1 --gpu --workers 4
        skinray train --prepared clinic/prepared --out out/model-clinic --init-model out/model""")
    p.add_argument("--prepared", help="a prepare output folder (required)")
    p.add_argument("--out", help="model directory to write (required)")
    p.add_argument("--workers", type=int, help="Ray Train workers " + _default("train.workers"))
    p.add_argument("--gpu", action="store_true", default=None,
                   help="one GPU per worker " + _default("train.use_gpu"))
    p.add_argument("--head-epochs", "--epochs", dest="epochs", type=int,
                   help="epochs of the first phase only (new head, base frozen); fine-tuning follows "
                   + _default("train.epochs"))
    p.add_argument("--fine-tune-epochs", type=int, help="epochs of the second phase (base layers unfrozen; 0: none) "
                   + _default("train.fine_tune_epochs"))
    p.add_argument("--batch-size", type=int, help="per worker; the global batch is this times --workers " +
                   _default("train.batch_size"))
    p.add_argument("--image-size", type=int, help="input side in pixels " + _default("image.size"))
    p.add_argument("--weights", help="imagenet | none | local or s3 path to a no-top MobileNetV2 weights file " +
                   _default("train.weights"))
    p.add_argument("--init-model", metavar="MODEL", help="start from a skinray model directory instead of ImageNet: "
                   "its fine-tuned base, a new head and operating point (e.g. a clinic's own archive) "
                   + _default("train.init_model"))
    p.add_argument("--folds", type=int, help="k >= 2: choose the epoch count and fit the operating point on k-fold "
                   "out-of-fold scores of train+val, then train on all of it (k + 1 trainings) "
                   + _default("train.folds"))
    p.add_argument("--ensemble", action="store_true", default=None,
                   help="with --folds: export the k fold models as one ensemble (their mean logit) instead of a "
                   "final model; k trainings, k forward passes per view when scoring " + _default("train.ensemble"))
    p.add_argument("--run-name", help="same name + same storage resumes from the last checkpoint "
                   "(default: derived from the data and the settings)")

    p = add("evaluate", "metrics, report and plots for a model on one split of a prepared dataset", """
        skinray evaluate --model out/model --prepared out/prepared --out out/report
        skinray evaluate --model out/model --prepared out/prepared --out out/val-report --split val
        skinray evaluate --model out/model --prepared out/isic2017-prepared --out out/isic2017 --split all""")
    p.add_argument("--model", help="model directory (required)")
    p.add_argument("--prepared", help="a prepare output folder (required)")
    p.add_argument("--out", help="report folder to write (required)")
    p.add_argument("--split", choices=["train", "val", "test", "all"], help="which split; all: every row, for a "
                   "source the model never saw " + _default("evaluate.split"))
    tta(p)
    pool(p)

    def labelled(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="model directory (required)")
        p.add_argument("--labelled", metavar="MANIFEST", help="a manifest of the clinic's labelled images, read as "
                       "prepare reads one (required)")
        p.add_argument("--images", help="folder of those images, used by the image template (default: none)")
        tta(p)
        pool(p)

    p = add("validate", "check a model's promises (sensitivity, melanoma, specificity, AUC, calibration) on a clinic's "
            "own labelled images; exit 3 when one is not held", """
        skinray validate --model out/model --labelled clinic/labels.csv --images clinic/images
        skinray validate --model s3://b/models/m1 --labelled s3://b/clinic/labels.parquet --out out/validation""")
    labelled(p)
    p.add_argument("--out", help="folder for validation.json and validation.md (default: none)")

    p = add("calibrate", "refit a model's calibration and threshold on a clinic's labelled images into a new model "
            "directory (the network unchanged)", """
        skinray calibrate --model out/model --labelled clinic/labels.csv --images clinic/images \\
            --out out/model-clinic""")
    labelled(p)
    p.add_argument("--out", help="the new model directory (required)")

    p = add("score", "score an image set (manifest or folder) into the scores table (Delta Lake)", """
        skinray score --model out/model --input data/sample/images --out out/nightly
        skinray score --model s3://b/models/m1 --input s3://b/incoming/2026-11-25 --out s3://b/nightly --date 2026-11-25
        skinray score --model out/model --input-root s3://b/incoming --date 2026-11-25 --out s3://b/nightly""")
    p.add_argument("--model", help="model directory (required)")
    p.add_argument("--input", help="a manifest file (csv/parquet/jsonl) or a folder/prefix of images (required)")
    p.add_argument("--input-root", help="nightly: read {input-root}/{date}/ (default: none)")
    p.add_argument("--input-kind", choices=["auto", "images", "manifest"],
                   help="auto: a file is a manifest, a folder is images; manifest: a Parquet folder is one manifest "
                   + _default("score.input_kind"))
    p.add_argument("--out", help="output folder or prefix: scores/ table, runs/ (required)")
    p.add_argument("--images", help="image root for manifests without an image_uri column (default: none)")
    p.add_argument("--run-id", help="letters, digits, . _ -, starting with a letter or digit (default: derived "
                   "from input, model and date: the night's run, so re-submitting scores only what is new)")
    p.add_argument("--date", help="the night: YYYY-MM-DD, today or yesterday (in --timezone; a scheduler firing "
                   "after midnight scores yesterday) (default: today)")
    p.add_argument("--timezone", help="IANA time zone of today / yesterday " + _default("score.timezone"))
    tta(p)
    p.add_argument("--batch-size", type=int, help="images per actor call " + _default("score.batch_size"))
    pool(p)

    p = add("predict", "predict a few images now (no Ray) and optionally draw a contact sheet", """
        skinray predict --model out/model img1.jpg img2.jpg --sheet sheet.png""")
    p.add_argument("--model", required=True, help="model directory (required)")
    p.add_argument("images", nargs="+", help="image files or URIs")
    p.add_argument("--sheet", help="write a PNG contact sheet of the images with their predictions (default: none)")
    p.add_argument("--explain", action="store_true",
                   help="put a Grad-CAM overlay beside each image on the sheet (needs --sheet; uses TensorFlow)")
    tta(p)
    p.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")

    p = add("query", "SQL over the scores table (DuckDB views `scores` and `runs`) or a preset", """
        skinray query out/nightly "SELECT predicted, count(*) FROM scores GROUP BY 1"
        skinray query out/nightly --top-suspicious 10 --date 2026-11-25
        skinray query out/nightly --daily-counts --format csv
        skinray query out/nightly --daily-counts --as-of 3        # what the table said at version 3""")
    p.__class__ = _Intermixed  # the SQL may come after the flags; argparse has no per-subcommand parser class
    p.add_argument("out_uri", metavar="OUT", help="the scoring output folder (holds scores/)")
    p.add_argument("sql", nargs="?", help="SQL over the views scores and runs (default: none)")
    p.add_argument("--top-suspicious", type=int, metavar="K", help="the K most suspicious images (default: none)")
    p.add_argument("--daily-counts", action="store_true", help="images, failures and flags per date")
    p.add_argument("--date", help="only this date, YYYY-MM-DD, for --top-suspicious (default: every date)")
    p.add_argument("--as-of", help="read an earlier table version (a number) or time (ISO) (default: latest)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")

    p = add("report", "write the review page (report.html) of a scoring run again", """
        skinray report out/nightly --date 2026-11-25
        skinray report s3://b/nightly --run-id 2026-11-25-1a2b3c4d5e""")
    p.add_argument("out_uri", metavar="OUT", help="the scoring output folder (holds scores/ and runs/)")
    p.add_argument("--run-id", help="the run (default: the latest committed run of --date)")
    p.add_argument("--date", help="YYYY-MM-DD: the latest committed run of that date (default: none)")

    p = add("export", "re-export a model directory into the current format (logit outputs, verified files)", """
        skinray export --model out/old-model --out out/model-v2
        skinray export --model out/model --out out/model-int8 --int8 out/prepared""")
    p.add_argument("--model", required=True, help="model directory to read (required)")
    p.add_argument("--out", required=True, help="new model directory to write (required)")
    p.add_argument("--int8", metavar="PREPARED", help="also write model.int8.onnx, calibrated on this prepared "
                   "dataset's training split and checked on its validation split (default: none)")
    p.add_argument("--calibration-images", type=int, default=300, help="training images for the int8 calibration")

    p = add("doctor", "check Ray, ONNX Runtime, TensorFlow, S3 and a model before running jobs", """
        skinray doctor
        skinray doctor s3://b/incoming/2026-11-25 s3://b/nightly --model s3://b/models/m1
        RAY_ADDRESS=127.0.0.1:6379 skinray doctor --gpu     # probes a GPU node of the cluster""")
    p.add_argument("uris", nargs="*", help="URIs that must be reachable (local or s3://) (default: none)")
    p.add_argument("--model", help="a model directory to verify (schema, file hashes, engine) (default: none)")
    p.add_argument("--gpu", action="store_true", help="probe a GPU node: ONNX Runtime's CUDA provider and "
                   "TensorFlow's GPU (waits inference.gpu_wait_seconds for one to join)")

    p = add("demo", "synth → prepare → train → evaluate → score → query on a local Ray, with a summary", """
        skinray demo --out demo-out
        skinray demo --out demo-out --weights ../shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5
        skinray demo --out ham-out --ham10000 ../shared/data/ham10000 --weights PATH""")
    p.add_argument("--out", default="demo-out", help="folder for everything the demo writes")
    p.add_argument("--n", type=int, default=1500, help="synthetic images")
    p.add_argument("--epochs", type=int, help="head-phase epochs (default: 20 without weights, 3 with)")
    p.add_argument("--weights", help="a weights file: the demo then uses alpha 1.0 at 224 px (default: none)")
    p.add_argument("--ham10000", help="folder with HAM10000_metadata.csv and images/ instead of synthetic data "
                   "(default: none)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    return root


POOL_FLAGS = {"actors": "inference.actors", "min_actors": "inference.min_actors", "max_actors": "inference.max_actors",
              "gpu": "inference.use_gpu", "gpu_wait": "inference.gpu_wait_seconds"}
FLAG_TO_KEY: dict[str, dict[str, str]] = {
    "prepare": {"manifest": "prepare.manifest", "images": "prepare.images", "out": "prepare.out",
                "schema": "manifest.schema", "image_template": "manifest.image_template", "seed": "prepare.seed"},
    "train": {"prepared": "train.prepared", "out": "train.out", "workers": "train.workers", "gpu": "train.use_gpu",
              "epochs": "train.epochs", "fine_tune_epochs": "train.fine_tune_epochs",
              "batch_size": "train.batch_size", "image_size": "image.size", "weights": "train.weights",
              "init_model": "train.init_model",
              "folds": "train.folds", "ensemble": "train.ensemble", "run_name": "train.run_name"},
    "evaluate": {"model": "evaluate.model", "prepared": "evaluate.prepared", "out": "evaluate.out",
                 "split": "evaluate.split", "engine": "inference.engine", "tta": "inference.tta", **POOL_FLAGS},
    "score": {"model": "score.model", "input": "score.input", "input_kind": "score.input_kind", "out": "score.out",
              "images": "score.images", "run_id": "score.run_id", "date": "score.date",
              "timezone": "score.timezone",
              "engine": "inference.engine", "tta": "inference.tta", "batch_size": "score.batch_size",
              **POOL_FLAGS},
    "predict": {"engine": "inference.engine", "tta": "inference.tta"},
    **{command: {"model": f"{command}.model", "labelled": f"{command}.labelled", "images": f"{command}.images",
                 "out": f"{command}.out", "engine": "inference.engine", "tta": "inference.tta", **POOL_FLAGS}
       for command in ("validate", "calibrate")},
}


def build_config(args: argparse.Namespace) -> SkinrayConfig:
    overrides: dict[str, Any] = {"storage.endpoint_url": args.endpoint_url, "storage.region": args.region}
    for flag, key in FLAG_TO_KEY.get(args.command, {}).items():
        overrides[key] = getattr(args, flag, None)
    if getattr(args, "sources", None):
        if any(len(s) not in (2, 3) for s in args.sources):
            raise SkinrayError("--source takes NAME MANIFEST [IMAGES]")
        overrides["prepare.sources"] = [dict(zip(("name", "manifest", "images"), s)) for s in args.sources]
    if args.command == "score" and args.input_root and not args.date:
        raise SkinrayError("--input-root needs --date")
    cfg = load_config(args.config, overrides, args.sets, args.recipe)
    if args.command == "score" and args.input_root:
        from skinray.io import storage

        cfg.score.input = storage.join(args.input_root, cfg.score.night())
    return cfg


def _cmd_synth(args: argparse.Namespace, cfg: SkinrayConfig) -> None:
    from skinray.data.synth import generate

    summary = generate(args.out, args.n, image_size=args.image_size, schema=args.schema,
                       malignant_fraction=args.malignant_fraction, seed=args.seed, corrupt=args.corrupt,
                       missing=args.missing, storage=cfg.storage)
    console.say(f"wrote {summary['n']} rows ({summary['malignant']} malignant) to {args.out}",
                rows=summary["n"], malignant=summary["malignant"], out=args.out)


def _cmd_prepare(args: argparse.Namespace, cfg: SkinrayConfig) -> None:
    from skinray.data.prepare import prepare

    r = prepare(cfg)
    lines = [f"kept {r.kept:,} of {r.rows_in:,} rows; rejected {r.rejected:,} {r.rejected_by_reason}"]
    lines += [f"  {name:5s} {s['rows']:>7,} rows ({s['share']:.1%}), malignant {s['malignant_fraction']}"
              for name, s in r.splits.items()]
    if len(r.sources) > 1:
        lines += [f"  source {name}: kept {s['kept']:,} of {s['rows_in']:,}, {s['malignant']:,} malignant; "
                  + ", ".join(f"{k} {v:,}" for k, v in s["splits"].items()) for name, s in r.sources.items()]
    lines += [f"warning: {w}" for w in r.record.get("warnings", [])]
    lines.append(f"lesions shared between splits: {r.lesions_in_two_splits}; wrote {cfg.prepare.out}")
    console.say("\n".join(lines), rows_in=r.rows_in, kept=r.kept, rejected=r.rejected,
                rejected_by_reason=r.rejected_by_reason, splits=r.splits, sources=r.sources, out=cfg.prepare.out)


def _cmd_train(args: argparse.Namespace, cfg: SkinrayConfig) -> None:
    from skinray.decision.operating_point import describe
    from skinray.train.driver import selection, train

    meta = train(cfg)
    auc = ((meta.validation or {}).get("ranking") or {}).get("roc_auc")
    chosen = f"{selection(meta)}, {'out-of-fold' if cfg.train.folds else 'val'}"
    console.say(f"model: {cfg.train.out}  {chosen} ROC-AUC "
                f"{'n/a' if auc is None else f'{auc:.3f}'}, threshold {meta.threshold.threshold:.3f} "
                f"({describe(meta.threshold)})", out=cfg.train.out, best_epoch=meta.training["best_epoch"],
                val_roc_auc=auc, threshold=meta.threshold.threshold)


def _cmd_evaluate(args: argparse.Namespace, cfg: SkinrayConfig) -> None:
    from skinray.inference.evaluate import evaluate

    r = evaluate(cfg)
    auc = r.roc_auc
    f = (lambda v: "n/a" if v is None else f"{v:.3f}")
    ci = r.roc_auc_ci95 or [None, None]
    console.say(f"{r.split}: n={r.n} ROC-AUC {f(auc)} CI [{f(ci[0])}, {f(ci[1])}], sensitivity {f(r.sensitivity)}, "
                f"specificity {f(r.specificity)} at threshold {r.threshold:.3f}\nreport: {cfg.evaluate.out}/report.md",
                split=r.split, n=r.n, roc_auc=auc, roc_auc_ci95=r.roc_auc_ci95, sensitivity=r.sensitivity,
                specificity=r.specificity, threshold=r.threshold, out=cfg.evaluate.out)


def _cmd_validate(args: argparse.Namespace, cfg: SkinrayConfig) -> int:
    from skinray.clinic.validate import validate

    v = validate(cfg)
    console.say("\n".join([p.describe() for p in v.checked] + [f"verdict: {v.verdict}"]),
                promises=[p.record() for p in v.checked], verdict=v.verdict, held=not v.failed,
                scored=v.record["scored"], not_scored=v.record["not_scored"])
    return EXIT_DATA if v.failed else 0


def _cmd_calibrate(args: argparse.Namespace, cfg: SkinrayConfig) -> None:
    from skinray.clinic.calibrate import calibrate
    from skinray.decision.operating_point import describe

    meta = calibrate(cfg)
    before = meta.data["calibrated_on"]["threshold_before"]
    console.say(f"model: {cfg.calibrate.out}  threshold {before:.3f} → {meta.threshold.threshold:.3f} "
                f"({describe(meta.threshold)}), refitted on {meta.data['calibrated_on']['scored']} images",
                out=cfg.calibrate.out, threshold=meta.threshold.threshold, threshold_before=before)


def _cmd_score(args: argparse.Namespace, cfg: SkinrayConfig) -> None:
    from skinray.scoring.run import score

    s = score(cfg)
    if s.already_complete:
        console.say(f"run {s.run_id}: nothing new, the night's {s.rows:,} images are answered in {s.table} "
                    f"(version {s.table_version})", run_id=s.run_id, status="nothing_new", rows=s.rows,
                    table_version=s.table_version)
        return
    console.say(f"run {s.run_id}: the night has {s.scored:,} scored, {s.failed:,} failed {s.failed_by_reason}; this "
                f"submission took {s.wall_seconds} s ({s.images_per_second_steady} img/s steady) and committed to "
                f"{s.table} as version {s.table_version}", run_id=s.run_id, status=s.status, rows=s.rows, scored=s.scored,
                failed=s.failed, failed_by_reason=s.failed_by_reason, flagged=s.flagged,
                table_version=s.table_version, images_per_second_steady=s.images_per_second_steady)


def _cmd_predict(args: argparse.Namespace, cfg: SkinrayConfig) -> None:
    from skinray.inference.predict import predict
    from skinray.query import format_frame

    if args.explain and not args.sheet:
        raise SkinrayError("--explain draws on the contact sheet: give --sheet PATH too")
    df = predict(args.model, args.images, cfg.storage, cfg.inference, cfg.image, args.sheet, args.explain)
    print(format_frame(df, args.format))
    if args.sheet:
        print(f"contact sheet: {args.sheet}", file=sys.stderr)


def _cmd_query(args: argparse.Namespace, cfg: SkinrayConfig) -> None:
    from skinray.query import preset_sql, query

    if args.top_suspicious is not None:
        sql = preset_sql("top_suspicious", args.top_suspicious, args.date)
    elif args.daily_counts:
        sql = preset_sql("daily_counts")
    elif args.sql:
        sql = args.sql
    else:
        raise SkinrayError("give SQL, --top-suspicious K or --daily-counts")
    print(query(args.out_uri, sql, args.format, cfg.storage, args.as_of))


def _cmd_report(args: argparse.Namespace, cfg: SkinrayConfig) -> None:
    from skinray.scoring.report import regenerate

    page = regenerate(args.out_uri, cfg, args.run_id, args.date)
    console.say(page, page=page)


def _cmd_export(args: argparse.Namespace, cfg: SkinrayConfig) -> None:
    from skinray.inference.export import export

    model_id, meta = export(args.model, args.out, cfg.storage, args.int8, args.calibration_images)
    if meta.int8:
        v = meta.int8["validation"]

        def f(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.4f}"

        console.say(f"int8 on {v['images']} validation images: ROC-AUC {f(v['roc_auc_float'])} → "
                    f"{f(v['roc_auc_int8'])}, largest probability change {f(v['max_abs_prob_change'])}, sensitivity "
                    f"at the threshold {f(v['sensitivity_float'])} → {f(v['sensitivity_int8'])}", int8_validation=v)
    console.say(f"model {model_id} written to {args.out}", model_id=model_id, out=args.out)


def _cmd_doctor(args: argparse.Namespace, cfg: SkinrayConfig) -> None:
    from skinray.doctor import doctor

    report = doctor(cfg, args.uris, args.model, args.gpu)
    if report.failed:
        raise SkinrayError(f"doctor: {len(report.failed)} of {len(report.checks)} checks failed: "
                           + ", ".join(c.name for c in report.failed))
    console.say(f"doctor: all {len(report.checks)} checks passed", checks=len(report.checks))


def _cmd_demo(args: argparse.Namespace, cfg: SkinrayConfig) -> None:
    from skinray.demo import run_demo

    print(run_demo(args.out, n=args.n, weights=args.weights, ham10000=args.ham10000, epochs=args.epochs,
                   workers=args.workers, base_config=cfg).text)


COMMANDS: dict[str, Callable[[argparse.Namespace, SkinrayConfig], int | None]] = {
    "synth": _cmd_synth, "prepare": _cmd_prepare, "train": _cmd_train, "evaluate": _cmd_evaluate,
    "validate": _cmd_validate, "calibrate": _cmd_calibrate,
    "score": _cmd_score, "predict": _cmd_predict, "query": _cmd_query, "report": _cmd_report, "export": _cmd_export,
    "doctor": _cmd_doctor, "demo": _cmd_demo,
}


class _Parser(argparse.ArgumentParser):
    """argparse whose own errors (a typo in a flag) follow ``--log-format``: one JSON object for a scheduler."""

    def error(self, message: str) -> None:  # type: ignore[override]
        argv = sys.argv[1:] if _ARGV is None else _ARGV
        fmt = "json" if any(a == "--log-format=json" for a in argv) or any(
            a == "--log-format" and b == "json" for a, b in zip(argv, argv[1:])) else "text"
        if fmt == "json":
            console.error(f"{self.prog}: {message}", fmt, kind="usage")
            sys.exit(EXIT_USAGE)
        super().error(message)


_ARGV: list[str] | None = None  # what main() was given, for _Parser.error


class _Intermixed(_Parser):
    """Flags and positionals in any order (``query OUT --format csv "SQL"``): plain argparse binds an optional
    positional (``nargs="?"``) to nothing as soon as a flag follows the one before it, then refuses the SQL."""

    _mixing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def, override]
        if self._mixing:  # parse_known_intermixed_args parses twice through this method
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


def main(argv: Sequence[str] | None = None, preflight: bool = False) -> int:
    """The command line; ``preflight`` (the job entrypoints) first runs the doctor checks the job's arguments
    need, so a missing bucket or an unusable GPU ends the job in seconds."""
    global _ARGV
    _ARGV = None if argv is None else list(argv)
    args = _parser().parse_args(argv)
    console.setup(args.verbose, args.log_format, args.command)
    try:
        cfg = build_config(args)
        if preflight:
            from skinray.doctor import preflight as run_checks

            checks = run_checks(args.command, cfg)
            console.log.info("preflight: %d checks passed", len(checks.checks))
        return COMMANDS[args.command](args, cfg) or 0
    except SkinrayError as exc:
        console.error(str(exc), args.log_format, kind=exc.kind, run_id=exc.run_id, stage=args.command)
        return exc.exit_code
    except KeyboardInterrupt:
        console.error("interrupted", args.log_format, kind="interrupted", stage=args.command)
        return 130
