"""Table I (ours) as its own stage: `python -m pipeline.datasets_table [--params params.yaml]`.

The paper's Table I lists its text domains and their lengths; ours lists the generated splits.
Everything comes from data/manifest.json (written by the prepare stage, which measured each split),
so this stage needs neither the splits themselves nor torch, and reruns only when the data change.
Writes results/datasets/datasets.{csv,md,tex,png} and results/plots/datasets.csv; the report stage
reads results/datasets/datasets.csv for REPORT.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from pipeline.errors import DataError
from pipeline.io import atomic_write_text

COLUMNS = ("split", "kind", "documents", "mean_tokens", "max_tokens", "mean_words", "facts_per_doc",
           "queries_per_doc", "mean_distance_tokens", "filler")


def split_kind(name: str) -> str:
    """train / val / recall / numeric / dialogue / rare: the split name without its length suffix."""
    return name.split("_", 1)[0]


def datasets_table(manifest: Mapping[str, Any]) -> pd.DataFrame:
    """Per split: documents, mean (and max) length in tokens, mean words, facts and queries per document,
    mean fact-to-query distance, and the filler text's source; training splits first, then by kind and length."""
    splits = manifest.get("splits")
    if not isinstance(splits, Mapping) or not splits:
        raise DataError("data/manifest.json has no `splits` (rerun the prepare stage: python -m pipeline.data.prepare)")
    rows = []
    for name, sp in splits.items():
        if "docs" not in sp or "mean_tokens" not in sp:
            raise DataError(f"data/manifest.json: split {name!r} lacks `docs` or `mean_tokens`")
        rows.append({"split": name, "kind": split_kind(name), "documents": sp.get("docs"),
                     "mean_tokens": sp.get("mean_tokens"), "max_tokens": sp.get("max_tokens"),
                     "mean_words": sp.get("mean_words"), "facts_per_doc": sp.get("facts_per_doc"),
                     "queries_per_doc": sp.get("queries_per_doc"), "mean_distance_tokens": sp.get("mean_distance"),
                     "filler": manifest.get("filler_source")})
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    order = {"train": 0, "val": 1}
    df["_o"] = df["kind"].map(lambda k: order.get(k, 2))
    return df.sort_values(["_o", "kind", "mean_tokens", "split"]).drop(columns="_o").reset_index(drop=True)


def plot_datasets(df: pd.DataFrame, path: Path) -> None:
    """Mean document length (tokens) per split, grouped by kind; the training length marked."""
    from pipeline.report.render import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(df) + 1.5))
    colors: dict[str, Any] = {}
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    for kind in dict.fromkeys(df["kind"]):
        colors[kind] = cycle[len(colors) % len(cycle)]
    y = range(len(df))
    ax.barh(list(y), df["mean_tokens"], color=[colors[k] for k in df["kind"]])
    ax.set_yticks(list(y), df["split"])
    ax.invert_yaxis()
    train = df[df["kind"] == "train"]
    if len(train) and pd.notna(train["max_tokens"].iloc[0]):
        ax.axvline(float(train["max_tokens"].iloc[0]), color="gray", linestyle=":",
                   label=f"longest training document ({int(train['max_tokens'].iloc[0])} tokens)")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel("mean document length (tokens, log scale)")
    ax.set_title("Table I (ours): the generated splits")
    save_png(fig, path)
    plt.close(fig)


def write_datasets(manifest_path: Path, results_dir: Path) -> pd.DataFrame:
    """Read the manifest, write every output of the stage, return the table."""
    from pipeline.report.render import write_table

    if not manifest_path.is_file():
        raise DataError(f"{manifest_path} missing (run the prepare stage: python -m pipeline.data.prepare)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"corrupt JSON file {manifest_path}: {e}") from e
    df = datasets_table(manifest)
    tables, plots = results_dir / "datasets", results_dir / "plots"  # its own folder: the DVC out of this stage
    write_table(df, tables / "datasets",
                f"Table I (ours): the generated splits, from {manifest_path}: documents, mean and max length in "
                f"tokens, mean words, facts and queries per document, mean fact-to-query distance (tokens), "
                f"filler source")
    atomic_write_text(plots / "datasets.csv", df[["split", "kind", "mean_tokens", "mean_words"]].to_csv(index=False))
    plot_datasets(df, tables / "datasets.png")
    return df


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline import stage_cli

    args = stage_cli.parse(stage_cli.parser("datasets", __doc__.split("\n\n")[0]), argv)

    def body() -> None:
        cfg = stage_cli.load_config(args)
        results = Path(str(cfg.paths.results_dir))
        df = write_datasets(Path(str(cfg.paths.data_dir)) / "manifest.json", results)
        print(f"Table I: {len(df)} splits -> {results}/datasets/datasets.(csv|md|tex|png), "
              f"{results}/plots/datasets.csv")

    return stage_cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
