"""Issue 24 screened cheaply: how a model holds up on a dermoscopy source it never saw, on cached features.

Every image of the three sources in ``../shared/data`` (HAM10000, ISIC 2017, SIIM-ISIC 2020) is decoded with the
project's own decoder (``skinray.data.images.decode``, one preprocessing variant at a time) and passed once through the
frozen ImageNet MobileNetV2 (global average pool, 1,280 features); the features are cached in the workdir. A
logistic-regression head on them stands in for the fine-tuned network, so a lever costs seconds, not an hour:

- **leave-one-source-out**: the head trains on two sources and is tested on all images of the third, against a head
  trained on HAM10000 alone (the default's data), for each held-out source. Its calibration and threshold are fitted
  with the project's own ``operating_point.fit`` (sensitivity 0.85 promised at 95% confidence, melanoma floor 0.80)
  on a lesion-grouped validation part of the training sources, as ``train`` does;
- **levers**: framing (``center_crop`` / ``squash`` / ``pad``), colour constancy (``shades_of_gray``),
  source-balanced sample weights, and **local calibration** (what ``skinray calibrate`` does: the operating point
  refitted on a labelled 30% of the held-out source, figures on the other 70%);
- **out-of-distribution scores** (issue 26's evidence): Mahalanobis distance to class-conditional Gaussians with a
  shared covariance, energy of the head's logits and k-nearest-neighbour cosine distance, fitted on HAM10000's train
  split; the threshold keeps 95% of its validation images; AUROC against natural photographs (scikit-learn's sample
  images and crops of them), rendered documents, solid colours, noise and blurred / over-exposed dermoscopy, and the
  share of each other source flagged.

    .venv/bin/python bench/bench_sources.py [--variants center_crop squash pad center_crop+sog] [--boot 1000]

Figures are ROC-AUC with its bootstrap interval, sensitivity / melanoma sensitivity / specificity at the stored
threshold, ECE (not for ISIC 2020: melanoma is enriched to half there) and the paired AUC gain of each lever on the
held-out source. Frozen features rank levers; the winner is confirmed by a full training run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skinray.config import ImageConfig  # noqa: E402
from skinray.data import images, schema, split
from skinray.decision import inputs, intervals, metrics, operating_point
from skinray.model import ood

from bench.common import DEFAULT_WEIGHTS, DEFAULT_WORKDIR, log, print_results  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCES = {"ham10000": ("HAM10000_metadata.csv", "images"), "isic2017": ("metadata.csv", "images"),
           "isic2020": ("metadata.csv", "images")}
MELANOMA = {"mel", "melanoma"}
TARGET, CONFIDENCE, MEL_FLOOR = 0.85, 0.95, 0.80
LOCAL_SHARE = 0.30
OOD_KEEP = 0.95


def variant_config(variant: str) -> ImageConfig:
    resize, _, cc = variant.partition("+")
    return ImageConfig(resize=resize, color_constancy="shades_of_gray" if cc == "sog" else "none")


def load_rows(name: str) -> pd.DataFrame:
    """A source's canonical rows (the project's schema adapter), with image paths and a lesion-grouped split."""
    meta, folder = SOURCES[name]
    raw = schema.read_manifest(str(DATA / name / meta))
    canon = schema.to_canonical(raw, "auto", ["mel", "bcc", "akiec", "melanoma"])
    canon = canon[canon["label"].notna()].reset_index(drop=True)
    canon["label"] = canon["label"].astype(int)
    canon["path"] = [str(DATA / name / folder / f"{i}.jpg") for i in canon["isic_id"]]
    canon["lesion_id"] = canon["lesion_id"].fillna(canon["isic_id"])
    canon["source"] = name
    # as `skinray prepare --source NAME` splits it: a model's test split is the same images here
    canon["split"] = split.assign_splits(canon["label"], canon["lesion_id"], seed=42, strata=canon["source"]).to_numpy()
    canon["melanoma"] = canon["dx"].astype("string").str.lower().isin(MELANOMA).to_numpy()
    return canon


def model_extractor(model_dir: str) -> tuple[Any, str]:
    """A trained skinray model's own pooled features (the guard's input), and the preprocessing it was trained
    with (as a variant name)."""
    import tensorflow as tf

    from skinray.model.artifact import ModelArtifact
    from skinray.model.network import with_features

    art = ModelArtifact.open(model_dir)
    net = with_features(art.load_keras())

    @tf.function(reduce_retracing=True)
    def run(x: Any) -> Any:
        return net(x, training=False)[-1]

    pre = art.meta.preprocessing
    variant = pre.resize + ("+sog" if pre.color_constancy == "shades_of_gray" else "")
    return (lambda x: run(tf.constant(x, tf.float32)).numpy()), variant


def extractor(weights: str) -> Any:
    import keras

    base = keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False, weights=weights,
                                          pooling="avg")
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def run(x: Any) -> Any:
        return base(x / 127.5 - 1.0, training=False)

    return lambda x: run(tf.constant(x, tf.float32)).numpy()


def features(arrays: list[np.ndarray] | Any, forward: Any, batch: int = 64) -> np.ndarray:
    out = []
    chunk: list[np.ndarray] = []
    for a in arrays:
        chunk.append(a)
        if len(chunk) == batch:
            out.append(forward(np.stack(chunk)))
            chunk = []
    if chunk:
        out.append(forward(np.stack(chunk)))
    return np.concatenate(out) if out else np.zeros((0, 1280), np.float32)


def cached_features(rows: pd.DataFrame, variant: str, forward: Any, workdir: Path, tag: str = "") -> np.ndarray:
    path = workdir / f"features-{rows['source'].iloc[0]}-{tag or variant}.npy"
    if path.exists():
        return np.load(path)
    cfg = variant_config(variant)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        arrays = pool.map(lambda p: images.decode(Path(p).read_bytes(), cfg), rows["path"], chunksize=1)
        feats = features(arrays, forward)
    np.save(path, feats.astype(np.float32))
    log(f"features {rows['source'].iloc[0]} {variant}: {len(rows)} images in {time.perf_counter() - t0:.0f} s")
    return feats


# --- the head, its operating point and the figures ---------------------------------------------------------------


def fit_head(x: np.ndarray, y: np.ndarray, weight: np.ndarray, c: float = 0.05) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(
        x, y, logisticregression__sample_weight=weight)


def sample_weight(rows: pd.DataFrame, balance_sources: bool) -> np.ndarray:
    """Classes balanced (the default recipe's ``class_weight``); with ``balance_sources``, each source too."""
    keys = rows["label"].astype(str) + ("/" + rows["source"] if balance_sources else "")
    counts = keys.map(keys.value_counts())
    w = 1.0 / counts.to_numpy(float)
    return w * len(w) / w.sum()


def fit_point(y: np.ndarray, z: np.ndarray, mel: np.ndarray) -> operating_point.OperatingPoint:
    dx = np.where(mel, "mel", "other")
    op, _ = operating_point.fit(y, z, "temperature", "sensitivity", TARGET, CONFIDENCE, dx, {"mel": MEL_FLOOR})
    return op


def figures(y: np.ndarray, z: np.ndarray, mel: np.ndarray, op: operating_point.OperatingPoint, n_boot: int,
            with_ece: bool) -> dict[str, Any]:
    s = op.apply(z)
    auc = float(inputs.sklearn_metrics().roc_auc_score(y, z))
    lo, hi = intervals.bootstrap_auc_ci(y, s.prob, n_boot=n_boot)  # calibration is monotonic: the same ranking
    pos, neg = y == 1, y == 0
    return {"n": int(len(y)), "roc_auc": round(auc, 3), "ci": f"[{lo:.3f}, {hi:.3f}]",
            "sensitivity": round(float(s.malignant[pos].mean()), 3),
            "mel_sensitivity": round(float(s.malignant[mel & pos].mean()), 3) if (mel & pos).any() else None,
            "specificity": round(float((~s.malignant[neg]).mean()), 3),
            "ece": round(metrics.expected_calibration_error(y, s.prob), 3) if with_ece else None}


def run_loso(data: dict[str, pd.DataFrame], feats: dict[str, np.ndarray], n_boot: int, balance: bool,
             local: bool) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """One row per held-out source; the held-out logits (for paired gains) by source."""
    rows, logits = [], {}
    for held in data:
        train_names = [n for n in data if n != held]
        tr = pd.concat([data[n] for n in train_names], ignore_index=True)
        x = np.concatenate([feats[n] for n in train_names])
        fit_mask = (tr["split"] != "val").to_numpy()
        head = fit_head(x[fit_mask], tr["label"].to_numpy()[fit_mask], sample_weight(tr[fit_mask], balance))
        va = ~fit_mask
        op = fit_point(tr["label"].to_numpy()[va], head.decision_function(x[va]), tr["melanoma"].to_numpy()[va])
        te = data[held]
        z = head.decision_function(feats[held])
        y, mel = te["label"].to_numpy(), te["melanoma"].to_numpy()
        keep = np.ones(len(y), bool)
        if local:  # a clinic's labelled share refits the operating point; figures on the rest
            rng = np.random.default_rng(0)
            pick = rng.random(len(y)) < LOCAL_SHARE
            op = fit_point(y[pick], z[pick], mel[pick])
            keep = ~pick
        logits[held] = np.where(keep, z, np.nan)
        rows.append({"held_out": held, "trained_on": "+".join(train_names),
                     **figures(y[keep], z[keep], mel[keep], op, n_boot, held != "isic2020")})
    return rows, logits


def run_ham_only(data: dict[str, pd.DataFrame], feats: dict[str, np.ndarray], n_boot: int
                 ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """The default's data: HAM10000's train split, its val split for the operating point; every other source."""
    ham, x = data["ham10000"], feats["ham10000"]
    tr, va, te = (ham["split"] == s for s in ("train", "val", "test"))
    head = fit_head(x[tr], ham["label"][tr].to_numpy(), sample_weight(ham[tr], False))
    op = fit_point(ham["label"][va].to_numpy(), head.decision_function(x[va]), ham["melanoma"][va].to_numpy())
    rows, logits = [], {}
    for name in data:
        rows_of = data[name] if name != "ham10000" else ham[te]
        f = feats[name] if name != "ham10000" else x[te]
        z = head.decision_function(f)
        logits[name] = z
        rows.append({"held_out": name + (" (test split)" if name == "ham10000" else ""), "trained_on": "ham10000",
                     **figures(rows_of["label"].to_numpy(), z, rows_of["melanoma"].to_numpy(), op, n_boot,
                               name != "isic2020")})
    return rows, logits


def paired(data: dict[str, pd.DataFrame], new: dict[str, np.ndarray], ref: dict[str, np.ndarray],
           n_boot: int) -> dict[str, str]:
    """Paired AUC gain per source on the images both arms scored (HAM10000: its test split)."""
    out = {}
    for name in data:
        rows = data[name]
        test = (rows["split"] == "test").to_numpy()

        def on_test(z: np.ndarray) -> np.ndarray:
            return z[test] if len(z) == len(rows) and len(z) != int(test.sum()) else z

        a, b = new[name], ref[name]
        if len(a) != len(b):
            a, b = on_test(a), on_test(b)
        y = rows["label"].to_numpy()[test] if len(a) == int(test.sum()) and len(a) != len(rows) else \
            rows["label"].to_numpy()
        ok = np.isfinite(a) & np.isfinite(b)
        g, lo, hi = intervals.paired_auc_gain(y[ok], a[ok], b[ok], n_boot)
        out[name] = f"{g:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    return out


# --- out of distribution ------------------------------------------------------------------------------------------


def ood_images(ham: pd.DataFrame, cfg: ImageConfig, n: int = 60) -> dict[str, list[np.ndarray]]:
    """Non-dermoscopy made without a download, decoded by the same decoder as the scored images."""
    import io

    from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)

    def enc(img: Image.Image) -> np.ndarray:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=90)
        return images.decode(buf.getvalue(), cfg)

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    crops = []
    for _ in range(n):
        p = photos[int(rng.integers(len(photos)))]
        w, h = p.size
        s = int(rng.integers(min(w, h) // 4, min(w, h)))
        x0, y0 = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        crops.append(enc(p.crop((x0, y0, x0 + s, y0 + s))))
    docs = []
    for i in range(n):
        img = Image.new("RGB", (600, 450), tuple(int(v) for v in rng.integers(200, 256, 3)))
        d = ImageDraw.Draw(img)
        for line in range(18):
            d.text((20, 15 + 24 * line), f"Patient {i:04d} specimen {line} result: " + "x" * int(rng.integers(5, 40)),
                   fill=(0, 0, 0))
        docs.append(enc(img))
    solids = [enc(Image.new("RGB", (300, 300), tuple(int(v) for v in rng.integers(0, 256, 3)))) for _ in range(n)]
    noise = [enc(Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))) for _ in range(n)]
    test = ham[ham["split"] == "test"].sample(n, random_state=0)["path"]
    blurred = [enc(Image.open(p).filter(ImageFilter.GaussianBlur(12))) for p in test]
    exposed = [enc(ImageEnhance.Brightness(Image.open(p)).enhance(3.5)) for p in test]
    return {"photo crops": crops, "documents": docs, "solid colours": solids, "noise": noise,
            "blurred dermoscopy": blurred, "over-exposed dermoscopy": exposed}


