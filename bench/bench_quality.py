"""Model-quality levers on HAM10000, measured fast on cached frozen-base features.

With a frozen ImageNet base, everything the head can learn is a function of the base's pooled features, so the
levers that do not touch the base (class weights, flip augmentation/TTA, metadata fusion, temperature scaling,
squash vs centre-crop, head size and length) can be compared in seconds once the features of every image are cached
(one forward pass per image and view, through ONNX Runtime). Every variant picks its threshold and temperature on
the validation split and is reported on the lesion-grouped test split of a prepared HAM10000 dataset.

    .venv/bin/python bench/bench_quality.py --prepared /work/runs/ham-prepared

The feature cache (``--workdir``) makes re-runs take seconds. The head is the production head (Dense 64 → Dropout
0.3 → Dense(1): the logit, Adam 1e-3, batch 32) unless a row says otherwise; calibration is Platt scaling on the
logit as in ``skinray train`` (the ECE of a temperature alone is printed beside it). What this cannot measure:
fine-tuning the base (that changes the features); those runs go through ``skinray train`` / ``skinray evaluate``
(see RESULTS.md).
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
from skinray.data import images
from skinray.decision import calibration, intervals, metrics, operating_point

from bench.common import DEFAULT_WEIGHTS, DEFAULT_WORKDIR, log, print_results  # noqa: E402

VIEWS = ("plain", "hflip", "vflip", "hvflip")
TTA_VIEWS = ("plain", "hflip", "vflip")  # what flip TTA averages (skinray.model.views.flips)
SITES = ("anterior torso", "posterior torso", "lower extremity", "upper extremity", "head/neck", "oral/genital",
         "palms/soles", "lateral torso")


def _base_onnx(path: str, weights: str, size: int) -> str:
    """MobileNetV2 base (its own [-1, 1] scaling, global average pooling) as ONNX: 0–255 pixels → 1280 features."""
    if os.path.exists(path):
        return path
    import keras

    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=weights,
                                          pooling="avg")
    model = keras.Model(inputs, base(x, training=False))
    model(np.zeros((1, size, size, 3), np.float32))
    model.export(path, format="onnx", verbose=False)
    return path


def _views(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"plain": x, "hflip": x[:, ::-1], "vflip": x[::-1], "hvflip": x[::-1, ::-1]}


def extract(rows: pd.DataFrame, onnx_path: str, resize: str, size: int, cache: str) -> dict[str, np.ndarray]:
    """Features of every row under every view, cached as ``.npz``."""
    if os.path.exists(cache):
        data = np.load(cache)
        return {v: data[v] for v in VIEWS}
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 2
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    cfg = ImageConfig(size=size, resize=resize)
    out = {v: np.zeros((len(rows), 1280), np.float32) for v in VIEWS}
    uris = rows["image_uri"].tolist()

    def load(uri: str) -> np.ndarray:
        with open(uri, "rb") as f:
            return images.decode(f.read(), cfg)

    t0, step = time.time(), 64
    with ThreadPoolExecutor(2) as pool:
        for start in range(0, len(uris), step):
            arrays = list(pool.map(load, uris[start:start + step]))
            for v in VIEWS:
                batch = np.stack([_views(a)[v] for a in arrays]).astype(np.float32)
                out[v][start:start + len(arrays)] = sess.run(None, {name: batch})[0]
            if (start // step) % 20 == 0:
                done = start + len(arrays)
                log(f"{resize}: {done}/{len(uris)} images ({done * len(VIEWS) / (time.time() - t0):.0f} views/s)")
    np.savez(cache, **out)
    return out


def metadata(rows: pd.DataFrame, train_median_age: float) -> np.ndarray:
    """Age (imputed, scaled), sex and site one-hot: the branch the seed selected but never fed to its model."""
    age = pd.to_numeric(rows["age_approx"], errors="coerce").fillna(train_median_age).to_numpy(np.float32) / 100.0
    sex = rows["sex"].fillna("unknown").astype(str)
    site = rows["anatom_site_general"].fillna("unknown").astype(str)
    cols = [age, (sex == "male").to_numpy(np.float32), (sex == "female").to_numpy(np.float32)]
    cols += [(site == s).to_numpy(np.float32) for s in SITES]
    return np.stack(cols, axis=1)


def train_head(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, units: int, epochs: int,
               class_weight: dict[int, float] | None, seed: int, patience: int = 0, n_dx: int = 0) -> Any:
    """The production head on cached features; its last layer gives logits (one, or one per diagnosis)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((x.shape[1],))
    h = keras.layers.Dense(units, activation="relu")(inputs)
    h = keras.layers.Dropout(0.3)(h)
    model = keras.Model(inputs, keras.layers.Dense(n_dx or 1)(h))
    if n_dx:  # the diagnosis as the target, plain cross-entropy, no class weights (the SIIM-ISIC 2020 winners')
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=32, epochs=epochs, validation_data=(xv, yv), verbose=0)
        return model
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[keras.metrics.AUC(name="auc", from_logits=True)])
    callbacks = []
    if patience:
        callbacks.append(keras.callbacks.EarlyStopping("val_auc", mode="max", patience=patience,
                                                       restore_best_weights=True))
    model.fit(x, y, batch_size=32, epochs=epochs, validation_data=(xv, yv), class_weight=class_weight,
              callbacks=callbacks, verbose=0)
    return model


