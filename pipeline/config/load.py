"""The study's configuration: Hydra composition of `conf/` over the schema (pipeline/config/schema.py), and
validation that turns every mistake into a ConfigError naming the key (types here, the rest in checks.py).

Two ways in, one config: DVC stages read the composed `params.yaml` (`load_params`); Hydra
entry points and tests compose `conf/` (`compose`). Both go through `validate`, and stages and models get
the result as the schema's own dataclasses (`typed`: a RootConfig; each `models.<variant>` is typed by its memory,
pipeline.models.registry.typed_models).
No torch import here: `report` and `--help` must start fast.
"""

from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config.checks import check_all, check_train
from pipeline.config.schema import CurriculumStage, RootConfig, TrainConfig, from_dict, to_dict
from pipeline.config.train import RUNTIME_KEYS
from pipeline.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"
PARAMS_FILE = "params.yaml"


def _schema() -> DictConfig:
    """The structured schema of the whole composed config (unknown keys and bad types fail)."""
    return OmegaConf.structured(RootConfig)


def _allowed_keys(node: Any) -> list[str]:
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def _explain(err: OmegaConfBaseException, schema: DictConfig, prefix: str = "") -> str:
    """Rephrase an OmegaConf error so it names the full key and, for an unknown key, what is allowed there."""
    key = str(getattr(err, "full_key", None) or getattr(err, "key", None) or "?")
    parent_path = key.rsplit(".", 1)[0] if "." in key else ""
    parent = OmegaConf.select(schema, parent_path) if parent_path else schema
    msg = str(err).splitlines()[0]
    allowed = _allowed_keys(parent)
    known = key.rsplit(".", 1)[-1] in allowed  # then the value is what is wrong (a type, a choice), not the key
    hint = f"; allowed keys under '{prefix}{parent_path or '<root>'}': {', '.join(allowed)}" if allowed and not known else ""
    if known:
        return f"bad value for config key '{prefix}{key}': {msg}"
    return f"bad config key '{prefix}{key}': {msg}{hint}"


def validate(cfg: DictConfig | dict) -> DictConfig:
    """Merge onto the schema (types, unknown keys), then run every cross-field check (pipeline/config/checks.py)."""
    # as plain containers: a Hydra-composed config carries the schema's types with struct mode off where an override
    # added a key (`+train.lrr=0.5`); merged as it is, that key would slip past the schema
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    cfg = OmegaConf.create(cfg)
    schema = _schema()
    try:
        merged = OmegaConf.merge(schema, cfg)
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err, schema)) from None

    for key, node in merged.models.items():  # typed and checked by its memory (pipeline.models.registry)
        if not isinstance(node, DictConfig) or not isinstance(node.get("name"), str):
            raise ConfigError(f"models.{key}: a memory's config needs a `name` (a memory of pipeline/models/)")
    check_all(merged)
    return merged


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose `conf/` with Hydra (as DVC's Hydra integration does), resolve, and validate."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except HydraException as err:  # an override the schema refuses says why in its cause (the key, the choices)
        why = f" ({str(err.__cause__).splitlines()[0]}; key {getattr(err.__cause__, 'full_key', '?')})" \
            if isinstance(err.__cause__, OmegaConfBaseException) else ""
        raise ConfigError(f"cannot compose conf/ with overrides {list(overrides)}: {err}{why}") from None
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve config: {err}") from None
    validate(cfg)
    return cfg


def to_params_yaml(cfg: DictConfig) -> str:
    """The exact text DVC's Hydra integration writes to params.yaml for the same composition."""
    return OmegaConf.to_yaml(cfg)


def typed(cfg: RootConfig | DictConfig | dict) -> RootConfig:
    """The config as the schema's dataclasses, what every stage function and model takes (validated first
    unless it already is a RootConfig: a Hydra sweep's or a test's DictConfig, a worker's plain dict)."""
    if isinstance(cfg, RootConfig):
        return cfg
    return OmegaConf.to_object(validate(cfg))  # type: ignore[return-value]


def load_params(path: str | Path = PARAMS_FILE, overrides: Sequence[str] = ()) -> RootConfig:
    """Load a composed params.yaml (as DVC stages do), apply `key=value` overrides, validate the result (an
    override is checked exactly like the file: `train.lr=abc` is a ConfigError), and type it (`typed`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file; compose one with `python -m pipeline.compose`")
    try:
        raw = OmegaConf.load(path)
    except Exception as err:  # yaml errors come in several types
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    overrides = list(overrides)
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must be key=value, got {bad}")
        try:
            raw = OmegaConf.merge(raw, OmegaConf.from_dotlist(overrides))
        except OmegaConfBaseException as err:
            raise ConfigError(f"bad override {overrides}: {str(err).splitlines()[0]}") from None
    return typed(raw)


def as_plain(cfg: RootConfig | DictConfig) -> dict:
    """A plain dict (for wandb configs, checkpoints, workers and manifests)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]
    return to_dict(cfg)


def as_dataclass(cls: type, cfg: Any, where: str) -> Any:
    """cls(**cfg) from a dataclass, DictConfig or mapping, after naming the keys that are no field of cls (cls
    `dict`: the plain dict)."""
    if is_dataclass(cfg):
        d = to_dict(cfg)
    elif isinstance(cfg, DictConfig):
        d = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    elif isinstance(cfg, Mapping):
        d = dict(cfg)
    else:
        raise ConfigError(f"{where}: expected a config mapping, got {type(cfg).__name__}")
    if cls is dict:
        return d
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed keys: {sorted(known)}")
    return from_dict(cls, d)


def recipe_train(train: Any, recipe: Mapping[str, Any], where: str) -> Any:
    """The TrainConfig a memory trains with: the study's `train` (any form) with the keys of its `recipe`
    (models.<variant>.recipe) in their place, checked like `train` itself. Keys that say how a run executes
    (RUNTIME_KEYS) are no recipe."""
    recipe = dict(recipe or {})
    runtime = sorted(set(recipe) & set(RUNTIME_KEYS))
    if runtime:
        raise ConfigError(f"{where}: {runtime} say how a run executes, not what it learns; set them in train")
    base = to_dict(train) if not isinstance(train, Mapping) else dict(train)
    merged = as_dataclass(TrainConfig, {**base, **recipe}, where)
    merged.curriculum = [s if isinstance(s, CurriculumStage) else as_dataclass(CurriculumStage, s, f"{where}.curriculum")
                         for s in (merged.curriculum or [])]
    check_train(merged)
    return merged
