"""Training stage (and pipeline/data/loader.py): checkpoints and metrics, learning, determinism, resume, divergence, curriculum,
load_trained. Real pieces at tiny sizes (pipeline.data.prepare: 300 docs; build_model: d=32,
2 layers, W=16); wandb disabled."""

from __future__ import annotations

import csv
import dataclasses
import json
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

datasets = pytest.importorskip("datasets")
L = pytest.importorskip("lightning")

from pipeline import train as T  # noqa: E402
from pipeline.data.loader import CurriculumBatchSampler, MemoryDataModule  # noqa: E402
from pipeline.config import as_plain  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.models.checkpoint import load_trained  # noqa: E402
from pipeline.train_module import MemoryLMModule  # noqa: E402
from pipeline.errors import ConfigError, DataError, TrainingError  # noqa: E402
from pipeline.config.schema import RootConfig  # noqa: E402
from pipeline.config.checks import check_train as validate_train  # noqa: E402
from pipeline.config.train import curriculum_limit  # noqa: E402

W = 16  # the real generator needs room for a local pair plus a far fact in one segment


def tiny_config(root) -> RootConfig:
    """A whole study config, validated and typed by pipeline.config, sized for a few seconds of CPU."""
    from pipeline.config import typed

    return typed({
        "profile_name": "test",
        "study": {"variants": ["window", "cmr"], "seeds": [0]},
        "paths": {"data_dir": str(root / "data"), "experiments_dir": str(root / "exp"),
                  "results_dir": str(root / "res")},
        "backbone": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "window": W, "max_positions": 256},
        "models": {"window": {"name": "window"},
                   "cmr": {"name": "cmr", "k": 4, "capacity": 8, "bptt_segments": 1}},
        "data": {"segment_len": W, "n_train_docs": 300, "n_val_docs": 32, "train_min_segments": 2,
                 "train_max_segments": 3, "n_entities": 16, "n_common_values": 16, "n_variables": 8,
                 "max_number": 29, "rare_counts": [4, 8], "rare_tokens_per_class": 1, "filler_vocab_size": 64,
                 "eval_lengths": [64], "n_eval_docs": 2, "n_eval_facts": 2, "n_eval_num_vars": 2,
                 "rare_eval_length": 64, "n_rare_docs": 2, "dialogue_turns": [2], "dialogue_turn_len": 16,
                 "n_far_facts": 2, "n_train_long_docs": 0, "train_long_segments": 16, "val_long_lengths": [256, 512],
                 "train_mix": {"recall": 0.7, "numeric": 0.15, "dialogue": 0.15}},
        "eval": {"overhead": {"lengths": [64], "repeats": 5}},
        "train": {"batch_size": 8, "val_batch_size": 16, "lr": 1e-2, "warmup_steps": 5, "max_steps": 10,
                  "max_batch_tokens": None,
                  "val_check_interval": 5, "log_every_n_steps": 5, "progress_bar": "none",
                  "curriculum": [{"until_step": 5, "max_segments": 2}, {"until_step": None, "max_segments": 3}]},
        "logger": {"wandb": {"enabled": False, "mode": "disabled"}, "csv": True},
    })


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Tiny real data (pipeline.data.prepare), built once for the module."""
    from pipeline.data.prepare import prepare

    root = tmp_path_factory.mktemp("train")
    prepare(tiny_config(root), quiet=True)
    return root


@pytest.fixture
def env(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = tiny_config(data_root)
    cfg.paths.experiments_dir = str(tmp_path / "exp")
    return cfg


def _with(cfg, **train):
    """cfg with train.<key> overrides (as a plain, schema-less config, so bad keys reach train())."""
    return OmegaConf.merge(as_plain(cfg), {"train": train})


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("variant", ["window", "cmr"])
def test_short_run_writes_checkpoints_and_metrics(env, tmp_path, variant):
    class Segs(L.Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.seen.append((trainer.global_step, batch["input_ids"].shape[1] // W))

    segs = Segs()
    m = T.train(env, variant, 0, extra_callbacks=[segs])
    run = tmp_path / "exp" / "train" / variant / "s0"
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "checkpoints" / "best.ckpt").exists()
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    assert m["variant"] == variant and m["seed"] == 0 and m["steps"] == 10
    assert m["train_tokens_per_s"] > 0 and m["wall_s"] > 0 and m["params"] > 0
    assert [e["step"] for e in m["val_curve"]] == [5, 10]
    assert {"val/recall", "val/recall_far", "val/recall_local", "val/loss", "val_long/recall_far",
            "val_long/loss"} <= set(m["val_last"])
    # `auto`: cmr's checkpoint chosen on far recall of the long validation split (evaluation-like documents)
    want = "val_long/recall_far" if variant == "cmr" else "val/recall"
    assert m["monitor"] == want and m["val_best_monitor"] == m["val_best"][want]
    assert m["val_long_recall_far"] == m["val_best"]["val_long/recall_far"]
    # training metrics are logged only on the steps the loggers write (log_every_n_steps = 5), every one there
    rows = list(csv.DictReader(next((run / "csv").rglob("metrics.csv")).open()))
    train_rows = [r for r in rows if r["train/loss"]]
    assert [int(r["step"]) for r in train_rows] == [4, 9]
    assert all(r["train/answer_acc"] and r["train/lr"] and r["train/n_segments"] for r in train_rows)
    # the curriculum in a real run: 2-segment docs until step 5, then up to 3
    assert [n for _, n in segs.seen[:5]] == [2] * 5 and all(n <= 3 for _, n in segs.seen)


def test_loss_decreases_on_local_pairs(env, tmp_path):
    class Rec(L.Callback):
        def __init__(self):
            self.losses = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))

    rec = Rec()
    cfg = _with(env, max_steps=200, val_check_interval=200, lr=1e-2, batch_size=16, warmup_steps=5)
    m = T.train(cfg, "window", 0, run_dir=tmp_path / "learn", extra_callbacks=[rec])
    assert len(rec.losses) == 200
    assert np.mean(rec.losses[-10:]) < 0.7 * np.mean(rec.losses[:10]), rec.losses
    # a local pair sits inside one window, so even `window` learns to copy its value
    # (chance: 1 / data.n_common_values = 1/16; 0.17 after 100 steps since numeric facts read `is X N .` like
    # recall facts, 0.57 before; >= 0.35 after 200)
    assert m["val_last"]["val/recall_local"] >= 0.35, m["val_last"]


def _weights(run_dir):
    model, _ = load_trained(run_dir, which="last")
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_is_bit_identical(env, tmp_path):
    a = T.train(env, "window", 0, run_dir=tmp_path / "a")
    b = T.train(env, "window", 0, run_dir=tmp_path / "b")
    T.train(env, "window", 1, run_dir=tmp_path / "c")
    assert a["val_curve"] == b["val_curve"]
    wa, wb, wc = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_rerun_resumes_only_a_run_of_the_same_config(env, tmp_path, capsys):
    straight = T.train(_with(env, max_steps=10), "window", 0, run_dir=tmp_path / "straight")
    first = T.train(_with(env, max_steps=5), "window", 0, run_dir=tmp_path / "resumed")
    assert first["steps"] == 5
    # asking the 5-step run for 10 steps is another run (the cosine schedule depends on max_steps):
    # it starts from scratch, says why, and equals the straight run
    capsys.readouterr()
    second = T.train(_with(env, max_steps=10), "window", 0, run_dir=tmp_path / "resumed")
    assert "different train: training from scratch" in capsys.readouterr().err
    assert second["val_curve"] == straight["val_curve"] and second["steps"] == 10
    # a finished run of the same config is a no-op resume: same metrics, no new training
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    stamp = last.stat().st_mtime_ns
    again = T.train(_with(env, max_steps=10, progress_bar="tqdm"), "window", 0, run_dir=tmp_path / "resumed")
    assert again["val_curve"] == second["val_curve"] and last.stat().st_mtime_ns == stamp
    assert "from scratch" not in capsys.readouterr().err
    # a new learning rate does not report the old run's metrics
    other = T.train(_with(env, max_steps=10, lr=3e-3), "window", 0, run_dir=tmp_path / "resumed")
    assert other["val_curve"] != second["val_curve"]
    assert "different train" in capsys.readouterr().err


def test_early_stopping_ends_a_done_run_and_stays_finished(env, tmp_path):
    """At the target (stop_at) or on a plateau (stop_patience), never before stop_min_steps; the stopped run is the
    same run cut short (same curve up to there), and a rerun of it is a no-op, not more training."""
    straight = T.train(_with(env, max_steps=20, stop_at=None, stop_patience=0), "window", 0, run_dir=tmp_path / "s")
    assert straight["steps"] == 20 and not straight["stopped_early"]
    at = T.train(_with(env, max_steps=20, stop_at=0.0, stop_min_steps=10), "window", 0, run_dir=tmp_path / "at")
    assert at["steps"] == 10 and at["stopped_early"]  # the target is met at step 5, but 10 is the earliest stop
    assert at["val_curve"] == straight["val_curve"][:2]
    last = tmp_path / "at" / "checkpoints" / "last.ckpt"
    stamp = last.stat().st_mtime_ns
    again = T.train(_with(env, max_steps=20, stop_at=0.0, stop_min_steps=10), "window", 0, run_dir=tmp_path / "at")
    assert again["steps"] == 10 and again["val_curve"] == at["val_curve"] and last.stat().st_mtime_ns == stamp
    flat = T.train(_with(env, max_steps=20, stop_at=None, stop_patience=1, stop_min_delta=1.0, stop_min_steps=5),
                   "window", 0, run_dir=tmp_path / "flat")  # no validation can rise by 1.0: stops at the second
    assert flat["steps"] == 10 and flat["stopped_early"]
    # the plateau counts from stop_min_steps: the validation at step 5 is neither the best nor a step of patience
    later = T.train(_with(env, max_steps=20, stop_at=None, stop_patience=1, stop_min_delta=1.0, stop_min_steps=10),
                    "window", 0, run_dir=tmp_path / "later")
    assert later["steps"] == 15 and later["stopped_early"]
    # replayed on the straight run's validations, each rule stops where its trained run stopped and keeps its best
    # checkpoint (pipeline/studies/replay_stopping.py: how the study's patience was chosen)
    from pipeline.config import typed
    from pipeline.studies.replay_stopping import replay

    logged = [(e["step"], e[straight["monitor"]]) for e in straight["val_curve"]]
    for run, rule in ((at, dict(stop_at=0.0, stop_min_steps=10)),
                      (flat, dict(stop_at=None, stop_patience=1, stop_min_delta=1.0, stop_min_steps=5)),
                      (later, dict(stop_at=None, stop_patience=1, stop_min_delta=1.0, stop_min_steps=10))):
        stop, best_step, best = replay(logged, typed(_with(env, max_steps=20, **rule)).train)
        assert (stop, best_step, best) == (run["steps"], run["best_step"], run["val_best_monitor"])


def test_a_memory_trains_with_its_own_recipe(env, tmp_path):
    """models.<variant>.recipe: its train keys replace the study's for that memory alone (its checkpoint says so);
    an unknown key or a runtime key is a ConfigError naming it."""
    cfg = as_plain(env)
    cfg["models"]["window"]["recipe"] = {"lr": 0.05, "curriculum": [{"until_step": None, "max_segments": 3}]}
    own = T.train(cfg, "window", 0, run_dir=tmp_path / "own")
    study = T.train(env, "window", 0, run_dir=tmp_path / "study")
    assert own["val_curve"] != study["val_curve"]
    hp = torch.load(tmp_path / "own" / "checkpoints" / "last.ckpt", weights_only=False)["hyper_parameters"]
    assert hp["cfg"]["train"]["lr"] == 0.05 and hp["cfg"]["train"]["curriculum"][0]["max_segments"] == 3
    for bad, match in (({"lr_typo": 1.0}, r"models.window.recipe: unknown key\(s\) \['lr_typo'\]"),
                       ({"threads": 2}, r"models.window.recipe: \['threads'\] say how a run executes"),
                       ({"max_steps": 7}, r"train.max_steps=7 must be a multiple")):
        cfg["models"]["window"]["recipe"] = bad
        with pytest.raises(ConfigError, match=match):
            T.train(cfg, "window", 0, run_dir=tmp_path / "bad")


def test_fingerprint_names_what_changed(env, tmp_path):
    cfg = as_plain(env)
    fp = T.run_fingerprint(cfg, "cmr", 0, env.paths.data_dir)
    assert fp == T.run_fingerprint(cfg, "cmr", 0, env.paths.data_dir)
    cfg2 = as_plain(env)
    cfg2["models"]["cmr"]["k"] = 2
    cfg2["train"]["threads"] = 2  # runtime only
    changed = {k for k, v in T.run_fingerprint(cfg2, "cmr", 0, env.paths.data_dir).items() if fp[k] != v}
    assert changed == {"model"}
    changed = {k for k, v in T.run_fingerprint(cfg, "cmr", 1, tmp_path).items() if fp[k] != v}
    assert changed == {"seed", "data"}


def test_truncated_checkpoint_is_retrained_and_refused_by_load_trained(env, tmp_path, capsys):
    from pipeline.errors import DataError

    run = tmp_path / "run"
    T.train(env, "window", 0, run_dir=run)
    for name in ("last.ckpt", "best.ckpt"):
        p = run / "checkpoints" / name
        p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(DataError, match="best.ckpt is not a readable checkpoint"):
        load_trained(run)
    m = T.train(env, "window", 0, run_dir=run)
    assert "unreadable" in capsys.readouterr().err and m["steps"] == 10
    load_trained(run)


def test_resume_matches_uninterrupted_run(env, tmp_path):
    """Kill-and-rerun equivalence: stopping after the first checkpoint and rerunning gives the same
    weights as training straight through (sampler is a function of the step; optimizer state saved)."""
    T.train(env, "window", 0, run_dir=tmp_path / "straight")

    class Crash(Exception):
        pass

    class Stop(L.Callback):
        def on_train_batch_end(self, trainer, *a):
            if trainer.global_step == 7:  # after the step-5 checkpoint
                raise Crash

    with pytest.raises(Crash):
        T.train(env, "window", 0, run_dir=tmp_path / "killed", extra_callbacks=[Stop()])
    m = T.train(env, "window", 0, run_dir=tmp_path / "killed")
    assert m["steps"] == 10
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_answer_loss_weights_weight_each_query_type(env):
    """The answer loss is the mean over answers weighted by query type: numeric at weight 0 leaves the mean of
    the other answers, numeric at 3 counts each sum three times; all 1 is the plain mean."""
    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(0, 50, (2, 2 * W)),
             "query_pos": torch.tensor([[5, 20, 30], [7, 31, -1]]),
             "answers": torch.tensor([3, 4, 5, 6, 7, 0]),
             "query_type": torch.tensor([[0, 2, 1], [2, 0, -1]])}  # far, numeric, local / numeric, far
    batch["answers"] = batch["answers"].view(2, 3)
    def loss_and_ce(weights):
        train = dataclasses.replace(env.train, answer_loss_weights=weights)
        torch.manual_seed(1)  # the same model each time
        model = build_model(env.backbone, env.models["window"], 64)
        module = MemoryLMModule(model, train, {"variant": "window", "seed": 0}, "val/recall", ["val"], {})
        module.eval()
        res = module.losses(batch, train=False)
        mask = res["mask"]
        ce = torch.nn.functional.cross_entropy(res["q_logits"][mask], batch["answers"][mask], reduction="none")
        return float(res["answer_loss"].detach()), ce.detach(), batch["query_type"][mask]

    plain, ce, types = loss_and_ce({})
    assert plain == pytest.approx(float(ce.mean()), rel=1e-6)
    zero, _, _ = loss_and_ce({"numeric": 0.0})
    assert zero == pytest.approx(float(ce[types != 2].mean()), rel=1e-6)
    three, _, _ = loss_and_ce({"numeric": 3.0})
    w = 1.0 + 2.0 * (types == 2).float()
    assert three == pytest.approx(float((w * ce).sum() / w.sum()), rel=1e-6)
    assert len({plain, zero, three}) == 3
    with pytest.raises(ConfigError, match="answer_loss_weights.*unknown query type 'sums'"):
        T.train(_with(env, answer_loss_weights={"sums": 2.0}), "window", 0)
    with pytest.raises(ConfigError, match="answer_loss_weights.numeric must be >= 0"):
        T.train(_with(env, answer_loss_weights={"numeric": -1.0}), "window", 0)


def test_nan_loss_raises_training_error(env, tmp_path):
    class Poison(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 3:
                with torch.no_grad():
                    next(module.model.parameters()).fill_(float("nan"))

    T.train(env, "window", 0, run_dir=tmp_path / "nan")  # a finished run, then a diverging rerun
    with pytest.raises(TrainingError, match="step 3"):
        T.train(_with(env, lr=2e-2), "window", 0, run_dir=tmp_path / "nan", extra_callbacks=[Poison()])
    # nothing is left that a rerun would resume or evaluate would score
    assert not (tmp_path / "nan" / "checkpoints").exists() and not (tmp_path / "nan" / "metrics.json").exists()


def test_unknown_variant_and_bad_config(env):
    with pytest.raises(ConfigError, match="cmr, window"):
        T.train(env, "lstm", 0)
    with pytest.raises(ConfigError, match="val_check_interval"):
        T.train(_with(env, max_steps=7), "window", 0)
    with pytest.raises(ConfigError, match="lr"):
        T.train(_with(env, lr=float("nan")), "window", 0)
    with pytest.raises(ConfigError, match="no_such_key"):
        T.train(_with(env, no_such_key=1), "window", 0)
    with pytest.raises(ConfigError, match="curriculum"):
        T.train(_with(env, curriculum=[{"until_step": None, "max_segments": 0}]), "window", 0)


def test_main_reports_config_errors(env, tmp_path, capsys):
    p = tmp_path / "params.yaml"
    p.write_text(OmegaConf.to_yaml(as_plain(env)))
    assert T.main(["--variant", "nope", "--params", str(p)]) == 2
    assert "unknown variant 'nope'" in capsys.readouterr().err
    # overrides are validated like the file: one line, exit 2, no traceback
    assert T.main(["--variant", "window", "--params", str(p), "train.lr=abc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train.lr" in err and "Traceback" not in err
    assert T.main(["--variant", "window", "--params", str(p), "train.no_such=1"]) == 2
    assert "train.no_such" in capsys.readouterr().err


def test_curriculum_sampler_respects_limit_and_equal_lengths():
    n_seg = np.array([1, 2, 3, 1, 2, 3, 3, 2, 1, 4])
    lengths = n_seg * W
    sched = [{"until_step": 10, "max_segments": 1}, {"until_step": 20, "max_segments": 3},
             {"until_step": None, "max_segments": 4}]
    s = CurriculumBatchSampler(lengths, n_seg, batch_size=4, curriculum=sched, seed=0)
    seen = {}
    for step in range(40):
        b = s.batch_at(step)
        assert len(b) == 4 and len({int(lengths[i]) for i in b}) == 1
        lim = curriculum_limit(sched, step)
        assert all(n_seg[i] <= lim for i in b), (step, b)
        seen.setdefault(lim, set()).update(int(n_seg[i]) for i in b)
    assert seen[1] == {1} and seen[3] == {1, 2, 3} and 4 in seen[4]
    # iterating from a step reproduces batch_at (what makes resume exact)
    s.start_step = 17
    it = iter(s)
    assert [next(it) for _ in range(3)] == [s.batch_at(17), s.batch_at(18), s.batch_at(19)]
    with pytest.raises(ConfigError, match="step 0"):
        CurriculumBatchSampler(lengths[n_seg > 1], n_seg[n_seg > 1], 4, sched, 0)


def test_token_cap_shrinks_only_long_batches():
    n_seg = np.repeat([1, 2, 8], 20)
    lengths = n_seg * W
    off = CurriculumBatchSampler(lengths, n_seg, batch_size=4, curriculum=[], seed=1)
    none = CurriculumBatchSampler(lengths, n_seg, 4, [], 1, max_batch_tokens=None)
    cap = CurriculumBatchSampler(lengths, n_seg, 4, [], 1, max_batch_tokens=4 * W)
    sizes = {}
    for step in range(60):
        assert none.batch_at(step) == off.batch_at(step)  # off: the batches are those of no cap at all
        b = cap.batch_at(step)
        ln = int(lengths[b[0]])
        assert len({int(lengths[i]) for i in b}) == 1 and len(b) * ln <= max(4 * W, ln)
        sizes.setdefault(ln // W, set()).add(len(b))
    assert sizes == {1: {4}, 2: {2}, 8: {1}}  # as many as fit, at least one document
    with pytest.raises(ConfigError, match="max_batch_tokens"):
        validate_train(OmegaConf.create({"max_batch_tokens": 0}))


def test_load_trained_round_trips(env, tmp_path):
    from pipeline import data

    T.train(env, "window", 0, run_dir=tmp_path / "r")
    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    vocab = data.load_tokenizer(env.paths.data_dir).get_vocab_size()
    built = build_model(env.backbone, env.models["window"], vocab)  # from the typed config, as train() builds it
    built.load_state_dict({k[len("model."):]: v for k, v in ckpt["state_dict"].items()})  # strict: same modules
    built.eval()
    model, hp = load_trained(tmp_path / "r", which="last")  # from the checkpoint's plain hyperparameters
    assert not model.training and hp["variant"] == "window" and hp["vocab_size"] == data.load_tokenizer(env.paths.data_dir).get_vocab_size()
    assert hp["cfg"]["backbone"]["window"] == W
    val = data.load_split(env.paths.data_dir, "val")
    n = val["n_segments"]
    ids = torch.tensor([x for x, k in zip(val["input_ids"], n) if k == 2][:2])  # [2, 2W]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, built(ids).logits)
    best, _ = load_trained(tmp_path / "r")  # default: best
    assert not best.training


def _lightning_modules_after(imports: str) -> str:
    """The Lightning modules a fresh interpreter has loaded after `import <imports>`."""
    import subprocess
    import sys

    code = (f"import sys; import {imports}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning') "
            "or m in ('pipeline.train', 'pipeline.train_module')))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_evaluation_loads_checkpoints_without_lightning():
    """Checkpoints are read by pipeline.models.checkpoint with plain torch: the evaluation stages import
    neither Lightning nor the training module."""
    out = _lightning_modules_after("pipeline.evaluate, pipeline.evaluate.attention, pipeline.evaluate.overhead, "
                                   "pipeline.models.checkpoint")
    assert out == "[]", out


def test_training_stage_parent_starts_without_lightning():
    """The train stage's parent only spawns one process per seed: importing its entry loads no Lightning
    (~5 s a stage); train() imports it in the process that trains."""
    out = _lightning_modules_after("pipeline.cli, pipeline.parallel, pipeline.config")
    assert out == "[]", out
    assert _lightning_modules_after("pipeline.cli, pipeline.train") == "['pipeline.train']"


def test_wandb_mode_decided_before_init(monkeypatch, tmp_path):
    from pipeline import tracking

    cfg = OmegaConf.create({"profile_name": "p", "logger": {"wandb": {"enabled": True, "mode": "offline"}}})
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert tracking.wandb_mode(cfg) == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.wandb_mode(cfg) == "disabled"
    assert tracking.start_wandb(cfg, "train", "x", tmp_path) is None
    monkeypatch.setenv("WANDB_MODE", "bogus")
    with pytest.raises(ConfigError, match="WANDB_MODE"):
        tracking.wandb_mode(cfg)
    off = OmegaConf.create({"logger": {"wandb": {"enabled": False, "mode": "online"}}})
    assert tracking.wandb_mode(off) == "disabled"


def test_wandb_offline_run_lives_in_run_dir_and_finishes_on_error(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    import wandb

    from pipeline import tracking

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = OmegaConf.create({"profile_name": "prof", "logger": {"wandb": {"enabled": True, "mode": "offline",
                                                                          "project": "cmr-repro", "tags": ["t"]}}})
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.wandb_run(cfg, "train", "window-s0", tmp_path / "run", {"a": 1}) as run:
            assert run is not None and run.group == "prof" and run.job_type == "train"
            raise RuntimeError("boom")
    assert wandb.run is None  # finished, so the next job cannot log into it
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_a_wandb_run_leaves_no_symlink_in_its_run_dir(monkeypatch, tmp_path):
    """wandb's `latest-run` and `debug*.log` symlinks dangle when a run is killed before their targets exist,
    and DVC cannot hash a persisted output holding a dangling symlink (`dvc repro` of a killed training failed
    on `wandb/debug-internal.log`): the runs make none."""
    pytest.importorskip("wandb")
    from pipeline import tracking

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = OmegaConf.create({"logger": {"wandb": {"enabled": True, "mode": "offline"}}})
    with tracking.wandb_run(cfg, "train", "window-s0", tmp_path / "run") as run:
        run.log({"x": 1.0})
    files = list((tmp_path / "run").rglob("*"))
    assert any(p.name.endswith(".wandb") for p in files)
    assert [p for p in files if p.is_symlink()] == []


def test_wandb_run_dir_is_made_absolute(monkeypatch, tmp_path):
    """A relative run dir reaches wandb as an absolute path: a wandb service inherited from another process
    resolves a relative one against its own working directory (it wrote runs into another checkout)."""
    pytest.importorskip("wandb")
    from pathlib import Path

    from pipeline import tracking

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    here = tmp_path / "checkout"
    here.mkdir()
    monkeypatch.chdir(here)
    cfg = OmegaConf.create({"logger": {"wandb": {"enabled": True, "mode": "offline"}}})
    with tracking.wandb_run(cfg, "train", "window-s0", "exp/run") as run:
        assert Path(run.settings.root_dir).is_absolute() and Path(run.settings.root_dir) == here / "exp" / "run"
    assert list((here / "exp" / "run" / "wandb").glob("offline-run-*"))


def test_seeds_in_parallel_processes_match_a_run_in_this_process(env, tmp_path):
    """train_seeds(jobs=2) spawns workers: same results as an in-process run, one folder per seed."""
    runs = T.train_seeds(env, "window", [0, 1], jobs=2)
    assert [m["seed"] for m in runs] == [0, 1]
    for s in (0, 1):
        assert (tmp_path / "exp" / "train" / "window" / f"s{s}" / "checkpoints" / "best.ckpt").exists()
    here = T.train(env, "window", 1, run_dir=tmp_path / "here")
    assert here["val_curve"] == runs[1]["val_curve"]  # deterministic across the process boundary
    assert runs[0]["val_curve"] != runs[1]["val_curve"]  # the seed matters
    assert here["tokens_trained"] > 0 and here["hardware"]["torch"] == torch.__version__


def test_main_run_dir_takes_one_seed(env, tmp_path, capsys):
    p = tmp_path / "params.yaml"
    p.write_text(OmegaConf.to_yaml(as_plain(env)))
    assert T.main(["--variant", "window", "--seed", "0", "1", "--run-dir", str(tmp_path / "r"),
                   "--params", str(p)]) == 2
    assert "--run-dir names one run's folder" in capsys.readouterr().err


def test_monitor_auto_and_its_checks(env, data_root):
    from pipeline.config.train import resolve_monitor

    from pipeline.models.registry import config_class

    def spans(name):
        return config_class(name).spans_document

    assert resolve_monitor("auto", spans("cmr"), True) == "val_long/recall_far"
    assert resolve_monitor("auto", spans("full"), True) == "val/recall"  # val_long is beyond full's training length
    for bounded in ("window", "xl"):  # far facts of long documents are out of their reach: selecting on them is noise
        assert resolve_monitor("auto", spans(bounded), True) == "val/recall"
    for memory in ("rmt", "armt", "memorizing"):
        assert resolve_monitor("auto", spans(memory), True) == "val_long/recall_far"
    assert resolve_monitor("auto", spans("cmr"), False) == "val/recall_far"  # data from before val_long existed
    assert resolve_monitor("val/recall", spans("cmr"), True) == "val/recall"
    dm = MemoryDataModule(env.paths.data_dir, W, 8, 16, env.train.curriculum, 0)
    dm.setup()
    assert dm.val_names == ["val", "val_long"]
    T.check_monitor("val_long/recall_far", dm.val_sets)
    with pytest.raises(ConfigError, match="no 'val_short' split"):
        T.check_monitor("val_short/recall", dm.val_sets)
    with pytest.raises(ConfigError, match="val_long split has no 'numeric' queries"):
        T.check_monitor("val_long/recall_numeric", dm.val_sets)
    with pytest.raises(ConfigError, match="train.monitor='val/best'"):
        T.train(_with(env, monitor="val/best"), "window", 0)


@pytest.mark.parametrize("variant", ["window", "cmr"])
def test_bf16_autocast_trains(env, tmp_path, variant):
    """train.precision=bf16-mixed (the paper profile's GPU option; Lightning autocasts on CPU too): the
    model trains in bf16 autocast with float32 weights and a finite loss."""
    m = T.train(_with(env, precision="bf16-mixed"), variant, 0, run_dir=tmp_path / "run")
    assert m["steps"] == 10 and all(np.isfinite(e["val/loss"]) for e in m["val_curve"])
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_a_training_run_in_wandb_says_what_it_is(env, tmp_path, monkeypatch):
    """Group = the study, job_type = the stage, tags and config = profile, variant, seed; the summary keeps the
    selected checkpoint's numbers apart from the curves' last points (read back from the offline run's file)."""
    pytest.importorskip("wandb")
    from tests.wandb_files import read_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = OmegaConf.merge(as_plain(env), {"logger": {"wandb": {"enabled": True, "mode": "offline"}}})
    T.train(cfg, "window", 1, run_dir=tmp_path / "run")
    (run_dir,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    run = read_run(run_dir)
    assert run["group"] == cfg.profile_name and run["job_type"] == "train"
    assert run["tags"] == [f"profile:{cfg.profile_name}", "train", "variant:window", "seed:1"]
    assert run["config"]["variant"] == "window" and run["config"]["seed"] == 1
    summary = run["summary"]
    assert "best_checkpoint/val_recall_far" in summary and summary["run/steps"] == 10
    assert "val/recall_far" in summary  # the curve's last point, under the curve's own key
    assert not {"val_recall_far", "val_long_recall_far"} & set(summary)  # and no look-alike of it


def test_a_run_folder_is_trained_by_one_process_at_a_time(env, tmp_path):
    """A second train() of a run whose folder another process holds stops with an error naming that process;
    the lock is gone once the holder ends."""
    run = tmp_path / "run"
    run.mkdir()
    with T.run_lock(run):
        with pytest.raises(TrainingError, match=r"being trained by another process \(pid \d+\)"):
            T.train(env, "window", 0, run_dir=run)
        assert not (run / "checkpoints").exists()  # nothing of the refused run was written or cleared
    assert T.train(env, "window", 0, run_dir=run)["steps"] == 10
    assert not (run / ".train.lock").exists()


def test_a_finished_run_with_a_truncated_best_checkpoint_is_trained_again(env, tmp_path, capsys):
    run = tmp_path / "run"
    first = T.train(env, "window", 0, run_dir=run)
    best = run / "checkpoints" / "best.ckpt"
    best.write_bytes(best.read_bytes()[:100])
    again = T.train(env, "window", 0, run_dir=run)
    assert "no readable best.ckpt" in capsys.readouterr().err
    assert again["val_curve"] == first["val_curve"] and T._readable(best)


def test_bad_data_fails_before_the_run_folder_exists(env, tmp_path):
    cfg = as_plain(env)
    cfg["paths"]["data_dir"] = str(tmp_path / "no-data")
    with pytest.raises(DataError, match="missing"):
        T.train(cfg, "window", 0, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