def ood_scores(x_tr: np.ndarray, y_tr: np.ndarray, head: Any) -> dict[str, Any]:
    """Candidate scores (higher = less like the training images), each a function of pooled features."""
    mahalanobis = ood.fit_stats(x_tr, y_tr).score  # what the product ships (skinray.model.ood)

    def energy(f: np.ndarray) -> np.ndarray:
        z = head.decision_function(f)
        return -np.logaddexp(0.0, z)  # binary head: logits (0, z); lower energy = more confident

    bank = x_tr / np.linalg.norm(x_tr, axis=1, keepdims=True)

    def knn(f: np.ndarray, k: int = 10) -> np.ndarray:
        q = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        sim = q @ bank.T
        return -np.sort(sim, axis=1)[:, -k]

    return {"mahalanobis": mahalanobis, "energy": energy, "knn_cosine": knn}


def run_ood(data: dict[str, pd.DataFrame], feats: dict[str, np.ndarray], variant: str, forward: Any
            ) -> list[dict[str, Any]]:
    ham, x = data["ham10000"], feats["ham10000"]
    tr, va, te = (ham["split"] == s for s in ("train", "val", "test"))
    y_tr = ham["label"][tr].to_numpy()
    head = fit_head(x[tr], y_tr, sample_weight(ham[tr], False))
    scores = ood_scores(x[tr], y_tr, head)
    sets = {k: features(v, forward) for k, v in ood_images(ham, variant_config(variant)).items()}
    sets.update({f"{n} (another source)": feats[n] for n in data if n != "ham10000"})
    rows = []
    sk = inputs.sklearn_metrics()
    for name, fn in scores.items():
        t0 = time.perf_counter()
        s_te = fn(x[te])
        cost = (time.perf_counter() - t0) / max(int(te.sum()), 1) * 1e6
        cut = float(np.quantile(fn(x[va]), OOD_KEEP))
        row: dict[str, Any] = {"score": name, "µs/image": round(cost, 1),
                               "HAM test flagged": round(float((s_te > cut).mean()), 3)}
        for set_name, f in sets.items():
            s = fn(f)
            auroc = sk.roc_auc_score(np.r_[np.zeros(len(s_te)), np.ones(len(s))], np.r_[s_te, s])
            row[set_name] = f"{auroc:.3f} / {float((s > cut).mean()):.2f}"
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["center_crop", "squash", "pad", "center_crop+sog"])
    ap.add_argument("--weights", default=DEFAULT_WEIGHTS)
    ap.add_argument("--workdir", default=os.path.join(DEFAULT_WORKDIR, "sources"))
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--model", help="a trained model directory: the out-of-distribution screen on its own features "
                    "(its preprocessing; no leave-one-source-out)")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = {name: load_rows(name) for name in SOURCES}
    log("sources: " + ", ".join(f"{n} {len(d)} ({int(d['label'].sum())} malignant)" for n, d in data.items()))
    results: dict[str, Any] = {}
    if args.model:
        forward, variant = model_extractor(args.model)
        tag = f"model-{Path(args.model).name}-{variant}"
        feats = {n: cached_features(d, variant, forward, workdir, tag) for n, d in data.items()}
        results[f"out-of-distribution scores on the features of {args.model}: AUROC vs HAM10000 test / share "
                "flagged at the 95%-of-val threshold"] = run_ood(data, feats, variant, forward)
        print_results("Out-of-distribution images on a trained model's features", results, {})
        return
    forward = extractor(args.weights)
    base_ref: dict[str, np.ndarray] | None = None
    for variant in args.variants:
        feats = {n: cached_features(d, variant, forward, workdir) for n, d in data.items()}
        ham_rows, ham_logits = run_ham_only(data, feats, args.boot)
        arms = {"HAM10000 only": (ham_rows, ham_logits)}
        for label, balance, local in (("two sources", False, False), ("two sources, source-balanced", True, False),
                                      ("two sources + local calibration (30%)", False, True)):
            arms[label] = run_loso(data, feats, args.boot, balance, local)
        table = []
        ref = ham_logits if base_ref is None else base_ref
        for label, (rows, logits) in arms.items():
            gains = paired(data, logits, ref, args.boot)
            for r in rows:
                key = r["held_out"].split(" ")[0]
                table.append({"variant": variant, "arm": label, **r, "paired gain vs centre-crop HAM-only":
                              gains.get(key, "")})
        if base_ref is None:
            base_ref = ham_logits
        log(f"{variant}: done")
        results[f"leave-one-source-out, {variant}"] = table
    ood = run_ood(data, {n: np.load(workdir / f"features-{n}-{args.variants[0]}.npy") for n in data},
                  args.variants[0], forward)
    results["out-of-distribution scores: AUROC vs HAM10000 test / share flagged at the 95%-of-val threshold"] = ood
    print_results("Held-out sources and out-of-distribution images on frozen MobileNetV2 features", results, {})


if __name__ == "__main__":
    main()
