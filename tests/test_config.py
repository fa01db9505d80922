"""Config composition and validation: params.yaml stays in sync with conf/, every profile
composes, and each bad config fails at once with a message naming the key."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from pipeline.compose import main as compose_main
from pipeline.config import REPO_ROOT, compose, load_params, to_params_yaml, validate
from pipeline.errors import ConfigError

CONF = REPO_ROOT / "conf"


def test_committed_params_match_conf():
    committed = (REPO_ROOT / "params.yaml").read_text()
    assert committed == to_params_yaml(compose()), "params.yaml is stale: run `python -m pipeline.compose`"


@pytest.mark.parametrize("profile", ["ci", "default", "paper"])
def test_every_profile_composes(profile):
    cfg = compose([f"profile={profile}"])
    assert cfg.profile_name == profile
    from pipeline.models.registry import NAMES

    assert set(cfg.study.variants) <= set(NAMES) and {"window", "full", "cmr"} <= set(cfg.study.variants)
    if profile == "default":  # the fair fight: every memory of the registry, in its order
        assert list(cfg.study.variants) == list(NAMES)


def test_compose_cli_check_detects_a_stale_file(tmp_path, capsys):
    out = tmp_path / "params.yaml"
    assert compose_main(["-o", str(out)]) == 0
    assert compose_main(["--check", "-o", str(out)]) == 0
    out.write_text(out.read_text().replace("profile_name: default", "profile_name: edited"))
    assert compose_main(["--check", "-o", str(out)]) == 1


def test_load_params_roundtrip(tmp_path):
    out = tmp_path / "params.yaml"
    out.write_text(to_params_yaml(compose(["profile=ci"])))
    assert load_params(out).profile_name == "ci"


@pytest.mark.parametrize("profile", ["ci", "default", "paper"])
def test_stages_get_the_schema_dataclasses_and_their_plain_form_is_omegaconfs(tmp_path, profile):
    """load_params types the config (each memory its own dataclass, choices as members), and as_plain of the
    typed config is, key for key and in order, what OmegaConf writes for the validated DictConfig: the
    checkpoints' hyperparameters and the run fingerprints do not depend on which form a stage holds."""
    import json

    from pipeline.config import as_plain
    from pipeline.config.schema import RootConfig, TrainConfig
    from pipeline.models.cmr import CMRConfig, Selection
    from pipeline.models.registry import typed_models
    from pipeline.models.window import WindowConfig

    out = tmp_path / "params.yaml"
    out.write_text(to_params_yaml(compose([f"profile={profile}"])))
    cfg = typed_models(load_params(out, ["models.cmr.capacity=40"]))
    assert isinstance(cfg, RootConfig) and isinstance(cfg.train, TrainConfig)
    assert type(cfg.models["cmr"]) is CMRConfig and type(cfg.models["window"]) is WindowConfig
    assert cfg.models["cmr"].capacity == 40 and cfg.models["cmr"].selection is Selection.learned
    validated = validate(OmegaConf.merge(OmegaConf.load(out), {"models": {"cmr": {"capacity": 40}}}))
    want = OmegaConf.to_container(validated, resolve=True, enum_to_str=True)
    assert json.dumps(as_plain(cfg)) == json.dumps(want)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["+data.bogus=1"], ["data.bogus"]),
        (["+train.lrr=0.5"], ["train.lrr", "allowed keys"]),  # `+` adds a key with the schema's struct mode off
        (["+models.cmr.kk=1"], ["models.cmr", "kk"]),
        (["model@models.cmr=transformer9000"], ["model/transformer9000", "cmr", "window"]),
        (["study.variants=[window,lstm]"], ["study.variants", "lstm", "allowed"]),
        (["models.cmr.k=32", "backbone.window=16"], ["k", "window"]),
        (["models.cmr.capacity=4", "models.cmr.k=8"], ["capacity"]),
        (["backbone.positions=learned", "backbone.max_positions=1000"], ["max_positions"]),
        (["models.cmr.eviction=random"], ["eviction", "salience", "oldest"]),
        (["backbone.d_model=abc"], ["backbone.d_model"]),
        (["profile=huge"], ["profile/huge", "ci", "default", "paper"]),
    ],
)
def test_bad_config_fails_naming_the_key(overrides, words):
    """What `cmr-repro compose` checks: conf/ and each memory's own checks (pipeline.models.registry)."""
    from pipeline.compose import composed_text

    with pytest.raises(ConfigError) as err:
        composed_text(overrides)
    msg = str(err.value)
    for word in words:
        assert word in msg, f"{overrides}: '{word}' not in: {msg}"


