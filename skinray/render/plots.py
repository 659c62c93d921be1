"""Pictures of results: ROC, PR, confusion, calibration and score plots, and the contact sheet of thumbnails.

Numbers come from :mod:`skinray.decision.metrics`; this module only draws them (matplotlib's Agg canvas, no pyplot state).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, confusion_matrix, precision_recall_curve, roc_auc_score, roc_curve

from skinray.decision.inputs import ArrayLike, as_prob, check_threshold, two_classes, validate
from skinray.decision.metrics import CLASS_NAMES, ECE_BINS, expected_calibration_error, threshold_metrics
from skinray.io import storage
from skinray.io.storage import StorageConfig

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from PIL import Image

DPI = 110
# what a labelled set gets (evaluate, and a scoring run whose input carries labels): :func:`labelled_pngs`
LABELLED_PLOTS = ("roc.png", "pr.png", "confusion.png", "calibration.png", "score_histogram.png")

def _figure(figsize: tuple[float, float], **kwargs: Any) -> "Figure":
    """A Figure bound to the Agg canvas directly: no pyplot, no global figure registry, nothing to leak."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: "Figure", path: str | os.PathLike[str]) -> str:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, dpi=DPI, format="png", facecolor="white")
    finally:
        fig.clear()
    return str(out)


def _one_class_note(ax: Any, y: np.ndarray, what: str) -> None:
    ax.text(0.5, 0.5, f"{what} undefined:\nonly class {int(y[0])} ({CLASS_NAMES[int(y[0])]}) present",
            ha="center", va="center", fontsize=11, transform=ax.transAxes)


