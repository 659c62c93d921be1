"""calibrate: the operating point refitted on a clinic's labelled images; the network's bytes unchanged."""

import json
import os
import re

import pytest

from skinray.cli import main
from skinray.clinic.calibrate import images_needed
from skinray.decision.bounds import sensitivity_lower_bound
from skinray.io import storage
from skinray.model.artifact import ModelArtifact

pytestmark = pytest.mark.slow


def test_images_needed_is_where_the_bound_first_reaches_the_target():
    for target, confidence in ((0.85, 0.95), (0.8, 0.9), (0.7, 0.9)):
        n = images_needed(target, confidence)
        assert sensitivity_lower_bound(n, n, confidence) >= target > sensitivity_lower_bound(n - 1, n - 1, confidence)


def test_calibrate_refits_the_threshold_on_local_images_and_keeps_the_network(promising_model, labelled_set,
                                                                             ray_session, tmp_path, capsys):
    out = str(tmp_path / "model-clinic")
    args = ["--model", promising_model, "--labelled", labelled_set["manifest"], "--images", labelled_set["images"]]
    assert main(["calibrate", *args, "--out", out, "--set", "metrics.bootstrap=100"]) == 0
    before, after = ModelArtifact.open(promising_model), ModelArtifact.open(out)
    for name in ("model.onnx", "model.keras"):
        assert after.meta.files[name] == before.meta.files[name]  # the network, byte for byte
    prov = after.meta.data["calibrated_on"]
    assert prov["from_model_id"] == before.model_id and len(prov["fingerprint"]) == 64
    assert prov["scored"] + prov["out_of_distribution"] + prov["not_scored"] == labelled_set["n"]
    assert prov["malignant"] <= labelled_set["malignant"] and prov["scored"] > labelled_set["n"] // 2
    t = after.meta.threshold
    assert t.policy == "sensitivity" and t.target_sensitivity == 0.8 and t.target_met
    assert t.sensitivity_lower_bound >= 0.8 and t.diagnoses["mel"].met
    assert "threshold" in capsys.readouterr().out
    # the refitted model keeps its promises on the images it was fitted on: validate says so, exit 0
    assert main(["validate", *args, "--model", out, "--out", str(tmp_path / "v"),
                 "--set", "metrics.bootstrap=100"]) == 0
    record = json.loads(storage.read_text(str(tmp_path / "v" / "validation.json")))
    status = {p["name"]: p["status"] for p in record["promises"]}
    assert status["sensitivity"] == status["melanoma_sensitivity"] == "held", status
    # a second calibrate into the same folder is refused: a model directory is never overwritten
    assert main(["calibrate", *args, "--out", out]) == 2
    assert "already holds a model" in capsys.readouterr().err


def test_too_small_a_set_is_refused_in_one_line(promising_model, labelled_set, ray_session, tmp_path, capsys):
    out = str(tmp_path / "never")
    assert main(["calibrate", "--model", promising_model, "--labelled", labelled_set["small"], "--images",
                 labelled_set["images"], "--out", out]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("skinray: error:")]
    assert len(errors) == 1 and not os.path.exists(out)  # progress lines above it; one error line, no traceback
    # (4 malignant rows; fewer when the guard sets some apart: no call is made on those, so none can be fitted)
    assert re.search(r": [0-4] malignant images cannot promise sensitivity 0.8 at 90% confidence: at least 11 needed$",
                     errors[0]), errors[0]
