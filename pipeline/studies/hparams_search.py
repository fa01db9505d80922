"""Hyperparameter search with Optuna: `python -m pipeline.studies.hparams_search hparams_search=lr_width [n_trials=N]
[study_dir=DIR] [OVERRIDE ...]`.

A current Optuna (>= 3) drives the search itself, composing conf/ through Hydra's compose API for
each trial: Hydra's Optuna sweeper plugin (hydra-optuna-sweeper 1.3) pins optuna < 3, which in turn
needs sqlalchemy < 2 and alembic < 1.12. The search is described by conf/hparams_search/<name>.yaml
(search space, objective metric, sampler, trials); every trial runs the same job as a
`python -m pipeline.studies.sweep` job (`pipeline.studies.sweep.run_job_metrics`: train + evaluate) in its own folder
<study_dir>/<trial number>/, laid out like a Hydra job folder (.hydra/overrides.yaml,
.hydra/config.yaml, job.json), so `python -m pipeline.studies.ablations <study_dir>` tabulates it too.
After every trial the study is written to <study_dir>/trials.csv and best.json. With
`storage: sqlite` the study lives in <study_dir>/study.db, and rerunning the command resumes it.
A trial whose training diverges (TrainingError) is recorded as failed and the search goes on.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline import stage_cli
from pipeline.config import CONF_DIR, compose
from pipeline.errors import ConfigError, TrainingError

SEARCH_DIR = CONF_DIR / "hparams_search"
METRICS = ("val_recall", "recall_mean")
SAMPLERS = ("tpe", "random")
STORAGES = ("sqlite", "memory")
PARAM_TYPES = ("float", "int", "categorical")


@dataclass
class ParamSpec:
    """One searched config key: float/int in [low, high] (log scale, step) or one of `choices`."""

    type: str = "float"
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[List[Any]] = None


@dataclass
class SearchConfig:
    """conf/hparams_search/<name>.yaml."""

    name: str = "search"
    metric: str = "val_recall"
    direction: str = "maximize"
    n_trials: int = 20
    sampler: str = "tpe"
    seed: int = 0
    n_startup_trials: int = 5
    study_dir: str = "multirun/hparams_search/${name}"
    storage: str = "sqlite"
    overrides: List[str] = field(default_factory=list)
    params: Dict[str, ParamSpec] = field(default_factory=dict)


def available() -> list[str]:
    return sorted(p.stem for p in SEARCH_DIR.glob("*.yaml"))


def load_search(name: str, dotlist: Sequence[str] = ()) -> Any:
    """The typed search config conf/hparams_search/<name>.yaml with `key=value` overrides, checked."""
    path = SEARCH_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"hparams_search={name}: no {path}; available: {', '.join(available()) or 'none'}")
    try:
        sc = OmegaConf.merge(OmegaConf.structured(SearchConfig), OmegaConf.load(path),
                             OmegaConf.from_dotlist(list(dotlist)))
        OmegaConf.resolve(sc)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {str(err).splitlines()[0]}; allowed keys: "
                          f"{', '.join(OmegaConf.structured(SearchConfig).keys())}") from None
    for key, val, allowed in (("metric", sc.metric, METRICS), ("direction", sc.direction, ("maximize", "minimize")),
                              ("sampler", sc.sampler, SAMPLERS), ("storage", sc.storage, STORAGES)):
        if val not in allowed:
            raise ConfigError(f"hparams_search.{key} = {val!r}; allowed: {', '.join(allowed)}")
    if sc.n_trials < 1:
        raise ConfigError(f"hparams_search.n_trials = {sc.n_trials} must be >= 1")
    if not sc.params:
        raise ConfigError(f"{path}: `params` is empty; give at least one searched config key")
    for key, p in sc.params.items():
        where = f"hparams_search.params.{key}"
        if p.type not in PARAM_TYPES:
            raise ConfigError(f"{where}.type = {p.type!r}; allowed: {', '.join(PARAM_TYPES)}")
        if p.type == "categorical":
            if not p.choices:
                raise ConfigError(f"{where}: categorical needs a non-empty `choices` list")
        elif p.low is None or p.high is None or not p.low < p.high:
            raise ConfigError(f"{where}: needs low < high, got low={p.low}, high={p.high}")
        elif p.log and p.low <= 0:
            raise ConfigError(f"{where}: log scale needs low > 0, got {p.low}")
    return sc


def _value(v: Any) -> str:
    """A Python value as a Hydra override value."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return repr(v) if isinstance(v, float) else str(v)


def probe_values(spec: Any) -> list[Any]:
    """Values whose configs must validate before any trial runs: the bounds, or every choice."""
    if spec.type == "categorical":
        return list(spec.choices)
    cast = int if spec.type == "int" else float
    return [cast(spec.low), cast(spec.high)]


def check_space(sc: Any, base: Sequence[str]) -> None:
    """Compose and validate the config at each probe value of each searched key (no training)."""
    for key, spec in sc.params.items():
        for v in probe_values(spec):
            try:
                compose([*base, f"{key}={_value(v)}"])
            except ConfigError as err:
                raise ConfigError(f"hparams_search.params.{key}: value {v!r} gives an invalid config: {err}") from None