def malignant_logit(dx_logits: np.ndarray, malignant: np.ndarray) -> np.ndarray:
    """The binary readout of a diagnosis softmax: log P(malignant) - log P(benign), P summed over diagnoses."""
    z = dx_logits - dx_logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    pm = np.clip(p[:, malignant].sum(axis=1), 1e-12, 1 - 1e-12)
    return np.log(pm) - np.log1p(-pm)


def run_variant(name: str, feats: dict[str, np.ndarray], rows: pd.DataFrame, *, train_views: tuple[str, ...],
                tta: bool, class_weight: bool, meta: bool, units: int = 64, epochs: int = 10, patience: int = 0,
                seed: int = 0, dx_target: bool = False) -> dict[str, Any]:
    split = rows["split"].to_numpy()
    y = rows["label"].to_numpy(np.float32)
    tr, va, te = split == "train", split == "val", split == "test"
    m = metadata(rows, float(pd.to_numeric(rows.loc[tr, "age_approx"], errors="coerce").median()))
    dx = rows["dx"].astype("string").str.lower().fillna("unknown").to_numpy(object)
    classes = sorted(set(dx[tr]))
    malignant = np.array([bool(y[tr][dx[tr] == c].mean() > 0.5) for c in classes])
    target = np.array([classes.index(d) if d in classes else 0 for d in dx]) if dx_target else y

    def inputs(view: str, mask: np.ndarray) -> np.ndarray:
        f = feats[view][mask]
        return np.concatenate([f, m[mask] * 4.0], axis=1) if meta else f

    x = np.concatenate([inputs(v, tr) for v in train_views])
    yt = np.concatenate([target[tr]] * len(train_views))
    cw = None
    if class_weight and not dx_target:
        pos = yt.mean()
        cw = {0: 0.5 / (1 - pos), 1: 0.5 / pos}
    t0 = time.time()
    model = train_head(x, yt, inputs("plain", va), target[va], units, epochs, cw, seed, patience,
                       n_dx=len(classes) if dx_target else 0)
    seconds = time.time() - t0

    def logits(mask: np.ndarray) -> np.ndarray:  # TTA averages logits, as skinray.model.views.run does
        views = TTA_VIEWS if tta else ("plain",)
        out = [model.predict(inputs(v, mask), verbose=0, batch_size=512) for v in views]
        return np.mean([malignant_logit(o, malignant) if dx_target else o[:, 0] for o in out], axis=0)

    zv, zt = logits(va), logits(te)
    temperature_only = calibration.fit_calibration(y[va], zv, "temperature")
    ece_temperature = metrics.ranking_metrics(
        y[te], operating_point.OperatingPoint(temperature_only, operating_point.ThresholdChoice(
            threshold=0.5, policy="fixed")).apply(zt).prob)["ece"]
    op, _ = operating_point.fit(y[va], zv, "platt", "youden", None, None)  # as skinray train does
    pv, pt = op.apply(zv).prob, op.apply(zt).prob
    thr = op.threshold.threshold
    rank = metrics.ranking_metrics(y[te], pt)
    lo, hi = intervals.bootstrap_auc_ci(y[te], pt, n_boot=1000, seed=0)
    at = metrics.threshold_metrics(y[te], pt, thr)
    return {"variant": name, "val_auc": round(float(metrics.ranking_metrics(y[va], pv)["roc_auc"]), 4),
            "test_auc": round(rank["roc_auc"], 4), "auc_95ci": f"[{lo:.3f}, {hi:.3f}]",
            "threshold": round(thr, 3), "sens@thr": round(at["sensitivity"], 3),
            "spec@thr": round(at["specificity"], 3), "bal_acc@thr": round(at["balanced_accuracy"], 3),
            "ece": round(rank["ece"], 4), "ece_temperature_only": round(ece_temperature, 4),
            "temperature": round(op.calibration.temperature, 3), "bias": round(op.calibration.bias, 3),
            "head_train_s": round(seconds, 1), "_val_logits": zv}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", required=True, help="a prepared HAM10000 dataset (skinray prepare)")
    ap.add_argument("--weights", default=DEFAULT_WEIGHTS)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workdir", default=os.path.join(DEFAULT_WORKDIR, "quality"))
    ap.add_argument("--seeds", type=int, default=2, help="head seeds per variant (mean reported)")
    ap.add_argument("--only", help="comma-separated variant letters to run, e.g. H,I,J (default: all)")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    rows = pd.read_parquet(os.path.join(args.prepared, "manifest.parquet"))
    onnx_path = _base_onnx(os.path.join(args.workdir, f"base{args.size}.onnx"), args.weights, args.size)
    flips = ("plain", "hflip", "vflip", "hvflip")
    variants = [
        ("A seed head, plain views (frozen-base baseline)", "squash", dict(train_views=("plain",), tta=False,
                                                                          class_weight=False, meta=False)),
        ("B + flip views as training augmentation", "squash", dict(train_views=flips, tta=False,
                                                                   class_weight=False, meta=False)),
        ("C + balanced class weights", "squash", dict(train_views=flips, tta=False, class_weight=True, meta=False)),
        ("D + flip TTA at val/test", "squash", dict(train_views=flips, tta=True, class_weight=True, meta=False)),
        ("E + metadata fusion (age, sex, site)", "squash", dict(train_views=flips, tta=True, class_weight=True,
                                                                meta=True)),
        ("F E with centre crop instead of squash", "center_crop", dict(train_views=flips, tta=True,
                                                                       class_weight=True, meta=True)),
        ("G E with head 256, 40 epochs, early stop on val AUC", "squash",
         dict(train_views=flips, tta=True, class_weight=True, meta=True, units=256, epochs=40, patience=6)),
        ("H F, no metadata (the shape of the default recipe's head)", "center_crop",
         dict(train_views=flips, tta=True, class_weight=True, meta=False)),
        ("I H with the diagnosis softmax as the target, P(malignant) summed over malignant diagnoses",
         "center_crop", dict(train_views=flips, tta=True, class_weight=False, meta=False, dx_target=True)),
        ("J I + metadata fusion", "center_crop",
         dict(train_views=flips, tta=True, class_weight=False, meta=True, dx_target=True)),
    ]
    only = set(args.only.split(",")) if args.only else None
    variants = [v for v in variants if not only or v[0].split()[0] in only]
    t0 = time.time()
    feats = {r: extract(rows, onnx_path, r, args.size, os.path.join(args.workdir, f"feat-{r}-{args.size}.npz"))
             for r in sorted({resize for _, resize, _ in variants})}
    extract_s = time.time() - t0
    table, val_logits = [], {}
    y_val = rows.loc[rows["split"] == "val", "label"].to_numpy(int)
    for name, resize, kw in variants:
        runs = [run_variant(name, feats[resize], rows, seed=s, **kw) for s in range(args.seeds)]
        row = {k: v for k, v in runs[0].items() if not k.startswith("_")}
        for key in ("val_auc", "test_auc", "sens@thr", "spec@thr", "bal_acc@thr", "ece", "ece_temperature_only",
                    "head_train_s"):
            row[key] = round(float(np.mean([r[key] for r in runs])), 4)
        val_logits[name.split()[0]] = np.mean([r["_val_logits"] for r in runs], axis=0)
        ref = {"I": "H", "J": "I"}.get(name.split()[0])
        if ref in val_logits:  # the lever against the row it changes, on the same validation images
            gain, lo, hi = intervals.paired_auc_gain(y_val, val_logits[name.split()[0]], val_logits[ref])
            row[f"val_auc_gain_vs_{ref}"] = f"{gain:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        table.append(row)
        log(f"{name}: val {row['val_auc']} test {row['test_auc']} {row['auc_95ci']}")
    print_results("Quality levers on cached frozen MobileNetV2 features (HAM10000, lesion-grouped test split)",
                  {"variants": table}, {"extract_seconds": round(extract_s, 1), "variants": table,
                                        "seeds": args.seeds, "size": args.size})


if __name__ == "__main__":
    main()
