"""Each paper claim's verdict, by the rules stated in REPORT.md beside it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import pandas as pd

from pipeline.report import checks
from pipeline.report.common import MIXED, NOT_SUPPORTED, NOT_TESTABLE, NOT_TESTED, SUPPORTED
from pipeline.report.load import sort_key_values
from pipeline.report.render import fmt
from pipeline.report.tables import AccuracyResult
from pipeline.config.schema import ReportConfig
from pipeline.stats import crossed_bootstrap_diff_ci


# --------------------------------------------------------------------------------------------- verdicts
@dataclass(frozen=True)
class Claim:
    """One claim of the paper and where our evidence for it comes from."""

    id: int
    name: str  # accuracy table name, "overhead" or "attention"
    source: str  # where the paper says it
    text: str
    trend: int = 0  # +1: the gap should grow with the key; -1: it should be largest at the smallest key


CLAIMS = (
    Claim(1, "recall", "Table II", "CMR recalls better than the baseline at every N, and the gap grows with N", +1),
    Claim(2, "overhead", "Table III", "CMR's inference overhead is small (+5-11% ms/token over the baseline)"),
    Claim(3, "rare", "Table IV", "CMR recalls rare tokens better, most at the lowest training counts", -1),
    Claim(4, "dialogue", "Table V", "CMR's dialogue consistency is higher and degrades less with turns", +1),
    Claim(5, "numeric", "Table VI", "CMR's numeric accuracy is higher and the gap grows with N", +1),
    Claim(6, "attention", "abstract", "CMR's attention is more structured (lower entropy, more mass on the fact "
                                      "or the memory holding it)"),
    Claim(7, "ambiguous", "abstract", "CMR resolves ambiguous queries better: after an entity's value is restated, it "
                                      "answers with the later value more often than the baseline"),
    Claim(8, "qualifier", "abstract", "CMR resolves ambiguous queries better: when two speakers gave an entity "
                                      "different values and the query names one, it answers with that speaker's "
                                      "value more often than the baseline"),
)


VERDICT_RULES = {
    "accuracy": ("cmr vs window (the paper's baseline), per cell: gap = cmr - window accuracy with a "
                 "{ci}% bootstrap CI resampling seeds and documents; a win or loss needs Holm p < {alpha} (McNemar) "
                 "and that CI on one side of 0. Trend: gap at the last key minus gap at the first (first minus last "
                 "where the claim says 'most at low counts'), {ci}% bootstrap CI, seeds resampled once for both "
                 "cells and each cell's documents on their own. supported = a significant win in every cell and a "
                 "trend CI above 0; not supported = no significant win; mixed = otherwise. Seeds are resampled so "
                 "that a finding one seed's floats can flip (a rerun on another machine moves them) is not "
                 "reported as significant."),
    "overhead": ("cmr/window ms/token per N (mean over seeds; CI: bootstrap of the ratio of medians over the timing "
                 "repeats pooled over seeds). supported = ratio <= {ratio} at every N; not supported = ratio > "
                 "{ratio} at every N; mixed = otherwise."),
    "attention": ("cmr vs window per layer, from the attention table's CIs: entropy lower (cmr's CI entirely below "
                  "window's) or mass on the fact higher (cmr: mass on slots holding the fact where measured, else on "
                  "the fact's position; window: on the fact's position; CIs disjoint) counts as more structured, the "
                  "reverse as less. supported = at least one 'more' and no 'less'; not supported = no 'more'; "
                  "mixed = both."),
}


CEILING = "full"  # every other variant but cmr is a baseline CMR is compared with
WINDOW_STRONGEST = "the strongest baseline on recall is window (the claim's own comparison)"


def strongest_baseline(table: pd.DataFrame, learned: list[str] | None = None) -> tuple[str, float] | None:
    """(baseline, its mean accuracy over the table's cells): the best variant other than cmr and the ceiling,
    among the memories that learned (`learned`: their `<memory>_learned` check passed) when any of them is in the
    table, else among every baseline (window and xl always count: they have nothing to learn that they can't reach)."""
    t = table[~table["variant"].isin(["cmr", CEILING])]
    if learned is not None:
        spanning = set(t["variant"]) - {"window", "xl"}
        t = t[~t["variant"].isin(spanning - set(learned))]
    if t.empty:
        return None
    means = t.groupby("variant")["accuracy"].mean()
    return str(means.idxmax()), float(means.max())


def cells_vs(res: AccuracyResult | None, b: str, rc: ReportConfig) -> tuple[int, int, int] | None:
    """(cells where cmr is significantly better than b, significantly worse, cells tested) in one table (Holm)."""
    if res is None or res.tests.empty or "p_holm" not in res.tests:
        return None
    t = res.tests[res.tests["comparison"] == f"cmr_vs_{b}"]
    if t.empty:
        return None
    sig = t["p_holm"] < rc.alpha
    return int((sig & (t["gap"] > 0)).sum()), int((sig & (t["gap"] < 0)).sum()), int(len(t))


def headline(verdict_list: list[dict], results: Mapping[str, AccuracyResult], validity: Mapping[str, dict],
             stress: Mapping[str, Any] | None, rc: ReportConfig) -> list[str]:
    """REPORT.md's first three lines: which memories learned, how cmr fares against the strongest of them claim by
    claim, and where the two break."""
    learned = checks.memories_that_learned(validity)
    failed = [k[: -len("_learned")] for k, r in validity.items() if k.endswith("_learned") and not (r or {}).get("passed")]
    lines = [f"**Memories that learned the task** (far recall >= {rc.learned_threshold:g} on validation, every seed): "
             f"{', '.join(learned) or 'none'}" + (f"; **did not**: {', '.join(failed)} (not counted below)" if failed else "")
             + "."]
    recall = results.get("recall")
    best = strongest_baseline(recall.table, learned) if recall is not None and not recall.table.empty else None
    if best is None:
        return lines
    b = best[0]
    parts = []
    for v in verdict_list:
        c = cells_vs(results.get(v["name"]), b, rc)
        if c is not None:
            parts.append(f"claim {v['claim']} ({v['name']}) better in {c[0]}/{c[2]} cells, worse in {c[1]}/{c[2]}")
        elif v["name"] == "overhead" and v.get("vs_strongest", "").startswith("cmr costs"):
            parts.append(f"claim 2 ({v['vs_strongest'].split(' (')[0].removeprefix('cmr ')})")
    role = ("the strongest memory that learned" if b in learned
            else "the strongest baseline (no other memory learned the task)")
    lines.append(f"**`cmr` against `{b}`**, {role} (on recall): " + "; ".join(parts) + ".")
    if stress:
        def at(kind: str, v: str) -> str:
            d = (stress.get(kind) or {}).get(v) or {}
            seeds = [str(d[k]) for k in sorted(d) if k.startswith("s") and k[1:].isdigit()]
            return ", ".join(seeds) if seeds else "n/a"
        lines.append(f"**Where they break** (far recall >= {stress.get('threshold', 0.9):g}; per seed): `cmr` holds "
                     f"{at('capacity', 'cmr')} far facts per document and carries them to {at('effective_length', 'cmr')} "
                     f"tokens; `{b}` {at('capacity', b)} facts, {at('effective_length', b)} tokens.")
    return lines


def vs_strongest(res: AccuracyResult | None, rc: ReportConfig, learned: list[str] | None = None) -> str:
    """Whether cmr beats the table's strongest baseline that learned: significant wins and losses over its cells
    (Holm)."""
    if res is None or res.table.empty or "cmr" not in set(res.table["variant"]):
        return "n/a"
    best = strongest_baseline(res.table, learned)
    if best is None:
        return "n/a (no baseline evaluated)"
    b, acc = best
    cmr = float(res.table[res.table["variant"] == "cmr"]["accuracy"].mean())
    cells = cells_vs(res, b, rc) if "comparison" in res.tests else None
    if cells is None:
        return f"{b} (mean {acc:.3f} vs cmr {cmr:.3f}; no paired test)"
    wins, losses, n = cells
    word = "beats" if wins and not losses else "loses to" if losses and not wins else (
        "mixed against" if wins else "does not beat")
    skipped = sorted(set(res.table["variant"]) - {"cmr", CEILING, "window", "xl"} - set(learned or []))
    note = f"; not counted, did not learn: {', '.join(skipped)}" if learned is not None and skipped else ""
    return (f"cmr {word} {b} (mean accuracy {cmr:.3f} vs {acc:.3f}): significantly better in {wins}/{n} "
            f"cells, worse in {losses}/{n} (Holm){note}")


def overhead_vs_strongest(oh: pd.DataFrame, b: str | None) -> str:
    """cmr's ms/token over baseline b's per N, each as a ratio to the window timed with it."""
    if not b or oh.empty or b not in set(oh["variant"]) or b == "window":
        return "n/a" if b != "window" else WINDOW_STRONGEST
    c = oh[oh["variant"] == "cmr"].set_index("N")["ratio_vs_window"]
    x = oh[oh["variant"] == b].set_index("N")["ratio_vs_window"]
    r = (c / x).dropna()
    if r.empty:
        return f"{b}: no N timed for both"
    return (f"cmr costs {r.min():.2f}-{r.max():.2f}x the ms/token of {b} (the strongest baseline that learned, on recall; "
            f"each as its ratio to the window timed with it)")


def rule_text(kind: str, rc: ReportConfig) -> str:
    return VERDICT_RULES[kind].format(ci=int(rc.ci_level * 100), alpha=rc.alpha, ratio=rc.overhead_small_ratio)


def _not_tested(claim: Claim, why: str, rc: ReportConfig, kind: str) -> dict:
    return {"claim": claim.id, "name": claim.name, "source": claim.source, "text": claim.text,
            "verdict": NOT_TESTED, "evidence": why, "cmr_loses": "", "rule": rule_text(kind, rc)}


def ci_text(x: float, lo: float, hi: float, signed: bool = True) -> str:
    f = "+.3f" if signed else ".3f"
    return f"{x:{f}} [{lo:{f}}, {hi:{f}}]" if all(map(math.isfinite, (x, lo, hi))) else f"{x:{f}}"


def judged_range(table: pd.DataFrame, key: str, pair: tuple[str, str], chance: float, rc: ReportConfig) -> tuple[list, str]:
    """(the keys where neither variant of `pair` is at chance or at ceiling, a sentence saying so): a trend can only
    be read where both can move."""
    if table.empty or not {key, "variant", "accuracy"} <= set(table.columns):
        return [], ""
    piv = table.pivot_table(index=key, columns="variant", values="accuracy")
    if any(v not in piv for v in pair) or piv.empty:
        return [], ""
    piv = piv.loc[sort_key_values(pd.Series(piv.index))]
    lo, hi = chance + rc.chance_margin, rc.ceiling_threshold
    inside = [k for k in piv.index if all(lo < piv.at[k, v] < hi for v in pair)]
    stuck = [f"{v} at {'chance' if (piv[v] <= lo).all() else 'ceiling'} at every {key}" for v in pair
             if (piv[v] <= lo).all() or (piv[v] >= hi).all()]
    where = f"{key}={', '.join(map(str, inside))}" if inside else "none"
    text = (f"range: judged on {key}={piv.index[0]}-{piv.index[-1]}; cells where neither {pair[0]} nor {pair[1]} is at "
            f"chance (<= {lo:.2f}) or ceiling (>= {hi:.2f}): {where}" + (f" ({'; '.join(stuck)})" if stuck else ""))
    return inside, text


def accuracy_verdict(claim: Claim, res: AccuracyResult | None, rc: ReportConfig, chance: float = 0.0) -> dict:
    """Verdict on an accuracy claim from cmr-vs-window cells: every cell a significant win, and the trend."""
    if res is None or res.tests.empty or "p_holm" not in res.tests:
        return _not_tested(claim, f"no cmr-vs-window comparison for `{claim.name}` (cmr and window not both "
                                  f"evaluated on it)", rc, "accuracy")
    key = res.spec.key
    t = res.tests[res.tests["comparison"] == "cmr_vs_window"]
    if t.empty:
        return _not_tested(claim, "cmr and window not both evaluated", rc, "accuracy")
    t = t.set_index(key).loc[sort_key_values(t[key])]
    sig = t["p_holm"] < rc.alpha  # and the gap's CI over seeds and documents on one side of 0: a cell that one
    wins = t.index[sig & (t["gap_ci_low"] > 0)].tolist()  # seed's floats can flip is no win or loss
    losses = t.index[sig & (t["gap_ci_high"] < 0)].tolist()
    ties = [k for k in t.index if k not in wins and k not in losses]
    cells = "; ".join(f"{key}={k}: {ci_text(r['gap'], r['gap_ci_low'], r['gap_ci_high'])}, "
                      f"p_holm={fmt(r['p_holm'])}, seeds cmr better {r['seeds_cmr_better']}/{r['n_seeds']}"
                      for k, r in t.iterrows())
    keys = list(t.index)
    trend_ok, trend_bad = not claim.trend, False  # a claim without a trend needs the wins alone
    trend_txt = "trend: none claimed" if not claim.trend else "trend: one cell only"
    if len(keys) >= 2 and claim.trend:
        first, last = keys[0], keys[-1]
        hi_k, lo_k = (last, first) if claim.trend > 0 else (first, last)
        g_hi, g_lo = res.gaps.get(("cmr_vs_window", hi_k)), res.gaps.get(("cmr_vs_window", lo_k))
        if g_hi is not None and g_lo is not None:
            seeds = g_hi.index.intersection(g_lo.index)  # the same seeds, resampled once for both cells
            ci = crossed_bootstrap_diff_ci(g_hi.loc[seeds].to_numpy(), g_lo.loc[seeds].to_numpy(), level=rc.ci_level,
                                           n_resamples=rc.n_resamples, seed=rc.seed)
            trend_ok, trend_bad = ci.low > 0, ci.high < 0
            if claim.trend > 0:
                shape = "grows with" if trend_ok else "shrinks with" if trend_bad else "no clear trend with"
            else:
                shape = ("largest at the lowest" if trend_ok else "larger at the highest" if trend_bad
                         else "no clear difference between lowest and highest")
            trend_txt = (f"gap at {key}={hi_k} minus gap at {key}={lo_k}: {ci_text(ci.mean, ci.low, ci.high)} "
                         f"({shape} {key})")
    inside, range_txt = judged_range(res.table, key, ("cmr", "window"), chance, rc)
    undecidable = bool(claim.trend) and len(keys) >= 2 and len(inside) < 2
    if undecidable:  # a gap between a variant stuck at chance (or ceiling) and another cannot show a trend
        trend_ok = trend_bad = False
        trend_txt += " - not decidable: fewer than two cells where both can move"
    if not wins:
        verdict = NOT_SUPPORTED
    elif len(wins) == len(t) and trend_ok:
        verdict = SUPPORTED
    else:
        verdict = MIXED
    evidence = (f"significant wins {len(wins)}/{len(t)} cells (Holm, alpha={rc.alpha}); {trend_txt}; {range_txt}. "
                f"Per cell gap cmr - window [CI]: {cells}")
    lose = []
    if losses:
        lose.append(f"CMR is significantly worse than window at {key}=" + ", ".join(map(str, losses)) + ".")
    if ties:
        lose.append(f"CMR does not beat window significantly at {key}=" + ", ".join(map(str, ties)) + ".")
    if undecidable:
        lose.append(f"The trend with {key} cannot be judged against window: fewer than two cells where both are "
                    f"off chance and ceiling.")
    elif claim.trend and len(keys) >= 2 and not trend_ok:
        if claim.trend > 0:
            lose.append(f"The gap shrinks with {key}." if trend_bad else f"The gap does not grow with {key} beyond noise.")
        else:
            lose.append(f"The gap is larger at the highest {key} than at the lowest." if trend_bad else
                        f"The gap is not measurably larger at the lowest {key}.")
    return {"claim": claim.id, "name": claim.name, "source": claim.source, "text": claim.text, "verdict": verdict,
            "evidence": evidence, "cmr_loses": " ".join(lose), "rule": rule_text("accuracy", rc), "range": range_txt}


# A memory that holds both of a qualified entity's values but answers the same one whichever speaker is named is
# right on at most half of the qualified queries (half name each statement's speaker): only above it is a query
# resolved. A win over window, which reaches neither statement, shows only that a value was kept.
QUALIFIER_BLIND = 0.5


def above_qualifier_blind(v: dict, res: AccuracyResult | None) -> dict:
    """Claim 8's verdict held to the qualifier-blind bound: supported only where cmr's share right is above
    QUALIFIER_BLIND (its CI) in every gap, not supported where in none, mixed otherwise (never above the verdict
    against window)."""
    t = None if res is None or res.table.empty else res.table[res.table["variant"] == "cmr"]
    if t is None or t.empty or v["verdict"] in (NOT_TESTED,):
        return v
    above = int((t["ci_low"] > QUALIFIER_BLIND).sum())
    note = (f"cmr's share right is above {QUALIFIER_BLIND} (at most what a memory answering one of the two values "
            f"whatever the speaker gets) with its CI in {above}/{len(t)} gaps")
    out = {**v, "evidence": v["evidence"] + f"; {note}"}
    if above < len(t):
        out["verdict"] = NOT_SUPPORTED if above == 0 or v["verdict"] == NOT_SUPPORTED else MIXED
        out["cmr_loses"] = (v["cmr_loses"] + " " if v["cmr_loses"] else "") + (
            f"CMR does not resolve the qualifier: {note}.")
    return out


def overhead_verdict(claim: Claim, oh: pd.DataFrame, rc: ReportConfig) -> dict:
    if oh.empty or "cmr" not in set(oh["variant"]) or "window" not in set(oh["variant"]):
        return _not_tested(claim, "no overhead.json for both cmr and window", rc, "overhead")
    c = oh[oh["variant"] == "cmr"].dropna(subset=["ratio_vs_window"])
    if c.empty:
        return _not_tested(claim, "no N timed for both cmr and window", rc, "overhead")
    small = c["ratio_vs_window"] <= rc.overhead_small_ratio
    verdict = SUPPORTED if small.all() else NOT_SUPPORTED if not small.any() else MIXED
    cells = "; ".join(f"N={n}: {ci_text(r, lo, hi, signed=False)}x"
                      for n, r, lo, hi in zip(c["N"], c["ratio_vs_window"], c["ratio_ci_low"], c["ratio_ci_high"]))
    paper = c["paper_ratio"].dropna()
    ptxt = f"paper {paper.min():.2f}-{paper.max():.2f}x" if len(paper) else "paper ratios n/a"
    evidence = (f"cmr/window ms/token {c['ratio_vs_window'].min():.2f}-{c['ratio_vs_window'].max():.2f}x "
                f"({ptxt}; small = <= {rc.overhead_small_ratio}x). Per N [CI]: {cells}")
    big = c.loc[~small, "N"].tolist()
    lose = (f"CMR costs more than {rc.overhead_small_ratio}x window's ms/token at N=" + ", ".join(map(str, big))
            + f" (up to {c['ratio_vs_window'].max():.2f}x).") if big else ""
    return {"claim": claim.id, "name": claim.name, "source": claim.source, "text": claim.text, "verdict": verdict,
            "evidence": evidence, "cmr_loses": lose, "rule": rule_text("overhead", rc)}


def _metric_ci(row: pd.Series, m: str) -> tuple[float, float, float]:
    """(mean, low, high) of metric m in an attention-table row; NaNs where absent."""
    get = lambda c: float(row[c]) if c in row.index and pd.notna(row[c]) else math.nan  # noqa: E731
    mean = get(m) if math.isfinite(get(m)) else get(f"{m}_mean")
    low = get(f"{m}_ci_low") if f"{m}_ci_low" in row.index else get(f"{m}_low")
    high = get(f"{m}_ci_high") if f"{m}_ci_high" in row.index else get(f"{m}_high")
    return mean, low, high


def attention_verdict(claim: Claim, table: pd.DataFrame | None, rc: ReportConfig, why: str = "",
                      base: str = "window") -> dict:
    """cmr's attention against `base` (window: the claim's comparison) per layer, by the rule in VERDICT_RULES."""
    if table is None or table.empty:
        return _not_tested(claim, why or "no attention table", rc, "attention")
    if not {"variant", "layer"} <= set(table.columns) or not {"cmr", base} <= set(table["variant"]):
        return _not_tested(claim, f"attention table lacks cmr and {base} rows per layer", rc, "attention")
    more, less, cells = [], [], []
    for layer in sort_key_values(table["layer"]):
        c = table[(table["variant"] == "cmr") & (table["layer"] == layer)]
        w = table[(table["variant"] == base) & (table["layer"] == layer)]
        if c.empty or w.empty:
            continue
        c, w = c.iloc[0], w.iloc[0]
        ce, we = _metric_ci(c, "entropy"), _metric_ci(w, "entropy")
        cf = _metric_ci(c, "mass_fact_slots")
        if not math.isfinite(cf[0]):
            cf = _metric_ci(c, "mass_fact")
        wf = _metric_ci(w, "mass_fact")
        if ce[2] < we[1]:
            more.append(f"layer {layer}: entropy lower")
        elif ce[1] > we[2]:
            less.append(f"layer {layer}: entropy higher")
        if cf[1] > wf[2]:
            more.append(f"layer {layer}: more mass on the fact")
        elif cf[2] < wf[1]:
            less.append(f"layer {layer}: less mass on the fact")
        cells.append(f"layer {layer}: entropy cmr {ci_text(*ce, signed=False)} vs {base} {ci_text(*we, signed=False)}"
                     f", mass on fact cmr {ci_text(*cf, signed=False)} vs {base} {ci_text(*wf, signed=False)}")
    if not cells:
        return _not_tested(claim, f"no layer with both cmr and {base} rows", rc, "attention")
    verdict = NOT_SUPPORTED if not more else MIXED if less else SUPPORTED
    evidence = (f"more structured: {', '.join(more) or 'none'}; less: {', '.join(less) or 'none'}. "
                + "; ".join(cells))
    lose = (f"CMR's attention is less structured than {base}'s: " + ", ".join(less) + ".") if less else (
        "" if more else f"CMR's attention is not measurably more structured than {base}'s (CIs overlap).")
    return {"claim": claim.id, "name": claim.name, "source": claim.source, "text": claim.text, "verdict": verdict,
            "evidence": evidence, "cmr_loses": lose, "rule": rule_text("attention", rc)}


def length_axis_trend(stress: Mapping[str, Any], best: str, chance: float, rc: ReportConfig) -> str:
    """Claim 1's trend read on the whole length axis (the study's N and the stress lengths) against `best`, on the
    lengths where neither is at chance or ceiling (point estimates, mean over seeds)."""
    rows = [{"variant": v, "N": int(n), "accuracy": a} for v, curve in (stress.get("length") or {}).items()
            for n, a in curve.items() if v in ("cmr", best) and a is not None]
    if not rows:
        return f"length axis: no stress lengths for cmr and {best}"
    t = pd.DataFrame(rows)
    inside, text = judged_range(t, "N", ("cmr", best), chance, rc)
    piv = t.pivot_table(index="N", columns="variant", values="accuracy")
    if len(inside) < 2:
        return f"length axis (up to N={int(piv.index.max())}) against {best}: {text}; no trend to read"
    g = {n: piv.at[n, "cmr"] - piv.at[n, best] for n in inside}
    first, last = inside[0], inside[-1]
    word = "grows" if g[last] > g[first] else "shrinks" if g[last] < g[first] else "stays"
    return (f"length axis against {best}: gap cmr - {best} {g[first]:+.3f} at N={first} -> {g[last]:+.3f} at "
            f"N={last} ({word}; point estimates, {text})")


def verdicts(results: Mapping[str, AccuracyResult], oh: pd.DataFrame, attention: pd.DataFrame | None,
             rc: ReportConfig, attention_why: str = "", validity: Mapping[str, dict] | None = None,
             stress: Mapping[str, Any] | None = None) -> list[dict]:
    """One verdict per claim in CLAIMS, in order. A claim whose validity checks (checks.CLAIM_CHECKS)
    did not all pass is "not testable": its evidence is still computed and shown, but no verdict is drawn.
    `stress`: summary.json's where-memories-break entry, for claim 1's trend on the whole length axis."""
    out = []
    chance = float(((validity or {}).get("window_near_chance") or {}).get("chance") or 0.0)
    recall = results.get("recall")
    learned = checks.memories_that_learned(validity or {})
    recall_best = strongest_baseline(recall.table, learned) if recall is not None and not recall.table.empty else None
    for claim in CLAIMS:
        if claim.name == "overhead":
            v = overhead_verdict(claim, oh, rc)
            v["vs_strongest"] = overhead_vs_strongest(oh, recall_best[0] if recall_best else None)
        elif claim.name == "attention":
            v = attention_verdict(claim, attention, rc, attention_why)
            b = recall_best[0] if recall_best else None
            vb = attention_verdict(claim, attention, rc, attention_why, base=b) if b and b != "window" else None
            v["vs_strongest"] = ("n/a" if b is None else WINDOW_STRONGEST if vb is None else
                                 f"against {b} (the strongest baseline that learned, on recall): {vb['verdict']}; "
                                 f"{vb['evidence'].split('. ')[0]}")
        else:
            v = accuracy_verdict(claim, results.get(claim.name), rc, chance)
            v["vs_strongest"] = vs_strongest(results.get(claim.name), rc, learned)
            if claim.name == "qualifier":
                v = above_qualifier_blind(v, results.get(claim.name))
            if claim.name == "recall" and stress and recall_best:
                v["vs_strongest"] += "; " + length_axis_trend(stress, recall_best[0], chance, rc)
        blocked = checks.blocking(claim.name, validity or {})
        if blocked and v["verdict"] != NOT_TESTED:
            v = {**v, "verdict": NOT_TESTABLE, "would_be": v["verdict"], "blocked_by": blocked,
                 "cmr_loses": f"validity checks not passed: {'; '.join(blocked)}",
                 "evidence": f"not testable (validity checks not passed: {'; '.join(blocked)}); the evidence "
                             f"as measured: {v['evidence']}"}
        out.append(v)
    return out
