"""The report as one wandb run per study (job_type `report`, the study's group): the headline numbers as its
summary, the verdicts and each results table as `wandb.Table`s, every figure as an image. Offline by default, like
every run of the study (logger.wandb); `wandb sync` uploads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd

TABLES = ("recall", "load", "length", "capacity", "effective_length", "state_size", "update", "qualifiers", "overhead")


def log_report(cfg: Mapping[str, Any], results: Path, summary: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
    """Log the report folder `results` to a wandb run in <experiments_dir>/report/ (nothing when wandb is off)."""
    from pipeline.paths import experiments_dir
    from pipeline.tracking import wandb_run

    study = cfg.get("study") or {}
    extra = {"variants": list(study.get("variants") or []), "seeds": list(study.get("seeds") or []),
             "profile": cfg.get("profile_name")}
    with wandb_run(cfg, "report", f"report-{cfg.get('profile_name', 'study')}", experiments_dir(cfg) / "report",
                   extra) as run:
        if run is None:
            return
        import wandb

        run.summary.update(_flat(metrics))
        verdicts = pd.DataFrame([{"claim": v["claim"], "text": v["text"], "verdict": v["verdict"],
                                  "vs_strongest": v.get("vs_strongest", "")} for v in summary.get("verdicts") or []])
        logs: dict[str, Any] = {"verdicts": wandb.Table(dataframe=verdicts)} if not verdicts.empty else {}
        for name in TABLES:
            csv = results / "tables" / f"{name}.csv"
            if csv.is_file():
                logs[f"tables/{name}"] = wandb.Table(dataframe=pd.read_csv(csv))
        for png in sorted((results / "tables").glob("*.png")):
            logs[f"figures/{png.stem}"] = wandb.Image(str(png))
        run.log(logs)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + "/") if isinstance(v, Mapping) else {key: v})
    return out
