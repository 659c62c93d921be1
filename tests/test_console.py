"""The console: text for people, one JSON object per event (with the stage and its fields) for schedulers."""

import json
import logging

import pytest

from skinray import console


@pytest.fixture
def json_console():
    """Call ``console.setup`` inside the test: its handler binds the stderr the test phase captures."""
    yield lambda: console.setup(verbose=False, fmt="json")
    console.setup(verbose=False, fmt="text")


def test_events_carry_their_stage_and_fields(json_console, capsys):
    json_console()
    logging.getLogger("skinray.score").info("run r1 committed", extra={"event": {"run_id": "r1", "scored": 3}})
    logging.getLogger("skinray.train").info("epoch", extra={"event": {"stage": "train", "epoch": 1}})
    first, second = (json.loads(line) for line in capsys.readouterr().err.strip().splitlines())
    assert first["stage"] == "score" and first["run_id"] == "r1" and first["scored"] == 3
    assert first["message"] == "run r1 committed" and first["level"] == "info"
    assert second["stage"] == "train" and second["epoch"] == 1


def test_every_json_line_says_when_how_bad_and_which_stage(capsys):
    console.setup(verbose=False, fmt="json", stage="score")
    try:
        console.log.info("preflight: 3 checks passed")
        console.say("done", run_id="r1")
        console.error("no such bucket", kind="temporary", run_id="r1")
    finally:
        console.setup(verbose=False, fmt="text")
    captured = capsys.readouterr()
    lines = [json.loads(x) for x in captured.err.strip().splitlines()] + [json.loads(captured.out)]
    assert all({"time", "level", "stage"} <= set(x) and x["stage"] == "score" for x in lines), lines
    error = lines[1]
    assert error["level"] == "error" and error["kind"] == "temporary" and error["run_id"] == "r1"


def test_a_result_is_one_json_object_or_the_text(json_console, capsys):
    json_console()
    console.say("run r1: scored 3", run_id="r1", scored=3)
    out = json.loads(capsys.readouterr().out)
    assert out["message"] == "run r1: scored 3" and out["scored"] == 3
    console.setup(verbose=False, fmt="text")
    console.say("run r1: scored 3", run_id="r1")
    assert capsys.readouterr().out == "run r1: scored 3\n"


def test_text_lines_are_for_people(capsys):
    console.setup(verbose=False, fmt="text")
    logging.getLogger("skinray.prepare").warning("two lesions in two splits")
    assert capsys.readouterr().err == "[skinray] warning: two lesions in two splits\n"
