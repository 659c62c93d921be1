"""The ``skinray`` command line: parse flags into the typed config, call the library, print for people.

Errors the user can fix print one line (``skinray: error: ...``) and exit 2; nothing here holds pipeline logic.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from typing import Any, Callable, Sequence

from skinray import SkinrayError, __version__
from skinray.config import SkinrayConfig, load_config


def _log(msg: str) -> None:
    print(f"[skinray] {msg}", file=sys.stderr, flush=True)


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration")
    g.add_argument("--config", metavar="YAML", help="config file (local or s3://); flags override it")
    g.add_argument("--recipe", metavar="NAME", help="start from a named training recipe: seed (the notebook's, "
                   "for comparison) or improved (the default's settings, spelled out); file and flags override it")
    g.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config key, e.g. --set train.learning_rate=3e-4 (repeatable)")
    g.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    g.add_argument("--region", help="S3 region (default: $AWS_REGION / $AWS_DEFAULT_REGION, else us-east-1)")


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    root = argparse.ArgumentParser(
        prog="skinray",
        description="Dermoscopic lesion classification (MobileNetV2) as distributed Ray batch jobs.",
        formatter_class=fmt,
        epilog="Run `skinray COMMAND --help` for examples. With RAY_ADDRESS set, jobs join that cluster.",
    )
    root.add_argument("--version", action="version", version=f"skinray {__version__}")
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, examples: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=fmt,
                           epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  "))
        _common(p)
        return p

    p = add("synth", "write synthetic dermoscopy-like sample images and a metadata file", """
        skinray synth --out data/sample --n 400
        skinray synth --out s3://bucket/sample --n 1000 --schema ham10000 --corrupt 5 --missing 5""")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--schema", choices=["isic", "ham10000"], default="isic")
    p.add_argument("--malignant-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corrupt", type=int, default=0)
    p.add_argument("--missing", type=int, default=0)

    p = add("prepare", "check, clean and split a manifest into prepared/ (manifest, rejects, report)", """
        skinray prepare --manifest data/sample/metadata.csv --images data/sample/images --out out/prepared
        skinray prepare --manifest ../shared/data/ham10000/HAM10000_metadata.csv \\
            --images ../shared/data/ham10000/images --out out/ham-prepared""")
    p.add_argument("--manifest")
    p.add_argument("--images")
    p.add_argument("--out")
    p.add_argument("--schema", choices=["auto", "isic", "ham10000"])
    p.add_argument("--image-template", help="default {images}/{isic_id}.jpg; any manifest column may be used")
    p.add_argument("--seed", type=int)

    p = add("train", "fine-tune MobileNetV2 on Ray Train and write a model directory", """
        skinray train --prepared out/prepared --out out/model --workers 2 --epochs 10
        skinray train --prepared out/prepared --out out/model --weights none --image-size 96 --set train.alpha=0.35
        skinray train --prepared s3://b/prepared --out s3://b/models/m1 --gpu --workers 4""")
    p.add_argument("--prepared")
    p.add_argument("--out")
    p.add_argument("--workers", type=int)
    p.add_argument("--gpu", action="store_true", default=None, help="one GPU per worker")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="per worker; the global batch is this times --workers")
    p.add_argument("--image-size", type=int)
    p.add_argument("--weights", help="imagenet | none | local or s3 path to a no-top MobileNetV2 weights file")
    p.add_argument("--run-name", help="same name + same storage resumes from the last checkpoint")

    p = add("evaluate", "metrics, report and plots for a model on one split of a prepared dataset", """
        skinray evaluate --model out/model --prepared out/prepared --out out/report
        skinray evaluate --model out/model --prepared out/prepared --out out/val-report --split val""")
    p.add_argument("--model")
    p.add_argument("--prepared")
    p.add_argument("--out")
    p.add_argument("--split", choices=["train", "val", "test"])
    p.add_argument("--engine", choices=["onnx", "tf"])
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average over flips (default: as the model was calibrated, skinray.json tta)")

    p = add("score", "score an image set (manifest or folder) into date-partitioned Parquet", """
        skinray score --model out/model --input data/sample/images --out out/scores
        skinray score --model s3://b/models/m1 --input s3://b/incoming/2026-11-25 --out s3://b/scores --date 2026-11-25
        skinray score --model out/model --input-root s3://b/incoming --date 2026-11-25 --out s3://b/scores""")
    p.add_argument("--model")
    p.add_argument("--input", help="a manifest (csv/parquet/jsonl) or a folder/prefix of images")
    p.add_argument("--input-root", help="nightly: read {input-root}/{date}/")
    p.add_argument("--out")
    p.add_argument("--images", help="image root for manifests without an image_uri column")
    p.add_argument("--run-id", help="default: derived from input, model and date (so re-runs resume)")
    p.add_argument("--date", help="YYYY-MM-DD partition (default: today, UTC)")
    p.add_argument("--engine", choices=["onnx", "tf"])
    p.add_argument("--batch-size", type=int)
    p.add_argument("--actors", type=int)
    p.add_argument("--gpu", action="store_true", default=None, help="one GPU per actor (onnxruntime-gpu)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average over flips (default: as the model was calibrated, skinray.json tta)")

    p = add("predict", "predict a few images now (no Ray) and optionally draw a contact sheet", """
        skinray predict --model out/model img1.jpg img2.jpg --sheet sheet.png""")
    p.add_argument("--model", required=True)
    p.add_argument("images", nargs="+")
    p.add_argument("--sheet", help="write a PNG contact sheet of the images with their predictions")
    p.add_argument("--engine", choices=["onnx", "tf"], default="onnx")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average over flips (default: as the model was calibrated, skinray.json tta)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")

    p = add("query", "SQL over scoring output (DuckDB view `scores`) or a preset", """
        skinray query out/scores "SELECT predicted, count(*) FROM scores GROUP BY 1"
        skinray query out/scores --top-suspicious 10 --date 2026-11-25
        skinray query out/scores --daily-counts --format csv""")
    p.add_argument("out_uri")
    p.add_argument("sql", nargs="?")
    p.add_argument("--top-suspicious", type=int, metavar="K")
    p.add_argument("--daily-counts", action="store_true")
    p.add_argument("--date")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")

    p = add("demo", "synth → prepare → train → evaluate → score → query on a local Ray, with a summary", """
        skinray demo --out demo-out
        skinray demo --out demo-out --weights ../shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5
        skinray demo --out ham-out --ham10000 ../shared/data/ham10000 --weights PATH""")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--n", type=int, default=1500, help="synthetic images")
    p.add_argument("--epochs", type=int)
    p.add_argument("--weights", help="a weights file: the demo then uses alpha 1.0 at 224 px")
    p.add_argument("--ham10000", help="folder with HAM10000_metadata.csv and images/ instead of synthetic data")
    p.add_argument("--workers", type=int, default=2)
    return root


