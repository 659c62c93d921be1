"""The one-command demo, end to end in a fresh process: a console a person reads (one line per stage and epoch,
no library internals without ``-v``), and every output it promises."""

import os

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow
INTERNALS = ("Traceback", "oneDNN", "TrainingReport", "absl::", "cuda", "WARNING: All log messages", "(raylet)",
             "RayTrainWorker pid", "DeprecationWarning")


def test_the_demo_console_is_for_people(tmp_path):
    out = tmp_path / "demo"
    # 300 images and 2 epochs test the console, not learning: a 24-image val split cannot show that network above
    # chance (the default demo's can: tests/test_learned.py, bench/RESULTS.md)
    proc = run_cli("demo", "--out", str(out), "--n", "300", "--epochs", "2",
                   "--set", "train.above_chance_confidence=0", env={"RAY_ADDRESS": ""}, timeout=900)
    console = (proc.stderr + proc.stdout).strip().splitlines()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(console) <= 60, "\n".join(console)
    leaked = [line for line in console if any(marker.lower() in line.lower() for marker in INTERNALS)]
    assert not leaked, leaked
    epochs = [line for line in console if "] epoch " in line]
    assert [line.split("epoch ")[1].split(" ")[0] for line in epochs] == ["1/2", "2/2"]  # each epoch once
    assert "skinray demo finished" in proc.stdout and "top suspicious images today:" in proc.stdout
    run_dirs = os.listdir(out / "nightly" / "runs")
    assert len(run_dirs) == 1 and (out / "nightly" / "runs" / run_dirs[0] / "report.html").exists()
    for name in ("report.md", "report.html", "metrics.json", "roc.png"):
        assert (out / "report" / name).exists(), name
