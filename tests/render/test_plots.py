"""skinray.render.plots: every picture is a real PNG, and nothing leaks into pyplot's global state."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from skinray.decision import metrics as M
from skinray.render import plots as P

from conftest import assert_png, noisy_scores

# --- plots -----------------------------------------------------------------------------------------------------


def test_plots_write_pngs(tmp_path) -> None:  # noqa: ANN001
    y, p = noisy_scores(seed=11)
    paths = [
        P.plot_roc(y, p, tmp_path / "roc.png", threshold=0.5),
        P.plot_pr(y, p, tmp_path / "pr.png"),
        P.plot_confusion(y, p, 0.5, tmp_path / "cm.png"),
        P.plot_calibration(y, p, tmp_path / "cal.png"),
        P.plot_score_histogram(p, tmp_path / "hist_plain.png"),
        P.plot_score_histogram(p, tmp_path / "sub" / "hist.png", threshold=0.5, y_true=y),
    ]
    for path in paths:
        assert isinstance(path, str)
        assert_png(path)


def test_plots_single_class_and_no_pyplot_leak(tmp_path) -> None:  # noqa: ANN001
    import sys

    y, p = np.zeros(10, int), np.linspace(0, 1, 10)
    assert_png(P.plot_roc(y, p, tmp_path / "roc1.png", threshold=0.5))
    assert_png(P.plot_pr(y, p, tmp_path / "pr1.png"))
    assert_png(P.plot_confusion(y, p, 0.5, tmp_path / "cm1.png"))
    if "matplotlib.pyplot" in sys.modules:  # something else imported pyplot: make sure we left no figures
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []


def test_plot_length_mismatch(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="length mismatch"):
        P.plot_roc([0, 1, 1], [0.2, 0.3], tmp_path / "x.png")


# --- contact sheet ---------------------------------------------------------------------------------------------


def _images(n: int) -> list:
    rng = np.random.default_rng(12)
    out: list = []
    for i in range(n):
        if i % 3 == 0:
            out.append(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8))  # portrait uint8
        elif i % 3 == 1:
            out.append(rng.random((40, 80)))  # grayscale float in [0, 1]
        else:
            out.append(Image.new("RGBA", (90, 90), (200, 120, 90, 255)))
    return out


def test_contact_sheet_one_image(tmp_path) -> None:  # noqa: ANN001
    path = P.contact_sheet(_images(1), ["SYN_0001\n0.87 malignant"], tmp_path / "one.png", highlight=[True])
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width < 300  # one column, not six


def test_contact_sheet_thirteen_images(tmp_path) -> None:  # noqa: ANN001
    caps = [f"SYN_{i:04d}\n{i / 13:.2f} {'malignant' if i % 2 else 'benign'}" for i in range(13)]
    path = P.contact_sheet(_images(13), caps, tmp_path / "sheet.png", cols=6, thumb=96,
                           highlight=[i % 4 == 0 for i in range(13)])
    with Image.open(path) as im:
        assert im.format == "PNG" and im.height > im.width / 6 * 2  # 3 rows


def test_contact_sheet_mismatch() -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        P.contact_sheet(_images(2), ["a"], "unused.png")
    with pytest.raises(ValueError, match="length mismatch"):
        P.contact_sheet(_images(2), ["a", "b"], "unused.png", highlight=[True])


def test_diagnosis_confusion_plot(tmp_path) -> None:  # noqa: ANN001
    classes = ["bkl", "mel", "nv"]
    report = M.multiclass_report(["mel", "nv", "bkl", "nv"], ["mel", "nv", "nv", "nv"], classes)
    assert_png(P.plot_diagnosis_confusion(report, tmp_path / "dx.png"))
