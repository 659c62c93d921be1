import pytest

from skinray.cli import _parser, main

from conftest import run_cli

COMMANDS = ["synth", "prepare", "train", "evaluate", "score", "predict", "query", "demo"]


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
    assert main(["score", "--model", str(tmp_path), "--input", str(tmp_path), "--out", str(tmp_path)]) == 2
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