def plot_roc(
    y_true: ArrayLike, prob: ArrayLike, path: str | os.PathLike[str], threshold: float | None = None,
    title: str = "ROC",
) -> str:
    """ROC curve with AUC in the legend and, if given, the operating point at ``threshold``."""
    y, p = validate(y_true, prob)
    fig = _figure((5.2, 5.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    if two_classes(y):
        fpr, tpr, _ = roc_curve(y, p, pos_label=1)
        ax.plot(fpr, tpr, color="C0", lw=2, label=f"model (AUC = {roc_auc_score(y, p):.3f})")
        if threshold is not None:
            tm = threshold_metrics(y, p, threshold)
            x, yy = 1.0 - tm["specificity"], tm["sensitivity"]
            ax.plot([x], [yy], "o", color="C3", ms=8,
                    label=f"t = {tm['threshold']:.3f}: sens {yy:.2f}, spec {tm['specificity']:.2f}")
    else:
        _one_class_note(ax, y, "ROC")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
           xlabel="False positive rate (1 - specificity)", ylabel="True positive rate (sensitivity)")
    ax.set_title(f"{title} (n={len(y)}, malignant={int(y.sum())})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    return _save(fig, path)


def plot_pr(y_true: ArrayLike, prob: ArrayLike, path: str | os.PathLike[str], title: str = "Precision-recall") -> str:
    """Precision-recall curve (step, as sklearn draws it) with average precision and the prevalence baseline."""
    y, p = validate(y_true, prob)
    fig = _figure((5.2, 5.0))
    ax = fig.add_subplot()
    prevalence = float(y.mean())
    if two_classes(y):
        precision, recall, _ = precision_recall_curve(y, p, pos_label=1)
        ap = average_precision_score(y, p, pos_label=1)
        ax.plot(recall, precision, drawstyle="steps-post", color="C0", lw=2, label=f"model (AP = {ap:.3f})")
    else:
        _one_class_note(ax, y, "Precision-recall")
    ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"prevalence = {prevalence:.3f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="Recall (sensitivity)", ylabel="Precision (PPV)")
    ax.set_title(f"{title} (n={len(y)}, malignant={int(y.sum())})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)
    return _save(fig, path)


def plot_confusion(
    y_true: ArrayLike, prob: ArrayLike, threshold: float, path: str | os.PathLike[str],
    labels: Sequence[str] = CLASS_NAMES,
) -> str:
    """2x2 confusion matrix at ``threshold``: counts plus percentage of each true-class row."""
    y, p = validate(y_true, prob)
    t = check_threshold(threshold)
    if len(labels) != 2:
        raise ValueError(f"labels must name the 2 classes, got {labels!r}")
    cm = confusion_matrix(y, (p >= t).astype(np.int64), labels=[0, 1])
    row = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(row > 0, cm / np.maximum(row, 1), np.nan)
    fig = _figure((4.8, 4.3))
    ax = fig.add_subplot()
    ax.imshow(np.nan_to_num(frac), cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(2):
        for j in range(2):
            pct = "–" if np.isnan(frac[i, j]) else f"{100 * frac[i, j]:.1f}%"
            dark = not np.isnan(frac[i, j]) and frac[i, j] > 0.5
            ax.text(j, i, f"{cm[i, j]}\n{pct}", ha="center", va="center", fontsize=13,
                    color="white" if dark else "black")
    ax.set_xticks([0, 1], labels=list(labels))
    ax.set_yticks([0, 1], labels=list(labels))
    ax.set(xlabel="Predicted", ylabel="True")
    ax.set_title(f"Confusion matrix at threshold {t:.3f}\n(n={len(y)}; % of true-class row)", fontsize=11)
    return _save(fig, path)


def plot_calibration(
    y_true: ArrayLike, prob: ArrayLike, path: str | os.PathLike[str], n_bins: int = ECE_BINS
) -> str:
    """Reliability diagram (sklearn calibration_curve, uniform bins) over a histogram of predictions; ECE in title."""
    y, p = validate(y_true, prob)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform", pos_label=1)
    ece = expected_calibration_error(y, p, n_bins)
    fig = _figure((5.2, 6.0))
    ax, hax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    ax.plot(prob_pred, prob_true, "o-", color="C0", lw=2, label="model")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), ylabel="Observed fraction malignant")
    ax.set_title(f"Calibration (ECE = {ece:.3f}, {n_bins} bins, n={len(y)})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    hax.hist(p, bins=np.linspace(0.0, 1.0, n_bins + 1), color="C0", alpha=0.7, edgecolor="white")
    hax.set(xlabel="Predicted P(malignant)", ylabel="Count")
    hax.grid(alpha=0.3)
    return _save(fig, path)


def plot_score_histogram(
    prob: ArrayLike, path: str | os.PathLike[str], threshold: float | None = None, y_true: ArrayLike | None = None
) -> str:
    """Histogram of predicted P(malignant), stacked by true class when labels are given; threshold as a line."""
    if y_true is None:
        p, y = as_prob(prob), None
    else:
        y, p = validate(y_true, prob)
    bins = np.linspace(0.0, 1.0, 21)
    fig = _figure((6.0, 4.0))
    ax = fig.add_subplot()
    if y is None:
        ax.hist(p, bins=bins, color="C0", edgecolor="white", label=f"all (n={len(p)})")
    else:
        parts = [p[y == 0], p[y == 1]]
        ax.hist(parts, bins=bins, stacked=True, color=["C0", "C3"], edgecolor="white",
                label=[f"{CLASS_NAMES[0]} (n={len(parts[0])})", f"{CLASS_NAMES[1]} (n={len(parts[1])})"])
    if threshold is not None:
        t = check_threshold(threshold)
        ax.axvline(t, color="black", ls="--", lw=1.5, label=f"threshold = {t:.3f}")
    ax.set(xlim=(0, 1), xlabel="Predicted P(malignant)", ylabel="Count")
    ax.set_title("Score distribution")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return _save(fig, path)


# --- contact sheet ---------------------------------------------------------------------------------------------

SHEET_PAD = 8  # px between cells
SHEET_BORDER = 4  # px, red highlight border
SHEET_FONT_PX = 12
SHEET_CAPTION_LINES = 2


def _to_pil(img: Any, i: int) -> "Image.Image":
    from PIL import Image

    if isinstance(img, Image.Image):
        return img.convert("RGB")
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or a.size == 0:
        raise ValueError(f"images[{i}] must be HxW, HxWx3 or HxWx4, got shape {a.shape}")
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0  # float images in [0, 1]
        a = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
    return Image.fromarray(a).convert("RGB")


def _font() -> Any:
    from PIL import ImageFont

    try:  # matplotlib ships DejaVu Sans, so this works without system fonts
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), SHEET_FONT_PX)
    except Exception:  # pragma: no cover - fallback bitmap font
        return ImageFont.load_default()


def _fit_text(draw: Any, text: str, font: Any, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def contact_sheet(
    images: list[Any], captions: list[str], path: str | os.PathLike[str], cols: int = 6, thumb: int = 160,
    highlight: list[bool] | None = None,
) -> str:
    """Grid of thumbnails (aspect kept) with up to 2 caption lines each; red border where highlight is True.

    For eyeballing errors: e.g. captions "SYN_0001\\n0.87 malignant", highlight = misclassified.
    """
    from PIL import Image, ImageDraw

    n = len(images)
    if n == 0:
        raise ValueError("contact_sheet needs at least one image")
    if len(captions) != n:
        raise ValueError(f"length mismatch: {n} images but {len(captions)} captions")
    if highlight is not None and len(highlight) != n:
        raise ValueError(f"length mismatch: {n} images but {len(highlight)} highlight flags")
    if int(cols) < 1 or int(thumb) < 16:
        raise ValueError(f"cols must be >= 1 and thumb >= 16, got cols={cols}, thumb={thumb}")
    cols, thumb = min(int(cols), n), int(thumb)
    rows = -(-n // cols)
    font = _font()
    line_h = SHEET_FONT_PX + 4
    cell_w, cell_h = thumb + SHEET_PAD, thumb + SHEET_CAPTION_LINES * line_h + SHEET_PAD + 2
    sheet = Image.new("RGB", (cols * cell_w + SHEET_PAD, rows * cell_h + SHEET_PAD), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, cap) in enumerate(zip(images, captions)):
        x0 = SHEET_PAD + (i % cols) * cell_w
        y0 = SHEET_PAD + (i // cols) * cell_h
        im = _to_pil(img, i)
        im.thumbnail((thumb, thumb), Image.Resampling.LANCZOS)
        sheet.paste(im, (x0 + (thumb - im.width) // 2, y0 + (thumb - im.height) // 2))
        if highlight is not None and highlight[i]:
            draw.rectangle([x0 - 2, y0 - 2, x0 + thumb + 1, y0 + thumb + 1], outline=(220, 0, 0), width=SHEET_BORDER)
        lines = str(cap).splitlines()[:SHEET_CAPTION_LINES]
        for k, line in enumerate(lines):
            draw.text((x0, y0 + thumb + 3 + k * line_h), _fit_text(draw, line, font, thumb), fill="black", font=font)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    return str(out)


def plot_diagnosis_confusion(report: dict, path: str | os.PathLike[str]) -> str:
    """The diagnosis confusion matrix of :func:`skinray.decision.metrics.multiclass_report`: share of each true row."""
    classes, cm = report["classes"], np.asarray(report["confusion"], dtype=float)
    if cm.size == 0:
        raise ValueError("the report has no scored diagnoses")
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(cm.sum(axis=1, keepdims=True) > 0, cm / np.maximum(cm.sum(axis=1, keepdims=True), 1), 0.0)
    k = len(classes)
    fig = _figure((1.0 + 0.75 * k, 0.8 + 0.7 * k))
    ax = fig.add_subplot()
    ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=9,
                    color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), labels=classes, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=classes)
    ax.set(xlabel="Predicted diagnosis", ylabel="True diagnosis")
    ax.set_title(f"Diagnoses: balanced accuracy {report['balanced_accuracy']:.3f} (n={report['n']})", fontsize=10)
    return _save(fig, path)


# --- drawn for a page and a folder -------------------------------------------------------------------------------


def pngs(drawings: dict[str, Callable[[str], str | None]]) -> dict[str, bytes]:
    """Each drawing (a function of the path it draws to) drawn into a temporary folder: its PNG bytes by file name,
    in the order given; a drawing that returns None (nothing to draw) is left out."""
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, draw in drawings.items():
            path = draw(os.path.join(tmp, name))
            if path:
                out[name] = Path(path).read_bytes()
    return out


def labelled_drawings(y_true: ArrayLike, prob: ArrayLike, threshold: float) -> dict[str, Callable[[str], str]]:
    """The five pictures of a labelled set at its threshold (:data:`LABELLED_PLOTS`, in that order), to draw with
    :func:`pngs`: ROC with the operating point, PR, confusion, calibration and the score histogram by class."""
    return {"roc.png": lambda path: plot_roc(y_true, prob, path, threshold=threshold),
            "pr.png": lambda path: plot_pr(y_true, prob, path),
            "confusion.png": lambda path: plot_confusion(y_true, prob, threshold, path),
            "calibration.png": lambda path: plot_calibration(y_true, prob, path),
            "score_histogram.png": lambda path: plot_score_histogram(prob, path, threshold=threshold, y_true=y_true)}


def publish(pictures: dict[str, bytes], folder: str, storage_cfg: StorageConfig | None = None) -> None:
    """Write each picture into ``folder`` (local or S3) under its name."""
    for name, data in pictures.items():
        storage.write_bytes(storage.join(folder, name), data, storage_cfg)
