import pytest

from skinray.cli import _parser, main

from conftest import run_cli

COMMANDS = ["synth", "prepare", "train", "evaluate", "score", "predict", "query", "export", "demo"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"skinray {command}" in out


def test_module_entrypoint_and_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("skinray ")


def test_user_errors_are_one_line(capsys, tmp_path):
    assert main(["score", "--model", str(tmp_path), "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skinray: error:") and "not a skinray model" in err[0]
    assert main(["query", str(tmp_path)]) == 2
    assert main(["score", "--input-root", "s3://b/in", "--model", "m", "--out", "o"]) == 2
    assert "--input-root needs --date" in capsys.readouterr().err
    assert main(["train", "--set", "train.epochs=-1"]) == 2
    assert "train.epochs" in capsys.readouterr().err


def test_synth_command_writes_data(tmp_path):
    assert main(["synth", "--out", str(tmp_path / "d"), "--n", "12", "--image-size", "48"]) == 0
    assert (tmp_path / "d" / "metadata.csv").exists() and len(list((tmp_path / "d" / "images").iterdir())) == 12


def _subparsers():
    import argparse

    action = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_has_help_and_names_its_default(command):
    import argparse

    parser = _subparsers()[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        text = parser._get_formatter()._get_help_string(action)
        assert action.help and len(action.help) > 10, (command, action.option_strings)
        assert "default" in text or "required" in text, (command, action.option_strings, text)


def test_train_says_what_epochs_means(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["train", "--help"])
    out = capsys.readouterr().out
    assert "--head-epochs" in out and "--fine-tune-epochs" in out and "first phase only" in out
    args = _parser().parse_args(["train", "--epochs", "3", "--fine-tune-epochs", "0"])
    assert (args.epochs, args.fine_tune_epochs) == (3, 0)


def test_json_log_format_errors_are_one_json_object(capsys, tmp_path):
    import json

    assert main(["query", str(tmp_path), "--log-format", "json", "--daily-counts"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and json.loads(err[0])["level"] == "error"


def test_query_takes_its_sql_before_or_after_the_flags(tmp_path, capsys):
    from skinray.scoring import table as scores_table

    from conftest import score_rows as _rows

    out = str(tmp_path / "out")
    scores_table.commit_run(out, "night1", "2026-11-25", _rows("night1"), {})
    sql = "SELECT count(*) AS n FROM scores"
    printed = []
    for argv in (["query", out, sql, "--as-of", "1", "--format", "csv"],
                 ["query", out, "--as-of", "1", "--format", "csv", sql],
                 ["query", "--format", "csv", out, "--as-of", "1", sql]):
        assert main(argv) == 0, capsys.readouterr().err
        printed.append(capsys.readouterr().out)
    assert len(set(printed)) == 1 and printed[0].split() == ["n", "5"], printed
    with pytest.raises(SystemExit) as exit_:  # still one SQL at most
        main(["query", out, "--format", "csv", sql, "SELECT 1"])
    assert exit_.value.code == 2 and "unrecognized arguments: SELECT 1" in capsys.readouterr().err