def test_unknown_key_in_params_file_names_key_and_allowed(tmp_path):
    cfg = OmegaConf.to_container(compose(["profile=ci"]))
    cfg["train"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert "train.learning_rate" in str(err.value) and "lr" in str(err.value)


def test_a_bad_value_is_named_as_a_value_and_an_unknown_key_as_a_key(tmp_path):
    out = tmp_path / "params.yaml"
    out.write_text(to_params_yaml(compose(["profile=ci"])))
    with pytest.raises(ConfigError, match=r"^bad value for config key 'train.max_steps': .*'abc'"):
        load_params(out, ["train.max_steps=abc"])
    with pytest.raises(ConfigError, match=r"^bad config key 'train.max_stepz': .*allowed keys"):
        load_params(out, ["train.max_stepz=3"])


def test_missing_params_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")


def _written(rel: str) -> dict:
    import yaml

    return {k: v for k, v in (yaml.safe_load((CONF / rel).read_text()) or {}).items() if k != "defaults"}


def _restated(schema_cls: type, written: dict, where: str) -> list[str]:
    """Keys a conf/ file writes with the schema's own default (interpolations aside): a default written twice."""
    defaults = OmegaConf.to_container(OmegaConf.structured(schema_cls), resolve=False, enum_to_str=True)

    def walk(schema: dict, yml: dict, path: str) -> list[str]:
        out = []
        for k, v in yml.items():
            if k not in schema:
                out.append(f"{where}.{path}{k}: not in the schema")
            elif isinstance(v, dict) and isinstance(schema[k], dict):
                out += walk(schema[k], v, f"{path}{k}.")
            elif schema[k] == v and not (isinstance(v, str) and v.startswith("${")):
                out.append(f"{where}.{path}{k}: {v!r} is the schema's default")
        return out

    return walk(defaults, written, "")


def test_defaults_are_written_once_in_the_schema():
    """conf/'s option files hold only what differs from the schema (each memory's: its module), and the schema is
    what composes."""
    from pipeline.config.schema import DataConfig, LoggerConfig, TrainConfig
    from pipeline.models.registry import config_classes

    MEMORY_CONFIGS = config_classes()

    files = [(DataConfig, f"data/{p.name}", "data") for p in (CONF / "data").glob("*.yaml")]
    files += [(LoggerConfig, f"logger/{p.name}", "logger") for p in (CONF / "logger").glob("*.yaml")]
    files += [(cls, f"model/{name}.yaml", f"models.{name}") for name, cls in MEMORY_CONFIGS.items()]
    assert [d for cls, rel, where in files for d in _restated(cls, _written(rel), where)] == []
    assert _restated(TrainConfig, {"lr": 3.0e-3}, "train") == ["train.lr: 0.003 is the schema's default"]  # can fail
    bare = compose(["~profile"])  # no profile: every model as its dataclass says (the baselines take cmr's depth)
    for name, cls in MEMORY_CONFIGS.items():
        assert OmegaConf.to_object(bare.models[name]) == cls(), name
    assert OmegaConf.to_object(bare.train) == TrainConfig()


def test_dvc_composes_with_the_schema_in_its_own_process(tmp_path):
    """`dvc exp run -S` composes conf/ in DVC's process, which never imports pipeline/: the schema must reach Hydra
    there through plugin discovery (hydra_plugins/). A fresh interpreter, so this test's own compose() calls, which
    fill the same ConfigStore, cannot stand in for it."""
    import subprocess
    import sys

    out = tmp_path / "params.yaml"
    code = ("import sys; from dvc.utils.hydra import compose_and_dump; "
            f"compose_and_dump({str(out)!r}, {str(CONF)!r}, None, 'config', {str(REPO_ROOT)!r}, ['profile=ci']); "
            "assert 'pipeline.compose' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    assert OmegaConf.load(out) == OmegaConf.create(to_params_yaml(compose(["profile=ci"])))
