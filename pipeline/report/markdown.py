"""REPORT.md: the study's tables, checks, verdicts and diagnostics as Markdown."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from pipeline.paths import experiments_dir, run_name
from pipeline.report import checks
from pipeline.report.common import variant_order
from pipeline.report.load import TrainLength, sort_key_values
from pipeline.report.render import fmt
from pipeline.report.verdicts import VERDICT_RULES, ci_text, headline, rule_text


def hardware_lines(runs: Sequence[Mapping[str, Any]], train: Mapping[str, dict]) -> list[str]:
    """Where training and timing ran, from the runs' own records ("n/a" where they do not say)."""
    seen: dict[str, list[str]] = {}
    for name, m in sorted(train.items()):
        hw = m.get("hardware")
        text = ", ".join(f"{k}={hw.get(k, 'n/a')}" for k in ("device", "cpu", "torch", "threads")) \
            if isinstance(hw, dict) else "n/a"
        seen.setdefault(text, []).append(name)
    out = [f"training hardware: {hw} ({', '.join(names)})" for hw, names in seen.items()] or ["training hardware: n/a"]
    ev: dict[str, list[str]] = {}
    for r in runs:
        oh = r["overhead"] or {}
        text = f"device={oh.get('device', 'n/a')}, threads={oh.get('threads', 'n/a')}, batch={oh.get('batch_size', 'n/a')}"
        ev.setdefault(text, []).append(run_name(r["variant"], r["seed"]))
    out += [f"inference timing (Table III): {t} ({', '.join(n)})" for t, n in ev.items()]
    return out


# ------------------------------------------------------------------------------------------- REPORT.md
def _compact(table: pd.DataFrame, tests: pd.DataFrame, key: str) -> pd.DataFrame:
    """One row per key: paper baseline | each variant 'acc [lo, hi]' | paper CMR | cmr-vs-x b/c, p_holm."""
    rows = []
    for k in sort_key_values(table[key]):
        t = table[table[key] == k]
        r: dict[str, Any] = {key: k}
        if "distance_vs_training" in t:
            r["vs training docs"] = t["distance_vs_training"].iloc[0]
        r["paper baseline"] = fmt(t["paper_baseline"].iloc[0])
        for _, x in t.iterrows():
            flag = ("*" if x["ci_degenerate"] else "") + ("†" if bool(x.get("extrapolation", False)) else "")
            r[x["variant"]] = f"{x['accuracy']:.3f} [{x['ci_low']:.3f}, {x['ci_high']:.3f}]{flag}"
        r["paper CMR"] = fmt(t["paper_cmr"].iloc[0])
        if not tests.empty:
            for comp, g in tests.groupby("comparison", sort=False):
                h = g[g[key] == k]
                if len(h):
                    h = h.iloc[0]
                    r[f"{comp} b/c, p_holm"] = f"{h['b']}/{h['c']}, {fmt(h['p_holm'])}"
        rows.append(r)
    return pd.DataFrame(rows).fillna("--")


