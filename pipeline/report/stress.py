"""Where memories break (pipeline/stress/): far recall by load F (facts per document) and by length N (the study's
recall_<N> joined with the stress lengths), each variant's capacity and effective length with a CI over seeds,
the update table (an entity restated with a new value: right, the earlier value, neither), the qualifier table (an
entity given two values by two speakers, one named in the query), and far recall against the floats of state at the
largest load."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.config.schema import ReportConfig
from pipeline.errors import DataError
from pipeline.paths import experiments_dir, run_dir
from pipeline.report.common import COLORS, per_seed_accuracy, variant_order
from pipeline.report.load import read_json
from pipeline.report.tables import AccuracyResult, AccuracySpec, accuracy_table, cell_stats
from pipeline.stats import bootstrap_ci

CAPACITY_CAPTION = ("capacity = the largest number of far facts per document F such that far recall is >= the "
                    "threshold at F and at every smaller F tested; effective length = the longest N with far recall "
                    ">= the threshold there and at every shorter N (RULER's definition); `>=` where the largest value "
                    "tested still passes (a lower bound), `<` where the smallest already fails (counted 0). Per seed, then "
                    "the mean over seeds with a bootstrap CI over seeds")


def load_stress(cfg: Mapping[str, Any], pairs: Sequence[tuple[str, int]], notes: list[str]) -> tuple[pd.DataFrame | None, dict]:
    """Every (variant, seed)'s stress predictions in one frame, and {run: splits it did not read}; None (with a
    note) when the stress stages did not run; a DataError naming the runs whose outputs are missing."""
    root = experiments_dir(cfg) / "stress"
    if not root.is_dir():
        notes.append(f"{root}/ does not exist (stress stages not run): where memories break not reported")
        return None, {}
    files = [(v, s, run_dir(cfg, "stress", v, s)) for v, s in pairs]
    missing = [str(d / "predictions.parquet") for _, _, d in files if not (d / "predictions.parquet").is_file()]
    if missing:
        raise DataError("stress outputs missing: " + ", ".join(missing) + " (run `dvc repro stress`)")
    frames, skipped = [], {}
    for v, s, d in files:
        frames.append(pd.read_parquet(d / "predictions.parquet"))
        met = read_json(d / "metrics.json") if (d / "metrics.json").is_file() else {}
        if met.get("skipped"):
            skipped[f"{v}-s{s}"] = list(met["skipped"])
    return pd.concat(frames, ignore_index=True), skipped


def curve_table(preds: pd.DataFrame, key: str, rc: ReportConfig) -> pd.DataFrame:
    """Far recall per variant and key (F or N): mean over seeds with its crossed CI, and each seed's value."""
    rows = []
    for (v, k), sub in preds.groupby(["variant", "length"], sort=False):
        st = cell_stats(sub, rc)
        rows.append({"variant": v, key: int(k), "accuracy": st["accuracy"], "ci_low": st["ci_low"],
                     "ci_high": st["ci_high"], "n_seeds": st["n_seeds"],
                     **{f"s{s}": a for s, a in per_seed_accuracy(sub).items()}})
    return _in_study_order(pd.DataFrame(rows), key)


def _in_study_order(t: pd.DataFrame, key: str) -> pd.DataFrame:
    """Rows by variant in the registry's order, then by `key`."""
    if t.empty:
        return t
    order = {v: i for i, v in enumerate(variant_order(t["variant"]))}
    return t.sort_values(["variant", key], key=lambda c: c.map(order) if c.name == "variant" else c).reset_index(drop=True)


def break_point(curve: Mapping[int, float], threshold: float) -> tuple[float, str]:
    """(value, as shown) of the largest key with accuracy >= threshold there and at every smaller key: shown '>=K'
    when the largest key K passes (a lower bound), value 0 and shown '<K' when the smallest key K already fails."""
    keys = sorted(curve)
    passed = None
    for k in keys:
        if not (curve[k] >= threshold):
            break
        passed = k
    if passed is None:
        return 0.0, f"<{keys[0]:g}"
    return float(passed), f">={passed:g}" if passed == keys[-1] else f"{passed:g}"


