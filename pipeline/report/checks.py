"""Validity checks: when may a table speak to the paper (docs/METHOD.md section 4b)?

A table compares memories only if the models learned the task where it is within their reach. Each
check is read per seed (a seed that did not learn is a finding about the recipe, never averaged away):

- ceiling:            `full` recalls far facts within its training length (validation split) on every seed;
- <memory>_learned:   `cmr`, and every other memory whose state spans the document, recalls far facts at its
                      training length (the validation split) on every seed: it learned the task;
- <memory>_long:      the same memory recalls far facts on the long validation split (val_long: evaluation-like
                      documents of 256-2,048 tokens from the training seed family, what its checkpoint is selected
                      on) on every seed: it carries them past its training length (`cmr_long` gates cmr's claims);
- window_near_chance: `window` is near chance on far facts (out of its window), so the task separates;
- xl_reach:           `xl` recalls facts one segment back (inside its cache) and is near chance beyond its
                      reach (n_layers x mem_len tokens), so the baseline memory works as designed;
- binding:            when `cmr` answers with one of the document's values, it picks the right one more
                      often than a uniform pick among them (it binds values to their entities, instead of
                      remembering which values occurred);
- numeric_learnable:  `full` solves the sums on the validation split (the operation is learnable at this size).

`CLAIM_CHECKS` says which checks each claim depends on; a claim whose checks did not all pass is
"not testable" with the reason, never "not supported".
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from pipeline.config.schema import ReportConfig
from pipeline.report.common import METHOD, FAILED, NOT_RUN, PASSED, doc_mean_over_seeds, per_seed_accuracy, variant_order

LONG_FAR = "val_long/recall_far"  # the monitor of a memory whose state spans the document

ACCURACY_CHECKS = ("ceiling", "cmr_learned", "cmr_long", "window_near_chance", "binding")
CLAIM_CHECKS = {
    "recall": ACCURACY_CHECKS,
    "rare": ACCURACY_CHECKS,
    "dialogue": ACCURACY_CHECKS,
    "numeric": ("ceiling", "cmr_learned", "cmr_long", "window_near_chance", "numeric_learnable"),
    "overhead": (),  # timing does not depend on what the models learned
    "attention": ("ceiling", "cmr_learned", "cmr_long", "binding"),
    "ambiguous": ACCURACY_CHECKS,
    "qualifier": ACCURACY_CHECKS,
}


def _result(passed: bool | None, detail: str, **extra: Any) -> dict:
    status = NOT_RUN if passed is None else PASSED if passed else FAILED
    return {"status": status, "passed": passed, "detail": detail, **extra}


def _seeds_of(train: Mapping[str, dict], variant: str) -> dict[int, dict]:
    out = {}
    for name, m in (train or {}).items():
        v, _, s = name.rpartition("-s")
        if v == variant and s.isdigit():
            out[int(s)] = m or {}
    return dict(sorted(out.items()))


def _per_seed_check(values: Mapping[int, Any], threshold: float, what: str) -> dict:
    """Pass iff every seed's value is >= threshold (a missing value fails that seed)."""
    if not values:
        return _result(None, f"{what}: no run recorded it")
    bad = {s: v for s, v in values.items() if not isinstance(v, (int, float)) or v < threshold}
    cells = ", ".join(f"s{s} {v:.3f}" if isinstance(v, (int, float)) else f"s{s} n/a" for s, v in values.items())
    return _result(not bad, f"{what} >= {threshold:.2f} on every seed: {cells}", threshold=threshold,
                   per_seed={str(s): v for s, v in values.items()})


def ceiling(train: Mapping[str, dict], rc: ReportConfig) -> dict:
    vals = {s: m.get("val_recall_far") for s, m in _seeds_of(train, "full").items()}
    return _per_seed_check(vals, rc.ceiling_threshold, "full's far recall within its training length (val)")


def learned(train: Mapping[str, dict], rc: ReportConfig, variant: str) -> dict:
    vals = {s: m.get("val_recall_far") for s, m in _seeds_of(train, variant).items()}
    return _per_seed_check(vals, rc.learned_threshold, f"{variant}'s far recall at its training length (val)")


def carries_long(train: Mapping[str, dict], rc: ReportConfig, variant: str) -> dict:
    vals = {s: m.get("val_long_recall_far") for s, m in _seeds_of(train, variant).items()}
    return _per_seed_check(vals, rc.long_threshold, f"{variant}'s far recall on the long validation split (val_long)")


