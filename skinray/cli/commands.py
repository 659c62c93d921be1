"""What each subcommand does once its flags are parsed into the config: call the library, print for people (or one
JSON object under ``--log-format json``). A command returns its exit code, or None for 0."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from skinray import EXIT_DATA, SkinrayError, console
from skinray.config import SkinrayConfig


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
