"""Aggregate sweeps: `python -m pipeline.studies.ablations <multirun_dir> [...] [--out DIR]`.

Reads every Hydra job folder under the given folders (one `python -m pipeline.studies.sweep -m ...` job:
`.hydra/overrides.yaml`, `.hydra/config.yaml`, the job's eval and train runs) and writes
<out>/ablations.{csv,md,png} (default: the first sweep folder; `make ablations` writes results/): one row per
(sweep, setting). Every multirun of the sweep entry point writes its own summary this way when it ends
(SweepSummary, a Hydra callback registered in conf/config.yaml). A sweep is one wandb group
(`logger.wandb.group`, set by conf/experiment/ablation_*.yaml); its setting is the values of the
keys the sweep varied (`hydra.sweeper.params` plus any key whose value differs between its jobs),
seeds aside: a row pools its seeds. Cells are computed as the report computes them
(`pipeline.report.cell_stats`): mean over seeds, bootstrap CI over documents. The reference row
(the setting equal to the config without the sweep) is marked; the others get the change in mean
recall and an exact McNemar test against it on the paired recall queries, Holm-corrected per sweep.
Only pandas / scipy / matplotlib are imported (no torch).
"""

from __future__ import annotations

import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml

from pipeline import stage_cli
from pipeline.errors import ConfigError, DataError
from pipeline.io import atomic_write_bytes, atomic_write_text

SEED_KEY = "sweep.seed"
OUTPUT_STEM = "ablations"


@dataclass
class Job:
    """One Hydra job folder of a sweep."""

    dir: Path
    sweep: str
    overrides: dict[str, str]  # key -> value, as written in .hydra/overrides.yaml
    config: dict  # the job's composed config (.hydra/config.yaml)
    swept: set[str] = field(default_factory=set)  # hydra.sweeper.params keys
    record: dict = field(default_factory=dict)  # job.json (pipeline.studies.sweep), if present

    @property
    def variant(self) -> str:
        return str(self.config["sweep"]["variant"])

    @property
    def seed(self) -> int:
        return int(self.config["sweep"]["seed"])

    def run_path(self, kind: str) -> Path:
        """The job's train/eval run: where job.json says, else pipeline.paths' layout inside the job."""
        from pipeline.paths import run_dir

        rel = self.record.get(f"{kind}_dir")
        if rel:
            return self.dir / rel
        return run_dir({"paths": {"experiments_dir": str(self.dir)}}, kind, self.variant, self.seed)


# ------------------------------------------------------------------------------------------- loading
def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise DataError(f"cannot read {path}: {err}") from None


