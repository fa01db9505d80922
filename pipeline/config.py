"""The study's configuration: one schema assembled from each component's dataclass, Hydra
composition of `conf/`, and validation that turns every mistake into a ConfigError naming the key.

Two ways in, one config: DVC stages read the composed `params.yaml` (`load_params`); Hydra
entry points and tests compose `conf/` (`compose`). Both go through `validate`.
No torch import here: `report` and `--help` must start fast.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
PARAMS_FILE = "params.yaml"


@dataclass
class StudyConfig:
    """Which variants and seeds the study trains and evaluates (the DVC matrix)."""

    variants: list[str] = field(default_factory=lambda: ["window", "xl", "full", "cmr"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # Processes that train one variant's seeds side by side (1 torch thread each): on 2 cores two
    # runs at once give ~1.6x the throughput of one; 3 leave no seed running alone at the end.
    # Not a DVC param of the stages: it changes no result.
    jobs: int = 3


@dataclass
class SweepConfig:
    """The job a Hydra sweep runs (`python -m pipeline.sweep -m sweep.variant=window,cmr`)."""

    variant: str = "cmr"
    seed: int = 0


@dataclass
class PathsConfig:
    data_dir: str = "data"
    experiments_dir: str = "experiments"
    results_dir: str = "results"


def _components() -> dict[str, Any]:
    """Each component owns its config dataclass; imported here lazily (none imports torch)."""
    import pipeline.data.checks as data_checks
    import pipeline.evaluate.config as eval_config
    import pipeline.logging_config as logging_config
    import pipeline.models.config as model_config
    import pipeline.report_config as report_config
    import pipeline.train_config as train_config

    return {
        "data": data_checks,
        "backbone": model_config,
        "models": model_config,
        "train": train_config,
        "eval": eval_config,
        "logger": logging_config,
        "report": report_config,
    }


def _schema() -> DictConfig:
    """The structured schema of the whole composed config (unknown keys and bad types fail)."""
    from pipeline.data.config import DataConfig
    from pipeline.evaluate.config import EvalConfig
    from pipeline.logging_config import LoggerConfig
    from pipeline.models.config import BackboneConfig
    from pipeline.report_config import ReportConfig
    from pipeline.train_config import TrainConfig

    @dataclass
    class RootConfig:
        profile_name: str = "default"
        study: StudyConfig = field(default_factory=StudyConfig)
        sweep: SweepConfig = field(default_factory=SweepConfig)
        paths: PathsConfig = field(default_factory=PathsConfig)
        data: DataConfig = field(default_factory=DataConfig)
        backbone: BackboneConfig = field(default_factory=BackboneConfig)
        models: dict[str, Any] = field(default_factory=dict)
        train: TrainConfig = field(default_factory=TrainConfig)
        eval: EvalConfig = field(default_factory=EvalConfig)
        logger: LoggerConfig = field(default_factory=LoggerConfig)
        report: ReportConfig = field(default_factory=ReportConfig)

    return OmegaConf.structured(RootConfig)


def _allowed_keys(node: Any) -> list[str]:
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def _explain(err: OmegaConfBaseException, schema: DictConfig) -> str:
    """Rephrase an OmegaConf error so it names the full key and what is allowed there."""
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
    parent_path = key.rsplit(".", 1)[0] if "." in str(key) else ""
    parent = OmegaConf.select(schema, parent_path) if parent_path else schema
    msg = str(err).splitlines()[0]
    allowed = _allowed_keys(parent)
    hint = f"; allowed keys under '{parent_path or '<root>'}': {', '.join(allowed)}" if allowed else ""
    return f"bad config key '{key}': {msg}{hint}"


def validate(cfg: DictConfig | dict) -> DictConfig:
    """Merge onto the schema (types, unknown keys), then run each component's cross-field checks."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    schema = _schema()
    try:
        merged = OmegaConf.merge(schema, cfg)
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err, schema)) from None

    comps = _components()
    model_config = comps["models"]
    allowed = list(model_config.MODEL_NAMES)
    for name in merged.study.variants:
        if name not in allowed:
            raise ConfigError(f"study.variants: unknown variant '{name}'; allowed: {', '.join(allowed)}")
        if name not in merged.models:
            raise ConfigError(f"study.variants lists '{name}' but models.{name} is not configured")
    if merged.sweep.variant not in merged.models:
        raise ConfigError(f"sweep.variant: unknown variant '{merged.sweep.variant}'; "
                          f"allowed: {', '.join(merged.models.keys())}")
    if len(set(merged.study.seeds)) != len(merged.study.seeds) or not merged.study.seeds:
        raise ConfigError(f"study.seeds must be a non-empty list of distinct integers, got {list(merged.study.seeds)}")
    if merged.study.jobs < 1:
        raise ConfigError(f"study.jobs must be >= 1 (processes per stage), got {merged.study.jobs}")
    typed = {}
    for key, node in merged.models.items():
        name = node.get("name") if isinstance(node, DictConfig) else None
        if name not in model_config.MEMORY_CONFIGS:
            raise ConfigError(f"models.{key}.name: unknown memory {name!r}; allowed: {', '.join(allowed)}")
        schema_m = OmegaConf.structured(model_config.MEMORY_CONFIGS[name])
        try:
            typed[key] = OmegaConf.merge(schema_m, node)
        except OmegaConfBaseException as err:
            keys = ", ".join(schema_m.keys())
            raise ConfigError(f"models.{key}: {str(err).splitlines()[0]}; allowed keys: {keys}") from None
    merged.models = typed

    for part, module in comps.items():
        if part == "models":
            continue  # one module owns backbone and models; checked once, with the whole config
        _call_validate(module, merged[part], merged)
    return merged


def _call_validate(module: Any, part: Any, full: DictConfig) -> None:
    """Components validate either (their part, the whole config) or just the whole config."""
    import inspect

    if len(inspect.signature(module.validate).parameters) >= 2:
        module.validate(part, full)
    else:
        module.validate(full)


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose `conf/` with Hydra (as DVC's Hydra integration does), resolve, and validate."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except HydraException as err:
        raise ConfigError(f"cannot compose conf/ with overrides {list(overrides)}: {err}") from None
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve config: {err}") from None
    validate(cfg)
    return cfg


def to_params_yaml(cfg: DictConfig) -> str:
    """The exact text DVC's Hydra integration writes to params.yaml for the same composition."""
    return OmegaConf.to_yaml(cfg)


def load_params(path: str | Path = PARAMS_FILE, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a composed params.yaml (as DVC stages do), apply `key=value` overrides, and validate
    the result (an override is checked exactly like the file: `train.lr=abc` is a ConfigError)."""
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
    return validate(raw)


def as_plain(cfg: DictConfig) -> dict:
    """A plain dict (for wandb configs, checkpoints and manifests)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def dataclass_keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]
