"""The flags every stage shares (pipeline/stage_cli.py)."""
from __future__ import annotations

import pytest

from pipeline import stage_cli
from pipeline.errors import ConfigError


def test_overrides_are_found_wherever_they_stand():
    ap = stage_cli.parser("train", "t", variant=True, seeds=True)
    args = stage_cli.parse(ap, ["--variant", "cmr", "--seeds", "0", "1", "train.lr=0.1", "--params", "p.yaml"])
    assert args.seeds == [0, 1] and args.overrides == ["train.lr=0.1"] and args.params == "p.yaml"
    assert stage_cli.parse(ap, ["--variant", "cmr", "--seed", "2"]).seeds == [2]  # --seed is an alias


def test_a_stage_without_overrides_refuses_them(capsys):
    ap = stage_cli.parser("baselines", "b", overrides=False)
    with pytest.raises(SystemExit):
        stage_cli.parse(ap, ["a.b=1"])
    assert "takes no key=value overrides" in capsys.readouterr().err


def test_overrides_are_validated_like_the_file(tmp_path, capsys):
    from pipeline.config import compose, to_params_yaml

    params = tmp_path / "params.yaml"
    params.write_text(to_params_yaml(compose(["profile=ci"])))
    args = stage_cli.parse(stage_cli.parser("x", "x"), ["--params", str(params), "train.lr=abc"])
    assert stage_cli.run(lambda: stage_cli.load_config(args)) == 2
    assert "train.lr" in capsys.readouterr().err


def test_run_turns_pipeline_and_os_errors_into_exit_2(capsys):
    def fail():
        raise ConfigError("data.x is wrong")

    assert stage_cli.run(fail) == 2 and capsys.readouterr().err == "error: data.x is wrong\n"
    assert stage_cli.run(lambda: None) == 0 and stage_cli.run(lambda: 1) == 1
    with pytest.raises(ZeroDivisionError):  # a bug is not a pipeline error: its traceback stays
        stage_cli.run(lambda: 1 / 0)


def test_positional_words_without_equals_are_kept_in_order():
    ap = stage_cli.parser("compose", "c", params=False, overrides=False)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("-o", "--output")
    args = stage_cli.parse(ap, ["profile=ci", "~models.rmt", "-o", "x.yaml", "models.cmr.k=4"])
    assert args.overrides == ["profile=ci", "~models.rmt", "models.cmr.k=4"]  # Hydra's deletion is not lost
    assert args.output == "x.yaml"


def test_a_run_stopped_by_sigterm_exits_non_zero(capsys):
    """Lightning turns SIGTERM into SIGTERMException, a SystemExit without a code (exit status 0): DVC would
    record the unfinished training stage as done."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    def body():
        raise SIGTERMException()

    assert stage_cli.run(body) == 143
    assert "SIGTERM" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # any other exit passes through
        stage_cli.run(lambda: (_ for _ in ()).throw(SystemExit(3)))


def test_a_group_choice_composes_conf_as_the_sweep_does(tmp_path, capsys):
    """One override grammar: `profile=ci` (a conf/ group) works on a stage as on the sweep entry point, with the
    other overrides applied on top; a missing choice is one error line, exit 2."""
    ap = stage_cli.parser("train", "t", variant=True, seeds=True)
    args = stage_cli.parse(ap, ["--variant", "cmr", "profile=ci", "train.lr=0.02", "--params", str(tmp_path / "no")])
    cfg = stage_cli.load_config(args)
    assert cfg.profile_name == "ci" and cfg.train.lr == 0.02
    assert stage_cli.is_group_choice("model@models.cmr=cmr") and not stage_cli.is_group_choice("train.lr=1")
    bad = stage_cli.parse(ap, ["--variant", "cmr", "profile=nope"])
    assert stage_cli.run(lambda: stage_cli.load_config(bad)) == 2
    assert "profile" in capsys.readouterr().err
