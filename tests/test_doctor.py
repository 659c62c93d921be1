"""skinray doctor and the job preflight: each failure mode is one clear line, before any real work."""

import json
import shutil
import time

import pytest

from skinray import SkinrayError, doctor
from skinray.config import load_config

from conftest import BUCKET, run_cli

pytestmark = pytest.mark.slow


def test_a_healthy_setup_passes(model_dir, s3_endpoint, ray_session):
    report = doctor.doctor(load_config(), [f"s3://{BUCKET}/sample"], model=model_dir)
    assert not report.failed, [(c.name, c.detail) for c in report.failed]
    assert {c.name.split()[0] for c in report.checks} >= {"onnxruntime", "tensorflow", "ray", "s3", "model"}


def test_unreachable_and_missing_uris_fail(s3_endpoint, tmp_path):
    report = doctor.Report()
    cfg = load_config()
    doctor.check_uri(report, "s3://no-such-bucket-here/x", cfg)
    doctor.check_uri(report, f"s3://{BUCKET}/nothing/there", cfg)
    doctor.check_uri(report, str(tmp_path / "missing.csv"), cfg)
    doctor.check_uri(report, "s3://x/y", load_config(overrides={"storage.endpoint_url": "http://127.0.0.1:9",
                                                                  "storage.region": "us-east-1"}))
    assert [c.ok for c in report.checks] == [False, False, False, False]
    assert "not found" in report.checks[1].detail
    doctor.check_uri(report, str(tmp_path / "new" / "out"), cfg, must_exist=False)  # an output may be created
    assert report.checks[-1].ok


def test_a_tampered_model_fails(model_dir, tmp_path):
    bad = tmp_path / "m"
    shutil.copytree(model_dir, bad, ignore=shutil.ignore_patterns("_ray"))
    meta = json.loads((bad / "skinray.json").read_text())
    meta["threshold"]["threshold"] = 7
    (bad / "skinray.json").write_text(json.dumps(meta))
    report = doctor.Report()
    doctor.check_model(report, str(bad), load_config())
    assert not report.checks[0].ok and "threshold" in report.checks[0].detail
    report = doctor.Report()
    doctor.check_model(report, model_dir, load_config(), engine="onnx-int8")
    assert not report.checks[0].ok and "int8" in report.checks[0].detail


def test_a_model_whose_graph_does_not_load_fails(model_dir, tmp_path):
    from conftest import garbage_graph_model

    bad = garbage_graph_model(model_dir, tmp_path / "m")
    report = doctor.Report()
    doctor.check_model(report, bad, load_config())
    assert not report.checks[0].ok and "cannot be loaded by ONNX Runtime" in report.checks[0].detail
    doctor.check_model(report, bad, load_config(), engine="tf")  # the Keras model is untouched
    assert report.checks[1].ok, report.checks[1].detail


def test_two_onnxruntime_builds_fail(monkeypatch):
    monkeypatch.setattr(doctor, "onnxruntime_builds", lambda: ["onnxruntime", "onnxruntime-gpu"])
    report = doctor.Report()
    doctor.check_onnxruntime(report)
    assert not report.checks[0].ok and "both onnxruntime and onnxruntime-gpu" in report.checks[0].detail
    monkeypatch.setattr(doctor, "onnxruntime_builds", lambda: [])
    doctor.check_onnxruntime(report)
    assert not report.checks[1].ok and "pip install onnxruntime" in report.checks[1].detail


def test_gpu_asked_without_a_gpu_fails_fast(ray_session):
    report = doctor.Report()
    started = time.monotonic()
    doctor.check_gpu(report, load_config(), wait_seconds=60)  # the local Ray: nothing can add a GPU, no wait
    assert time.monotonic() - started < 30
    assert not report.checks[0].ok and "has no GPU and nothing can add one" in report.checks[0].detail


def test_job_preflight_names_every_failure_in_one_line(model_dir, s3_endpoint, tmp_path):
    cfg = load_config(overrides={"score.model": str(tmp_path / "no-model"), "score.input": "s3://no-such-bucket-x/in",
                                 "score.out": str(tmp_path / "out")})
    with pytest.raises(SkinrayError) as err:
        doctor.preflight("score", cfg)
    assert "not a skinray model directory" in str(err.value) and "no-such-bucket-x" in str(err.value)
    proc = run_cli("doctor", "s3://no-such-bucket-x/in", "--model", str(tmp_path / "no-model"),
                   env={"RAY_ADDRESS": ""})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith("skinray: error: doctor: 2 of ") and "FAIL" in proc.stderr
    # the job entrypoint runs the same checks before anything else
    import subprocess
    import sys

    from conftest import REPO

    job = subprocess.run([sys.executable, "jobs/score.py", "--model", str(tmp_path / "no-model"), "--input",
                          "s3://no-such-bucket-x/in", "--out", str(tmp_path / "o"), "--date", "2026-11-25"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert job.returncode == 2 and "FAIL" in job.stderr and "Traceback" not in job.stderr
    assert job.stderr.strip().splitlines()[-1].startswith("skinray: error: model ")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command, overrides", [
    ("validate", {"validate.model": "NOPE", "validate.labelled": "s3://no-such-bucket-x/labels.csv"}),
    ("calibrate", {"calibrate.model": "NOPE", "calibrate.labelled": "s3://no-such-bucket-x/labels.csv"}),
    ("train", {"train.init_model": "NOPE", "train.prepared": "s3://no-such-bucket-x/p"}),
    ("prepare", {"prepare.sources": [{"name": "a", "manifest": "s3://no-such-bucket-x/m.csv"}]}),
])
def test_preflight_checks_the_new_commands_inputs(command, overrides, s3_endpoint, tmp_path):
    overrides = {k: str(tmp_path / "no-model") if v == "NOPE" else v for k, v in overrides.items()}
    with pytest.raises(SkinrayError) as err:
        doctor.preflight(command, load_config(overrides=overrides))
    assert "no-such-bucket-x" in str(err.value)
    if command != "prepare":
        assert "not a skinray model directory" in str(err.value)


@pytest.mark.parametrize("engine, ort, tf", [("onnx", True, False), ("onnx-int8", True, False), ("tf", False, True)])
def test_gpu_preflight_checks_the_engine_the_job_runs(engine, ort, tf, monkeypatch):
    asked = {}
    monkeypatch.setattr(doctor, "check_gpu", lambda report, cfg, wait, need_ort=True, need_tf=False:
                        asked.update(ort=need_ort, tf=need_tf))
    doctor.preflight("score", load_config(overrides={"inference.use_gpu": True, "inference.engine": engine}))
    assert asked == {"ort": ort, "tf": tf}
