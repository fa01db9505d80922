"""Every cross-field check of the composed config, in one place. Each raises a ConfigError that names the key
and what is allowed there. The schema (pipeline/config/schema.py) has already checked the keys and their types; these
check what a type cannot: ranges, agreement between groups (data.segment_len = backbone.window), and the
choices of values that stay strings. `check_all` runs them all (pipeline.config.validate calls it on every
config it loads); `check_data` also runs whenever data is prepared. Each memory's checks are its own
(MemoryConfig.check in pipeline/models/<name>.py, run by pipeline.models.registry).
No torch import here: validating a config must stay fast."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, Mapping

from pipeline.config.access import cfg_get as _get
from pipeline.config.access import cfg_path
from pipeline.config.data import DOC_KINDS, EVAL_FACTS, FILLER_SOURCES, LOCAL_FORMATS, as_data_config
from pipeline.config.evaluate import DEVICES, TASKS, rare_buckets
from pipeline.config.schema import (ACCELERATORS, PRECISIONS, STRATEGIES, BackboneConfig, CIMethod, DataConfig,
                                    Positions, ReportConfig, WandbMode, choices, from_dict)
from pipeline.config.train import MONITORS, PROGRESS_BARS, QUERY_TYPES
from pipeline.errors import ConfigError

WANDB_MODES = choices(WandbMode)


def check_all(cfg: Any) -> None:
    """Every check, on a config already merged onto the schema (pipeline.config.validate)."""
    check_study(cfg)
    check_data_fields(cfg.data, cfg)
    check_backbone(cfg.backbone)
    check_train(cfg.train, cfg)
    check_eval(cfg.eval, cfg)
    check_logger(cfg.logger)
    report_config(cfg)
    check_stress(cfg.stress, cfg)


def check_stress(st: Any, full_cfg: Any) -> None:
    """`stress`: positive sizes and a threshold in (0, 1] (what its documents need of `data`: the stress-data
    stage, pipeline/stress/data.py check_fits, so a config that never builds them is not held to it)."""
    def pos(v: Any, key: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"stress.{key} must be an integer >= 1, got {v!r}")
        return v

    for key in ("load_length", "n_load_docs", "n_length_docs", "full_max_length", "update_length",
                "n_update_docs", "batch_size"):
        pos(_get(st, key), key)
    for key in ("load_facts", "lengths", "update_gaps"):
        if not list(_get(st, key) or []):
            raise ConfigError(f"stress.{key} must list at least one value")
        for v in _get(st, key):
            pos(v, f"{key}[]")
    for variant, keys in dict(_get(st, "state_sizes") or {}).items():
        for key, values in dict(keys or {}).items():
            if not list(values or []):
                raise ConfigError(f"stress.state_sizes.{variant}.{key} must list at least one value")
            for v in values:
                pos(v, f"state_sizes.{variant}.{key}[]")
    thr = _get(st, "threshold")
    if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not 0.0 < float(thr) <= 1.0:
        raise ConfigError(f"stress.threshold must be in (0, 1], got {thr!r}")


def check_study(cfg: Any) -> None:
    """The DVC matrix: configured variants (which memories exist: pipeline.models.registry); distinct seeds; a
    positive process count."""
    for name in cfg.study.variants:
        if name not in cfg.models:
            raise ConfigError(f"study.variants: '{name}' is not configured under models; allowed: "
                              f"{', '.join(cfg.models.keys())}")
    if cfg.sweep.variant not in cfg.models:
        raise ConfigError(f"sweep.variant: unknown variant '{cfg.sweep.variant}'; "
                          f"allowed: {', '.join(cfg.models.keys())}")
    if len(set(cfg.study.seeds)) != len(cfg.study.seeds) or not cfg.study.seeds:
        raise ConfigError(f"study.seeds must be a non-empty list of distinct integers, got {list(cfg.study.seeds)}")
    if cfg.study.jobs < 1:
        raise ConfigError(f"study.jobs must be >= 1 (processes per stage), got {cfg.study.jobs}")


# ---- data ----------------------------------------------------------------------------------------


def check_data_fields(data_cfg: Any, full_cfg: Any = None) -> DataConfig:
    """Cross-field checks of the fields; raise ConfigError naming the key and the allowed values.

    Accepts `check_data_fields(cfg.data, cfg)` or `check_data_fields(cfg)` with the whole config.
    """
    if full_cfg is None and data_cfg is not None and not isinstance(data_cfg, DataConfig):
        try:
            if "data" in data_cfg:
                full_cfg, data_cfg = data_cfg, data_cfg["data"]
        except TypeError:
            pass
    c = as_data_config(data_cfg)
    _check_sources(c, full_cfg)
    _check_sizes(c)
    _check_lists(c)
    return c


def _check_sources(c: DataConfig, full_cfg: Any) -> None:
    """Where filler text comes from, the seed families, and the segment length against the backbone."""
    if c.filler not in FILLER_SOURCES:
        raise ConfigError(f"data.filler: unknown filler source '{c.filler}'; allowed: {', '.join(FILLER_SOURCES)}")
    if c.filler == "hf" and not c.hf_name:
        raise ConfigError("data.hf_name: required when data.filler=hf (e.g. wikitext)")
    if c.filler == "local" and not c.local_files:
        raise ConfigError("data.local_files: required (a non-empty list of paths) when data.filler=local")
    if c.eval_facts not in EVAL_FACTS:
        raise ConfigError(f"data.eval_facts: unknown '{c.eval_facts}'; allowed: {', '.join(EVAL_FACTS)}")
    if c.local_format not in LOCAL_FORMATS:
        raise ConfigError(f"data.local_format: unknown '{c.local_format}'; allowed: {', '.join(LOCAL_FORMATS)}")
    if c.train_seed == c.eval_seed:
        raise ConfigError(
            f"data.train_seed and data.eval_seed must differ (both {c.train_seed}): "
            "evaluation documents must come from a seed disjoint from training"
        )
    window = cfg_path(full_cfg, "backbone.window")
    if window is not None and int(window) != c.segment_len:
        raise ConfigError(
            f"data.segment_len={c.segment_len} must equal backbone.window={window} "
            "(training documents are whole segments)"
        )


def _check_sizes(c: DataConfig) -> None:
    """Counts and sizes: positive where they must be, and enough entities and variables for a document."""
    positive = ["filler_vocab_size", "n_entities", "n_common_values", "n_variables", "segment_len",
                "n_train_docs", "n_val_docs", "train_min_segments", "n_eval_docs", "n_eval_facts",
                "rare_eval_length", "n_rare_docs", "n_val_long_docs", "dialogue_turn_len", "n_dialogue_facts", "max_number",
                "rare_tokens_per_class", "filler_max_words"]
    for k in positive:
        if getattr(c, k) < 1:
            raise ConfigError(f"data.{k}: must be >= 1, got {getattr(c, k)}")
    for k in ["n_far_facts", "n_distractor_facts", "local_pairs_per_segment", "verify_docs", "n_train_long_docs"]:
        if getattr(c, k) < 0:
            raise ConfigError(f"data.{k}: must be >= 0, got {getattr(c, k)}")
    if c.train_max_segments < c.train_min_segments:
        raise ConfigError(
            f"data.train_max_segments ({c.train_max_segments}) must be >= data.train_min_segments "
            f"({c.train_min_segments})"
        )
    if c.n_train_long_docs and c.train_long_segments <= c.train_max_segments:
        raise ConfigError(
            f"data.train_long_segments ({c.train_long_segments}) must be > data.train_max_segments "
            f"({c.train_max_segments}) when data.n_train_long_docs > 0"
        )
    if c.n_far_facts > 0 and c.train_min_segments < 2:
        raise ConfigError("data.train_min_segments: must be >= 2 when data.n_far_facts > 0 (facts and queries in different segments)")
    if not 0.0 <= c.max_rare_fraction <= 1.0:
        raise ConfigError(f"data.max_rare_fraction: must be in [0, 1], got {c.max_rare_fraction}")
    if c.n_eval_num_vars < 2 or c.n_eval_num_vars % 2:
        raise ConfigError(f"data.n_eval_num_vars: must be an even number >= 2 (vars are queried in pairs), got {c.n_eval_num_vars}")
    if c.n_variables < max(c.n_eval_num_vars, 2 * max(1, c.n_far_facts // 2) + 2):
        raise ConfigError(f"data.n_variables ({c.n_variables}) must be >= data.n_eval_num_vars ({c.n_eval_num_vars}) and the vars a training doc needs")
    need_entities = max(c.n_eval_facts, c.n_dialogue_facts,
                        c.n_far_facts + c.n_distractor_facts + c.local_pairs_per_segment * c.longest_train_segments)
    if c.n_entities < need_entities:
        raise ConfigError(f"data.n_entities ({c.n_entities}) must be >= {need_entities}: entities are unique within a document")


def _check_lists(c: DataConfig) -> None:
    """Rare counts, speakers, the training mix and the length lists."""
    if any(int(n) < 1 or int(n) % 2 for n in c.rare_counts):
        raise ConfigError(
            f"data.rare_counts: each count must be a positive even number (every occurrence is a fact "
            f"plus its query), got {list(c.rare_counts)}"
        )
    if len(c.speakers) < 2 or any(len(s.split()) != 1 for s in c.speakers):
        raise ConfigError(f"data.speakers: need >= 2 single-word speaker tags, got {list(c.speakers)}")
    if c.max_number < 1:
        raise ConfigError("data.max_number: must be >= 1")
    mix = dict(c.train_mix)
    bad = sorted(set(mix) - set(DOC_KINDS))
    if bad:
        raise ConfigError(f"data.train_mix.{bad[0]}: unknown document kind; allowed: {', '.join(DOC_KINDS)}")
    if any(float(v) < 0 for v in mix.values()) or sum(float(v) for v in mix.values()) <= 0:
        raise ConfigError(f"data.train_mix: weights must be >= 0 with a positive sum, got {mix}")
    for key in ("eval_lengths", "val_long_lengths"):
        lengths = list(getattr(c, key))
        if not lengths or sorted(set(lengths)) != sorted(lengths):
            raise ConfigError(f"data.{key}: must be a non-empty list of distinct lengths, got {lengths}")
    if sorted(set(c.dialogue_turns)) != sorted(c.dialogue_turns) or any(t < 2 for t in c.dialogue_turns):
        raise ConfigError(f"data.dialogue_turns: must be distinct integers >= 2, got {list(c.dialogue_turns)}")


# ---- models --------------------------------------------------------------------------------------


def check_backbone(b: BackboneConfig) -> None:
    """The decoder's sizes and positions (each memory checks itself against them: MemoryConfig.check)."""
    int_at_least("backbone.d_model", b.d_model, 1)
    int_at_least("backbone.n_layers", b.n_layers, 1)
    int_at_least("backbone.n_heads", b.n_heads, 1)
    int_at_least("backbone.d_ff", b.d_ff, 1)
    int_at_least("backbone.window", b.window, 1)
    int_at_least("backbone.max_positions", b.max_positions, 1)
    int_at_least("backbone.conv_kernel", b.conv_kernel, 0)
    if b.conv_kernel > b.window:
        raise ConfigError(f"backbone.conv_kernel = {b.conv_kernel} must be <= backbone.window = {b.window}")
    if b.d_model % b.n_heads:
        raise ConfigError(f"backbone.n_heads = {b.n_heads} must divide backbone.d_model = {b.d_model}")
    if b.positions not in choices(Positions):
        raise ConfigError(f"backbone.positions = {b.positions!r}; allowed: {list(choices(Positions))}")
    if b.positions == "rotary" and (b.d_model // b.n_heads) % 2:
        raise ConfigError(f"backbone.d_model / n_heads = {b.d_model // b.n_heads} must be even for rotary positions")
    if not 0.0 <= b.dropout < 1.0:
        raise ConfigError(f"backbone.dropout = {b.dropout} must be in [0, 1)")
    if b.window > b.max_positions:
        raise ConfigError(f"backbone.window = {b.window} must be <= backbone.max_positions = {b.max_positions}")
    if b.hf_model is not None and (not isinstance(b.hf_model, str) or not b.hf_model):
        raise ConfigError(f"backbone.hf_model = {b.hf_model!r} must be null or a folder / hub name")


def int_at_least(key: str, val: Any, lo: int) -> None:
    if not isinstance(val, int) or isinstance(val, bool) or val < lo:
        raise ConfigError(f"{key} = {val!r} must be an integer >= {lo}")


def longest_input(full_cfg: Any) -> int:
    """Longest document the config will feed a model: eval and val_long lengths, rare length, training docs."""
    lengths = [int(n) for n in (cfg_path(full_cfg, "data.eval_lengths", []) or [])]
    lengths += [int(n) for n in (cfg_path(full_cfg, "data.val_long_lengths", []) or [])]
    rare = cfg_path(full_cfg, "data.rare_eval_length")
    if rare is not None:
        lengths.append(int(rare))
    max_seg = as_data_config(cfg_path(full_cfg, "data")).longest_train_segments \
        if cfg_path(full_cfg, "data.train_max_segments") is not None else None
    window = cfg_path(full_cfg, "backbone.window")
    if max_seg is not None and window is not None:
        lengths.append(int(max_seg) * int(window))
    return max(lengths, default=0)


# ---- training ------------------------------------------------------------------------------------


def check_train(train_cfg: Any, full_cfg: Any = None) -> None:
    """Cross-field checks for `cfg.train` (raises ConfigError naming the key)."""
    t = train_cfg
    _check_numbers(t)
    _check_loss_weights(t)
    allowed_by_key = {"accelerator": ACCELERATORS, "precision": PRECISIONS, "strategy": STRATEGIES,
                      "progress_bar": PROGRESS_BARS, "monitor": MONITORS}
    for k, allowed in allowed_by_key.items():
        v = _get(t, k)
        if v is not None and str(v) not in allowed:
            raise ConfigError(f"train.{k}={v!r} is not allowed; allowed: {', '.join(allowed)}")

    steps, every = int(_get(t, "max_steps") or 0), int(_get(t, "val_check_interval") or 1)
    if steps % every:
        raise ConfigError(f"train.max_steps={steps} must be a multiple of train.val_check_interval={every} "
                          f"(so the last checkpoint holds the final, validated model)")
    world = int(_get(t, "devices") or 1) * int(_get(t, "num_nodes") or 1)
    if world > 1 and int(_get(t, "batch_size") or 0) % world:
        raise ConfigError(f"train.batch_size={_get(t, 'batch_size')} is the global batch and must split evenly over "
                          f"devices x num_nodes = {world} processes")
    _check_curriculum(list(_get(t, "curriculum") or []), _get(full_cfg, "data"))


def _check_numbers(t: Any) -> None:
    """Sizes and rates: positive, non-negative or in [0, 1] as each must be."""
    def pos(key: str, strict: bool = True, kind=float) -> None:
        v = _get(t, key)
        if v is None:
            return
        try:
            fv = kind(v)
        except (TypeError, ValueError):
            raise ConfigError(f"train.{key} must be a number, got {v!r}") from None
        if not math.isfinite(fv) or (fv <= 0 if strict else fv < 0):
            raise ConfigError(f"train.{key} must be {'> 0' if strict else '>= 0'} and finite, got {v!r}")

    for k in ("batch_size", "max_batch_tokens", "max_steps", "val_check_interval", "val_batch_size", "threads",
              "devices", "num_nodes", "log_every_n_steps"):
        pos(k, kind=int)
    for k in ("lr",):
        pos(k)
    for k in ("eps",):
        pos(k)
    for k in ("warmup_steps", "weight_decay", "grad_clip", "lm_loss_weight", "num_sanity_val_steps",
              "min_lr_ratio", "limit_val_batches", "stop_min_delta"):
        pos(k, strict=False)
    for k in ("stop_patience", "stop_min_steps"):
        pos(k, strict=False, kind=int)
    for k in ("beta1", "beta2", "min_lr_ratio", "target_recall", "stop_at"):
        v = _get(t, k)
        if v is not None and not (0.0 <= float(v) <= 1.0):
            raise ConfigError(f"train.{k} must be in [0, 1], got {v!r}")
    lvb = _get(t, "limit_val_batches")
    if lvb is not None and float(lvb) > 1.0 and float(lvb) != int(float(lvb)):
        raise ConfigError(f"train.limit_val_batches: a fraction <= 1.0 or a whole number of batches, got {lvb!r}")


def _check_loss_weights(t: Any) -> None:
    for q, w in dict(_get(t, "answer_loss_weights") or {}).items():
        if str(q) not in QUERY_TYPES:
            raise ConfigError(f"train.answer_loss_weights: unknown query type {q!r}; known: {', '.join(QUERY_TYPES)}")
        try:
            fw = float(w)
        except (TypeError, ValueError):
            raise ConfigError(f"train.answer_loss_weights.{q} must be a number, got {w!r}") from None
        if not math.isfinite(fw) or fw < 0:
            raise ConfigError(f"train.answer_loss_weights.{q} must be >= 0 and finite, got {w!r}")


def _check_curriculum(stages: list, data: Any) -> None:
    """Stages with increasing until_step, only the last open-ended, the first allowing the shortest document."""
    prev_until = -1
    for i, st in enumerate(stages):
        ms, until = _get(st, "max_segments"), _get(st, "until_step")
        if ms is None or int(ms) < 1:
            raise ConfigError(f"train.curriculum[{i}].max_segments must be >= 1, got {ms!r}")
        if until is None:
            if i != len(stages) - 1:
                raise ConfigError(f"train.curriculum[{i}].until_step is null but is not the last stage")
        else:
            if int(until) <= prev_until:
                raise ConfigError(f"train.curriculum until_step must increase; stage {i} has {until!r}")
            prev_until = int(until)

    lo = _get(data, "train_min_segments")
    if stages and lo is not None:
        first = int(_get(stages[0], "max_segments"))
        if first < int(lo):
            raise ConfigError(
                f"train.curriculum[0].max_segments={first} is below data.train_min_segments={lo}: "
                "no training document would be allowed at step 0"
            )


# ---- evaluation ----------------------------------------------------------------------------------


def check_eval(cfg: Any, full_cfg: Any = None) -> None:
    """Cross-field checks of `eval`: `check_eval(cfg.eval, cfg)`, or `check_eval(cfg)` with the whole config."""
    if full_cfg is None:
        full_cfg, cfg = cfg, _get(cfg, "eval")
    if cfg is None:
        raise ConfigError("missing config group 'eval'")
    tasks = list(_get(cfg, "tasks", []))
    for t in tasks:
        if t not in TASKS:
            raise ConfigError(f"eval.tasks: unknown task '{t}'; allowed: {', '.join(TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"eval.tasks lists a task twice: {tasks}")
    _pos_int(_get(cfg, "batch_size"), "batch_size")
    _pos_int(_get(cfg, "threads"), "threads")
    device = _get(cfg, "device", "cpu")
    if device not in DEVICES:
        raise ConfigError(f"eval.device: unknown device '{device}'; allowed: {', '.join(DEVICES)}")
    mdps = _get(cfg, "max_docs_per_split")
    if mdps is not None:
        _pos_int(mdps, "max_docs_per_split")
    oh = _get(cfg, "overhead")
    lengths = list(_get(oh, "lengths", []))
    if not lengths:
        raise ConfigError("eval.overhead.lengths must list at least one sequence length")
    for n in lengths:
        _pos_int(n, "overhead.lengths[]")
    _pos_int(_get(oh, "warmup"), "overhead.warmup", minimum=0)
    _pos_int(_get(oh, "repeats"), "overhead.repeats")
    _pos_int(_get(oh, "batch_size"), "overhead.batch_size")
    buckets = _get(cfg, "rare_buckets")
    if buckets is not None:
        if not list(buckets):
            raise ConfigError("eval.rare_buckets must be null or a non-empty list of counts")
        for b in buckets:
            _pos_int(b, "rare_buckets[]")
    if "rare" in tasks and full_cfg is not None and _get(full_cfg, "data") is not None:
        rare_buckets(full_cfg)  # raises if neither eval nor data names the buckets
    _validate_attention(_get(cfg, "attention"), full_cfg)


def _pos_int(value: Any, key: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"eval.{key} must be an integer >= {minimum}, got {value!r}")


def _validate_attention(att: Any, full_cfg: Any) -> None:
    """eval.attention reads the recall_<N> splits, so its lengths must be data.eval_lengths."""
    if att is None:
        return
    _pos_int(_get(att, "n_docs"), "attention.n_docs")
    mq = _get(att, "max_queries")
    if mq is not None:
        _pos_int(mq, "attention.max_queries")
    lengths = _get(att, "lengths", None)
    if lengths is None:  # null: every data.eval_lengths
        return
    lengths = list(lengths)
    if not lengths:
        raise ConfigError("eval.attention.lengths must be null or list at least one document length")
    for n in lengths:
        _pos_int(n, "attention.lengths[]")
    if len(set(lengths)) != len(lengths):
        raise ConfigError(f"eval.attention.lengths lists a length twice: {lengths}")
    data_lengths = _get(_get(full_cfg, "data"), "eval_lengths")
    if data_lengths is not None:
        missing = [n for n in lengths if n not in list(data_lengths)]
        if missing:
            raise ConfigError(f"eval.attention.lengths: {missing} not in data.eval_lengths={list(data_lengths)} "
                              "(no recall_<N> split is built for them); pick lengths from data.eval_lengths")


# ---- logging and report --------------------------------------------------------------------------


def check_logger(logger_cfg: Any, full_cfg: Any = None) -> None:
    """Check the wandb mode name (the env var WANDB_MODE is checked when a run starts)."""
    wb = logger_cfg.get("wandb") if logger_cfg is not None else None
    mode = wb.get("mode") if wb is not None else None
    if mode is not None and str(mode) not in WANDB_MODES:
        raise ConfigError(f"logger.wandb.mode={mode!r} is not allowed; allowed: {', '.join(WANDB_MODES)}")
    timeout = wb.get("init_timeout") if wb is not None else None
    if timeout is not None and not float(timeout) > 0:
        raise ConfigError(f"logger.wandb.init_timeout must be > 0 seconds, got {timeout}")


def report_config(cfg: Mapping[str, Any]) -> ReportConfig:
    node = dict(cfg.get("report") or {})
    allowed = {f.name for f in fields(ReportConfig)}
    unknown = sorted(set(node) - allowed)
    if unknown:
        raise ConfigError(f"report: unknown keys {unknown}; allowed: {sorted(allowed)}")
    rc = from_dict(ReportConfig, node)
    if rc.ci_method not in choices(CIMethod):
        raise ConfigError(f"report.ci_method={str(rc.ci_method)!r}; allowed: {', '.join(choices(CIMethod))}")
    if not 0 < rc.ci_level < 1:
        raise ConfigError(f"report.ci_level={rc.ci_level}; must be in (0, 1)")
    if rc.n_resamples < 100:
        raise ConfigError(f"report.n_resamples={rc.n_resamples}; must be >= 100")
    if rc.overhead_small_ratio < 1:
        raise ConfigError(f"report.overhead_small_ratio={rc.overhead_small_ratio}; must be >= 1 (a ratio to window)")
    if rc.chance is not None and not 0 < rc.chance <= 1:
        raise ConfigError(f"report.chance={rc.chance}; must be in (0, 1] or null")
    return rc