def break_points(table: pd.DataFrame, key: str, threshold: float, rc: ReportConfig) -> pd.DataFrame:
    """Per variant: each seed's break point on its own curve, their mean and a bootstrap CI over seeds (a seed that
    fails at the smallest key counts 0; one that passes at the largest counts that key, a lower bound)."""
    rows = []
    seeds = [c for c in table.columns if c.startswith("s") and c[1:].isdigit()]
    for v, g in table.groupby("variant", sort=False):
        per_seed = {}
        for s in seeds:
            curve = {int(k): float(a) for k, a in zip(g[key], g[s]) if not pd.isna(a)}
            if curve:
                per_seed[s] = break_point(curve, threshold)
        vals = [x for x, _ in per_seed.values()]
        ci = bootstrap_ci(vals, level=rc.ci_level, n_resamples=rc.n_resamples, seed=rc.seed)
        shown = {t[:2] if t.startswith(">=") else t[:1] if t.startswith("<") else "" for _, t in per_seed.values()}
        rows.append({"variant": v, "mean": float(np.mean(vals)) if vals else math.nan, "ci_low": ci.low,
                     "ci_high": ci.high, "bound": shown.pop() if len(shown) == 1 else "mixed",
                     **{s: t for s, (_, t) in per_seed.items()}})
    return pd.DataFrame(rows)


def update_table(preds: pd.DataFrame) -> pd.DataFrame:
    """The updated entity's query per variant and gap (segments between the two statements): share answered with
    the later value (right), the earlier one (prior), or neither; mean over seeds, and each seed's share right."""
    return restated_table(preds, "update", "earlier")


def restated_table(preds: pd.DataFrame, task: str, wrong: str) -> pd.DataFrame:
    """The restated entity's queries of `task` per variant and gap: share right, share answered with the other
    stated value (`prior`, named `wrong`) and neither; where the documents say which statement a query names
    (`asks_later` >= 0), the share right when the earlier / the later is named; mean over seeds, and each seed's
    share right."""
    u = preds[(preds["task"] == task) & (preds["prior"] >= 0)].copy()
    if u.empty:
        return pd.DataFrame()
    u["right"] = u["pred"] == u["answer"]
    u[wrong] = u["pred"] == u["prior"]
    u["neither"] = ~(u["right"] | u[wrong])
    asked = "asks_later" in u and bool((u["asks_later"] >= 0).any())
    rows = []
    for (v, gap), g in u.groupby(["variant", "length"], sort=False):
        by_seed = g.groupby("seed")[["right", wrong, "neither"]].mean()
        row = {"variant": v, "gap_segments": int(gap), **by_seed.mean().to_dict()}
        if asked:
            by_asked = g.groupby(["asks_later", "seed"])["right"].mean().groupby(level="asks_later").mean()
            row.update(right_asked_earlier=float(by_asked.get(0, math.nan)),
                       right_asked_later=float(by_asked.get(1, math.nan)))
        rows.append({**row, "n_queries": int(len(g)), "n_seeds": int(len(by_seed)),
                     **{f"right_s{int(s)}": float(r) for s, r in by_seed["right"].items()}})
    return _in_study_order(pd.DataFrame(rows), "gap_segments")


def state_table(far: pd.DataFrame, rc: ReportConfig, trained_sizes: pd.DataFrame | None = None) -> pd.DataFrame:
    """Far recall at the largest load per variant and state size (floats): each memory as trained (the load split),
    where stress.state_sizes resized it at evaluation at each other size, and the runs `make state-size` trained at
    other sizes (`trained_sizes`: their predictions with a `setting` column); mean over seeds with the crossed CI
    and each seed's value. `trained`: whether the weights were trained at that size."""
    load = far[far["task"] == "load"]
    if load.empty or "state_floats" not in far:
        return pd.DataFrame()
    top = int(load["length"].max())
    study = load[load["length"] == top].assign(setting="as trained", trained=True)
    state = far[far["task"] == "state"]
    resized = state.assign(setting=["=".join(x[len("state_"):].rsplit("_", 1)) for x in state["split"]], trained=False)
    parts = [study, resized]
    if trained_sizes is not None and not trained_sizes.empty:
        extra = trained_sizes[(trained_sizes["length"] == top) & trained_sizes["variant"].isin(set(load["variant"]))]
        parts.append(extra.assign(setting=extra["setting"] + " (trained)", trained=True))
    rows = []
    for (v, setting), sub in pd.concat(parts, ignore_index=True).groupby(["variant", "setting"], sort=False):
        st = cell_stats(sub, rc)
        rows.append({"variant": v, "state_floats": int(sub["state_floats"].iloc[0]), "F": top, "setting": setting,
                     "trained": bool(sub["trained"].iloc[0]), "accuracy": st["accuracy"], "ci_low": st["ci_low"],
                     "ci_high": st["ci_high"], "n_seeds": st["n_seeds"],
                     **{f"s{s}": a for s, a in per_seed_accuracy(sub).items()}})
    return _in_study_order(pd.DataFrame(rows), "state_floats")


