"""End to end: the documented ci-profile command runs the whole DVC pipeline in a temporary copy
of the repo, every table and plot exists with every row, and a second `dvc repro` is a no-op."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.report.verdicts import CLAIMS

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _repo_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def ci_study(tmp_path_factory) -> tuple[Path, dict, str]:
    repo = tmp_path_factory.mktemp("study") / "repo"
    for rel in _repo_files():
        dst = repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dst)
    # results/ in the copy must come from this run, not from the committed default study; the committed runs
    # beside the study and the benchmarks stay (the report stage depends on them, and must leave the runs out
    # of a ci-profile report)
    for path in (repo / "results").iterdir():
        if path.name not in ("hf_cmr", "state_size", "overhead_profile.csv", "speed_benchmark.md",
                             "speed_benchmark.png"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        WANDB_MODE="offline", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", DO_NOT_TRACK="1",
        GIT_AUTHOR_NAME="ci", GIT_AUTHOR_EMAIL="ci@example.invalid",
        GIT_COMMITTER_NAME="ci", GIT_COMMITTER_EMAIL="ci@example.invalid",
    )
    env.pop("PYTHONPATH", None)
    # a wandb service this test process started (its address is exported to children): a study run in the copy
    # must not log through it, nor be killed apart from it
    env.pop("WANDB_SERVICE", None)
    _run(["git", "init", "-q", "-b", "main"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-q", "-m", "snapshot"], repo, env)
    log = _run([str(BIN / "dvc"), "exp", "run", "-S", "profile=ci"], repo, env)
    return repo, env, log


@pytest.mark.e2e
@pytest.mark.timeout(1500)
def test_ci_profile_produces_every_table(ci_study):
    repo, _, log = ci_study
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["profile_name"] == "ci", "dvc exp run -S profile=ci did not recompose params.yaml"
    variants = set(params["study"]["variants"])
    lengths = set(params["data"]["eval_lengths"])
    results = repo / params["paths"]["results_dir"]

    for table in ("recall", "numeric", "rare", "overhead"):
        for ext in ("csv", "md", "tex", "png"):
            path = results / "tables" / f"{table}.{ext}"
            assert path.is_file() and path.stat().st_size > 0, f"missing {path.name}\n{log[-3000:]}"

    for table in ("recall", "numeric"):
        df = pd.read_csv(results / "tables" / f"{table}.csv")
        got = {(v, int(n)) for v, n in zip(df["variant"], df["N"])}
        assert got >= {(v, n) for v in variants for n in lengths}, f"{table}: rows missing"
        assert df["accuracy"].between(0, 1).all()
    overhead = pd.read_csv(results / "tables" / "overhead.csv")
    assert {(v, int(n)) for v, n in zip(overhead["variant"], overhead["N"])} >= {
        (v, n) for v in variants for n in lengths}
    assert (overhead["ms_per_token"] > 0).all()
    rare = pd.read_csv(results / "tables" / "rare.csv")
    assert set(rare["variant"]) == variants and rare["accuracy"].between(0, 1).all()

    seeds = params["study"]["seeds"]
    assert len(seeds) >= 2, "the ci profile should exercise the multi-seed path"
    exp = repo / params["paths"]["experiments_dir"]
    for kind in ("train", "eval", "attention"):
        for v in variants:
            assert sorted(p.name for p in (exp / kind / v).iterdir() if p.is_dir()) == [f"s{s}" for s in seeds]
    attention = pd.read_csv(results / "tables" / "attention.csv")
    assert set(attention["variant"]) == variants
    assert (results / "tables" / "attention.png").is_file()
    assert (results / "tables" / "recall_by_distance.png").is_file()
    # the diagnostics: learning curves per seed (val and val_long), cmr's misses by stage, binding
    curves = pd.read_csv(results / "plots" / "learning_curves.csv")
    assert {(v, s) for v, s in zip(curves["variant"], curves["seed"])} == {(v, s) for v in variants for s in seeds}
    assert curves["val_long_recall_far"].notna().all()
    memory = pd.read_csv(results / "tables" / "memory_by_length.csv")
    assert set(memory["length"]) == lengths and (memory["n"] > 0).all()
    for name in ("learning_curves.png", "memory.png", "binding.csv", "recall_per_seed.csv", "steps_to_target.csv"):
        assert (results / "tables" / name).is_file(), name

    summary = json.loads((results / "summary.json").read_text())
    assert "validity" in summary and "recall" in summary
    # where memories break: load, length and update tables, and each variant's break points
    for name in ("load", "length", "capacity", "effective_length", "update", "qualifiers", "qualifier", "state_size"):
        assert (results / "tables" / f"{name}.csv").is_file(), name
    assert set(summary["stress"]["capacity"]) == set(summary["stress"]["effective_length"]) == variants
    assert "## Where memories break" in (results / "REPORT.md").read_text()
    # the offline dashboard: REPORT.md as one page, every figure it shows on disk beside it
    import re

    page = (results / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert "tables/load.png" in images and "<script" not in page
    assert all((results / src).is_file() for src in images), [s for s in images if not (results / s).is_file()]
    metrics = json.loads((results / "metrics.json").read_text())
    assert set(metrics["far_recall_mean"]) == variants and set(metrics["verdicts"]) == {f"claim{c.id}" for c in CLAIMS}
    assert set(summary["validity"]) == {"ceiling", "cmr_learned", "cmr_long", "rmt_learned", "rmt_long",
                                        "window_near_chance", "xl_reach", "binding", "numeric_learnable"}
    # the ci profile learns nothing in 40 steps: its checks fail and the claims they gate are not testable
    by_name = {v["name"]: v for v in summary["verdicts"]}
    assert by_name["recall"]["verdict"] == "not testable", by_name["recall"]
    assert summary["verdicts"], "no verdict per claim"
    report = (results / "REPORT.md").read_text()
    assert report.startswith("# cmr-repro: `ci` profile - a smoke test, not a result")
    assert "holds a Hugging Face run with another recipe" in report
    assert "holds state-size runs of another recipe" in report  # the default study's gdn runs stay out
    assert (results / "stage_times.csv").is_file()


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_the_study_dashboard_opens_offline_in_a_browser(ci_study):
    """results/index.html of the ci study, opened in headless Chromium: every figure loads, nothing is fetched
    from the network, and the page says it is a smoke test."""
    from tests.browser import need_browser, open_page

    need_browser()
    repo, _, _ = ci_study
    page = open_page(repo / "results" / "index.html")
    assert len(page["images"]) >= 10, page["images"]
    assert all(i["loaded"] for i in page["images"]), [i["src"] for i in page["images"] if not i["loaded"]]
    assert all(url.startswith("file://") for url in page["resources"]), page["resources"]
    assert "smoke test" in page["text"].lower(), page["text"][:500]


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_second_repro_is_a_noop(ci_study):
    repo, env, _ = ci_study
    out = _run([str(BIN / "dvc"), "repro"], repo, env)
    assert "Running stage" not in out, out[-3000:]
    assert "up to date" in out
    # prepare forced: the same data again, so nothing after it reruns (its new wall time is not a report input)
    out = _run([str(BIN / "dvc"), "repro", "--force", "--single-item", "prepare"], repo, env)
    assert "Running stage 'prepare'" in out, out[-3000:]
    out = _run([str(BIN / "dvc"), "status"], repo, env)
    assert "up to date" in out, out[-3000:]


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_bad_value_in_dvc_exp_run_fails_and_leaves_params_yaml(ci_study):
    repo, env, _ = ci_study
    before = (repo / "params.yaml").read_bytes()
    proc = subprocess.run([str(BIN / "dvc"), "exp", "run", "-S", "train.lr=abc"], cwd=repo, env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "train.lr" in proc.stdout + proc.stderr, proc.stderr[-2000:]
    assert (repo / "params.yaml").read_bytes() == before


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_killed_repro_resumes_and_gives_the_same_predictions(ci_study):
    """SIGKILL a `dvc repro` mid-training (after the first checkpoint), rerun it: training resumes
    (train outs persist) and the evaluation equals the uninterrupted run's, bit for bit."""
    import signal
    import time

    repo, env, _ = ci_study
    exp = repo / "experiments"
    before = {p.relative_to(exp): p.read_bytes() for p in (exp / "eval" / "window").glob("s*/predictions.parquet")}
    import torch

    def weights():
        ckpt = exp / "train" / "window" / "s0" / "checkpoints" / "best.ckpt"
        return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]

    weights_before = weights()
    assert before
    shutil.rmtree(exp / "train" / "window")
    proc = subprocess.Popen([str(BIN / "dvc"), "repro", "train@window"], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    last = exp / "train" / "window" / "s0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert not (exp / "train" / "window" / "s0" / "metrics.json").exists()  # it was mid-run
    out = _run([str(BIN / "dvc"), "repro"], repo, env)
    assert "Running stage 'train@window'" in out
    # the rerun continued the interrupted checkpoint (or, killed while writing it, said it was unreadable)
    assert "Restored all states" in out or "is unreadable" in out, out[-3000:]
    after = {p.relative_to(exp): p.read_bytes() for p in (exp / "eval" / "window").glob("s*/predictions.parquet")}
    assert after == before
    w = weights()
    assert w.keys() == weights_before.keys() and all(torch.equal(w[k], weights_before[k]) for k in w)
    assert "up to date" in _run([str(BIN / "dvc"), "status"], repo, env)