FLAG_TO_KEY: dict[str, dict[str, str]] = {
    "prepare": {"manifest": "prepare.manifest", "images": "prepare.images", "out": "prepare.out",
                "schema": "prepare.schema", "image_template": "prepare.image_template", "seed": "prepare.seed"},
    "train": {"prepared": "train.prepared", "out": "train.out", "workers": "train.workers", "gpu": "train.use_gpu",
              "epochs": "train.epochs", "batch_size": "train.batch_size", "image_size": "image.size",
              "weights": "train.weights", "run_name": "train.run_name"},
    "evaluate": {"model": "evaluate.model", "prepared": "evaluate.prepared", "out": "evaluate.out",
                 "split": "evaluate.split", "engine": "score.engine", "tta": "score.tta"},
    "score": {"model": "score.model", "input": "score.input", "out": "score.out", "images": "score.images",
              "run_id": "score.run_id", "date": "score.date", "engine": "score.engine",
              "batch_size": "score.batch_size", "actors": "score.actors", "gpu": "score.use_gpu", "tta": "score.tta"},
}


def build_config(args: argparse.Namespace) -> SkinrayConfig:
    overrides: dict[str, Any] = {"storage.endpoint_url": args.endpoint_url, "storage.region": args.region}
    for flag, key in FLAG_TO_KEY.get(args.command, {}).items():
        overrides[key] = getattr(args, flag, None)
    if args.command == "score" and args.input_root:
        if not args.date:
            raise SkinrayError("--input-root needs --date")
        from skinray import storage

        overrides["score.input"] = storage.join(args.input_root, args.date)
    return load_config(args.config, overrides, args.sets, args.recipe)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _cmd_synth(args: argparse.Namespace, cfg: SkinrayConfig) -> None:
    from skinray.synth import generate

    summary = generate(args.out, args.n, image_size=args.image_size, schema=args.schema,
                       malignant_fraction=args.malignant_fraction, seed=args.seed, corrupt=args.corrupt,
                       missing=args.missing, storage=cfg.storage)
    print(f"wrote {summary['n']} rows ({summary['malignant']} malignant) to {args.out}")


