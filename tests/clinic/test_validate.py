"""validate: a model's promises measured on a clinic's labelled images, held or not, and the exit code."""

import json

import pytest

from skinray.cli import main
from skinray.io import storage

pytestmark = pytest.mark.slow


def test_a_promise_the_images_break_is_not_held_and_exits_3(promising_model, labelled_set, ray_session, tmp_path,
                                                           capsys):
    out = tmp_path / "validation"
    rc = main(["validate", "--model", promising_model, "--labelled", labelled_set["manifest"], "--images",
               labelled_set["images"], "--out", str(out), "--set", "metrics.bootstrap=100"])
    printed = capsys.readouterr().out
    record = json.loads(storage.read_text(str(out / "validation.json")))
    status = {p["name"]: p for p in record["promises"]}
    assert set(status) >= {"sensitivity", "melanoma_sensitivity", "roc_auc", "ece"}
    assert status["roc_auc"]["promised"] == 0.99 and status["roc_auc"]["status"] == "not held"
    assert status["roc_auc"]["ci95"][1] < 0.99
    assert rc == 3 and record["held"] is False
    assert "roc_auc" in record["verdict"].split("NOT HELD: ")[1].split(".")[0]
    assert record["scored"] + record["not_scored"] + record["out_of_distribution"] == labelled_set["n"]
    assert printed.strip().splitlines()[-1] == f"verdict: {record['verdict']}"
    page = (out / "validation.md").read_text()
    assert "| roc_auc |" in page and "not held" in page