def spans_document(variant: str, metrics: Mapping[str, Any] | None) -> bool:
    """Whether a variant's state spans the document: its memory's class says so (MemoryConfig.spans_document; a
    memory's own recipe may choose its checkpoint on another monitor); a variant the registry does not name is
    judged by its runs' monitor."""
    from pipeline.models.registry import NAMES, config_class

    if variant in NAMES:
        return bool(config_class(variant).spans_document)
    return (metrics or {}).get("monitor") == LONG_FAR


def learned_checks(train: Mapping[str, dict], rc: ReportConfig) -> dict:
    """`<variant>_learned` and `<variant>_long` for every memory whose state spans the document
    (spans_document), in the study's order: the same
    two checks for each, so a comparison names the memories that learned the task."""
    spanning = {name.rpartition("-s")[0] for name, m in train.items() if spans_document(name.rpartition("-s")[0], m)}
    out = {}
    for v in variant_order(spanning | {METHOD}):
        out[f"{v}_learned"], out[f"{v}_long"] = learned(train, rc, v), carries_long(train, rc, v)
    return out


def memories_that_learned(validity: Mapping[str, dict]) -> list[str]:
    """The memories whose `<variant>_learned` check passed on every seed, in the study's order."""
    return [k[: -len("_learned")] for k, r in validity.items() if k.endswith("_learned") and (r or {}).get("passed")]


def numeric_learnable(train: Mapping[str, dict], rc: ReportConfig) -> dict:
    vals = {s: (m.get("val_best") or {}).get("val/recall_numeric") for s, m in _seeds_of(train, "full").items()}
    return _per_seed_check(vals, rc.numeric_threshold, "full's sum accuracy on the validation split")


def window_near_chance(rec: pd.DataFrame, rc: ReportConfig, chance: float, chance_src: str) -> dict:
    far = rec[(rec["variant"] == "window") & (rec["query_type"] == "far")]
    if far.empty:
        return _result(None, "`window` far-query recall was not evaluated", chance=chance)
    limit = chance + rc.chance_margin
    seeds = per_seed_accuracy(far)
    acc = doc_mean_over_seeds(far)
    return _result(all(a <= limit for a in seeds.values()),
                   f"window far-query accuracy {acc:.3f} (per seed: "
                   + ", ".join(f"s{s} {a:.3f}" for s, a in seeds.items())
                   + f") vs chance {chance:.3f} ({chance_src}) + margin {rc.chance_margin:.2f} = {limit:.3f}",
                   accuracy=acc, chance=chance, margin=rc.chance_margin, limit=limit, n_queries=int(len(far)),
                   per_seed={str(s): a for s, a in seeds.items()})


def xl_reach(rec: pd.DataFrame, rc: ReportConfig, chance: float, reach_segments: int | None) -> dict:
    """xl one segment back (distance bin 1) vs beyond its reach (bins whose lower edge exceeds it)."""
    xl = rec[rec["variant"] == "xl"]
    if xl.empty or "distance_segments" not in xl or not reach_segments:
        return _result(None, "`xl` was not evaluated (or backbone.window / models.xl.mem_len unknown)")
    near, beyond = xl[xl["distance_segments"] == 1], xl[xl["distance_segments"] > reach_segments]
    if near.empty or beyond.empty:
        return _result(None, f"no xl queries {'one segment back' if near.empty else 'beyond its reach'}")
    limit = chance + rc.chance_margin
    sn, sb = per_seed_accuracy(near), per_seed_accuracy(beyond)
    ok = all(a >= rc.xl_near_threshold for a in sn.values()) and all(a <= limit for a in sb.values())
    fmt = lambda d: ", ".join(f"s{s} {a:.3f}" for s, a in d.items())  # noqa: E731
    return _result(ok, f"xl one segment back >= {rc.xl_near_threshold:.2f} ({fmt(sn)}; n={len(near)}) and beyond "
                       f"its reach of {reach_segments} segments <= {limit:.3f} ({fmt(sb)}; n={len(beyond)})",
                   near={str(s): a for s, a in sn.items()}, beyond={str(s): a for s, a in sb.items()},
                   reach_segments=reach_segments)