def _cmd_prepare(args: argparse.Namespace, cfg: SkinrayConfig) -> None:
    from skinray.prepare import prepare

    r = prepare(cfg, _log)
    print(f"kept {r['kept']:,} of {r['rows_in']:,} rows; rejected {r['rejected']:,} {r['rejected_by_reason']}")
    for name, s in r["splits"].items():
        print(f"  {name:5s} {s['rows']:>7,} rows ({s['share']:.1%}), malignant {s['malignant_fraction']}")
    print(f"lesions shared between splits: {r['lesions_in_two_splits']}; wrote {cfg.prepare.out}")


def _cmd_train(args: argparse.Namespace, cfg: SkinrayConfig) -> None:
    from skinray.train import train

    meta = train(cfg, _log)
    v = meta.get("validation") or {}
    auc = (v.get("ranking") or {}).get("roc_auc")
    print(f"model: {cfg.train.out}  best epoch {meta['training']['best_epoch']}, val ROC-AUC "
          f"{'n/a' if auc is None else f'{auc:.3f}'}, threshold {meta['threshold']['threshold']:.3f} "
          f"({meta['threshold']['policy']})")


def _cmd_evaluate(args: argparse.Namespace, cfg: SkinrayConfig) -> None:
    from skinray.evaluate import evaluate

    r = evaluate(cfg, _log)
    at, ci = r["at_threshold"], r.get("roc_auc_ci95") or [None, None]
    auc = r["ranking"]["roc_auc"]
    print(f"{r['split']}: n={r['n']} ROC-AUC {auc if auc is None else round(auc, 3)} CI {ci}, "
          f"sensitivity {at['sensitivity']}, specificity {at['specificity']} at threshold {at['threshold']:.3f}")
    print(f"report: {cfg.evaluate.out}/report.md")


def _cmd_score(args: argparse.Namespace, cfg: SkinrayConfig) -> None:
    from skinray.score import score

    s = score(cfg, _log)
    if s.get("already_complete"):
        print(f"run {s['run_id']} already complete: {s['rows']:,} rows in {s['output']}")
        return
    print(f"run {s['run_id']}: scored {s['scored']:,}, failed {s['failed']:,} {s['failed_by_reason']} in "
          f"{s['wall_seconds']} s ({s['images_per_second_steady']} img/s steady); output {s['output']}")


def _cmd_predict(args: argparse.Namespace, cfg: SkinrayConfig) -> None:
    from skinray.predict import predict
    from skinray.query import format_frame

    df = predict(args.model, args.images, cfg.storage, args.engine, args.tta, args.sheet)
    print(format_frame(df, args.format))
    if args.sheet:
        _log(f"contact sheet: {args.sheet}")


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
    print(query(args.out_uri, sql, args.format, cfg.storage))


def _cmd_demo(args: argparse.Namespace, cfg: SkinrayConfig) -> None:
    from skinray.demo import run_demo

    summary = run_demo(args.out, n=args.n, weights=args.weights, ham10000=args.ham10000, epochs=args.epochs,
                       workers=args.workers, base_config=cfg, log=_log)
    print(summary["text"])


COMMANDS: dict[str, Callable[[argparse.Namespace, SkinrayConfig], None]] = {
    "synth": _cmd_synth, "prepare": _cmd_prepare, "train": _cmd_train, "evaluate": _cmd_evaluate,
    "score": _cmd_score, "predict": _cmd_predict, "query": _cmd_query, "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parser().parse_args(argv)
    try:
        cfg = build_config(args)
        COMMANDS[args.command](args, cfg)
    except SkinrayError as exc:
        print(f"skinray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skinray: interrupted", file=sys.stderr)
        return 130
    return 0