def _md_cell(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


TEMPLATE = Path(__file__).with_name("REPORT.md.j2")


HTML_STYLE = ("body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
              "table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}td,th{border:1px solid #ccc;"
              "padding:.2rem .45rem}th{background:#f4f4f4}img{max-width:100%}code{background:#f4f4f4}")


def html_page(report_md: str) -> str:
    """results/index.html: REPORT.md as one self-contained page (no script, no network; the figures are the PNGs
    beside it, by relative path), to open in any browser offline."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(report_md)
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>cmr-repro: results</title>"
            f"<style>{HTML_STYLE}</style></head><body>\n{body}</body></html>\n")


SMOKE_PROFILES = ("ci",)  # profiles that only check the pipeline runs: their report says so in its title
PREVIEW_PROFILES = ("quick",)  # profiles whose models learn, on one seed: a first look, titled as one


def render_markdown(cfg, rc, paper, runs, train, results, oh, validity, times_df, notes, **sections: Any) -> str:
    """REPORT.md: REPORT.md.j2 filled with report_context (same arguments)."""
    import jinja2

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    template = env.from_string(TEMPLATE.read_text())
    return template.render(**report_context(cfg, rc, paper, runs, train, results, oh, validity, times_df, notes,
                                            **sections))


def report_context(cfg, rc, paper, runs, train, results, oh, validity, times_df, notes, *,
                   datasets: pd.DataFrame | None = None, setup: pd.DataFrame | None = None,
                   verdict_list: Sequence[dict] = (), attention: pd.DataFrame | None = None,
                   family_sizes: Mapping[str, int] | None = None, train_len: TrainLength | None = None,
                   diagnostics: Mapping[str, Any] | None = None, hf: Mapping[str, Any] | None = None,
                   cost: Mapping[str, Any] | None = None, stress: pd.DataFrame | None = None,
                   stress_summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything REPORT.md.j2 shows, as strings (tables already in Markdown) and lists of lines."""
    table_md = lambda df: df.map(fmt).to_markdown(index=False)  # noqa: E731
    st = cfg.get("stress") or {}
    return {
        "source": paper["source"],
        "profile": cfg.get("profile_name"), "smoke": cfg.get("profile_name") in SMOKE_PROFILES,
        "preview": cfg.get("profile_name") in PREVIEW_PROFILES,
        "headline": headline(list(verdict_list), results, validity, stress_summary, rc) if verdict_list else [],
        "stress_table": table_md(stress) if stress is not None and not stress.empty else None,
        "stress_threshold": st.get("threshold"), "stress_load_length": st.get("load_length"),
        "stress_state": state_size_text(stress_summary),
        "stress_qualifier": bool((stress_summary or {}).get("qualifier")),
        **verdict_context(verdict_list, rc),
        "setup_lines": setup_lines(cfg, runs, train, train_len, times_df),
        "setup_table": table_md(setup) if setup is not None and not setup.empty else None,
        "training_runs": table_md(training_runs_table(train)) if train else None,
        "datasets": table_md(datasets) if datasets is not None else None,
        "claim_checks": "; ".join(f"{c}: {', '.join(d) or 'none'}" for c, d in checks.CLAIM_CHECKS.items()),
        "validity": [f"**{name}: {chk['status']}** - {_md_cell(chk['detail'])}" for name, chk in validity.items()],
        **diagnostics_context(diagnostics or {}, table_md),
        "statistics": statistics_text(rc, family_sizes or {}),
        "tables": [{"title": r.spec.title, "name": name, "compact": _compact(r.table, r.tests, r.spec.key)
                    .to_markdown(index=False)} for name, r in results.items()],
        **overhead_context(oh, table_md),
        "attention": table_md(attention) if attention is not None else None,
        "attention_dir": str(experiments_dir(cfg) / "attention"),
        "lose_lines": lose_lines(results, rc),
        "hf": None if hf is None else {**hf, "table": table_md(hf["table"]),
                                       "perplexity": None if hf["perplexity"] is None else table_md(hf["perplexity"])},
        "cost": None if cost is None else {
            "parts": None if cost["parts"] is None else table_md(cost["parts"]), "targets": list(cost["targets"])},
        "times": table_md(times_df),
        "notes": list(notes),
    }


def verdict_context(verdict_list: Sequence[dict], rc: Any) -> dict[str, Any]:
    if not verdict_list:
        return {"verdict_table": None, "evidence": [], "rules": []}
    table = pd.DataFrame([{"#": v["claim"], "claim": v["text"], "paper": v["source"], "verdict": f"**{v['verdict']}**",
                           "where CMR loses": _md_cell(v["cmr_loses"] or "--"),
                           "vs the strongest baseline that learned": _md_cell(v.get("vs_strongest") or "--")} for v in verdict_list])
    return {"verdict_table": table.to_markdown(index=False),
            "evidence": [f"{v['claim']}. **{v['verdict']}** - {_md_cell(v['evidence'])}" for v in verdict_list],
            "rules": [f"{kind}: {rule_text(kind, rc)}" for kind in dict.fromkeys(VERDICT_RULES)]}


def setup_lines(cfg: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], train: Mapping[str, dict],
                train_len: TrainLength | None, times_df: pd.DataFrame) -> list[str]:
    """The setup section's bullet points: profile, configs, training length, hardware, wall time."""
    variants = variant_order({r["variant"] for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    lines = [f"profile: `{cfg.get('profile_name', 'n/a')}`; variants: {', '.join(variants)}; seeds: {seeds} "
             f"({len(seeds)} per variant)"]
    if cfg.get("backbone"):
        lines.append("backbone: " + ", ".join(f"{k}={v}" for k, v in cfg["backbone"].items()))
    for v in variants:
        m = (cfg.get("models") or {}).get(v)
        if m:
            lines.append(f"`{v}`: " + ", ".join(f"{k}={val}" for k, val in m.items()))
    if cfg.get("train"):
        tc = cfg["train"]
        lines.append("train: " + ", ".join(f"{k}={tc[k]}" for k in list(tc)[:12]))
    if train_len is not None:
        lines.append(f"training length: {train_len.tokens if train_len.tokens else 'n/a'} tokens "
                     f"({train_len.segments if train_len.segments else 'n/a'} segments; {train_len.source}); "
                     f"`full` beyond it is extrapolating (marked †)")
    lines += hardware_lines(runs, train)
    if not times_df.empty:
        tot = times_df.groupby("stage", sort=False)["wall_s"].sum(min_count=1)
        lines.append("wall time: " + ", ".join(f"{s} {fmt(x / 60 if pd.notna(x) else None, 2)} min"
                                               for s, x in tot.items())
                     + f"; all stages {fmt(times_df['wall_s'].sum() / 60, 2)} min (details below)")
    return lines


def training_runs_table(train: Mapping[str, dict]) -> pd.DataFrame:
    rows = []
    for name, m in sorted(train.items()):
        hw = m.get("hardware") if isinstance(m.get("hardware"), dict) else {}
        rows.append({"run": name, "params": m.get("params"), "steps": m.get("steps"),
                     "tokens trained": m.get("tokens_trained", "n/a"), "wall_s": m.get("wall_s"),
                     "train tokens/s": m.get("train_tokens_per_s"), "val far": m.get("val_recall_far"),
                     "val_long far": m.get("val_long_recall_far"), "checkpoint": f"{m.get('monitor')} @ "
                     f"{m.get('best_step')}", "steps to 90%": m.get("steps_to_90"), "device": hw.get("device", "n/a")})
    return pd.DataFrame(rows)


def statistics_text(rc: Any, family_sizes: Mapping[str, int]) -> str:
    return (f"Statistics: every accuracy cell is the mean over seeds of the per-seed accuracy, with a "
            f"{int(rc.ci_level * 100)}% percentile bootstrap CI ({rc.n_resamples} resamples, seed {rc.seed}) that "
            f"resamples seeds and documents independently (every seed answers the same documents), so it covers "
            f"seed-to-seed variation as well as documents: a rerun on another machine, whose floats differ, moves "
            f"a seed's numbers by about as much as another seed would, and a finding that such a move can flip is "
            f"not significant. n (queries, documents, seeds); `*` marks a degenerate interval (one document or identical values), `†` a cell where "
            f"`full` runs beyond its training length. Paired tests: exact McNemar (scipy.stats.binomtest on the "
            f"discordant pairs b, c) on the per-query outcomes paired by (seed, split, document, query) - both "
            f"variants see the same evaluation documents - pooled over seeds. Multiple comparisons: Holm over all "
            f"cmr-vs-<memory> cells (every variant of the study but the `full` ceiling) of tables II, IV, V and VI together ({family_sizes.get('paper', 0)} "
            f"tests); the distance table is its own Holm family ({family_sizes.get('distance', 0)} tests). "
            f"alpha={rc.alpha}. Per-seed p-values (uncorrected) and the number of seeds where cmr is ahead are in "
            f"`tables/<table>_tests.csv`.")


def overhead_context(oh: pd.DataFrame, table_md: Any) -> dict[str, Any]:
    if oh.empty:
        return {"overhead": None, "overhead_summary": None}
    cols = ["variant", "N", "ms_per_token", "ratio_vs_window", "ratio_ci_low", "ratio_ci_high", "paper_baseline",
            "paper_cmr", "paper_ratio", "params", "peak_memory_mb", "train_tokens_per_s", "train_ratio_vs_window"]
    c = oh[oh["variant"] == "cmr"]
    summary = None
    if len(c) and c["ratio_vs_window"].notna().any():
        summary = (f"CMR costs {c['ratio_vs_window'].min():.2f}-{c['ratio_vs_window'].max():.2f}x window's ms/token "
                   f"(paper: {c['paper_ratio'].min():.2f}-{c['paper_ratio'].max():.2f}x) and trains at "
                   f"{fmt(c['train_ratio_vs_window'].iloc[0])}x window's tokens/s.")
    return {"overhead": table_md(oh[cols]), "overhead_summary": summary}


def lose_lines(results: Mapping[str, Any], rc: Any) -> list[str]:
    """Every cell of the paper's tables where CMR is not significantly above window (Holm)."""
    lines = []
    for name, res in results.items():
        spec, table, tests = res.spec, res.table, res.tests
        if tests.empty or "p_holm" not in tests:
            continue
        t = tests[tests["comparison"] == "cmr_vs_window"]
        for _, x in t.sort_values(spec.key, key=lambda c: c.map(lambda v: float(v))).iterrows():
            k = x[spec.key]
            c = table[(table["variant"] == "cmr") & (table[spec.key] == k)]["accuracy"]
            wd = table[(table["variant"] == "window") & (table[spec.key] == k)]["accuracy"]
            ca, wa = (c.iloc[0] if len(c) else math.nan), (wd.iloc[0] if len(wd) else math.nan)
            if x["gap"] <= 1e-9:  # equal up to float noise counts as "does not beat"
                lines.append(f"{name}, {spec.key}={k}: CMR does not beat window ({ca:.3f} vs {wa:.3f}; gap "
                             f"{ci_text(x['gap'], x['gap_ci_low'], x['gap_ci_high'])}, Holm p={fmt(x['p_holm'])}).")
            elif not (x["p_holm"] < rc.alpha):
                lines.append(f"{name}, {spec.key}={k}: CMR is above window ({ca:.3f} vs {wa:.3f}) but not "
                             f"significantly (Holm p={fmt(x['p_holm'])}).")
    if lines:
        return lines
    if not any(not r.tests.empty and "cmr_vs_window" in set(r.tests["comparison"]) for r in results.values()):
        return ["Not assessed: `cmr` and `window` were not both evaluated."]
    return ["In every cell, CMR is above window and the difference is significant after Holm correction."]


def diagnostics_context(diag: Mapping[str, Any], table_md: Any) -> dict[str, Any]:
    """The sections that say why a check passes or fails: per-seed learning curves and recall, binding, and
    cmr's misses by stage (None where not computed)."""
    learning, per_seed, binding, memory = (diag.get(k) for k in ("learning", "per_seed", "binding", "memory"))
    return {"learning": table_md(learning[1]) if learning is not None else None,
            "per_seed": table_md(per_seed) if per_seed is not None and not per_seed.empty else None,
            "binding": table_md(binding) if binding is not None and not binding.empty else None,
            "memory": [table_md(t) for t in memory.values()] if memory is not None else None}


def state_size_text(stress_summary: Mapping[str, Any] | None) -> str | None:
    """Which memories were resized at evaluation and to what, e.g. "`cmr` capacity 8-128"; None when none was."""
    parts = []
    for v, sizes in ((stress_summary or {}).get("state_size") or {}).items():
        resized = [s["setting"] for s in sizes.values() if not s["trained"]]
        if resized:
            key = resized[0].split("=")[0]
            vals = sorted(int(r.split("=")[1]) for r in resized)
            parts.append(f"`{v}` {key} {', '.join(map(str, vals))}")
    return "; ".join(parts) or None