def suggest(trial: Any, sc: Any) -> dict[str, Any]:
    out = {}
    for key, p in sc.params.items():
        if p.type == "categorical":
            out[key] = trial.suggest_categorical(key, list(OmegaConf.to_container(p.choices)))
        elif p.type == "int":
            out[key] = trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=bool(p.log))
        else:
            out[key] = trial.suggest_float(key, float(p.low), float(p.high), log=bool(p.log),
                                           step=None if p.step is None else float(p.step))
    return out


def write_results(study: Any, sc: Any, study_dir: Path) -> None:
    """trials.csv (every trial: state, value, params, evaluation numbers) and best.json."""
    import optuna

    from pipeline.io import atomic_write_json, atomic_write_text

    df = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    df = df.rename(columns={"value": sc.metric})
    atomic_write_text(study_dir / "trials.csv", df.to_csv(index=False))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = None
    if done:
        b = study.best_trial
        best = {"number": b.number, sc.metric: b.value, "params": b.params, "job_dir": b.user_attrs.get("job_dir"),
                "recall_mean": b.user_attrs.get("recall_mean")}
    atomic_write_json(study_dir / "best.json", {
        "study": sc.name, "metric": sc.metric, "direction": sc.direction, "n_trials": len(study.trials),
        "n_complete": len(done), "best": best})


def run_search(name: str, args: Sequence[str] = ()) -> Any:
    """Run (or resume) the study; returns the optuna Study. `args`: search keys or conf/ overrides."""
    import optuna

    from pipeline.io import atomic_write_text
    from pipeline.studies.sweep import run_job_metrics, write_job_record

    search_keys = set(OmegaConf.structured(SearchConfig).keys())
    dotlist = [a for a in args if a.split("=", 1)[0] in search_keys]
    conf_overrides = [a for a in args if a not in dotlist]
    sc = load_search(name, dotlist)
    clash = sorted({a.split("=", 1)[0].lstrip("+") for a in conf_overrides} & set(sc.params))
    if clash:
        raise ConfigError(f"{clash} are searched by hparams_search={name}; do not also override them")
    base = [*sc.overrides, *conf_overrides]
    check_space(sc, base)
    study_dir = Path(sc.study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    group = f"hparams_search_{sc.name}"

    sampler = (optuna.samplers.TPESampler(seed=sc.seed, n_startup_trials=sc.n_startup_trials)
               if sc.sampler == "tpe" else optuna.samplers.RandomSampler(seed=sc.seed))
    storage = f"sqlite:///{study_dir.resolve() / 'study.db'}" if sc.storage == "sqlite" else None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=sc.name, storage=storage, sampler=sampler, direction=sc.direction,
                                load_if_exists=True)

    def objective(trial: Any) -> float:
        values = suggest(trial, sc)
        overrides = [*base, *(f"{k}={_value(v)}" for k, v in values.items())]
        cfg = compose(overrides)
        if cfg.logger.wandb.group is None:
            cfg.logger.wandb.group = group
        job_dir = study_dir / str(trial.number)
        atomic_write_text(job_dir / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))
        atomic_write_text(job_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
        start = time.perf_counter()
        metrics = run_job_metrics(cfg, job_dir, group)
        wall = time.perf_counter() - start
        write_job_record(job_dir, group=str(cfg.logger.wandb.group), variant=str(cfg.sweep.variant),
                         seed=int(cfg.sweep.seed), overrides=overrides, swept=list(sc.params), metrics=metrics,
                         wall_s=wall)
        trial.set_user_attr("job_dir", str(job_dir))
        trial.set_user_attr("recall_mean", metrics["recall_mean"])
        trial.set_user_attr("val_recall", metrics["val_recall"])
        trial.set_user_attr("wall_s", round(wall, 3))
        for n, r in sorted(metrics["recall"].items(), key=lambda kv: int(kv[0])):
            trial.set_user_attr(f"recall_{n}", r)
        value = metrics[sc.metric]
        value = math.nan if value is None else float(value)
        print(f"trial {trial.number}: {values} -> {sc.metric} = {value:.4f} ({wall:.0f} s)", flush=True)
        return value

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)
    remaining = sc.n_trials - sum(t.state in finished for t in study.trials)
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, catch=(TrainingError,),
                       callbacks=[lambda s, _t: write_results(s, sc, study_dir)])
    write_results(study, sc, study_dir)
    return study


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    names = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("hparams_search=")]
    rest = [a for a in argv if not a.lstrip("+").startswith("hparams_search=")]

    def body() -> None:
        if len(names) != 1:
            raise ConfigError(f"give exactly one hparams_search=<name>; available: {', '.join(available())}")
        study = run_search(names[0], rest)
        if any(t.value is not None for t in study.trials):
            print(f"best trial {study.best_trial.number}: {study.best_trial.params} -> {study.best_value:.4f}")

    return stage_cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