def plot_state(table: pd.DataFrame, threshold: float, path: Path) -> None:
    """Recall against state size, one line per memory (zoology's figure): filled markers where the weights were
    trained at that size, hollow where the state was resized at evaluation. Memories without a state (0 floats)
    have no place on a log axis."""
    from pipeline.report.render import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    t = table[table["state_floats"] > 0]
    for v, g in t.groupby("variant", sort=False):
        g = g.sort_values("state_floats")
        c = COLORS.get(v)
        ax.errorbar(g["state_floats"], g["accuracy"], yerr=[g["accuracy"] - g["ci_low"], g["ci_high"] - g["accuracy"]],
                    lw=1.3, capsize=2, color=c, label=v, marker="none")
        for trained, mk in ((True, dict(mfc=c)), (False, dict(mfc="white"))):
            s = g[g["trained"] == trained]
            ax.plot(s["state_floats"], s["accuracy"], "o", ms=5, mec=c, ls="none", **mk)
    ax.axhline(threshold, color="black", ls=":", lw=1, label=f"threshold {threshold:g}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("state (floats per document, log; filled: trained at that size, hollow: resized at evaluation)",
                  fontsize=8)
    ax.set_ylabel("far recall (fraction of queries)")
    ax.set_ylim(-0.02, 1.02)
    F = int(table["F"].iloc[0]) if not table.empty else 0
    ax.set_title(f"Recall vs state size at the largest load (F={F})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    save_png(fig, path)
    plt.close(fig)


# claim 7 as an accuracy table like the paper's: right = the later value, on the restated entity's queries only
AMBIGUOUS = AccuracySpec("ambiguous", "update", "gap_segments", "length",
                         "Ambiguous queries (claim 7): share of a restated entity's queries answered with its later "
                         "(right) value, by segments between the two statements", family="ambiguous",
                         plot_title="Ambiguous queries: the later value answered (claim 7)")


# claim 8: right = the value stated under the qualifier the query names, on the qualified queries only
QUALIFIER = AccuracySpec("qualifier", "qualifier", "gap_segments", "length",
                         "Qualified queries (claim 8): share of the queries naming one of two qualifiers (speakers) "
                         "under which an entity was given different values that are answered with that qualifier's "
                         "value, by segments between the two statements (half the queries ask the earlier one)",
                         family="qualifier", plot_title="Qualified queries: the named speaker's value answered (claim 8)")


def qualifier_table(preds: pd.DataFrame) -> pd.DataFrame:
    """The qualified query per variant and gap: share answered with the named qualifier's value (right), the other
    qualifier's value (other) or neither, and the share right when the earlier / the later statement is asked
    (a memory that ignores the qualifier and answers the latest value scores 0 / 1 there); mean over seeds."""
    return restated_table(preds, "qualifier", "other")


def qualifier_result(stress: pd.DataFrame, rc: ReportConfig) -> AccuracyResult | None:
    """Claim 8's table and paired tests (raw p; the caller applies Holm over its own family), or None without
    qualifier documents."""
    u = stress[(stress["task"] == "qualifier") & (stress["prior"] >= 0)]
    return None if u.empty else accuracy_table(u, QUALIFIER, None, rc)


def plot_qualifier(table: pd.DataFrame, path: Path) -> None:
    plot_two_panels(table, {"right_asked_earlier": "the query names the earlier statement's speaker",
                            "right_asked_later": "the query names the later statement's speaker"},
                    "share answered with the named speaker's value",
                    "Qualified queries: an entity given two values by two speakers, one speaker named", path)


def ambiguous_result(stress: pd.DataFrame, rc: ReportConfig) -> AccuracyResult | None:
    """Claim 7's table and paired tests (raw p; the caller applies Holm over its own family), or None without
    update documents."""
    u = stress[(stress["task"] == "update") & (stress["prior"] >= 0)]
    return None if u.empty else accuracy_table(u, AMBIGUOUS, None, rc)


def plot_curves(table: pd.DataFrame, key: str, threshold: float, title: str, xlabel: str, path: Path,
                base: int) -> None:
    from pipeline.report.render import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for v, g in table.groupby("variant", sort=False):
        ax.errorbar(g[key], g["accuracy"], yerr=[g["accuracy"] - g["ci_low"], g["ci_high"] - g["accuracy"]],
                    marker="o", ms=3, capsize=2, lw=1.3, label=v, color=COLORS.get(v))
    ax.axhline(threshold, color="black", ls=":", lw=1, label=f"threshold {threshold:g}")
    ax.set_xscale("log", base=base)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("far recall (fraction of queries)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    save_png(fig, path)
    plt.close(fig)


def plot_update(table: pd.DataFrame, path: Path) -> None:
    plot_two_panels(table, {"right": "answered with the later value (right)",
                            "earlier": "answered with the earlier value"},
                    "share of the updated entity's queries", "Which value a memory answers after an entity is restated",
                    path)


def plot_two_panels(table: pd.DataFrame, panels: Mapping[str, str], ylabel: str, title: str, path: Path) -> None:
    """One panel per column of `panels` (column -> panel title): each variant's share against the gap."""
    from pipeline.report.render import pyplot, save_png

    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(9.6, 3.8), sharey=True)
    for (col, panel_title), ax in zip(panels.items(), axes):
        for v, g in table.groupby("variant", sort=False):
            ax.plot(g["gap_segments"], g[col], marker="o", ms=3, lw=1.3, label=v, color=COLORS.get(v))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("segments between the two statements")
        ax.set_title(panel_title, fontsize=10)
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=11)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    save_png(fig, path)
    plt.close(fig)

