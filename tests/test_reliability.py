"""Faults a careful user meets: a killed stage's workers, an unreachable wandb server, a report that
fails half-way, a DVC rerun after an interruption. Each test drives the real code path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from pipeline.io import staged_outputs

REPO = Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped has finished)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_seed_workers_die_with_a_killed_parent(tmp_path):
    (tmp_path / "sleeper.py").write_text(textwrap.dedent("""
        import os, sys, time
        from pathlib import Path

        def work(cfg, variant, seed):
            Path(cfg.out, f"{seed}.pid").write_text(str(os.getpid()))
            time.sleep(120)

        if __name__ == "__main__":
            from omegaconf import OmegaConf
            from pipeline.parallel import map_seeds
            map_seeds(work, OmegaConf.create({"out": sys.argv[1]}), "x", [0, 1], 2)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    parent = subprocess.Popen([sys.executable, str(tmp_path / "sleeper.py"), str(tmp_path)], env=env, cwd=tmp_path)
    try:
        deadline = time.time() + 90
        while len(list(tmp_path.glob("*.pid"))) < 2 and time.time() < deadline and parent.poll() is None:
            time.sleep(0.2)
        pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
        assert len(pids) == 2, "workers did not start"
        assert all(_alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.time() + 15
        while any(_alive(p) for p in pids) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in pids), "seed workers outlived their parent"
    finally:
        parent.kill()
        for p in tmp_path.glob("*.pid"):
            try:
                os.kill(int(p.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_killed_seed_worker_is_one_line_and_exit_2(tmp_path):
    """A seed's process killed (the OOM killer, a kill -9) ends the stage with one line, not a pool traceback."""
    (tmp_path / "killer.py").write_text(textwrap.dedent("""
        import os, signal, sys
        from pipeline import stage_cli

        def work(cfg, variant, seed):
            if seed == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            return seed

        if __name__ == "__main__":
            from omegaconf import OmegaConf
            from pipeline.parallel import map_seeds
            sys.exit(stage_cli.run(lambda: print(map_seeds(work, OmegaConf.create({}), "window", [0, 1], 2))))
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.run([sys.executable, str(tmp_path / "killer.py")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("error: a process running a seed of window died"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_ctrl_c_in_a_stage_is_one_line_and_exit_130(capsys):
    from pipeline import stage_cli

    def body():
        raise KeyboardInterrupt

    assert stage_cli.run(body) == 130
    assert capsys.readouterr().err.startswith("error: interrupted; the run was not finished")


@pytest.mark.parametrize("key", [None, "a" * 40])
def test_wandb_online_without_a_server_logs_offline_quickly(tmp_path, monkeypatch, capsys, key):
    pytest.importorskip("wandb")
    from pipeline.tracking import start_wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc key
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    if key is None:
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
    else:
        monkeypatch.setenv("WANDB_API_KEY", key)
    cfg = {"logger": {"wandb": {"mode": "online", "init_timeout": 2}}}
    t0 = time.perf_counter()
    run = start_wandb(cfg, "test", "r", tmp_path / "run")
    try:
        assert run.offline
        assert time.perf_counter() - t0 < 30
        err = capsys.readouterr().err
        assert "wandb online unavailable" in err and "logging offline" in err
    finally:
        run.finish()


def test_staged_outputs_swap_in_whole_or_not_at_all(tmp_path):
    dest = tmp_path / "results"
    (dest / "tables").mkdir(parents=True)
    (dest / "tables" / "old.csv").write_text("old")
    (dest / "REPORT.md").write_text("old report")
    (dest / "plots").mkdir()
    (dest / "plots" / "datasets.csv").write_text("other stage")
    (dest / "plots" / "recall.csv").write_text("old plot")

    with pytest.raises(OSError):
        with staged_outputs(dest, ["tables", "REPORT.md"], ("plots",)) as tmp:
            (tmp / "tables").mkdir()
            (tmp / "tables" / "new.csv").write_text("new")
            raise OSError("disk full")
    assert (dest / "tables" / "old.csv").read_text() == "old" and not (dest / "tables" / "new.csv").exists()
    assert (dest / "REPORT.md").read_text() == "old report"

    with staged_outputs(dest, ["tables", "REPORT.md", "summary.json"], ("plots",)) as tmp:
        (tmp / "tables").mkdir()
        (tmp / "tables" / "new.csv").write_text("new")
        (tmp / "REPORT.md").write_text("new report")
        (tmp / "plots").mkdir()
        (tmp / "plots" / "recall.csv").write_text("new plot")
    assert sorted(p.name for p in (dest / "tables").iterdir()) == ["new.csv"]  # the folder is replaced
    assert (dest / "REPORT.md").read_text() == "new report"
    assert (dest / "plots" / "recall.csv").read_text() == "new plot"
    assert (dest / "plots" / "datasets.csv").read_text() == "other stage"  # a shared folder keeps the rest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no temporary folder left behind


def test_a_failing_report_leaves_the_old_results(tmp_path, monkeypatch, capsys):
    from pipeline.report import cli as report

    res = tmp_path / "res"
    (res / "tables").mkdir(parents=True)
    (res / "tables" / "recall.csv").write_text("old")
    (res / "REPORT.md").write_text("old")
    params = tmp_path / "params.yaml"
    from omegaconf import OmegaConf

    from pipeline.config import compose

    OmegaConf.save(OmegaConf.merge(compose([]), {"paths": {"results_dir": str(res)},
                                                 "study": {"variants": ["cmr"], "seeds": [0]}}), params)

    def half_then_fail(cfg, evals, trains, out, **kw):
        (out / "tables").mkdir()
        (out / "tables" / "recall.csv").write_text("new")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "study_dirs", lambda cfg, all_runs: ([], []))
    monkeypatch.setattr(report, "build_report", half_then_fail)
    assert report.main(["--params", str(params)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert (res / "tables" / "recall.csv").read_text() == "old" and (res / "REPORT.md").read_text() == "old"


def test_dvc_keeps_training_checkpoints_for_a_resume():
    """A killed `dvc repro` reruns train with its checkpoints in place (persist), and train() resumes
    them only when their run_fingerprint matches (tests/test_train.py)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    outs = stages["train"]["outs"]
    assert outs == [{"experiments/train/${item.variant}": {"persist": True}}]


def test_bytecode_in_a_dep_folder_is_not_a_code_change():
    """A plain `python -m pipeline...` run writes __pycache__/ inside dep folders (pipeline/data, pipeline/models);
    DVC must not hash it, or `dvc status` reports the stages changed and `dvc repro` retrains (.dvcignore)."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        ignore = repo.dvcignore
        assert ignore.is_ignored_file(str(REPO / "pipeline/data/__pycache__/loader.cpython-311.pyc"))
        assert ignore.is_ignored_dir(str(REPO / "pipeline/models/__pycache__"))
        assert not ignore.is_ignored_file(str(REPO / "pipeline/data/loader.py"))
