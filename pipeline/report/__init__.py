"""Report stage: aggregate every evaluation run into tables, plots, verdicts, summary.json and REPORT.md.

`python -m pipeline.report [--params params.yaml] [--all]` reads the composed config, finds the
study's runs at experiments/eval/<variant>/s<seed>/ (pipeline/paths.py; `--all`: every
experiments/eval/*/s*/), and writes results/. Only pandas / scipy / matplotlib are imported
(no torch), so the stage starts in about a second.

The paper's "baseline model" is our `window` variant; the paper's numbers (pipeline/report/paper_numbers.yaml)
stand beside ours in every table. Accuracy cells: mean over seeds of the per-seed accuracy (each seed's
accuracy = mean over documents of the per-document accuracy), a bootstrap CI resampling seeds and documents
(pipeline.stats.crossed_bootstrap_ci), and n (queries, documents, seeds). cmr-vs-<memory> cells
(every variant but the `full` ceiling) get an exact McNemar test on the per-query outcomes paired by (seed, split, document,
query) and pooled over seeds, Holm-corrected over every such cell of the paper's tables II, IV, V, VI
together (the distance table, a re-slicing of table II's queries, is its own family).

Inputs beside the evaluation runs: results/datasets/datasets.csv (Table I, written by
`python -m pipeline.datasets_table`, shown in REPORT.md if present); the training runs'
metrics.json; and the attention stage's experiments/attention/<variant>/s<seed>/attention.parquet.
Attention outputs are required exactly when experiments/attention/ exists (the DVC report stage
depends on it, so in the pipeline it always does): then a missing file is a DataError naming it.
Without the folder (unit tests, or a study run before that stage existed) claim (6) is "not tested".

Each paper claim gets a verdict (supported / not supported / mixed / not tested) computed by the
rules in `verdicts.CLAIMS` and `verdicts.*_verdict`, which REPORT.md states beside the verdicts. Modules:
runs (which runs, what each recorded), load (reading one run), paper (the paper's numbers), tables (cells,
tests), checks (validity), verdicts, costs (model sizes, stage times), render (tables and plots on disk, shared
with datasets_table and ablations), markdown (REPORT.md), curves and memory (diagnostics), attention_results
(claim 6), build (all of it into results/), cli (the stage). This file imports nothing, so every submodule
can be imported on its own.
"""