def write_stress(cfg: Mapping[str, Any], stress: pd.DataFrame, skipped: Mapping[str, list], study_preds: pd.DataFrame,
                 rc: ReportConfig, tables_dir: Path, plots_dir: Path,
                 write_table: Callable[[pd.DataFrame, Path, str], Any],
                 trained_sizes: pd.DataFrame | None = None) -> dict:
    """The load, length and update tables and plots, and the break points; returns summary.json's `stress`."""
    from pipeline.io import atomic_write_text

    thr = float((cfg.get("stress") or {}).get("threshold", 0.9))
    far = stress[stress["query_type"] == "far"]
    load = curve_table(far[far["task"] == "load"], "F", rc)
    study_far = study_preds[(study_preds["task"] == "recall") & (study_preds["query_type"] == "far")]
    length = curve_table(pd.concat([study_far, far[far["task"] == "length"]], ignore_index=True), "N", rc)
    cap, eff = break_points(load, "F", thr, rc), break_points(length, "N", thr, rc)
    upd = update_table(stress)
    state = state_table(far, rc, trained_sizes)
    load_len = int((cfg.get("stress") or {}).get("load_length", 0))
    skip_note = ("; not read: " + ", ".join(f"{r} {', '.join(s)}" for r, s in skipped.items())) if skipped else ""
    write_table(load, tables_dir / "load", f"Recall vs load: far recall by the number of far facts per document F "
                f"({load_len}-token documents), mean over seeds with a {int(rc.ci_level * 100)}% CI resampling seeds "
                f"and documents, and each seed's value")
    write_table(length, tables_dir / "length", f"Recall vs length: far recall by document length N (the study's "
                f"recall_<N> splits, then the stress lengths), as the load table{skip_note}")
    write_table(cap, tables_dir / "capacity", f"Capacity (far facts per document) at threshold {thr:g}: "
                + CAPACITY_CAPTION)
    write_table(eff, tables_dir / "effective_length", f"Effective length (tokens) at threshold {thr:g}: "
                + CAPACITY_CAPTION)
    plot_curves(load, "F", thr, f"Recall vs load ({load_len}-token documents)", "far facts per document F (log)",
                tables_dir / "load.png", base=2)
    plot_curves(length, "N", thr, "Recall vs length", "document length N in tokens (log)",
                tables_dir / "length.png", base=10)
    atomic_write_text(plots_dir / "load.csv", load[["variant", "F", "accuracy", "ci_low", "ci_high"]].to_csv(index=False))
    atomic_write_text(plots_dir / "length.csv", length[["variant", "N", "accuracy", "ci_low", "ci_high"]].to_csv(index=False))
    out = {"threshold": thr,
           "capacity": {r["variant"]: {k: r[k] for k in r.index if k != "variant"} for _, r in cap.iterrows()},
           "effective_length": {r["variant"]: {k: r[k] for k in r.index if k != "variant"} for _, r in eff.iterrows()},
           "load": {v: dict(zip(g["F"].astype(str), g["accuracy"])) for v, g in load.groupby("variant", sort=False)},
           "length": {v: dict(zip(g["N"].astype(str), g["accuracy"])) for v, g in length.groupby("variant", sort=False)},
           "skipped": dict(skipped)}
    if not state.empty:
        write_table(state, tables_dir / "state_size", f"Recall vs state size: far recall at the largest load "
                    f"(F={int(state['F'].iloc[0])}, {load_len}-token documents) per memory and floats of state, as "
                    "trained, where the state is a buffer no weight depends on (stress.state_sizes) resized at "
                    "evaluation with the same weights (trained = false), and, where `make state-size` trained a "
                    "memory at another size (one seed), that run ('(trained)'); mean over seeds with the crossed CI, "
                    "and each seed's value")
        plot_state(state, thr, tables_dir / "state_size.png")
        atomic_write_text(plots_dir / "state_size.csv", state[["variant", "state_floats", "setting", "trained", "accuracy",
                                                               "ci_low", "ci_high"]].to_csv(index=False))
        out["state_size"] = {v: {str(int(r["state_floats"])): {"setting": r["setting"], "trained": bool(r["trained"]),
                                                              "accuracy": r["accuracy"]} for _, r in g.iterrows()}
                             for v, g in state.groupby("variant", sort=False)}
    qual = qualifier_table(stress)
    if not qual.empty:
        write_table(qual, tables_dir / "qualifiers", "Qualified queries (an entity given different values by two "
                    "speakers, `gap_segments` apart; its query names one speaker): share answered with the named "
                    "speaker's value (right), the other speaker's, or neither; and the share right when the query "
                    "names the earlier / the later statement's speaker; mean over seeds, and each seed's share right")
        plot_qualifier(qual, tables_dir / "qualifiers.png")
        out["qualifier"] = {v: {str(int(r["gap_segments"])): {k: r[k] for k in ("right", "other", "neither",
                                                                                "right_asked_earlier",
                                                                                "right_asked_later")}
                                for _, r in g.iterrows()} for v, g in qual.groupby("variant", sort=False)}
    if not upd.empty:
        write_table(upd, tables_dir / "update", "Ambiguous queries (an entity stated twice with different values, "
                    "`gap_segments` apart; its query comes after both): share of its queries answered with the later "
                    "value (right), the earlier value, or neither; mean over seeds, and each seed's share right")
        plot_update(upd, tables_dir / "update.png")
        out["update"] = {v: {str(int(r["gap_segments"])): {"right": r["right"], "earlier": r["earlier"],
                                                           "neither": r["neither"]} for _, r in g.iterrows()}
                         for v, g in upd.groupby("variant", sort=False)}
    return out


