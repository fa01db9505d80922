"""`cmr-repro <stage>`: lists every stage, each stage's --help works, bad input is one line and exit 2."""

from __future__ import annotations

import importlib

import pytest

from pipeline import cli


def test_every_stage_module_has_a_main():
    for stage, module in cli.STAGES.items():
        assert callable(getattr(importlib.import_module(module), "main", None)), stage


def test_usage_lists_every_stage(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(stage in out for stage in cli.STAGES)
    assert cli.main([]) == 2  # no stage: the usage, and a failure


@pytest.mark.parametrize("stage", ["compose", "prepare", "train", "evaluate", "overhead", "attention", "report"])
def test_stage_help_exits_zero(stage, capsys):
    with pytest.raises(SystemExit) as ex:
        cli.main([stage, "--help"])
    assert ex.value.code == 0 and "usage:" in capsys.readouterr().out


def test_unknown_stage_and_bad_override_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown stage 'trian'" in err and "train" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["train", "--variant", "cmr", "--params", str(tmp_path / "none.yaml")]) == 2
    err = capsys.readouterr().err
    assert "no such params file" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["train", "--variant", "cmr", "train.lr=abc"]) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and len(err.strip().splitlines()) == 1