def binding_table(rec: pd.DataFrame) -> pd.DataFrame:
    """Per variant and seed, on far recall queries: how often the answer is one of the document's values
    (every value of an evaluation document is asked, so its values are its queries' answers), how often
    it is right when it is, the rate a uniform pick among those values would reach, their gap, and the
    share of answers that copy an earlier query's answer (always wrong: entities do not repeat)."""
    cols = ["variant", "seed", "n_far", "in_doc_values", "acc_when_in_values", "uniform_pick", "binding_gap",
            "copies_earlier_answer"]
    if rec.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    key = ["variant", "seed", "split", "doc_id"]
    for (variant, seed), part in rec.groupby(["variant", "seed"], sort=False):
        n_far = 0
        hits, right, uniform, copies = [], [], [], []
        for _, doc in part.sort_values("query_idx").groupby(key[2:], sort=False):
            values = set(doc["answer"])
            earlier: set = set()
            for _, q in doc.iterrows():
                if q["query_type"] == "far":
                    n_far += 1
                    inv = q["pred"] in values
                    hits.append(inv)
                    copies.append(q["pred"] in earlier)
                    if inv:
                        right.append(bool(q["correct"]))
                        uniform.append(1.0 / len(values))
                earlier.add(q["answer"])
        acc = float(np.mean(right)) if right else math.nan
        uni = float(np.mean(uniform)) if uniform else math.nan
        rows.append({"variant": variant, "seed": int(seed), "n_far": n_far,
                     "in_doc_values": float(np.mean(hits)) if hits else math.nan, "acc_when_in_values": acc,
                     "uniform_pick": uni, "binding_gap": acc - uni,
                     "copies_earlier_answer": float(np.mean(copies)) if copies else math.nan})
    return pd.DataFrame(rows, columns=cols)


def binding(table: pd.DataFrame, rc: ReportConfig) -> dict:
    cmr = table[table["variant"] == "cmr"]
    if cmr.empty:
        return _result(None, "`cmr` far queries were not evaluated")
    per = {int(r["seed"]): r for _, r in cmr.iterrows()}
    ok = all(np.isfinite(r["binding_gap"]) and r["binding_gap"] >= rc.binding_margin for r in per.values())
    cells = "; ".join(f"s{s}: right {r['acc_when_in_values']:.3f} vs uniform {r['uniform_pick']:.3f} "
                      f"(copies an earlier answer {r['copies_earlier_answer']:.3f})" for s, r in per.items())
    return _result(ok, f"cmr, when it answers with one of the document's values, beats a uniform pick among "
                       f"them by >= {rc.binding_margin:.2f} on every seed: {cells}",
                   per_seed={str(s): float(r["binding_gap"]) for s, r in per.items()})


def chance_level(rc: ReportConfig, chance_from_data: float | None, rec: pd.DataFrame) -> tuple[float, str]:
    if rc.chance is not None:
        return rc.chance, "report.chance"
    if chance_from_data:
        return float(chance_from_data), "eval metrics chance_recall (1/possible values)"
    n = int(rec["answer"].nunique()) if not rec.empty else 1
    return 1.0 / max(n, 1), f"1/{n} distinct recall answers"


def validity_checks(preds: pd.DataFrame, rc: ReportConfig, chance_from_data: float | None,
                    train: Mapping[str, dict] | None, reach_segments: int | None = None,
                    binding_tab: pd.DataFrame | None = None) -> dict:
    """Every check of this module as {status, passed, detail, ...}. preds: the study's predictions
    (with `distance_segments` bins where the window is known); train: {"<variant>-s<seed>" (paths.run_name): metrics.json}."""
    rec = preds[preds["task"] == "recall"]
    chance, src = chance_level(rc, chance_from_data, rec)
    train = train or {}
    if binding_tab is None:
        binding_tab = binding_table(rec)
    return {
        "ceiling": ceiling(train, rc),
        **learned_checks(train, rc),
        "window_near_chance": window_near_chance(rec, rc, chance, src),
        "xl_reach": xl_reach(rec, rc, chance, reach_segments),
        "binding": binding(binding_tab, rc),
        "numeric_learnable": numeric_learnable(train, rc),
    }


def blocking(claim_name: str, validity: Mapping[str, dict]) -> list[str]:
    """The checks a claim depends on that did not pass ("name: status")."""
    return [f"{c}: {validity[c]['status']}" for c in CLAIM_CHECKS.get(claim_name, ())
            if c in validity and validity[c]["status"] != PASSED]