def headline(summary_stress: Mapping[str, Any], memory_floats: Mapping[str, Any]) -> pd.DataFrame:
    """REPORT.md's first table: per variant its state, capacity, effective length, recall at the largest load and
    the update result at the largest gap."""
    rows = []
    for v in variant_order(summary_stress.get("capacity", {})):
        cap = summary_stress["capacity"].get(v, {})
        eff = summary_stress.get("effective_length", {}).get(v, {})
        load = summary_stress.get("load", {}).get(v, {})
        upd = summary_stress.get("update", {}).get(v, {})
        qual = summary_stress.get("qualifier", {}).get(v, {})
        top = max(load, key=int) if load else None
        gap = max(upd, key=int) if upd else None
        rows.append({"variant": v, "memory_floats": memory_floats.get(v),
                     "capacity (facts)": _with_ci(cap), "effective length (tokens)": _with_ci(eff),
                     f"far recall at F={top}" if top else "far recall at max F": load.get(top) if top else None,
                     f"update at gap {gap}: later / earlier" if gap else "update": (
                         f"{upd[gap]['right']:.2f} / {upd[gap]['earlier']:.2f}" if gap else None),
                     **({f"qualified at gap {gap}: right (earlier / later asked)": (
                         f"{qual[gap]['right']:.2f} ({qual[gap]['right_asked_earlier']:.2f} / "
                         f"{qual[gap]['right_asked_later']:.2f})" if gap in qual else None)} if qual else {})})
    return pd.DataFrame(rows)


def _with_ci(d: Mapping[str, Any]) -> str:
    """'mean [CI]' with the per-seed values, e.g. '8 [8, 8] (8, 8, 8)' or '0 (<4, <4, <4)'."""
    if not d or d.get("mean") is None or (isinstance(d.get("mean"), float) and math.isnan(d["mean"])):
        return "n/a"
    lo, hi = d.get("ci_low"), d.get("ci_high")
    ci = (f" [{_count(lo)}, {_count(hi)}]" if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and
          math.isfinite(lo) and math.isfinite(hi) and (lo, hi) != (d["mean"], d["mean"]) else "")
    seeds = [str(d[k]) for k in sorted(d) if k.startswith("s") and k[1:].isdigit()]
    return f"{_count(d['mean'])}{ci} ({', '.join(seeds)})"


def _count(x: float) -> str:
    """A mean of facts or tokens as a reader takes it in: whole numbers as they are, otherwise one decimal below
    100 and none above (2.66667 -> '2.7', 1166.67 -> '1167')."""
    if float(x).is_integer():
        return f"{int(x)}"
    return f"{x:.1f}" if abs(x) < 100 else f"{x:.0f}"