def _parse_overrides(lines: Sequence[str], where: Path) -> dict[str, str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides([str(x) for x in lines or []])
    except HydraException as err:
        raise DataError(f"{where}: unreadable override: {err}") from None
    return {o.key_or_group: o.get_value_element_as_str() for o in parsed}


def find_job_dirs(roots: Sequence[str | Path]) -> list[Path]:
    """Hydra job folders (holding .hydra/overrides.yaml) under each root, in root then job-number order."""
    out: list[Path] = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise DataError(f"{root}: no such folder (pass the folder of a `python -m pipeline.studies.sweep -m` run)")
        found = [p.parent.parent for p in root.rglob(".hydra/overrides.yaml")]
        if not found:
            raise DataError(f"{root}: no Hydra job folders (.hydra/overrides.yaml) found; "
                            f"pass the folder of a `python -m pipeline.studies.sweep -m` run, e.g. multirun/ablation_k/<time>")
        found.sort(key=lambda p: [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in p.relative_to(root).parts])
        out += [p for p in found if p not in out]
    return out


def load_job(job_dir: Path) -> Job:
    hydra_dir = job_dir / ".hydra"
    overrides = _parse_overrides(_load_yaml(hydra_dir / "overrides.yaml") or [], hydra_dir / "overrides.yaml")
    if not (hydra_dir / "config.yaml").is_file():
        raise DataError(f"{job_dir}: no .hydra/config.yaml; not a `python -m pipeline.studies.sweep` job folder")
    config = _load_yaml(hydra_dir / "config.yaml") or {}
    if not isinstance(config, dict) or "sweep" not in config:
        raise DataError(f"{job_dir}: .hydra/config.yaml has no `sweep` node; not a `python -m pipeline.studies.sweep` job")
    record = {}
    if (job_dir / "job.json").is_file():
        try:
            record = json.loads((job_dir / "job.json").read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"corrupt {job_dir / 'job.json'}: {err}") from None
    swept: set[str] = set(record.get("swept") or [])
    if (hydra_dir / "hydra.yaml").is_file():
        hcfg = (_load_yaml(hydra_dir / "hydra.yaml") or {}).get("hydra") or {}
        swept |= set(((hcfg.get("sweeper") or {}).get("params") or {}).keys())
    group = record.get("group") or ((config.get("logger") or {}).get("wandb") or {}).get("group")
    sweep = str(group) if group else f"sweep-{job_dir.parent.name}"
    return Job(job_dir, sweep, overrides, config, swept, record)


def setting_keys(jobs: Sequence[Job]) -> list[str]:
    """What a sweep varied: its sweeper params and every override key whose value differs between jobs."""
    keys = set().union(*(j.swept for j in jobs))
    all_keys = set().union(*(j.overrides.keys() for j in jobs))
    for k in all_keys:
        if len({j.overrides.get(k) for j in jobs}) > 1:
            keys.add(k)
    keys.discard(SEED_KEY)
    ordered = [k for j in jobs for k in j.overrides if k in keys]
    return list(dict.fromkeys(ordered + sorted(keys)))


def _select(cfg: dict, key: str) -> Any:
    cur: Any = cfg
    for part in key.lstrip("+~").split("."):
        if not isinstance(cur, dict) or part not in cur:
            return "<absent>"
        cur = cur[part]
    return cur


def reference_values(jobs: Sequence[Job], keys: Sequence[str]) -> dict[str, Any] | None:
    """The swept keys' values in the config without the sweep (the job's other overrides kept); None if
    that config no longer composes (conf/ changed since the sweep ran)."""
    from omegaconf import OmegaConf

    from pipeline.config import compose

    base = [f"{k}={v}" for k, v in jobs[0].overrides.items() if k not in keys and k != SEED_KEY]
    try:
        cfg = OmegaConf.to_container(compose(base), resolve=True, enum_to_str=True)
    except ConfigError:
        return None
    return {k: _select(cfg, k) for k in keys}


def load_predictions(job: Job) -> pd.DataFrame:
    from pipeline.report.load import load_eval_run

    df, _, _ = load_eval_run(job.run_path("eval"))
    return df[df["task"] == "recall"].copy()


def load_train_metrics(job: Job) -> dict:
    path = job.run_path("train") / "metrics.json"
    if not path.is_file():
        raise DataError(f"training metrics missing: {path} (the job did not finish training)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"corrupt training metrics {path}: {err}") from None


# --------------------------------------------------------------------------------------- computation
def _mean(values: Sequence[Any]) -> float:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return float(np.mean(vals)) if vals else math.nan


def _setting_row(sweep: str, keys: list, values: tuple, gj: list, ref: Any, rc: Any) -> tuple[dict, pd.DataFrame]:
    """One setting's row (recall by N and overall with CIs, training numbers) and its recall predictions."""
    from pipeline.report.tables import cell_stats

    seeds = [j.seed for j in gj]
    dup = {s for s in seeds if seeds.count(s) > 1}
    if dup:
        where = ", ".join(str(j.dir) for j in gj if j.seed in dup)
        raise DataError(f"sweep {sweep}: setting {dict(zip(keys, values))} has seed(s) {sorted(dup)} "
                        f"more than once ({where}); aggregate one of those sweeps")
    preds = pd.concat([load_predictions(j) for j in gj], ignore_index=True)
    if preds.empty:
        raise DataError(f"sweep {sweep}: no recall predictions in {[str(j.run_path('eval')) for j in gj]}")
    train = [load_train_metrics(j) for j in gj]
    setting = "; ".join(f"{k}={v}" for k, v in zip(keys, values)) or "(no swept key)"
    is_ref = None if ref is None else all(_select(gj[0].config, k) == ref[k] for k in keys)
    row: dict[str, Any] = {"sweep": sweep, "setting": setting, "reference": is_ref}
    for n in sorted(preds["length"].unique()):
        c = cell_stats(preds[preds["length"] == n], rc)
        row.update({f"recall_{int(n)}": c["accuracy"], f"recall_{int(n)}_ci_low": c["ci_low"],
                    f"recall_{int(n)}_ci_high": c["ci_high"]})
    c = cell_stats(preds, rc)
    row.update({"recall_mean": c["accuracy"], "recall_mean_ci_low": c["ci_low"],
                "recall_mean_ci_high": c["ci_high"], "n_docs": c["n_docs"], "n_queries": c["n_queries"],
                "n_seeds": len(gj), "seeds": " ".join(str(s) for s in sorted(seeds)),
                "val_recall": _mean([m.get("val_recall") for m in train]),
                "params": _mean([m.get("params") for m in train]),
                "train_tokens_per_s": _mean([m.get("train_tokens_per_s") for m in train]),
                "train_wall_s": _mean([m.get("wall_s") for m in train]),
                "job_wall_s": _mean([j.record.get("wall_s") for j in gj]),
                "jobs": " ".join(str(j.dir) for j in gj)})
    return row, preds


def _compare_with_reference(sweep_rows: list[dict], preds_by_setting: dict) -> None:
    """Where a sweep has one reference setting: each row's recall gap to it and McNemar's p (Holm over the sweep)."""
    from pipeline.stats import align_pairs, holm, mcnemar_from_outcomes

    refs = [r for r in sweep_rows if r["reference"]]
    if len(refs) != 1:
        return
    ref_row = refs[0]
    for r in sweep_rows:
        r["delta_vs_reference"] = r["recall_mean"] - ref_row["recall_mean"]
        if r is ref_row:
            continue
        pairs = align_pairs(preds_by_setting[r["setting"]], preds_by_setting[ref_row["setting"]])
        r["n_pairs"] = len(pairs)
        r["p_vs_reference"] = (mcnemar_from_outcomes(pairs["correct_a"], pairs["correct_b"]).p_value
                               if len(pairs) else math.nan)
    ps = np.array([r.get("p_vs_reference", math.nan) for r in sweep_rows], dtype=float)
    for r, p in zip(sweep_rows, holm(ps)):
        r["p_vs_reference_holm"] = p


def aggregate(roots: Sequence[str | Path]) -> pd.DataFrame:
    """One row per (sweep, setting) over every job under `roots`."""
    from pipeline.config.checks import report_config

    jobs = [load_job(d) for d in find_job_dirs(roots)]
    rows = []
    for sweep in dict.fromkeys(j.sweep for j in jobs):
        sj = [j for j in jobs if j.sweep == sweep]
        keys = setting_keys(sj)
        ref = reference_values(sj, keys) if keys else {}
        groups: dict[tuple, list[Job]] = {}
        for j in sj:
            groups.setdefault(tuple(j.overrides.get(k, "") for k in keys), []).append(j)
        rc = report_config(sj[0].config)
        sweep_rows, preds_by_setting = [], {}
        for values, gj in groups.items():
            row, preds = _setting_row(sweep, keys, values, gj, ref, rc)
            sweep_rows.append(row)
            preds_by_setting[row["setting"]] = preds
        _compare_with_reference(sweep_rows, preds_by_setting)
        rows += sweep_rows
    df = pd.DataFrame(rows)
    tail = [c for c in ("delta_vs_reference", "n_pairs", "p_vs_reference", "p_vs_reference_holm") if c in df]
    front = [c for c in df.columns if c not in tail and c != "jobs"]
    return df[front + tail + ["jobs"]]


# ----------------------------------------------------------------------------------------- rendering
def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "--"
    return f"{x:.{digits}f}"


def title(df: pd.DataFrame) -> str:
    """What was swept, e.g. 'Sweep ablation_k: models.cmr.k' or 'Sweeps ablation_k: models.cmr.k; ...'."""
    parts = []
    for sweep, sd in df.groupby("sweep", sort=False):
        keys = list(dict.fromkeys(k for st in sd["setting"] for k, _ in _parts(st) if k))
        parts.append(f"{sweep}: {', '.join(keys) or 'nothing varied'}")
    return ("Sweep " if len(parts) == 1 else "Sweeps ") + "; ".join(parts)


def render_markdown(df: pd.DataFrame) -> str:
    """One table per sweep: recall by N and mean (95% CI), vs the reference, val recall, cost."""
    ns = sorted({int(c.split("_")[1]) for c in df.columns if c.startswith("recall_") and c.split("_")[1].isdigit()})
    lines = [f"# {title(df)}", "",
             "Recall accuracy by document length N: mean over seeds, [95% bootstrap CI over documents]. "
             "Reference (ref) = the setting the configuration uses without the sweep; delta = change in mean "
             "recall vs the reference, p = exact McNemar on the paired recall queries vs the reference, "
             "Holm-corrected within the sweep. val = best validation recall during training. "
             "Generated by `python -m pipeline.studies.ablations`.", ""]
    if (df["n_seeds"] == 1).any():
        lines += ["**One seed per setting** in some rows: their CIs and p-values cover the noise of the evaluation "
                  "queries, not seed-to-seed variance, which for CMR can be larger than any difference below "
                  "(compare the per-seed results in REPORT.md). Treat those deltas as leads, not findings; "
                  "`python -m pipeline.studies.sweep -m experiment=ablation_<name> sweep.seed=0,1,2` adds seeds.", ""]
    for sweep, sd in df.groupby("sweep", sort=False):
        lines += [f"## {sweep}", ""]
        table = []
        for _, r in sd.iterrows():
            cell = {"setting": _pretty(r["setting"]), "ref": {True: "yes", False: "", None: "?"}.get(r["reference"], "?")}
            for n in ns:
                if f"recall_{n}" in r and pd.notna(r[f"recall_{n}"]):
                    cell[f"N={n}"] = (f"{_fmt(r[f'recall_{n}'])} [{_fmt(r[f'recall_{n}_ci_low'])}, "
                                      f"{_fmt(r[f'recall_{n}_ci_high'])}]")
            cell["mean"] = (f"{_fmt(r['recall_mean'])} [{_fmt(r['recall_mean_ci_low'])}, "
                            f"{_fmt(r['recall_mean_ci_high'])}]")
            cell["delta"] = _fmt(r.get("delta_vs_reference"), 3) if "delta_vs_reference" in r else "--"
            p = r.get("p_vs_reference_holm", math.nan)
            cell["p (Holm)"] = "--" if p is None or not np.isfinite(p) else f"{p:.3g}"
            cell["val"] = _fmt(r["val_recall"])
            cell["params"] = "--" if not np.isfinite(r["params"]) else f"{int(r['params']):,}"
            cell["train tok/s"] = "--" if not np.isfinite(r["train_tokens_per_s"]) else f"{r['train_tokens_per_s']:,.0f}"
            cell["seeds"] = r["seeds"]
            table.append(cell)
        lines += [pd.DataFrame(table).to_markdown(index=False, missingval="--"), ""]
    return "\n".join(lines)


def _parts(setting: str) -> list[tuple[str, str]]:
    """'train.lr=0.0012345678; backbone.d_model=64' -> [(key, value)], floats to 4 significant digits."""
    out = []
    for part in (p.strip() for p in setting.split(";")):
        key, _, value = part.partition("=")
        if any(c in value for c in ".eE") and value.replace(".", "").replace("e-", "").replace("e+", "").isdigit():
            value = f"{float(value):.4g}"
        out.append((key, value))
    return out


def _pretty(setting: str) -> str:
    return "; ".join(f"{k}={v}" if v else k for k, v in _parts(setting))


def _short(setting: str) -> str:
    """'models.cmr.k=4; sweep.variant=cmr' -> 'k=4\nvariant=cmr' (tick labels)."""
    return "\n".join(f"{k.rsplit('.', 1)[-1]}={v}" if v else k for k, v in _parts(setting))


def plot(df: pd.DataFrame, path: Path) -> None:
    """One panel per sweep: mean recall with its CI per setting, the reference in a second colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = list(dict.fromkeys(df["sweep"]))
    ncol = min(3, len(sweeps))
    nrow = math.ceil(len(sweeps) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.6 * nrow), squeeze=False)
    for ax, sweep in zip(axes.flat, sweeps):
        sd = df[df["sweep"] == sweep].reset_index(drop=True)
        y = sd["recall_mean"].to_numpy(float)
        err = np.clip(np.vstack([y - sd["recall_mean_ci_low"].to_numpy(float),
                                 sd["recall_mean_ci_high"].to_numpy(float) - y]), 0, None)
        colors = ["tab:orange" if r is True else "tab:blue" for r in sd["reference"]]
        x = np.arange(len(sd))
        ax.bar(x, y, color=colors, yerr=np.nan_to_num(err), capsize=3)
        labels = [_short(s) for s in sd["setting"]]
        ax.set_xticks(x, labels, rotation=30 if max(map(len, labels)) > 8 else 0, ha="right", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_title(sweep, fontsize=10)
        ax.set_ylabel("mean recall (95% CI)")
    for ax in list(axes.flat)[len(sweeps):]:
        ax.set_visible(False)
    fig.suptitle("CMR ablations (orange: reference setting)", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_outputs(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    stem = out / OUTPUT_STEM
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    atomic_write_text(paths[0], df.to_csv(index=False))
    atomic_write_text(paths[1], render_markdown(df))
    plot(df, paths[2])
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_cli.parser("ablations", __doc__.splitlines()[0], params=False, overrides=False)
    parser.add_argument("sweep_dirs", nargs="+", help="folders of `python -m pipeline.studies.sweep -m` runs")
    parser.add_argument("--out", default=None, help="output folder (default: the first sweep folder)")
    args = stage_cli.parse(parser, argv)

    def body() -> None:
        for p in write_outputs(aggregate(args.sweep_dirs), args.out or args.sweep_dirs[0]):
            print(f"wrote {p}")

    return stage_cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
